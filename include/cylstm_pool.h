/*
 * cylstm_pool.h -- worker threads that never hold up the caller.
 *
 * Why not an OpenMP team: a parallel region ends at a barrier that waits for
 * every thread of the team to arrive, and a team meets at a barrier every time
 * step in the unit-split forward.  When a worker is asleep (after an idle gap)
 * or preempted (another process busy on its core), the caller waits for it:
 * measured on a 2-vCPU Xeon, (T, B, I, H) = (200, 1, 64, 128) took 120 ms on
 * 2 OpenMP threads beside a busy core against 1.9 ms on one thread.
 *
 * Here the caller is thread 0 of every job and does the work itself; workers
 * join a job when they get to it.  Work is cut into pieces that threads claim
 * (cyl_claim) or compute redundantly and commit once (cyl_commit_begin/end, the
 * unit split's steps), so a late worker finds less to do instead of making the
 * caller wait.  The caller waits for a worker only while that worker holds a
 * piece it claimed, and, at the end of a job, until no worker still reads the
 * job's memory.
 *
 * Protocol.  A job is published by storing its function and argument, then a
 * new `seq`, then `open = seq`.  A worker announces itself in `active`
 * (sequentially consistent), then reads `open`: if it equals the seq it woke
 * for, the job's memory stays valid until it leaves `active`, because the
 * caller closes a job by storing `open = 0` and then waits for `active == 0`.
 * Idle workers spin for cyl_pool_spin_ns, then sleep on a futex (Linux) or a
 * condition variable.  After fork() the child starts with no workers.
 */
#ifndef CYLSTM_POOL_H
#define CYLSTM_POOL_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>
#if defined(__linux__)
#include <sched.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#define CYL_POOL_FUTEX 1
#else
#define CYL_POOL_FUTEX 0
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cyl_cpu_relax() _mm_pause()
#else
#define cyl_cpu_relax() do { } while (0)
#endif

#define CYL_POOL_MAX 64

typedef void (*cyl_pool_fn)(void *arg, int tid);

