"""More than one machine: batch scoring and data-parallel training on Dask and Ray.

Both engines are optional (``pip install cylstm[dask]`` / ``cylstm[ray]``); this
module imports them only when a function needs them.

Models travel as data: ``pickle.dumps(model)`` is the safe ``.npz`` format of
:func:`cylstm.saving.model_to_bytes` (arrays plus a JSON config, optimizer state
included) and unpickles through :func:`cylstm.saving.model_from_bytes`, which
builds only cylstm's own classes.  :func:`loads` goes one step further for
pickles from an untrusted source: it refuses any pickle that names anything
but that loader.

Threads: each worker runs cylstm's kernels on the threads the engine gives it,
read when the worker first runs a cylstm task.  Dask sets ``OMP_NUM_THREADS=1``
in the worker processes it starts (then cylstm uses 1 thread per task; without
it, the cores divided by the worker's ``nthreads``); a Ray actor uses the CPUs it
was given (``num_cpus``), whatever ``OMP_NUM_THREADS`` its process inherited.  Choose ``workers x threads`` so that their product is
at most the cores of a machine: on a machine of C cores, ``C`` single-thread
workers score the most sequences per second when there are many chunks; fewer
workers of more threads each pay off only for large batches per chunk.
"""
import hashlib
import io
import os
import pickle
import sys
import threading
import time

import numpy as np

import cylstm
from cylstm import callbacks as _cbm
from cylstm import saving
from cylstm._config import _available_cores
from cylstm._progress import Progbar
from cylstm.engine import data_adapters as _da
from cylstm.engine.model import Model
from cylstm.engine.trainer import _check_int

__all__ = ["RayPredictor", "fit", "loads", "predict"]

_lock = threading.Lock()
_threads_set = False
_local = threading.local()     # per-thread model replicas for scoring: {digest: model}
_REPLICAS = {}                 # data-parallel replicas on a worker: {key: model}


# ---------------------------------------------------------------------------- safe unpickling
class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED = frozenset({("cylstm.saving", "model_from_bytes")})

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return saving.model_from_bytes
        raise pickle.UnpicklingError(
            f"refused to unpickle {module}.{name}: a cylstm model pickle names only "
            "cylstm.saving.model_from_bytes")


def loads(data):
    """Unpickle a model, accepting only cylstm's own model loader.

    ``pickle.loads`` of a cylstm model is already safe in what the model's bytes
    can do, but a pickle from an untrusted source may name any other callable;
    this refuses every pickle that names anything but
    :func:`cylstm.saving.model_from_bytes`.

    Parameters
    ----------
    data : bytes
        What ``pickle.dumps(model)`` returned.

    Returns
    -------
    cylstm.models.Sequential or cylstm.Model

    Raises
    ------
    pickle.UnpicklingError
        The pickle names a foreign class or function.
    ValueError
        The model bytes inside are corrupt or name unknown classes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes; got {type(data).__name__}")
    obj = _SafeUnpickler(io.BytesIO(bytes(data))).load()

    if not isinstance(obj, Model):
        raise pickle.UnpicklingError(f"the pickle holds a {type(obj).__name__}, not a model")
    return obj


# ---------------------------------------------------------------------------- threads
def _ray_cpus():
    """CPUs Ray assigned to this process's actor or task; None outside a Ray worker."""
    ray = sys.modules.get("ray")  # a Ray worker has imported it; nobody else needs it
    if ray is None or not ray.is_initialized():
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except AssertionError:  # the driver: it is assigned nothing
        return None
    return max(1, int(cpus)) if cpus else None


