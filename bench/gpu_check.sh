#!/usr/bin/env bash
# bench/gpu_check.sh -- the whole GPU check in one go, on a machine with an NVIDIA GPU.
#
#   bash bench/gpu_check.sh            # from anywhere; about 3-6 minutes
#
# 1. toolchain: nvcc (CUDA_HOME, PATH or the nvidia-cuda-nvcc wheel) and cuBLAS (the
#    toolkit's or the nvidia-cublas wheel); if cuBLAS is missing and pip can reach an
#    index, installs the wheels matching nvcc's CUDA major version
# 2. build in place with CYLSTM_CUDA=1 (all extensions, parallel; SASS for
#    CYLSTM_CUDA_ARCH, default "80;90", plus PTX)
# 3. the GPU tests (tests/test_cuda.py, tests/test_cuda_build.py); they must not skip
# 4. timings against torch.nn.LSTM on CUDA (cuDNN): bench/gpu_bench.py, shapes
#    (T, B, I, H) = (50, 64, 512, 512), (25, 16, 1024, 1024), (100, 32, 10, 50)
# 5. compute-sanitizer memcheck + racecheck over bench/gpu_sanitize.py (tiny shapes);
#    last, as its run time is the hardest to predict (GPU_CHECK_SANITIZE_TIMEOUT
#    seconds per tool, default 150), so a time-limited run still has the timings
#
# Output: a table on stdout; files in $OUT if set (else bench/results/): gpu_check.json
# (timings), gpu_build.log, gpu_tests.log, gpu_sanitize_*.log.  Exit status: 0 all
# passed, 1 build failed, 2 tests failed, 3 benchmark failed, 4 compute-sanitizer found
# errors.  GPU_CHECK_QUICK=1: shorter timing loops; GPU_CHECK_SANITIZE=0: no sanitizer.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
RESULTS="${OUT:-$ROOT/bench/results}"
mkdir -p "$RESULTS"
T0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - T0 ))s] $*"; }
export PYTHONUNBUFFERED=1

step "machine"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
    echo "nvidia-smi not found (no NVIDIA driver?): the GPU steps will skip"
fi
"$PY" -c "import sys, numpy, scipy, Cython; print('python', sys.version.split()[0], \
'numpy', numpy.__version__, 'scipy', scipy.__version__, 'Cython', Cython.__version__)"
if command -v nvcc >/dev/null 2>&1; then nvcc --version | tail -n 2; fi

step "toolchain"
probe_toolchain() {
    "$PY" - <<'EOF'
import sys
sys.path.insert(0, "cylstm/cuda")
import _build_cuda as b
try:
    cfg = b.cuda_config()
except b.CudaBuildError as e:
    print(e)
    sys.exit(1)
print("nvcc", cfg["nvcc"], "CUDA %d.%d" % cfg["version"], "| cuBLAS in", cfg["cublas_dir"],
      "| archs", cfg["archs"])
EOF
}
if ! probe_toolchain; then
    major=""
    if command -v nvcc >/dev/null 2>&1; then
        major=$(nvcc --version | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p')
    fi
    if [ "${major:-13}" -ge 13 ]; then
        wheels="nvidia-cublas nvidia-cuda-runtime"
        command -v nvcc >/dev/null 2>&1 || wheels="$wheels nvidia-cuda-nvcc"
    else
        wheels="nvidia-cublas-cu12 nvidia-cuda-runtime-cu12"
    fi
    echo "trying: pip install $wheels"
    timeout 240 "$PY" -m pip install -q $wheels || echo "pip install failed (offline?)"
    probe_toolchain || { echo "FAILED: no usable CUDA toolchain"; exit 1; }
fi

step "build (CYLSTM_CUDA=1, in place)"
if ! CYLSTM_CUDA=1 "$PY" setup.py build_ext --inplace -j "$(nproc 2>/dev/null || echo 4)" \
        >"$RESULTS/gpu_build.log" 2>&1; then
    tail -n 40 "$RESULTS/gpu_build.log"
    echo "FAILED: build (full log: $RESULTS/gpu_build.log)"
    exit 1
fi
grep -E "^nvcc:" "$RESULTS/gpu_build.log" | cut -c1-300
ls cylstm/cuda/_cuda*.so
"$PY" -c "import cylstm.cuda as c; print('is_available:', c.is_available(), \
c.unavailable_reason() or c.device_name())"

step "GPU tests"
"$PY" -m pytest -q -rs tests/test_cuda.py tests/test_cuda_build.py 2>&1 \
    | tee "$RESULTS/gpu_tests.log" | tail -n 25
test_rc=${PIPESTATUS[0]}
if grep -q "SKIPPED.*test_cuda.py.*CUDA backend unavailable" "$RESULTS/gpu_tests.log"; then
    echo "NOTE: the GPU tests skipped (see the reason above)"
    [ "$test_rc" -eq 0 ] && test_rc=2
fi

step "timings vs torch.nn.LSTM (cuDNN)"
quick=""
[ "${GPU_CHECK_QUICK:-0}" = "1" ] && quick="--quick"
"$PY" bench/gpu_bench.py --json "$RESULTS/gpu_check.json" $quick
bench_rc=$?
if [ "${GPU_CHECK_TF32:-1}" = "1" ] && [ $bench_rc -eq 0 ]; then
    "$PY" bench/gpu_bench.py --tf32 --quick --json "$RESULTS/gpu_check_tf32.json" \
        || bench_rc=$?
fi

step "compute-sanitizer (memcheck, racecheck) on a small workload"
san_rc=0
SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer \
    /usr/local/cuda*/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer \
    2>/dev/null | head -n 1 || true)"
if [ -n "$SAN" ] && [ "${GPU_CHECK_SANITIZE:-1}" = "1" ]; then
    for tool in memcheck racecheck; do
        if timeout "${GPU_CHECK_SANITIZE_TIMEOUT:-150}" \
                "$SAN" --tool "$tool" --error-exitcode 9 "$PY" bench/gpu_sanitize.py \
                >"$RESULTS/gpu_sanitize_$tool.log" 2>&1; then
            echo "$tool: clean ($(tail -n 1 "$RESULTS/gpu_sanitize_$tool.log"))"
        else
            san_rc=$?
            echo "$tool: FAILED (rc=$san_rc); last lines:"
            tail -n 25 "$RESULTS/gpu_sanitize_$tool.log"
        fi
    done
else
    echo "compute-sanitizer not found (or GPU_CHECK_SANITIZE=0): skipped"
fi

step "done"
echo "tests rc=$test_rc  sanitizer rc=$san_rc  bench rc=$bench_rc  results in $RESULTS"
[ "$test_rc" -ne 0 ] && exit 2
[ "$san_rc" -ne 0 ] && exit 4
[ "$bench_rc" -ne 0 ] && exit 3
exit 0