/* --- atomics for the kernels (int64 words) ------------------------------ */
static inline int64_t cyl_load(const int64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void cyl_store(int64_t *p, int64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
/* flags (int) a job's threads only ever set */
static inline int cyl_load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void cyl_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline int cyl_cas(int64_t *p, int64_t expected, int64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}
static inline int64_t cyl_fetch_add(int64_t *p, int64_t v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}
static inline int64_t cyl_exchange(int64_t *p, int64_t v)
{
    return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}
static inline void cyl_relax(void) { cyl_cpu_relax(); }

static inline int64_t cyl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CPU time this thread has run (the wall time it was not preempted). */
static inline int64_t cyl_thread_cpu_ns(void)
{
#ifdef CLOCK_THREAD_CPUTIME_ID
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
    return -1;
}

/* Where the caller waited for workers, in ns (diagnostics: cylstm._lstm.pool_stats):
 * 0 a piece a worker took, 1 the end of a job (a worker still in its memory),
 * 2 a commit in flight.  Updated by callers only, so relaxed adds suffice. */
static int64_t cyl_pool_waited_ns[3] = {0, 0, 0};
static int64_t cyl_pool_jobs = 0;
static int64_t cyl_pool_joins = 0;   /* workers that joined a job (diagnostics) */
/* A worker went to sleep because it shares the caller's CPU and may not leave it
 * (the process is allowed that one CPU): waking it for a small job only costs the
 * caller the wake.  Cleared when a worker joins a job again. */
static int cyl_pool_stuck = 0;
static void cyl_pool_caller_waited(int64_t now);
static int cyl_pool_job_small = 0;   /* the open job is small (cyl_pool_run_small) */
static int64_t cyl_pool_preempted_min_ns;
static inline void cyl_pool_note_wait(int what, int64_t t0)
{
    int64_t now = cyl_now_ns();
    __atomic_fetch_add(&cyl_pool_waited_ns[what], now - t0, __ATOMIC_RELAXED);
    /* A running worker leaves a job's memory, or ends a commit, within one
     * panel's work (tens of us), and a piece of a small job takes no longer
     * (its workers do not account for their preemption); waiting longer means
     * it lost its core.  For a small job that was often another thread of the
     * process on the worker's CPU: NumPy's OpenBLAS spins 2**28 cycles after
     * each call when NumPy was imported before cylstm, and 4 ms waits (a time
     * slice) came every 10-100 ms of back-to-back steps of a 2-thread (64, 128)
     * runner then (AMD EPYC (2 cores), 2026-12-03).  The common back-off costs
     * such a neighbour one slow step per back-off. */
    if ((what != 0 || cyl_pool_job_small) && now - t0 > cyl_pool_preempted_min_ns)
        cyl_pool_caller_waited(now);
}

/* Pieces claimed once: flag 0 free, 1 taken, 2 done. */
static inline int cyl_claim(int64_t *flag) { return cyl_cas(flag, 0, 1); }
static inline void cyl_claim_done(int64_t *flag) { cyl_store(flag, 2); }
/* Wait for a piece another thread took (the caller's only wait on a worker). */
static inline void cyl_claim_wait(int64_t *flag)
{
    if (cyl_load(flag) != 2) {
        int64_t t0 = cyl_now_ns();
        while (cyl_load(flag) != 2)
            cyl_relax();
        cyl_pool_note_wait(0, t0);
    }
}

/* Pieces computed redundantly, committed once: a panel's word holds 2k after
 * step k was committed and 2k + 1 while step k + 1 is being committed. */
static inline int cyl_commit_begin(int64_t *word, int64_t k)
{
    return cyl_cas(word, 2 * (k - 1), 2 * k - 1);
}
static inline void cyl_commit_end(int64_t *word, int64_t k) { cyl_store(word, 2 * k); }
static inline int cyl_committed(const int64_t *word, int64_t k)
{
    return cyl_load(word) >= 2 * k;
}
static inline int cyl_committing(const int64_t *word, int64_t k)
{
    return cyl_load(word) == 2 * k - 1;
}

/* --- the pool ------------------------------------------------------------- */
typedef struct {
    uint32_t seq;            /* futex word: bumped for every job */
    int64_t open;            /* seq of the job now open, 0 when none */
    int64_t active;          /* workers inside a job's memory */
    int64_t joined;          /* workers that joined the open job */
    int64_t want;            /* workers the open job takes */
    int64_t tick;            /* a job's own signal to its workers (the unit split's step) */
    cyl_pool_fn fn;
    void *arg;
    int n_workers;           /* started */
    int sleepers;            /* workers asleep (or about to be) */
    pid_t pid;               /* the process that started them */
    pthread_mutex_t lock;    /* starting workers; the condvar fallback */
    pthread_cond_t cond;
    int caller_cpu;          /* where the open job's caller last ran (-1: unknown) */
} cyl_pool_t;

static cyl_pool_t cyl_pool = {0, 0, 0, 0, 0, 0, NULL, NULL, 0, 0, 0,
                              PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, -1};

/* The CPU this thread runs on, or -1 where that is not known. */
#if defined(__linux__)
extern int sched_getcpu(void);
static inline int cyl_pool_cur_cpu(void) { return sched_getcpu(); }
#else
static inline int cyl_pool_cur_cpu(void) { return -1; }
#endif
/* Whether this worker now shares the caller's CPU.  With the other core busy
 * (another process), the scheduler wakes a worker onto the caller's core, where
 * every cycle it spins or computes is taken from the caller: measured on a
 * 2-vCPU Xeon beside a spinning process, (200, 1, 64, 128) on 2 threads took
 * 4.4 ms for the first call after a 50 ms gap against 1.0 ms on one thread,
 * with no wait of the caller's on record.  Such a worker leaves the job. */
static inline int cyl_pool_beside_caller(void)
{
    int cpu = cyl_pool_cur_cpu();
    return cpu >= 0 && cpu == __atomic_load_n(&cyl_pool.caller_cpu, __ATOMIC_RELAXED);
}
/* Move this worker off the caller's CPU: the process's CPUs but that one (the
 * kernel migrates the thread before the call returns).  Without it, a worker
 * woken onto the caller's core keeps being woken there (its last CPU), and the
 * second core goes unused even on an idle machine.  False where it cannot
 * move (one CPU allowed, or no affinity calls here). */
static int cyl_pool_move_off_caller(void)
{
#if defined(__linux__) && defined(CPU_SET) && defined(CPU_COUNT)
    cpu_set_t set;
    int cpu = __atomic_load_n(&cyl_pool.caller_cpu, __ATOMIC_RELAXED);
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(getpid(), sizeof set, &set) != 0)
        return 0;
    if (!CPU_ISSET(cpu, &set) || CPU_COUNT(&set) < 2)
        return 0;
    CPU_CLR(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
#else
    return 0;
#endif
}
/* The job this worker joined, and whether it now holds `active` (a job
 * function may let go of the job's memory while it waits: cyl_pool_release). */
static __thread uint32_t cyl_pool_my_seq = 0;
static __thread int cyl_pool_holding = 0;
/* Set on a caller while the workers are its (a caller that runs alone because
 * another has the pool must not signal the other's workers). */
static __thread int cyl_pool_owner = 0;
/* How long an idle worker spins before it sleeps (a call that follows within
 * this time finds it awake).  Set from Python (cylstm._tuning). */
static int64_t cyl_pool_spin_ns = 50000;
/* Back-off from a busy machine.  A worker that was preempted for a good part of
 * a job (its wall time well above its CPU time: another process shares its
 * core) made the caller share its time too, or wait for it; for the next
 * cyl_pool_backoff_ns the caller runs jobs alone, then tries its workers again.
 * A worker that was merely asleep when the job came is not counted (its clock
 * starts when it joins). */
static int64_t cyl_pool_backoff_ns = 100000000;
static int64_t cyl_pool_preempted_min_ns = 200000;
static int64_t cyl_pool_contended_until = 0;
static int64_t cyl_pool_backoffs = 0;
static int64_t cyl_pool_preempted_run = 0;   /* preempted jobs in a row */
static int64_t cyl_pool_lost_ns = 0, cyl_pool_worked_ns = 0;   /* totals (diagnostics) */

static void cyl_pool_sleep(uint32_t seen)
{
    __atomic_fetch_add(&cyl_pool.sleepers, 1, __ATOMIC_SEQ_CST);
#if CYL_POOL_FUTEX
    if (__atomic_load_n(&cyl_pool.seq, __ATOMIC_SEQ_CST) == seen)
        syscall(SYS_futex, &cyl_pool.seq, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
    pthread_mutex_lock(&cyl_pool.lock);
    while (__atomic_load_n(&cyl_pool.seq, __ATOMIC_SEQ_CST) == seen)
        pthread_cond_wait(&cyl_pool.cond, &cyl_pool.lock);
    pthread_mutex_unlock(&cyl_pool.lock);
#endif
    __atomic_fetch_sub(&cyl_pool.sleepers, 1, __ATOMIC_SEQ_CST);
}

/* After a job of a worker's: was it preempted for half of it?  Twice in a row
 * starts a back-off (one preemption is a hiccup of the host, a run of them a
 * busy neighbour); once, soon after a back-off, starts the next one at twice
 * the length (up to 16x): a neighbour that is still there costs one slow call
 * per back-off, not two.  A clean job halves the length again. */
static int64_t cyl_pool_backoff_now_ns = 0;   /* current length (0: the base) */
static void cyl_pool_note_preemption(int64_t now, int preempted)
{
    int64_t until = __atomic_load_n(&cyl_pool_contended_until, __ATOMIC_RELAXED);
    int64_t len = cyl_pool_backoff_now_ns > 0 ? cyl_pool_backoff_now_ns : cyl_pool_backoff_ns;
    if (!preempted) {
        __atomic_store_n(&cyl_pool_preempted_run, 0, __ATOMIC_RELAXED);
        if (len > cyl_pool_backoff_ns)
            cyl_pool_backoff_now_ns = len / 2;
        return;
    }
    if (until > 0 && now - until < 10 * cyl_pool_backoff_ns) {   /* soon after one */
        if (len < 16 * cyl_pool_backoff_ns)
            len *= 2;
    } else if (__atomic_add_fetch(&cyl_pool_preempted_run, 1, __ATOMIC_RELAXED) < 2) {
        return;
    } else {
        len = cyl_pool_backoff_ns;
    }
    cyl_pool_backoff_now_ns = len;
    __atomic_store_n(&cyl_pool_contended_until, now + len, __ATOMIC_RELAXED);
    __atomic_fetch_add(&cyl_pool_backoffs, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&cyl_pool_preempted_run, 0, __ATOMIC_RELAXED);
}

/* The caller itself waited for a worker that had lost its core (see
 * cyl_pool_note_wait): start a back-off at once (the next at twice the length
 * when it comes soon after one), without waiting for the worker's own account
 * of its job, which arrives only when it runs again. */
static void cyl_pool_caller_waited(int64_t now)
{
    int64_t until = __atomic_load_n(&cyl_pool_contended_until, __ATOMIC_RELAXED);
    int64_t len = cyl_pool_backoff_now_ns > 0 ? cyl_pool_backoff_now_ns : cyl_pool_backoff_ns;
    if (cyl_pool_backoff_ns <= 0)
        return;
    if (until > now)
        return;   /* already backing off */
    if (until > 0 && now - until < 10 * cyl_pool_backoff_ns) {
        if (len < 16 * cyl_pool_backoff_ns)
            len *= 2;
    } else {
        len = cyl_pool_backoff_ns;
    }
    cyl_pool_backoff_now_ns = len;
    __atomic_store_n(&cyl_pool_contended_until, now + len, __ATOMIC_RELAXED);
    __atomic_fetch_add(&cyl_pool_backoffs, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&cyl_pool_preempted_run, 0, __ATOMIC_RELAXED);
}

static void *cyl_pool_worker(void *unused)
{
    uint32_t seen = __atomic_load_n(&cyl_pool.seq, __ATOMIC_SEQ_CST);
    (void)unused;
    for (;;) {
        uint32_t s = __atomic_load_n(&cyl_pool.seq, __ATOMIC_SEQ_CST);
        if (s == seen) {
            int64_t t0 = cyl_now_ns(), n = 0;
            while ((s = __atomic_load_n(&cyl_pool.seq, __ATOMIC_SEQ_CST)) == seen) {
                cyl_relax();
                if (++n % 64 == 0) {
                    if (cyl_pool_beside_caller() && !cyl_pool_move_off_caller()) {
                        /* (cannot move: do not spin here, nor be woken for small jobs) */
                        __atomic_store_n(&cyl_pool_stuck, 1, __ATOMIC_RELAXED);
                        cyl_pool_sleep(seen);
                        t0 = cyl_now_ns();
                    } else if (cyl_now_ns() - t0 > cyl_pool_spin_ns) {
                        cyl_pool_sleep(seen);
                        t0 = cyl_now_ns();
                    }
                }
            }
        }
        seen = s;
        __atomic_fetch_add(&cyl_pool.active, 1, __ATOMIC_SEQ_CST);
        cyl_pool_holding = 1;
        cyl_pool_my_seq = s;
        if (cyl_pool_beside_caller())
            cyl_pool_move_off_caller();
        if (__atomic_load_n(&cyl_pool.open, __ATOMIC_SEQ_CST) == (int64_t)s &&
                !cyl_pool_beside_caller()) {
            int64_t slot = __atomic_fetch_add(&cyl_pool.joined, 1, __ATOMIC_SEQ_CST);
            if (slot < cyl_pool.want) {
                __atomic_fetch_add(&cyl_pool_joins, 1, __ATOMIC_RELAXED);
                if (__atomic_load_n(&cyl_pool_stuck, __ATOMIC_RELAXED))
                    __atomic_store_n(&cyl_pool_stuck, 0, __ATOMIC_RELAXED);
                /* (a small job skips the account of its preemption: the CPU clock
                 * is a syscall, 0.8 us in a KVM guest, against jobs of a few us;
                 * a caller that waits for a preempted worker backs off itself) */
                int small = cyl_pool_job_small;
                int64_t w0 = cyl_now_ns(), c0 = small ? -1 : cyl_thread_cpu_ns();
                cyl_pool.fn(cyl_pool.arg, (int)slot + 1);
                if (cyl_pool_holding)   /* done with the job's memory */
                    __atomic_fetch_sub(&cyl_pool.active, 1, __ATOMIC_SEQ_CST);
                cyl_pool_holding = 0;
                if (c0 >= 0) {
                    int64_t now = cyl_now_ns(), wall = now - w0;
                    int64_t lost = wall - (cyl_thread_cpu_ns() - c0);
                    __atomic_fetch_add(&cyl_pool_lost_ns, lost, __ATOMIC_RELAXED);
                    __atomic_fetch_add(&cyl_pool_worked_ns, wall, __ATOMIC_RELAXED);
                    cyl_pool_note_preemption(now, lost > cyl_pool_preempted_min_ns
                                                      && 2 * lost > wall);
                }
            }
        }
        if (cyl_pool_holding)
            __atomic_fetch_sub(&cyl_pool.active, 1, __ATOMIC_SEQ_CST);
        cyl_pool_holding = 0;
    }
    return NULL;
}

static void cyl_pool_after_fork(void)
{
    /* the child has none of the parent's workers */
    cyl_pool.n_workers = 0;
    cyl_pool.sleepers = 0;
    cyl_pool.active = 0;
    cyl_pool.open = 0;
    pthread_mutex_init(&cyl_pool.lock, NULL);
    pthread_cond_init(&cyl_pool.cond, NULL);
}

/* Start workers up to n (fewer if the system refuses; the caller then does more). */
static int cyl_pool_reserve(int n)
{
    if (n > CYL_POOL_MAX)
        n = CYL_POOL_MAX;
    /* (the fork handler resets n_workers in a child: no getpid, a syscall, per job) */
    if (__atomic_load_n(&cyl_pool.n_workers, __ATOMIC_ACQUIRE) >= n)
        return n;
    pthread_mutex_lock(&cyl_pool.lock);
    if (cyl_pool.pid != getpid()) {
        if (cyl_pool.pid == 0)
            pthread_atfork(NULL, NULL, cyl_pool_after_fork);
        cyl_pool.n_workers = 0;
        cyl_pool.pid = getpid();
    }
    while (cyl_pool.n_workers < n) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 1 << 20);
        int rc = pthread_create(&t, &attr, cyl_pool_worker, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        __atomic_store_n(&cyl_pool.n_workers, cyl_pool.n_workers + 1, __ATOMIC_RELEASE);
    }
    n = cyl_pool.n_workers < n ? cyl_pool.n_workers : n;
    pthread_mutex_unlock(&cyl_pool.lock);
    return n;
}

/* One job at a time per process: concurrent callers (Python threads each
 * running a kernel) take turns for the workers; a caller that finds the pool
 * busy runs its job alone. */
static int cyl_pool_busy = 0;

/* Small jobs (a streaming step) and sleeping workers.  Waking a sleeping worker
 * costs the caller a futex syscall, and the worker arrives later still, with
 * cold caches: on a 2-vCPU AMD EPYC KVM guest (2026-12-03) the wake took the
 * caller 8-30 us and the worker ran 14-28 us after it, on the caller's CPU, so
 * the first step of a 2-layer (64, 128) runner after a 50 ms gap took 126-143 us
 * on 2 threads against 108-126 on one.  A job its caller marks small therefore
 * runs alone while a worker sleeps (or none was started), unless it is the
 * third in a row to start within cyl_pool_spin_ns of the previous job's end: a
 * stream of steps, for which the workers, once woken, stay awake between
 * steps.  The first and second call after an idle gap never pay the wake. */
static int64_t cyl_pool_last_end_ns = 0;
static int cyl_pool_quick_jobs = 0;    /* small jobs in a row, each soon after the last */
static int64_t cyl_pool_small_alone = 0;   /* small jobs run alone so (diagnostics) */
static inline int cyl_pool_small_stays_alone(int nw)
{
    int64_t now = cyl_now_ns();
    int quick = now - __atomic_load_n(&cyl_pool_last_end_ns, __ATOMIC_RELAXED) < cyl_pool_spin_ns;
    int run = quick ? __atomic_load_n(&cyl_pool_quick_jobs, __ATOMIC_RELAXED) + 1 : 0;
    __atomic_store_n(&cyl_pool_quick_jobs, run, __ATOMIC_RELAXED);
    if (__atomic_load_n(&cyl_pool.n_workers, __ATOMIC_ACQUIRE) >= nw &&
            __atomic_load_n(&cyl_pool.sleepers, __ATOMIC_SEQ_CST) == 0)
        return 0;   /* workers awake (spinning): no wake to pay */
    if (run >= 2 && !__atomic_load_n(&cyl_pool_stuck, __ATOMIC_RELAXED))
        return 0;   /* a stream: wake them once */
    __atomic_fetch_add(&cyl_pool_small_alone, 1, __ATOMIC_RELAXED);
    return 1;
}

/* cyl_pool_run and cyl_pool_run_small (below). */
static void cyl_pool_run_job(cyl_pool_fn fn, void *arg, int n_threads, int small)
{
    int nw = n_threads - 1;
    if (nw > 0 && cyl_now_ns() < __atomic_load_n(&cyl_pool_contended_until, __ATOMIC_RELAXED))
        nw = 0;   /* backing off from a busy machine: alone */
    if (nw > 0 && !__atomic_exchange_n(&cyl_pool_busy, 1, __ATOMIC_ACQ_REL)) {
        nw = cyl_pool_reserve(nw);
        if (nw > 0) {
            uint32_t s;
            cyl_pool.fn = fn;
            cyl_pool.arg = arg;
            cyl_pool.want = nw;
            cyl_pool_job_small = small;
            __atomic_store_n(&cyl_pool.caller_cpu, cyl_pool_cur_cpu(), __ATOMIC_RELAXED);
            __atomic_store_n(&cyl_pool.tick, 0, __ATOMIC_SEQ_CST);
            __atomic_store_n(&cyl_pool.joined, 0, __ATOMIC_SEQ_CST);
            s = __atomic_add_fetch(&cyl_pool.seq, 1, __ATOMIC_SEQ_CST);
            if (s == 0)  /* 0 means "no job" in `open` */
                s = __atomic_add_fetch(&cyl_pool.seq, 1, __ATOMIC_SEQ_CST);
            __atomic_store_n(&cyl_pool.open, (int64_t)s, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&cyl_pool.sleepers, __ATOMIC_SEQ_CST) > 0) {
#if CYL_POOL_FUTEX
                syscall(SYS_futex, &cyl_pool.seq, FUTEX_WAKE_PRIVATE, nw, NULL, NULL, 0);
#else
                pthread_mutex_lock(&cyl_pool.lock);
                pthread_cond_broadcast(&cyl_pool.cond);
                pthread_mutex_unlock(&cyl_pool.lock);
#endif
            }
            cyl_pool_owner = 1;
            fn(arg, 0);
            cyl_pool_owner = 0;
            __atomic_store_n(&cyl_pool.open, 0, __ATOMIC_SEQ_CST);
            __atomic_fetch_add(&cyl_pool_jobs, 1, __ATOMIC_RELAXED);
            if (__atomic_load_n(&cyl_pool.active, __ATOMIC_SEQ_CST) != 0) {
                int64_t t0 = cyl_now_ns();
                while (__atomic_load_n(&cyl_pool.active, __ATOMIC_SEQ_CST) != 0)
                    cyl_relax();
                cyl_pool_note_wait(1, t0);
            }
            __atomic_store_n(&cyl_pool_last_end_ns, cyl_now_ns(), __ATOMIC_RELAXED);
            __atomic_store_n(&cyl_pool_busy, 0, __ATOMIC_RELEASE);
            return;
        }
        __atomic_store_n(&cyl_pool_busy, 0, __ATOMIC_RELEASE);
    }
    fn(arg, 0);
    __atomic_store_n(&cyl_pool_last_end_ns, cyl_now_ns(), __ATOMIC_RELAXED);
}

/* Run fn(arg, tid) on the calling thread (tid 0) and on up to n_threads - 1
 * workers (tids 1..), each worker joining when it wakes.  fn must be written
 * so that tid 0 alone finishes the job.  Returns when the job is done and no
 * worker reads its memory any more. */
static void cyl_pool_run(cyl_pool_fn fn, void *arg, int n_threads)
{
    cyl_pool_run_job(fn, arg, n_threads, 0);
}

/* A job too small to pay for waking a sleeping worker: whether it should run
 * alone now (backing off, or cyl_pool_small_stays_alone).  If so the caller runs
 * it its own way (the serial code: the pool's claims cost a cold first call after
 * an idle gap 5-15 us more, AMD EPYC (2 cores), 2026-12-03) and then calls
 * cyl_pool_small_alone_end; else cyl_pool_run_small. */
static int cyl_pool_small_runs_alone(int n_threads)
{
    int nw = n_threads - 1;
    if (nw <= 0)
        return 1;
    if (cyl_now_ns() < __atomic_load_n(&cyl_pool_contended_until, __ATOMIC_RELAXED))
        return 1;
    return cyl_pool_small_stays_alone(nw);
}
static void cyl_pool_small_alone_end(void)
{
    __atomic_store_n(&cyl_pool_last_end_ns, cyl_now_ns(), __ATOMIC_RELAXED);
}
/* cyl_pool_run for a small job (its workers do not account for their
 * preemption: its caller's long waits start the back-off). */
static void cyl_pool_run_small(cyl_pool_fn fn, void *arg, int n_threads)
{
    cyl_pool_run_job(fn, arg, n_threads, 1);
}

/* For a worker's job function that waits for its caller: let go of the job's
 * memory while waiting (the caller never waits for a worker that holds none),
 * then take it back, which fails once the job is closed (return at once).
 * Between the two, read only the pool's own words (cyl_pool_tick_*). */
static void cyl_pool_release(void)
{
    if (cyl_pool_holding) {
        __atomic_fetch_sub(&cyl_pool.active, 1, __ATOMIC_SEQ_CST);
        cyl_pool_holding = 0;
    }
}
static int cyl_pool_acquire(void)
{
    if (cyl_pool_holding)
        return 1;
    __atomic_fetch_add(&cyl_pool.active, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&cyl_pool.open, __ATOMIC_SEQ_CST) != (int64_t)cyl_pool_my_seq) {
        __atomic_fetch_sub(&cyl_pool.active, 1, __ATOMIC_SEQ_CST);
        return 0;
    }
    cyl_pool_holding = 1;
    return 1;
}
/* Whether the job this worker joined is still open (pool memory only). */
static int cyl_pool_job_open(void)
{
    return __atomic_load_n(&cyl_pool.open, __ATOMIC_ACQUIRE) == (int64_t)cyl_pool_my_seq;
}
static void cyl_pool_tick_set(int64_t v)
{
    if (cyl_pool_owner) {
        /* (the caller may have moved: a cheap read, vDSO / rdtscp) */
        __atomic_store_n(&cyl_pool.caller_cpu, cyl_pool_cur_cpu(), __ATOMIC_RELAXED);
        __atomic_store_n(&cyl_pool.tick, v, __ATOMIC_RELEASE);
    }
}
/* cyl_pool_tick_set without the caller's CPU (sched_getcpu can be a system call in
 * a VM): for callers that tick every time step. */
