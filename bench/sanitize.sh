#!/usr/bin/env bash
# Build cylstm with bounds checks and AddressSanitizer/UBSan in a throw-away copy
# of the repository and run the core tests under it.
#
#   bench/sanitize.sh                          the core test files
#   bench/sanitize.sh tests -m "not slow" --ignore=tests/test_cuda_build.py
#                                              the whole suite (nvcc cannot run with
#                                              libasan preloaded; the RSS leak tests skip
#                                              themselves: ASan's quarantine holds memory)
#
# The copy is the committed tree (git archive HEAD) plus the working tree's tests/,
# so the in-place build of the checkout you run it from is never touched.
# CPython itself is not built with ASan: the gcc runtime is LD_PRELOADed, and leak
# detection is off (the interpreter keeps allocations alive at exit on purpose).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${CYLSTM_SANITIZE_DIR:-/tmp/cylstm_sanitize}"
rm -rf "$DEST"
mkdir -p "$DEST"
git -C "$REPO" archive --format=tar HEAD | tar -x -C "$DEST"
cp -r "$REPO/tests/." "$DEST/tests/"
cd "$DEST"
# cylstm/cuda is built only with CYLSTM_CUDA=1; the CPU modules are enough here.
CYLSTM_DEBUG=1 CYLSTM_SANITIZE=1 python setup.py -q build_ext --inplace >build.log 2>&1 \
    || { tail -40 build.log; exit 1; }
ASAN_LIB="$(gcc -print-file-name=libasan.so)"
UBSAN_LIB="$(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB"
# detect_leaks=0: CPython does not free everything at exit.  halt_on_error makes any
# report fail the run; UBSan prints a stack and aborts too.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONMALLOC=malloc   # let ASan see Python-side buffers (NumPy data) too
if [ "$#" -eq 0 ]; then
    set -- tests/test_lstm_kernels.py tests/test_lstm_inputs.py tests/test_math.py \
        tests/test_stream.py tests/test_layers.py tests/test_models.py tests/test_training.py \
        tests/test_optimizers.py tests/test_saving.py tests/test_fuzz.py \
        tests/test_hardening.py tests/test_concurrency.py tests/test_interrupts.py \
        -m "not slow"
fi
python -c "import cylstm._build_info as b; assert b.DEBUG, 'not a debug build'"
# A bounds error inside a noexcept kernel helper is only "ignored" by Cython (an
# unraisable exception): make it fail the run.
python -m pytest -q -p no:cacheprovider -W error::pytest.PytestUnraisableExceptionWarning "$@"