def _engine_threads():
    """Threads one cylstm task may use on this worker, from the engine's setting."""
    # Ray first: the CPUs it reserved for this actor are the truth, and OMP_NUM_THREADS in a
    # Ray worker may be inherited from the driver's environment (a Dask LocalCluster leaves
    # OMP_NUM_THREADS=1 in the process that started it), then an actor of num_cpus=2 would
    # run on one thread
    cpus = _ray_cpus()
    if cpus is not None:
        return cpus
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)

    cores = _available_cores()
    try:
        from distributed import get_worker  # (optional engine: imported on use)

        return max(1, cores // max(1, int(get_worker().state.nthreads)))
    except (ImportError, ValueError, AttributeError):
        pass
    return None


def _set_worker_threads(again=False):
    """Once per worker process (or ``again``): cylstm's threads follow the engine's setting."""
    global _threads_set
    if _threads_set and not again:
        return
    with _lock:
        if not _threads_set or again:
            n = _engine_threads()
            if n is not None:
                cylstm.set_num_threads(n)
            _threads_set = True


def _cached_model(digest, blob):
    """This thread's replica of the model ``blob`` holds (decoded once per thread)."""
    cache = getattr(_local, "models", None)
    if cache is None:
        cache = _local.models = {}
    model = cache.get(digest)
    if model is None:
        cache.clear()  # a worker keeps one model per thread, not every model it has seen
        model = cache[digest] = saving.model_from_bytes(blob, compile=False)
    return model


# ---------------------------------------------------------------------------- predict
def _is_dask_array(x):
    mod = sys.modules.get("dask.array")
    return mod is not None and isinstance(x, mod.Array)


def _is_ray_dataset(x):
    mod = sys.modules.get("ray.data")
    return mod is not None and isinstance(x, mod.Dataset)


def _check_model(model):
    if not isinstance(model, Model):
        raise TypeError(f"model must be a cylstm Sequential or Model; got {type(model).__name__}")
    model._require_built("distributed.predict")


def predict(model, x, batch_size=None, *, client=None, column="data", concurrency=None,
            compute=None, num_cpus=1):
    """Score ``x`` on a Dask or Ray cluster; equals ``model.predict`` to float rounding.

    Parameters
    ----------
    model : cylstm.models.Sequential or cylstm.Model
        A built model with one input and one output.  It is sent to each worker
        once (Dask: scattered with ``broadcast=True``; Ray: one object ref).
    x : dask.array.Array or ray.data.Dataset
        A dask array ``(batch, ...)`` chunked along the batch axis (chunks along
        the other axes are merged by a rechunk), or a Ray dataset whose
        sequences are in column ``column`` (what ``ray.data.from_numpy`` makes).
    batch_size : int, optional
        ``model.predict``'s batch size inside each chunk / Ray batch.
    client : distributed.Client, optional
        Dask only: the client to scatter the model with (default: the current
        client, if any; without one the model travels inside the graph).
    column : str
        Ray only: the column holding the sequences.
    concurrency : int, optional
        Ray only: the number of scoring actors, a fixed pool (default: the
        cluster's CPUs divided by ``num_cpus``).  cylstm's own name, an int as
        :func:`fit`'s ``num_workers``; cylstm hands Ray
        ``compute=ray.data.ActorPoolStrategy(size=concurrency)``, not Ray's
        ``map_batches(concurrency=)``, which Ray deprecated in 2.51.
    compute : ray.data.ActorPoolStrategy, optional
        Ray only, instead of ``concurrency``: the actor pool as Ray Data's
        ``map_batches(compute=)`` takes it, for a pool Ray may grow and shrink
        (``ActorPoolStrategy(min_size=m, max_size=n)``).  Passing both is a
        ``TypeError``.
    num_cpus : int
        Ray only: CPUs (= cylstm threads) per actor.

    Returns
    -------
    dask.array.Array or ray.data.Dataset
        A dask array of the predictions (chunked as ``x`` along the batch
        axis, computed chunk by chunk on the workers), or a dataset with the
        input columns plus ``"predictions"``, rows in the input's order.
    """
    _check_model(model)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    n_in, n_out = len(model._input_specs()), len(model._output_shapes())
    if n_in != 1 or n_out != 1:
        raise ValueError(f"distributed.predict scores models with one input and one output; "
                         f"{model.name!r} has {n_in} inputs and {n_out} outputs")
    if _is_dask_array(x):
        return _dask_predict(model, x, batch_size, client)
    if _is_ray_dataset(x):
        return _ray_predict(model, x, batch_size, column, concurrency, compute, num_cpus)
    raise TypeError(f"x must be a dask.array.Array or a ray.data.Dataset; got "
                    f"{type(x).__module__}.{type(x).__name__} (score NumPy arrays with "
                    "model.predict)")


def _predict_block(block, blob, digest, batch_size, out_tail, dtype):
    _set_worker_threads()
    if block.shape[0] == 0:
        return np.empty((0,) + out_tail, dtype)
    model = _cached_model(digest, blob)
    return model.predict(np.asarray(block), batch_size=batch_size, verbose=0)


def _default_client():
    try:
        from distributed import get_client  # (optional engine: imported on use)

        return get_client()
    except (ImportError, ValueError):
        return None


def _dask_predict(model, x, batch_size, client):
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims (batch, ...); got shape {x.shape}")
    want = (None,) + tuple(model._input_specs()[0][1][1:])
    for i, (d, w) in enumerate(zip(x.shape[1:], want[1:]), start=1):
        if w is not None and d != w:
            raise ValueError(f"x has shape {x.shape}; model {model.name!r} expects "
                             f"{want} (axis {i})")
    if any(len(c) > 1 for c in x.chunks[1:]):
        # a sequence must reach one task whole: merge the time/feature chunks
        x = x.rechunk({i: -1 for i in range(1, x.ndim)})
    probe = model.predict(np.zeros((1,) + tuple(x.shape[1:]), x.dtype), verbose=0)
    out_tail, dtype = tuple(probe.shape[1:]), probe.dtype
    blob = _model_blob(model)
    digest = hashlib.sha256(blob).hexdigest()
    client = client if client is not None else _default_client()
    ref = client.scatter(blob, broadcast=True, hash=False) if client is not None else blob
    chunks = (x.chunks[0],) + tuple((d,) for d in out_tail)
    n_in, n_out = x.ndim, 1 + len(out_tail)
    kw = {}
    if n_in > 1:
        kw["drop_axis"] = list(range(1, n_in))
    if n_out > 1:
        kw["new_axis"] = list(range(1, n_out))
    return x.map_blocks(_predict_block, ref, digest, batch_size, out_tail, dtype,
                        chunks=chunks, dtype=dtype, meta=np.empty((0,) * n_out, dtype), **kw)


def _model_blob(model):
    return saving.model_to_bytes(model, include_optimizer=False)


class RayPredictor:
    """A Ray Data actor that scores batches with a cylstm model, loaded once per actor.

    Use it directly::

        ds.map_batches(RayPredictor, fn_constructor_kwargs={"model": model},
                       compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
                       batch_format="numpy")

    Parameters
    ----------
    model : cylstm model, ray.ObjectRef of one, or bytes of ``model_to_bytes``
    column : str
        The column holding the sequences (``"data"`` for ``ray.data.from_numpy``).
    batch_size : int, optional
        ``model.predict``'s batch size.
    output_column : str
        Where the predictions go (``"predictions"``).

    The actor runs cylstm on the CPUs Ray assigned it (``num_cpus``).
    """

    def __init__(self, model, column="data", batch_size=None, output_column="predictions"):
        try:
            import ray  # (optional engine: imported on use)

            if isinstance(model, ray.ObjectRef):
                model = ray.get(model)
        except ImportError:
            pass
        if isinstance(model, (bytes, bytearray, memoryview)):
            model = saving.model_from_bytes(model, compile=False)
        _check_model(model)
        self.model = model
        self.column = column
        self.batch_size = batch_size
        self.output_column = output_column
        _set_worker_threads(again=True)  # an actor: its own num_cpus

    def __call__(self, batch):
        if self.column not in batch:
            raise ValueError(f"the batch has no column {self.column!r}; columns: "
                             f"{sorted(batch)} (pass column=)")
        data = batch[self.column]
        if data.dtype == object:  # ragged or list-typed columns arrive as arrays of arrays
            data = np.stack(list(data)) if len(data) else data
        data = np.asarray(data)
        if data.shape[0] == 0:
            probe_shape = (0,) + tuple(self.model.output_shape[1:])
            preds = np.empty(tuple(0 if d is None else d for d in probe_shape), self.model.dtype)
        else:
            preds = self.model.predict(data, batch_size=self.batch_size, verbose=0)
        out = dict(batch)
        out[self.output_column] = preds
        return out


def _ray_compute(concurrency, compute, num_cpus):
    """The actor pool ``map_batches(compute=)`` takes, from ``predict``'s keywords."""
    import ray  # (optional engine: imported on use)
    import ray.data  # (optional engine: imported on use)

    if compute is not None:
        if concurrency is not None:
            raise TypeError(f"pass concurrency= (a number of actors) or compute= (a "
                            f"ray.data.ActorPoolStrategy), not both; got concurrency="
                            f"{concurrency!r} and compute={compute!r}")
        if not isinstance(compute, ray.data.ActorPoolStrategy):
            # RayPredictor is a class: Ray Data runs it only in an actor pool
            raise TypeError(f"compute must be a ray.data.ActorPoolStrategy; got "
                            f"{type(compute).__module__}.{type(compute).__name__}")
        return compute
    if concurrency is None:
        cpus = ray.cluster_resources().get("CPU", 1)
        concurrency = max(1, int(cpus // num_cpus))
    elif isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive int (the number of scoring actors); "
                         f"got {concurrency!r}")
    # compute=, not map_batches(concurrency=): Ray 2.51 deprecated concurrency= (it logs a
    # warning on every call) in favour of a compute strategy
    return ray.data.ActorPoolStrategy(size=concurrency)


def _ray_predict(model, ds, batch_size, column, concurrency, compute, num_cpus):
    import ray  # (optional engine: imported on use)

    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus <= 0:
        raise ValueError(f"num_cpus must be > 0; got {num_cpus!r}")
    compute = _ray_compute(concurrency, compute, num_cpus)
    ref = ray.put(_model_blob(model))
    out = ds.map_batches(RayPredictor, fn_constructor_kwargs={
        "model": ref, "column": column, "batch_size": batch_size},
        compute=compute, num_cpus=num_cpus, batch_format="numpy")
    # rows come back in the input's order (actors may finish batches out of order)
    out.context.execution_options.preserve_order = True
    return out


# ---------------------------------------------------------------------------- fit
# One driver loop (_DataParallelFit) over two small backends that hold the replicas:
# _DaskBackend (one replica per Dask worker, in the worker's _REPLICAS) and _RayBackend
# (one replica per Ray actor).  A backend places the replicas and the data once and then
# runs one global step at a time: step(shards, g_prev) -> [(samples, gradient, logs,
# compute seconds)], one tuple per replica, in the replicas' order.
_FIT_KEYWORDS = {"batch_size", "epochs", "verbose", "callbacks", "shuffle", "sample_weight",
                 "class_weight", "initial_epoch", "validation_data", "validation_freq",
                 "validation_batch_size"}
_RAY_KEYWORDS = {"num_workers", "num_cpus"}


def _apply_update(model, g):
    """The optimizer step of ``Trainer._train_step`` with the averaged gradient ``g``."""
    model._flat_grad[...] = g
    opt = model.optimizer
    opt.update(model._flat, model._flat_grad,
               model._segments if getattr(opt, "clipnorm", None) else None)
    for layer in model._constraint_layers:
        layer._apply_constraints()
    if model._on_device:
        model._weights_changed()


def _replica_model(blob, again=False):
    """A replica of the driver's model (optimizer state included), ready to step."""
    _set_worker_threads(again)

    model = saving.model_from_bytes(blob)
    model._ensure_bound()
    return model


def _replica_info():
    return {"pid": os.getpid(), "threads": cylstm.get_num_threads()}


def _replica_step(model, data, idx, g_prev):
    """Apply the previous averaged step, then (samples, gradient, logs, seconds) of a shard.

    ``seconds`` is the replica's own compute time for the call, so that the driver can
    tell its waiting apart from the replicas' work.
    """
    t0 = time.perf_counter()
    if g_prev is not None:
        _apply_update(model, g_prev)
    if idx is None:  # an empty shard (a batch smaller than the replicas)
        return 0, None, None, time.perf_counter() - t0
    xs, ys, sws = data
    xs = [a[idx] for a in xs]
    ys = [a[idx] for a in ys]
    sws = [None if w is None else w[idx] for w in sws]
    try:
        preds, masks = model._forward_values(xs, True)
        loss, parts, dys = model._compute_loss(ys, preds, masks, sws, True)
        if model._reg_layers:
            loss += model._regularization()
        model._backward_values(dys)
    except BaseException:
        model._clear_caches()
        raise
    vals = model._batch_logs(loss, parts, ys, preds)
    return len(xs[0]), model._flat_grad.copy(), vals, time.perf_counter() - t0


# Dask: the replicas live in each worker process's _REPLICAS, under the fit's key.
def _dp_init(key, blob):
    _REPLICAS[key] = _replica_model(blob)
    return _replica_info()


def _dp_drop(key):
    _REPLICAS.pop(key, None)


def _dp_step(key, data, idx, g_prev):
    model = _REPLICAS.get(key)
    if model is None:
        raise RuntimeError("this worker holds no replica for the fit (it was restarted)")
    return _replica_step(model, data, idx, g_prev)


class _DaskBackend:
    """One replica on every worker of a Dask client; tasks pinned to their worker."""

    engine = "dask"

    def __init__(self, client):
        self.client = client
        self.workers = []
        self.key = f"cylstm-fit-{os.getpid()}-{id(self)}-{time.monotonic_ns()}"

    def start(self, blob, data):
        workers = sorted(self.client.scheduler_info()["workers"])
        if not workers:
            raise RuntimeError("the Dask cluster has no workers")
        self.workers = workers
        ref = self.client.scatter(blob, broadcast=True, hash=False)
        self.data = self.client.scatter(data, broadcast=True, hash=False)
        return self._gather([self.client.submit(_dp_init, self.key, ref, workers=[w],
                                                pure=False, allow_other_workers=False)
                             for w in workers])

    def step(self, shards, g_prev):
        return self._gather([self.client.submit(_dp_step, self.key, self.data, idx, g_prev,
                                                workers=[w], pure=False,
                                                allow_other_workers=False)
                             for w, idx in zip(self.workers, shards)])

    def close(self):
        if not self.workers:
            return
        try:
            self.client.run(_dp_drop, self.key, workers=self.workers)
        except Exception:  # noqa: BLE001, S110 - a dead worker holds no replica to drop
            pass

    def _gather(self, futs):
        """Results of ``futs``; fails when a worker they are pinned to leaves the cluster."""
        from distributed import wait  # (optional engine: imported on use)

        while True:
            try:
                wait(futs, timeout=0.5)
                return self.client.gather(futs)
            except TimeoutError:
                pass
            alive = set(self.client.scheduler_info()["workers"])
            gone = [w for w in self.workers if w not in alive]
            if gone:
                for f in futs:
                    f.cancel()
                raise RuntimeError(f"worker(s) {gone} left the cluster during the fit")


class _RayReplica:
    """One replica of a Ray fit, held by its own actor (see _ray_replica_class)."""

    def __init__(self):
        self.model = self.data = None

    def init(self, blob, data):
        # Ray resolves the object refs passed as arguments: blob and data arrive as values,
        # fetched once per actor from the object store
        self.model = _replica_model(blob, again=True)  # an actor: its own num_cpus
        self.data = data
        return _replica_info()

    def info(self):
        return _replica_info()

    def step(self, idx, g_prev):
        return _replica_step(self.model, self.data, idx, g_prev)


_ray_replica_cls = None


def _ray_replica_class():
    global _ray_replica_cls
    if _ray_replica_cls is None:
        import ray  # (optional engine: imported on use)

        # no restarts: a replica that died lost its place in the steps, so the fit fails
        _ray_replica_cls = ray.remote(max_restarts=0, max_task_retries=0)(_RayReplica)
    return _ray_replica_cls


class _RayBackend:
    """``num_workers`` actors of ``num_cpus`` CPUs each, one replica per actor."""

    engine = "ray"

    def __init__(self, num_workers, num_cpus):
        self.num_workers, self.num_cpus = num_workers, num_cpus
        self.actors = []
        self.key = f"cylstm-fit-{os.getpid()}-{id(self)}-{time.monotonic_ns()}"

    def start(self, blob, data):
        import ray  # (optional engine: imported on use)

        cls = _ray_replica_class()
        blob_ref, data_ref = ray.put(blob), ray.put(data)
        for i in range(self.num_workers):
            # named, so that `ray list actors` shows whose they are
            self.actors.append(cls.options(num_cpus=self.num_cpus,
                                           name=f"{self.key}-{i}").remote())
        return self._get([a.init.remote(blob_ref, data_ref) for a in self.actors])

    def step(self, shards, g_prev):
        return self._get([a.step.remote(idx, g_prev) for a, idx in zip(self.actors, shards)])

    def close(self):
        import ray  # (optional engine: imported on use)

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001, S110 - an actor that is gone needs no kill
                pass
        self.actors = []

    def _get(self, refs):
        import ray  # (optional engine: imported on use)

        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"a Ray actor holding a replica died during the fit "
                               f"({first})") from e


def _is_dask_client(client):
    mod = sys.modules.get("distributed")
    return mod is not None and isinstance(client, mod.Client)


def _ray_backend(num_workers, num_cpus):
    try:
        import ray  # (optional engine: imported on use)
    except ImportError as e:
        raise ImportError("distributed.fit(client='ray') needs Ray: pip install cylstm[ray]") \
            from e
    num_cpus = 1 if num_cpus is None else num_cpus
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus <= 0:
        raise ValueError(f"num_cpus must be > 0; got {num_cpus!r}")
    if not ray.is_initialized():
        ray.init()  # as ray.put and Ray Data do: a local Ray when none is running
    cpus = ray.cluster_resources().get("CPU", 0)
    if num_workers is None:
        num_workers = max(1, int(cpus // num_cpus))
    elif isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int; got {num_workers!r}")
    if num_workers * num_cpus > cpus:
        # the actors would wait for CPUs the cluster does not have, and the fit would hang
        raise ValueError(f"num_workers={num_workers} actors of num_cpus={num_cpus} need "
                         f"{num_workers * num_cpus:g} CPUs; the Ray cluster has {cpus:g}")
    return _RayBackend(num_workers, num_cpus)


def fit(model, x, y=None, *, client, epochs=1, batch_size=None, num_workers=None,
        num_cpus=None, **kwargs):
    """Synchronous data-parallel ``model.fit`` on a Dask cluster or on Ray.

    Every worker holds a replica of ``model`` and gets a shard of every global
    batch of ``batch_size`` samples (split as evenly as the samples allow; a
    shard may be smaller or, for a batch smaller than the workers, empty).
    Each computes its shard's gradient; the driver averages them weighted by
    the samples each shard holds, and every replica and the driver's model
    apply the same optimizer step.  The averaged gradient is the full batch's
    (the loss is a mean over the batch), so in float64 with ``shuffle=False``
    the weights equal ``model.fit`` in one process to rounding.  Callbacks run
    on the driver, after each global step, on the driver's model.

    Parameters
    ----------
    model : compiled cylstm model
    x, y : arrays (or lists/dicts of arrays, one per input/output)
    client : distributed.Client or "ray"
        A Dask client: one replica on every worker of its cluster.  ``"ray"``:
        ``num_workers`` Ray actors on the Ray cluster this process is connected
        to (``ray.init()`` first; without it a local Ray is started).
    epochs, batch_size, verbose, callbacks, shuffle, sample_weight, class_weight,
    initial_epoch, validation_data, validation_freq, validation_batch_size
        As :meth:`cylstm.Model.fit` (validation runs on the driver).
    num_workers : int, optional
        Ray only: the number of replicas (actors).  Default: the cluster's CPUs
        divided by ``num_cpus``, as :func:`predict`'s ``concurrency``.
    num_cpus : int or float, optional
        Ray only: CPUs each actor reserves, and the cylstm threads it runs on
        (default 1).

    Returns
    -------
    History
        As ``model.fit``'s, plus ``history.timing``: a dict with ``engine``,
        ``workers``, ``threads`` (per replica), ``steps``, ``wait_s`` (the driver's
        time waiting for the replicas' results), ``compute_s`` (of that, the
        slowest replica's own compute time, summed over the steps) and
        ``communication_s`` (the rest: sending, scheduling, receiving).

    Raises
    ------
    RuntimeError
        A worker or actor died or a task failed; the model is left exactly as it
        was before the call (weights and optimizer state).
    TypeError
        ``client`` is neither a Dask client nor ``"ray"``, or a keyword is unknown.
    """
    on_ray = isinstance(client, str) and client == "ray"
    if not on_ray and not _is_dask_client(client):
        raise TypeError(f"client must be a dask distributed.Client or 'ray'; got "
                        f"{type(client).__module__}.{type(client).__name__}")
    given = [k for k, v in (("num_workers", num_workers), ("num_cpus", num_cpus))
             if v is not None]
    if given and not on_ray:
        raise TypeError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to "
                        "client='ray' only; a Dask fit holds one replica on every worker of "
                        "the client's cluster")
    unknown = set(kwargs) - _FIT_KEYWORDS
    if unknown:
        raise TypeError(f"distributed.fit got unsupported keyword(s) {sorted(unknown)}; it "
                        f"takes {sorted(_FIT_KEYWORDS | _RAY_KEYWORDS)}")
    fitter = _DataParallelFit(model)  # checks the model before any engine is touched
    backend = _ray_backend(num_workers, num_cpus) if on_ray else _DaskBackend(client)
    return fitter.run(backend, x, y, epochs, batch_size, **kwargs)


class _DataParallelFit:
    """The driver's loop of a data-parallel fit, the same for every backend."""

    def __init__(self, model):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a cylstm model; got {type(model).__name__}")
        model._require_compiled("distributed.fit")
        model._refuse_quantized("distributed.fit")
        self.model = model

    def run(self, backend, x, y, epochs, batch_size, verbose="auto", callbacks=None,
            shuffle=True, sample_weight=None, class_weight=None, initial_epoch=0,
            validation_data=None, validation_freq=1, validation_batch_size=None):
        m = self.model
        batch_size = 32 if batch_size is None else _check_int("batch_size", batch_size, 1)
        epochs = _check_int("epochs", epochs, 0)
        initial_epoch = _check_int("initial_epoch", initial_epoch, 0)
        verbose = m._verbose(verbose)
        xs = m._prep_inputs(x)
        m._ensure_built_inputs(xs)
        n = xs[0].shape[0]
        ys = m._prep_targets(y, n)
        for a in xs:
            m._check_finite("x", a)
        for a in ys:
            m._check_finite("y", a)
        sws = m._prep_sample_weights(ys, n, sample_weight, class_weight)
        sws = list(sws) if sws is not None else [None] * len(ys)
        m._ensure_bound()
        val = None
        if validation_data is not None:
            val = _da.get_validation_adapter(m, validation_data,
                                             validation_batch_size or batch_size)
        before = saving.model_to_bytes(m)
        self.backend = backend
        self.timing = {"engine": backend.engine, "workers": 0, "threads": [], "steps": 0,
                       "wait_s": 0.0, "compute_s": 0.0, "communication_s": 0.0}
        try:
            infos = backend.start(before, (xs, ys, sws))
            self.timing["workers"] = len(infos)
            self.timing["threads"] = [i["threads"] for i in infos]
            history = self._epochs(len(infos), n, epochs, batch_size, verbose, callbacks,
                                   shuffle, initial_epoch, val, validation_freq, _cbm)
        except BaseException as e:
            _restore(m, before)
            if isinstance(e, (KeyboardInterrupt, FloatingPointError)):
                raise
            raise RuntimeError(f"distributed.fit failed ({type(e).__name__}: {e}); the model "
                               "was left as it was before the call") from e
        finally:
            backend.close()
        t = self.timing
        t["communication_s"] = max(0.0, t["wait_s"] - t["compute_s"])
        history.timing = t
        return history

    def _epochs(self, nw, n, epochs, batch_size, verbose, callbacks, shuffle, initial_epoch,
                val, validation_freq, _cbm):
        m = self.model
        steps = -(-n // batch_size)
        history = _cbm.History()
        cb_list = list(callbacks or [])
        cbl = _cbm.CallbackList(cb_list + [history], model=m,
                                params={"epochs": epochs, "steps": steps, "verbose": verbose})
        m.stop_training = False
        m.history = history
        names = m.metrics_names
        cbl.on_train_begin()
        logs = {}
        pending = None   # the averaged gradient the replicas have not applied yet
        rng = m._shuffle_generator() if shuffle else None
        timing = self.timing
        for epoch in range(initial_epoch, epochs):
            cbl.on_epoch_begin(epoch)
            if verbose == 1:
                print(f"Epoch {epoch + 1}/{epochs}")
            bar = Progbar(steps, verbose) if verbose else None
            order = rng.permutation(n) if rng is not None else None
            sums, seen = None, 0
            for b in range(steps):
                lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
                cbl.on_train_batch_begin(b)
                bounds = np.linspace(lo, hi, nw + 1).round().astype(int)
                shards = []
                for s0, s1 in zip(bounds[:-1], bounds[1:]):
                    if s1 <= s0:
                        shards.append(None)
                    elif order is not None:
                        shards.append(order[s0:s1])
                    else:
                        shards.append(slice(int(s0), int(s1)))
                t0 = time.perf_counter()
                res = self.backend.step(shards, pending)
                timing["wait_s"] += time.perf_counter() - t0
                timing["compute_s"] += max(r[3] for r in res)
                timing["steps"] += 1
                k = sum(r[0] for r in res)
                g = sum(r[1] * (r[0] / k) for r in res if r[0])
                vals = [sum(r[2][i] * r[0] for r in res if r[0]) / k
                        for i in range(len(names))]
                if not np.isfinite(vals[0]) or not np.all(np.isfinite(g)):
                    raise FloatingPointError(f"non-finite loss or gradient at epoch "
                                             f"{epoch + 1}, batch {b}")
                # replicas apply the step with their next shard; the driver applies it now
                _apply_update(m, g)
                pending = g
                sums = [v * k for v in vals] if sums is None else [
                    s + v * k for s, v in zip(sums, vals)]
                seen += k
                blogs = {nm: s / seen for nm, s in zip(names, sums)}
                if bar is not None:
                    bar.update(b + 1, blogs)
                cbl.on_train_batch_end(b, blogs)
                if m.stop_training:
                    break
            logs = {nm: s / seen for nm, s in zip(names, sums)} if sums else {
                nm: float("nan") for nm in names}
            if val is not None and (epoch + 1 - initial_epoch) % validation_freq == 0:
                cbl.on_test_begin()
                vres = m._evaluate_adapter(val)
                cbl.on_test_end(dict(zip(names, vres)))
                for nm, v in zip(m.metrics_names, vres):
                    logs["val_" + nm] = v
            if bar is not None:
                bar.update(bar.target, logs, finalize=True)
            cbl.on_epoch_end(epoch, logs)
            if m.stop_training:
                break
        cbl.on_train_end(logs)
        return history


def _restore(model, blob):
    """Put back the weights and optimizer state ``blob`` holds, in place."""

    saved = saving.model_from_bytes(blob)
    model.set_weights(saved.get_weights())
    if saved.optimizer is not None and model.optimizer is not None:
        model.optimizer.set_state(saved.optimizer.get_state())