static void cyl_pool_tick_store(int64_t v)
{
    if (cyl_pool_owner)
        __atomic_store_n(&cyl_pool.tick, v, __ATOMIC_RELEASE);
}
static int64_t cyl_pool_tick_get(void) { return __atomic_load_n(&cyl_pool.tick, __ATOMIC_ACQUIRE); }

static void cyl_pool_set_spin_ns(int64_t ns) { cyl_pool_spin_ns = ns < 0 ? 0 : ns; }
/* Start a back-off now, as a preempted worker would (tests). */
static void cyl_pool_back_off_now(void)
{
    __atomic_store_n(&cyl_pool_contended_until, cyl_now_ns() + cyl_pool_backoff_ns,
                     __ATOMIC_RELAXED);
}
static void cyl_pool_set_backoff_ns(int64_t ns)
{
    cyl_pool_backoff_ns = ns < 0 ? 0 : ns;
    cyl_pool_backoff_now_ns = 0;
    __atomic_store_n(&cyl_pool_contended_until, 0, __ATOMIC_RELAXED);
}
static int cyl_pool_workers(void) { return cyl_pool.n_workers; }

/* Whether a job on n_threads would find its workers started and none asleep (it
 * pays no wake-up): a moment's reading, for timing small jobs fairly. */
static int cyl_pool_workers_awake(int n_threads)
{
    int nw = n_threads - 1;
    return nw <= 0 || (__atomic_load_n(&cyl_pool.n_workers, __ATOMIC_ACQUIRE) >= nw &&
                       __atomic_load_n(&cyl_pool.sleepers, __ATOMIC_SEQ_CST) == 0);
}

#endif /* CYLSTM_POOL_H */
