"""The functional LSTM: NumPy arrays in, NumPy arrays out, compiled kernels inside.

All arrays are batch-first: ``x`` is (batch, time, features).  Weights use the
public Keras layout with gate blocks in the order i, f, c (= g), o:

    kernel            (input_dim, 4 * units)
    recurrent_kernel  (units, 4 * units)
    bias              (4 * units,)

PyTorch's ``weight_ih_l0`` is ``kernel.T`` and ``weight_hh_l0`` is
``recurrent_kernel.T`` (same gate order); its bias is ``bias_ih + bias_hh``.

Example
-------
>>> out = lstm_forward(x, W, U, b, training=True)
>>> grads = lstm_backward(out.cache, grad_output=dy)
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import time
from collections import namedtuple
from collections.abc import Hashable, Sequence

import numpy as np

from cylstm import _checkpoint, _config, _lstm, _packcache, _tuning
from cylstm._checkpoint import CheckpointPlan, cache_nbytes, plan_checkpoints
from cylstm._typing import ArrayLike
from cylstm._validate import (
    as_float_array,
    check_grad_out,
    check_lengths,
    check_output_grads,
    check_states,
    check_weights,
    dtype_name,
    real_array,
)
from cylstm._validate import weights_dtype as _float_dtype
from cylstm._workspace import give, take
from cylstm.quantization import round_bfloat16

__all__ = ["COMPUTE_DTYPES", "BackwardPlan", "CheckpointPlan", "ForwardPlan", "LSTMForward",
           "LSTMGrads", "as_float_array", "cache_nbytes", "lstm_backward", "lstm_forward",
           "new_weights_version", "plan_backward", "plan_checkpoints", "plan_forward"]

#: The values ``compute_dtype`` takes (:func:`lstm_forward`, :func:`plan_forward`):
#: None, "float32" or "float64" compute in the weights' dtype (a name must be it);
#: "bfloat16" runs the matrix products on operands rounded to bfloat16 with float32
#: sums (float32 weights; the mixed_bfloat16 policy, :mod:`cylstm.mixed_precision`).
COMPUTE_DTYPES = (None, "float32", "float64", "bfloat16")

#: The paths whose products run on the CPU's bf16 hardware (``compute_dtype=
#: "bfloat16"`` only): AMX tiles, or AVX512-BF16 dot products on a CPU without
#: them (:func:`cylstm._lstm.bf16_engine`); not in :data:`cylstm._tuning.PATHS`,
#: which are the float paths the tuner measures.
BF16_PATHS = ("rows_bf16", "rows_bf16_fused")

# the paths that can round h_prev to bfloat16 every step (_lstm._forward_rows)
_ROUNDING_PATHS = ("rows", "rows_fused") + BF16_PATHS

LSTMForward = namedtuple("LSTMForward", ["output", "h", "c", "cache"])
LSTMForward.__doc__ = """Result of :func:`lstm_forward`.

output : (B, T, H) when ``return_sequences`` else (B, H) (the final h)
h, c   : (B, H) final states (for each sample, the state after its last valid step)
cache  : what :func:`lstm_backward` needs (``training=True``), else None
"""
LSTMGrads = namedtuple(
    "LSTMGrads", ["dx", "dkernel", "drecurrent_kernel", "dbias", "dh0", "dc0"]
)

# Every threshold that picks a path lives in cylstm/_tuning.py, next to what it
# was measured on; they are read from there at call time (patch them there).
# A test of another module may set _LLC to replace the detected cache budget.
_LLC = None


_lstm.set_pool_spin_ns(_tuning.POOL_SPIN_NS)
_lstm.set_pool_backoff_ns(_tuning.POOL_BACKOFF_NS)
_lstm.set_steal(True, _tuning.STEAL_MIN_ROWS)

@dataclasses.dataclass(frozen=True)
class ForwardPlan:
    """How one :func:`lstm_forward` call runs, and the scratch it needs.

    path : "rows"        threads split the batch, the per-step products on BLAS
                         after one input projection x @ W for all steps;
           "rows_fused"  the same, x_t @ W computed inside each step (no gate
                         buffer in inference);
           "units"       threads split the recurrent kernel's units (packed
                         panels of U, each panel's step committed once);
           "stacked"     threads split the batch, each step [x_t, h_prev] @ packed
                         [W; U] panels (in training each panel's gates, c and
                         h_prev kept for the backward);
           "rows_bf16", "rows_bf16_fused"  "rows" / "rows_fused" with the products on
                         the bf16 hardware (``compute_dtype="bfloat16"`` only):
                         AMX tiles where the process may use them, else
                         AVX512-BF16 dot products (include/cylstm_bf16.h).
    n_threads : threads the kernel runs (batch paths: at least
        ``_tuning.MIN_ROWS_PER_THREAD`` rows each; "units": at most one per panel).
    blas_threads : threads SciPy's BLAS may use when the kernel runs serial.
    gates : shape of the gate buffer G (B, T, 4H), or None when not needed.
    z : shape of the per-step product scratch Z.
    packed : length of the packed-weight scratch (0: none).
    hs2 : shape of the second h buffer, or None.
    reason : which rule chose the path (or "tuned ..." / "forced ...").
    prepacked : the panel paths in inference: take the packed weights from the
        packed-weight cache (cylstm/_packcache.py; exact, checked each call) when
        it has them, instead of packing into ``packed`` (still the fallback).
    tile_steps : ("rows", "rows_fused") the per-step products go to BLAS as small
        tiles (``facts.blas_tiles_steps``: the BLAS has small-matrix kernels).
    panel_projection : (prepacked "units") x @ W on the packed panels, not BLAS
        (any number of rows on AVX-512, at most ``_tuning.PANEL_PROJ_MAX_ROWS``
        on other CPUs), into gates of shape (B, T, 4 H_pad) whose rows are in
        panel order (H_pad: H rounded up to whole vectors).
    bf16 : (``compute_dtype="bfloat16"``; "rows", "rows_fused" and the bf16 paths)
        the kernel rounds h_prev to bfloat16 before every recurrent product; x,
        W and U reach it rounded already (:func:`lstm_forward`), except on the
        bf16 paths in inference, whose kernel and pack round them.
    abuf : (the bf16 paths: "rows_bf16", "rows_bf16_fused", the "rows" paths with
        their products on the bf16 hardware, include/cylstm_bf16.h) shape of the
        uint16 scratch the kernel rounds its A rows into, one row per thread.
    row_slices : ("int8") the batch is cut into this many slices of rows, each run
        through all its steps on its own thread by a one-thread runner (no
        per-step meeting); 1: the threads split each step's panels.
    """

    path: str
    n_threads: int
    blas_threads: int
    gates: tuple = None
    z: tuple = ()
    packed: int = 0
    hs2: tuple = None
    reason: str = ""
    prepacked: bool = False
    panel_projection: bool = False
    tile_steps: bool = False
    bf16: bool = False
    abuf: tuple = None
    row_slices: int = 1

    @property
    def fuse(self):
        return self.path in ("rows_fused", "rows_bf16_fused")




@dataclasses.dataclass(frozen=True)
class BackwardPlan:
    """How :func:`lstm_backward` runs: ``n_threads`` split the batch (each with
    its own weight-gradient partial sum), or BLAS with ``blas_threads`` when 1."""

    n_threads: int
    blas_threads: int
    reason: str = ""
    #: the mixed_bfloat16 backward's products on the bf16 hardware (AMX tiles or
    #: AVX512-BF16 dots; U^T and W^T packed per call, dz per block of rows:
    #: _lstm._backward_rows), else emulated on BLAS and panels
    amx: bool = False
    #: (BLAS, n_threads > 1) the slices split the time loop only; the weight-gradient
    #: GEMMs after it run once over the whole batch on blas_threads
    whole_grads: bool = False
    #: (n_threads > 1) the threads split the time loop by units, every sample on
    #: each (_lstm._bu_job: the same bits as one thread), and the weight-gradient
    #: GEMMs after it run over the whole batch on blas_threads
    units: bool = False

    def units_pieces(self):
        """The kernel's ``units`` argument: 0 (no unit split) or the pieces a
        thread, _tuning.BACKWARD_UNITS_PIECES (read at call time; at least 1)."""
        return max(1, int(_tuning.BACKWARD_UNITS_PIECES)) if self.units else 0


def _path_error(path, B, H, dtype, n_threads, training, has_mask, has_lengths, reverse,
                bf16=False):
    """Why ``path`` cannot run this call (a sentence), or None when it can."""
    if path not in _tuning.PATHS + BF16_PATHS:
        return (f"unknown path {path!r}; expected one of "
                f"{', '.join(_tuning.PATHS + BF16_PATHS)}")
    if path in BF16_PATHS:
        if not bf16:
            return (f"{path!r} multiplies bfloat16 operands on the bf16 hardware: it "
                    f"takes compute_dtype='bfloat16' only")
        if _lstm.bf16_engine() is None:
            return (f"{path!r} needs AMX tiles or AVX512-BF16, and neither runs here: "
                    f"{_lstm._bf16_engine_why()}")
    if bf16 and path not in _ROUNDING_PATHS:
        return (f"compute_dtype='bfloat16' runs on the BLAS paths "
                f"({', '.join(repr(p) for p in _ROUNDING_PATHS)}); {path!r} multiplies on packed "
                f"float32 panels, which do not round h_prev to bfloat16 each step")
    if path in ("rows_fused", "rows_bf16_fused") and has_lengths:
        return (f"{path!r} cannot take lengths (every sample is at its own time index, "
                "so x_t is not one slice of x)")
    if path == "units" and has_mask and min(n_threads, _n_panels(H, dtype)) > 1:
        return ("'units' cannot take a recurrent mask on more than one thread (the threads "
                "share h_prev across panels)")
    if path == "stacked" and has_lengths and reverse:
        return "'stacked' cannot run lengths backwards (go_backwards with lengths)"
    return None


def _n_panels(H, dtype):
    span = _panel_units(dtype)
    return -(-H // span)


def _model_path(B, T, I, H, dtype, n_total, nt, training, has_mask, has_lengths, reverse,
                facts, bf16=False):
    """The model rules (see cylstm/_tuning.py for what each threshold measured):
    (path, reason).  ``bf16``: only the BLAS paths' rules (7 and 8) apply."""
    t = _tuning
    budget = facts.llc_budget if _LLC is None else _LLC
    item = dtype.itemsize
    u_bytes = H * 4 * H * item
    wu_bytes = (I + H) * 4 * H * item
    fits = wu_bytes * t.FIT_LLC_FRACTION <= budget
    if bf16 and (facts.amx_bf16 or facts.bf16_dots):
        rows = B // _amx_threads(B, n_total, facts.amx_bf16)
        w_bytes = I * 4 * H * 2
        on = "AMX tiles" if facts.amx_bf16 else "AVX512-BF16 dot products (no AMX)"
        if not has_lengths and rows >= t.AMX_FUSE_MIN_ROWS and w_bytes <= t.AMX_FUSE_MAX_BYTES:
            return "rows_bf16_fused", (f"compute_dtype='bfloat16' on {on}: {rows} rows "
                                       f"per thread >= AMX_FUSE_MIN_ROWS and bf16 W "
                                       f"<= AMX_FUSE_MAX_BYTES: x_t @ W each step")
        why = ("lengths" if has_lengths else
               f"{rows} rows per thread < AMX_FUSE_MIN_ROWS" if rows < t.AMX_FUSE_MIN_ROWS
               else f"bf16 W ({w_bytes >> 10} KiB) > AMX_FUSE_MAX_BYTES")
        return "rows_bf16", (f"compute_dtype='bfloat16' on {on}: x @ W for all steps "
                             f"first ({why})")
    if bf16:
        path, reason = _rows_path(B, nt, has_lengths, fits, wu_bytes, training, facts)
        return path, (f"compute_dtype='bfloat16' emulated (no AMX-BF16 or AVX512-BF16 "
                      f"here; BLAS paths only): {reason}")
    panels_fast = facts.isa_level == 2
    if not has_mask and H > _panel_units(dtype):  # two panels at least
        if n_total >= 2 and nt == 1 and u_bytes >= t.PANEL_TEAM_MIN_BYTES:
            return "units", (f"batch {B} too small to split and U ({u_bytes} B) >= "
                             f"PANEL_TEAM_MIN_BYTES: threads split the units")
        if panels_fast and t.PANEL_SPLIT_LLC_FRACTION * u_bytes >= budget:
            return "units", (f"U ({u_bytes >> 10} KiB) >= 1/{t.PANEL_SPLIT_LLC_FRACTION} of "
                             f"the LLC budget ({budget >> 10} KiB): panels stay in cache")
    if (facts.isa_level == 1 and not facts.blas_tiles_steps and n_total == 1 and B == 1
            and not training and H > _panel_units(dtype)
            and u_bytes >= t.UNITS_SERIAL_B1_MIN_BYTES):
        return "units", (f"one thread, batch 1, AVX2 with BLAS ({facts.blas_core}) that packs "
                         f"every per-step call: U ({u_bytes >> 10} KiB) >= "
                         f"UNITS_SERIAL_B1_MIN_BYTES streams faster through the panel kernel "
                         f"than through its gemv")
    if panels_fast and n_total == 1 and H > _panel_units(dtype):
        if B <= t.UNITS_SERIAL_MAX_BATCH:
            return "units", (f"one thread, batch {B} <= UNITS_SERIAL_MAX_BATCH: the panel "
                             f"kernel's step beats BLAS's")
        if training and H >= t.UNITS_SERIAL_MIN_UNITS:
            return "units", (f"one thread, training, {H} units >= UNITS_SERIAL_MIN_UNITS: "
                             f"six-row panel blocks beat BLAS's per-step tiles")
    if (panels_fast and not training and B // nt >= t.STACKED_MIN_ROWS
            and H >= t.STACKED_MIN_UNITS and fits and not (has_lengths and reverse)):
        return "stacked", (f"{B // nt} rows per thread >= STACKED_MIN_ROWS, {H} units >= "
                           f"STACKED_MIN_UNITS, [W; U] in 1/{t.FIT_LLC_FRACTION} of the "
                           f"LLC budget")
    if (facts.isa_level >= 1 and not facts.blas_tiles_steps and not training
            and B // nt >= t.MIN_ROWS_PER_THREAD and not (has_lengths and reverse)):
        if wu_bytes <= t.STACKED_PACKING_BLAS_MAX_BYTES:
            return "stacked", (f"BLAS ({facts.blas_core}) packs every per-step call: {B // nt} "
                               f"rows per thread >= MIN_ROWS_PER_THREAD on packed [W; U] "
                               f"({wu_bytes >> 10} KiB <= STACKED_PACKING_BLAS_MAX_BYTES)")
        if (wu_bytes <= t.STACKED_PACKING_BLAS_WIDE_MAX_BYTES
                and B // nt >= t.STACKED_WIDE_MIN_ROWS):
            return "stacked", (f"BLAS ({facts.blas_core}) packs every per-step call: {B // nt} "
                               f"rows per thread >= STACKED_WIDE_MIN_ROWS on packed [W; U] "
                               f"({wu_bytes >> 10} KiB <= "
                               f"STACKED_PACKING_BLAS_WIDE_MAX_BYTES)")
    if (facts.isa_level >= 1 and not facts.blas_tiles_steps and not training
            and 2 <= B < t.MIN_ROWS_PER_THREAD and not (has_lengths and reverse)):
        if (H > _panel_units(dtype) and u_bytes >= t.SMALL_BATCH_UNITS_MIN_BYTES
                and (not has_mask or n_total == 1)):
            return "units", (f"BLAS ({facts.blas_core}) packs every per-step call: batch "
                             f"{B} < MIN_ROWS_PER_THREAD on U's panels (U {u_bytes >> 10} "
                             f"KiB >= SMALL_BATCH_UNITS_MIN_BYTES)")
        if wu_bytes <= t.STACKED_PACKING_BLAS_MAX_BYTES:
            return "stacked", (f"BLAS ({facts.blas_core}) packs every per-step call: batch "
                               f"{B} < MIN_ROWS_PER_THREAD on one thread, packed [W; U]")
    if (facts.isa_level == 1 and not facts.blas_tiles_steps and training
            and B // nt >= t.STACKED_TRAIN_MIN_ROWS and not (has_lengths and reverse)
            and wu_bytes <= (t.STACKED_TRAIN_MAX_BYTES if nt == 1
                             else t.STACKED_TRAIN_TEAM_MAX_BYTES)):
        return "stacked", (f"training, AVX2, BLAS ({facts.blas_core}) packs every per-step "
                           f"call: {B // nt} rows per thread >= STACKED_TRAIN_MIN_ROWS on "
                           f"packed [W; U] ({wu_bytes >> 10} KiB <= STACKED_TRAIN_"
                           f"{'' if nt == 1 else 'TEAM_'}MAX_BYTES), the gates kept per panel")
    if (facts.isa_level >= 1 and not facts.blas_tiles_steps and training
            and H > _panel_units(dtype)
            and (not has_mask or min(n_total, _n_panels(H, dtype)) == 1)):
        why = None
        if B <= t.UNITS_TRAIN_MAX_BATCH:
            why = f"batch {B} <= UNITS_TRAIN_MAX_BATCH"
        elif (B <= t.UNITS_TRAIN_WIDE_MAX_BATCH
              and (n_total == 1 or u_bytes >= t.UNITS_TRAIN_TEAM_MIN_BYTES)):
            why = (f"batch {B} <= UNITS_TRAIN_WIDE_MAX_BATCH"
                   + ("" if n_total == 1 else ", U >= UNITS_TRAIN_TEAM_MIN_BYTES"))
        elif (B <= t.UNITS_TRAIN_L2_MAX_BATCH and u_bytes > facts.l2_per_core
              and (n_total == 1 or u_bytes >= t.UNITS_TRAIN_TEAM_MIN_BYTES)):
            why = (f"batch {B} <= UNITS_TRAIN_L2_MAX_BATCH and U ({u_bytes >> 10} KiB) > a "
                   f"core's L2")
        if why is not None:
            return "units", (f"BLAS ({facts.blas_core}) packs every per-step call and "
                             f"training cannot take the stacked path: {why}, on U's panels")
    if (facts.isa_level >= 1 and H > _panel_units(dtype) and u_bytes > facts.l2_per_core
            and u_bytes >= t.UNITS_L2_MIN_BYTES
            and (n_total >= 2 or 2 <= B <= (t.UNITS_L2_SERIAL_MAX_BATCH if training
                                            else t.UNITS_L2_SERIAL_MAX_BATCH_INFERENCE))
            and (not has_mask or min(n_total, _n_panels(H, dtype)) == 1)):
        return "units", (f"U ({u_bytes >> 10} KiB) > a core's L2 "
                         f"({facts.l2_per_core >> 10} KiB): split by batch, every thread "
                         f"would stream all of it each step")
    return _rows_path(B, nt, has_lengths, fits, wu_bytes, training, facts)


def _rows_path(B, nt, has_lengths, fits, wu_bytes, training, facts):
    """Rules 8 and 9 of :func:`plan_forward`: "rows_fused" or "rows", (path, reason)."""
    t = _tuning
    if training and not facts.blas_tiles_steps:
        return "rows", (f"training where BLAS ({facts.blas_core}) packs every per-step "
                        f"call: the fused step is no faster (UNITS_TRAIN_WIDE_MAX_BATCH)")
    if (not has_lengths and B // nt >= t.FUSE_MIN_ROWS and fits
            and wu_bytes <= t.FUSE_MAX_BYTES):
        return "rows_fused", (f"{B // nt} rows per thread >= FUSE_MIN_ROWS, [W; U] in "
                              f"1/{t.FIT_LLC_FRACTION} of the LLC budget and <= "
                              f"FUSE_MAX_BYTES")
    if not fits:
        return "rows", f"[W; U] ({wu_bytes >> 10} KiB) too big to read every step: BLAS"
    return "rows", "default: batch split, BLAS per step"


def _amx_threads(B, n_total, amx=True):
    """Threads a bf16 path splits a batch of B over: slices of at least
    ``_tuning.AMX_MIN_ROWS_PER_THREAD`` rows (an A tile's 16) on AMX tiles, of
    ``_tuning.BF16_DOTS_MIN_ROWS_PER_THREAD`` on AVX512-BF16 dots (``amx`` False)."""
    least = _tuning.AMX_MIN_ROWS_PER_THREAD if amx else _tuning.BF16_DOTS_MIN_ROWS_PER_THREAD
    return max(1, min(n_total, B // least))


def _bf16_products(compute_dtype, dtype):
    """Validate ``compute_dtype`` (see :data:`COMPUTE_DTYPES`) for weights of ``dtype``:
    True for bfloat16 products, False for plain ones in ``dtype``."""
    dtype = np.dtype(dtype)
    if compute_dtype is None:
        return False
    name = compute_dtype
    if not isinstance(name, str):
        try:
            name = np.dtype(compute_dtype).name
        except TypeError:
            name = None
    if name not in COMPUTE_DTYPES[1:]:
        raise ValueError(f"compute_dtype must be one of {list(COMPUTE_DTYPES)}; got "
                         f"{compute_dtype!r}")
    if name == "bfloat16":
        if dtype != np.float32:
            raise ValueError(f"compute_dtype='bfloat16' needs float32 weights (its float32 "
                             f"master copy); got {dtype.name} weights")
        return True
    if name != dtype.name:
        raise ValueError(f"compute_dtype={name!r} with {dtype.name} weights: the kernels "
                         f"compute in the weights' dtype (pass None or {dtype.name!r}, or "
                         f"cast the weights)")
    return False


#: The path of ``weights_dtype="int8"`` calls (not one of :data:`cylstm._tuning.PATHS`:
#: it is the only path such a call can take, so there is nothing to tune).
INT8_PATH = "int8"


def _int8_products(weights_dtype, dtype, training=False, bf16=False):
    """Validate ``weights_dtype`` (None or "int8") for a call with weights of ``dtype``:
    True for int8 products."""
    if weights_dtype is None:
        return False
    if not (isinstance(weights_dtype, str) and weights_dtype.lower() == "int8"):
        raise ValueError(f"weights_dtype must be None or 'int8'; got {weights_dtype!r}")
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"weights_dtype='int8' needs float32 weights (int8 products "
                         f"scaled in float32); got weights of dtype {np.dtype(dtype).name}")
    if training:
        raise ValueError("weights_dtype='int8' is for inference (training=False): train in "
                         "float32 or mixed_bfloat16 and quantize after")
    if bf16:
        raise ValueError("weights_dtype='int8' and compute_dtype='bfloat16' are two "
                         "precisions for the same products; give one")
    return True


def int8_kernel_pays(B, H, n_threads=1):
    """Whether a quantized LSTM layer (``model.quantize("int8")``) runs a batch of B
    on the int8 kernel, ``weights_dtype="int8"`` (True), or as the float32 products
    on its int8 values (False: batches of ``_tuning.INT8_FLOAT_MIN_ROWS`` or more
    with at most ``_tuning.INT8_FLOAT_MAX_UNITS`` units on one thread,
    ``INT8_FLOAT_MAX_UNITS_TEAM`` on several, where that is faster).  Both compute
    the int8 model, within the int8 kernel's int16 rows of each other."""
    most = _tuning.INT8_FLOAT_MAX_UNITS if n_threads <= 1 else _tuning.INT8_FLOAT_MAX_UNITS_TEAM
    return not (B >= _tuning.INT8_FLOAT_MIN_ROWS and H <= most)


def _int8_plan(B, I, H, n_total, force=None):
    """Rule 0 of :func:`plan_forward`: the "int8" path (one step is one streaming
    runner step).  Several threads once the int8 weights' bytes times the batch
    reach ``_tuning.INT8_SEQ_PARALLEL_MIN_BYTES``: a slice of the batch each where
    that gives each at least ``_tuning.INT8_ROW_MIN_ROWS`` rows, else splitting
    each step's panels (at most one thread per panel)."""
    if force is not None:
        path = force.path if isinstance(force, ForwardPlan) else force
        if path != INT8_PATH:
            raise ValueError(f"_plan={path!r} cannot run this call: weights_dtype='int8' "
                             f"runs on the {INT8_PATH!r} path only")
        if isinstance(force, ForwardPlan):
            return force   # (its threads too: tests and measurements)
        reason = "forced"
    else:
        reason = "weights_dtype='int8'"
    nbytes = (I + H) * 4 * H   # the int8 panels, about one byte per weight
    nt = n_total if nbytes * max(B, 1) >= _tuning.INT8_SEQ_PARALLEL_MIN_BYTES else 1
    slices = n_total if nt > 1 and B // n_total >= _tuning.INT8_ROW_MIN_ROWS else 1
    nt = max(1, min(nt, _n_panels(H, np.dtype(np.float32))))
    if slices > 1:
        nt = slices
        reason += f"; {slices} slices of >= INT8_ROW_MIN_ROWS rows, a thread each"
    pre = B > 0 and H > 0 and _packcache.cacheable(I, H, np.float32)
    return ForwardPlan(INT8_PATH, nt, 1, None, (), 0, None, reason, prepacked=pre,
                       row_slices=slices)


def _int8_pack(W, U, bias):
    """The int8 panels of one LSTM layer (``cylstm.stream``'s, the runner's own)."""
    from cylstm import stream  # defers import cost: the streaming runner

    H = U.shape[0]
    for name, w in (("kernel", W), ("recurrent_kernel", U)):
        if not np.all(np.isfinite(w)):
            raise ValueError(f"weights_dtype='int8': {name} must be finite to be quantized "
                             f"to int8 (shape {w.shape})")
    return stream._Pack([{"type": "lstm", "kernel": W, "recurrent_kernel": U,
                          "bias": np.zeros(4 * H, np.float32) if bias is None else bias}],
                        np.float32, "int8")


def _int8_forward(plan, x, W, U, b, bias, lens, reverse, y, hs, cs, own, version):
    """Run the "int8" plan: the streaming runner's step over each group of samples of
    one length (all of them without lengths), their valid steps only, in time order
    or reversed (``reverse``, within each sample's own length).  Writes the valid
    outputs into ``y`` (zeros elsewhere; None: not kept) and the final states into
    ``hs``, ``cs``."""
    from cylstm import stream  # defers import cost: the streaming runner

    B, T, _ = x.shape
    if B == 0 or T == 0 or U.shape[0] == 0:
        return
    pack = None
    if plan.prepacked and own:
        pack = _packcache.lookup(W, U, bias, "int8", n_threads=plan.n_threads,
                                 version=version, make=_int8_pack)
    if pack is None:
        pack = _int8_pack(W, U, bias)
    if lens is None:
        groups = [(slice(None), T)]
    else:
        groups = [(np.flatnonzero(lens == n), int(n)) for n in np.unique(lens) if n > 0]
    def run(rows, n, threads):
        xr = x[rows, :n]
        if reverse:
            xr = xr[:, ::-1]
        nb = xr.shape[0]
        runner = stream.StreamRunner._over_pack(pack, nb, threads)
        runner._set_state([(hs[rows], cs[rows])])
        xt = xr.transpose(1, 0, 2)   # time major: contiguous as it is at batch 1
        tmp = None
        if not xt.flags.c_contiguous:
            tmp = take(xt.shape, dtype=np.float32)
            np.copyto(tmp, xt)
            xt = tmp
        out = take((n, nb, U.shape[0]), np.float32)
        try:
            runner.run(xt, out=out)
            (h, c), = runner._get_state()
            hs[rows], cs[rows] = h, c
            if y is not None:
                o = out.transpose(1, 0, 2)
                y[rows, :n] = o[:, ::-1] if reverse else o
        finally:
            give(tmp, out)

    for rows, n in groups:
        idx = np.arange(B)[rows]
        k = min(plan.row_slices, len(idx))
        if k <= 1:
            run(rows, n, plan.n_threads)
            continue
        # slices of rows, each through all n steps on its own thread (the caller
        # runs the first): a row's int8 sums do not depend on its block, so the
        # bits are the panel split's
        parts = np.array_split(idx, k)
        pool = _row_threads(k - 1)
        futures = [pool.submit(run, part, n, 1) for part in parts[1:]]
        try:
            run(parts[0], n, 1)
        finally:
            for f in futures:
                f.result()


_ROW_POOL = None


def _row_threads(n):
    """A thread pool of at least ``n`` workers for the int8 row slices (made on
    first use, grown as asked; a forked child starts without one)."""
    global _ROW_POOL
    pool = _ROW_POOL
    if pool is None or pool._max_workers < n:
        from concurrent.futures import ThreadPoolExecutor
        # (a smaller pool is dropped, not shut down: a call on another thread may
        # still be submitting to it; its idle workers end once it is collected)
        pool = _ROW_POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cylstm-int8")
    return pool


def _forget_row_threads():
    global _ROW_POOL
    _ROW_POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_row_threads)


def plan_forward(B, T, I, H, dtype, n_threads, training=False, has_mask=False,
                 has_lengths=False, reverse=False, facts=None, *, force=None,
                 compute_dtype=None, weights_dtype=None):
    """Choose the forward path for a call and the scratch it needs.

    Parameters
    ----------
    B, T, I, H : batch, time steps, features, units.
    dtype : float32 or float64 (the compute dtype).
    n_threads : threads the call may use (``num_threads``).
    training, has_mask, has_lengths, reverse : the call's options (``has_mask``:
        a recurrent mask; ``reverse``: ``go_backwards``).
    facts : :class:`cylstm._tuning.CpuFacts`, or None for this machine's
        (:func:`cylstm._tuning.cpu_facts`).  Tuned choices (see
        :func:`cylstm.tune`) are consulted only when ``facts`` is None.
    force : a path name or a ForwardPlan to take instead of choosing;
        ValueError when the call cannot take it.
    compute_dtype : see :data:`COMPUTE_DTYPES`.  "bfloat16" restricts the call to
        the AMX paths (rule 1b) or "rows" and "rows_fused" (rules 8 and 9; a forced
        panel path is a ValueError) and sets the plan's ``bf16``.
    weights_dtype : None or "int8" (:func:`lstm_forward`'s): "int8" is the "int8"
        path, inference only (rule 0), the only one such a call can take.

    Returns
    -------
    ForwardPlan

    The rules, in order (thresholds in cylstm/_tuning.py):

    0. ``weights_dtype="int8"``: "int8", the streaming runner's int8 panel step
       over the whole sequence (:func:`_int8_plan`);
    1. ``force``, else (inference, ``facts`` None) a tuned choice for this shape
       class when valid for the call;
    1b. ``compute_dtype="bfloat16"`` where ``facts.amx_bf16`` or
       ``facts.bf16_dots`` (and, for this machine's facts, the process may use
       them now: AMX tiles, else AVX512-BF16 dots): "rows_bf16_fused" without
       lengths for slices of AMX_FUSE_MIN_ROWS rows or more per thread with W's
       bf16 copy at most AMX_FUSE_MAX_BYTES, else "rows_bf16"; threads split the
       batch in slices of at least AMX_MIN_ROWS_PER_THREAD rows on AMX,
       BF16_DOTS_MIN_ROWS_PER_THREAD on dots;
    2. "units" when there is no recurrent mask, H spans two panels or more, and
       either the batch is too small to split (one batch thread of several) with
       U of at least PANEL_TEAM_MIN_BYTES, or (AVX-512 only) U is at least
       1/PANEL_SPLIT_LLC_FRACTION of ``facts.llc_budget``;
    3. "units" on one thread (AVX-512 only) with H spanning two panels or more
       and either a batch of at most UNITS_SERIAL_MAX_BATCH or, in training, at
       least UNITS_SERIAL_MIN_UNITS units; on AVX2 where BLAS packs every
       per-step call, in inference at batch 1 with U of at least
       UNITS_SERIAL_B1_MIN_BYTES;
    4. "stacked" (AVX-512 only, inference) with STACKED_MIN_ROWS rows per thread,
       STACKED_MIN_UNITS units and [W; U] within 1/FIT_LLC_FRACTION of the budget;
    5. "stacked" (AVX2 or AVX-512, inference) where BLAS packs every per-step
       call (``facts.blas_tiles_steps`` false), with MIN_ROWS_PER_THREAD rows per
       thread and [W; U] of at most STACKED_PACKING_BLAS_MAX_BYTES, or
       STACKED_WIDE_MIN_ROWS rows per thread and at most
       STACKED_PACKING_BLAS_WIDE_MAX_BYTES;
    5b. inference where BLAS packs every per-step call, batches of 2 up to
       MIN_ROWS_PER_THREAD (too small to split): "units" with U of at least
       SMALL_BATCH_UNITS_MIN_BYTES over two panels or more (with a recurrent
       mask, one thread only), else "stacked" on one thread while [W; U] is at
       most STACKED_PACKING_BLAS_MAX_BYTES;
    5c. "stacked" in training on AVX2 where BLAS packs every per-step call, with
       STACKED_TRAIN_MIN_ROWS rows per thread and [W; U] of at most
       STACKED_TRAIN_MAX_BYTES on one thread, STACKED_TRAIN_TEAM_MAX_BYTES on a
       team (the gates, c and h_prev kept for the backward; not with lengths
       backwards);
    6. "units" (AVX2 or AVX-512) in training where BLAS packs every per-step call,
       for batches of at most UNITS_TRAIN_MAX_BATCH, of at most
       UNITS_TRAIN_WIDE_MAX_BATCH (on several threads only with U of at least
       UNITS_TRAIN_TEAM_MIN_BYTES), or of at most UNITS_TRAIN_L2_MAX_BATCH with U
       larger than a core's L2 (the same team bound; the recurrent mask rule of 2
       applies);
    7. "units" (AVX2 or AVX-512) when U is larger than a core's L2 and at least
       UNITS_L2_MIN_BYTES, on one thread only for batches of 2 to
       UNITS_L2_SERIAL_MAX_BATCH (UNITS_L2_SERIAL_MAX_BATCH_INFERENCE in inference;
       the recurrent mask rule of 2 applies);
    8. "rows_fused" without lengths, with FUSE_MIN_ROWS rows per thread and [W; U]
       within 1/FIT_LLC_FRACTION of the budget and at most FUSE_MAX_BYTES (not in
       training where BLAS packs every per-step call);
    9. "rows".
    """
    dtype = np.dtype(dtype)
    bf16 = _bf16_products(compute_dtype, dtype)
    n_total = int(n_threads)
    if n_total < 1:
        raise ValueError(f"num_threads must be >= 1; got {n_total}")
    if _int8_products(weights_dtype, dtype, training, bf16):
        return _int8_plan(B, I, H, n_total, force)
    if force is not None and (force.path if isinstance(force, ForwardPlan) else force) \
            == INT8_PATH:
        raise ValueError(f"_plan={INT8_PATH!r} cannot run this call: the {INT8_PATH!r} path "
                         "multiplies int8 weights; pass weights_dtype='int8'")
    nt = max(1, min(n_total, B // _tuning.MIN_ROWS_PER_THREAD))
    args = (B, H, dtype, n_total, training, has_mask, has_lengths, reverse, bf16)
    if force is not None:
        path = force.path if isinstance(force, ForwardPlan) else force
        if not isinstance(path, str):
            raise TypeError(f"_plan must be a path name or a ForwardPlan; got "
                            f"{type(force).__name__}")
        why = _path_error(path, *args)
        if why is not None:
            raise ValueError(f"_plan={path!r} cannot run this call: {why}")
        reason = "forced"
    elif B == 0 or H == 0:
        path, reason = "rows", "empty batch"
    else:
        path = reason = None
        if facts is None:
            # measured in inference (cylstm.tune), so only inference calls take them
            tuned = None if training else _tuning.tuned_path(B, I, H, dtype, n_total)
            if tuned is not None and _path_error(tuned, *args) is None:
                key = _tuning.shape_class(B, I, H, dtype_name(dtype), n_total)
                path, reason = tuned, f"tuned cache ({key})"
            facts = _tuning.cpu_facts()
            if bf16:
                facts = _bf16_facts_now(facts)
        if path is None:
            path, reason = _model_path(B, T, I, H, dtype, n_total, nt, training, has_mask,
                                       has_lengths, reverse, facts, bf16)
    return _scratch(path, B, T, I, H, dtype, n_total, nt, training, reason, facts, bf16)


def _bf16_facts_now(facts):
    """This machine's ``facts`` less the bf16 hardware this process cannot use now
    (AMX refused or turned off, a lower level forced since the facts were read)."""
    engine = _lstm.bf16_engine()
    if facts.amx_bf16 and engine != "amx":
        facts = dataclasses.replace(facts, amx_bf16=False)
    if facts.bf16_dots and engine is None:
        facts = dataclasses.replace(facts, flags=facts.flags - {"avx512_bf16"})
    return facts


def _scratch(path, B, T, I, H, dtype, n_total, nt, training, reason, facts=None, bf16=False):
    gates = (B, T, 4 * H) if (training or path in ("rows", "units", "rows_bf16")) else None
    if path in BF16_PATHS:
        pre = not training and B * T > 0 and H > 0 and _packcache.cacheable(I, H, dtype)
        amx = facts.amx_bf16 if facts is not None else _lstm.bf16_engine() == "amx"
        nt = _amx_threads(B, n_total, amx)
        return ForwardPlan(path, nt, n_total, gates, (B, 4 * H), 0, None, reason,
                           prepacked=pre, bf16=True,
                           abuf=(nt, _lstm.bf16_abuf2_len(I, H)))
    if path in ("rows", "rows_fused"):
        if facts is None:
            facts = _tuning.cpu_facts()
        return ForwardPlan(path, nt, n_total, gates, (B, 4 * H), 0, None, reason,
                           tile_steps=facts.blas_tiles_steps, bf16=bf16)
    # inference reuses packed weights while they are exact (training changes them
    # every step: each lookup would miss)
    pre = not training and B * T > 0 and H > 0 and _packcache.cacheable(I, H, dtype)
    if path == "units":  # per thread: a panel's product and the results it commits
        n = max(1, min(n_total, _n_panels(H, dtype)))
        if facts is None:
            facts = _tuning.cpu_facts()
        max_rows = (_tuning.PANEL_PROJ_MAX_ROWS_AVX512 if facts.isa_level == 2
                    else _tuning.PANEL_PROJ_MAX_ROWS)
        proj = pre and (max_rows is None or B * T <= max_rows)
        name = dtype_name(dtype)
        if proj:  # the panel projection's rows are in panel order, padded units too
            gates = (B, T, _lstm.packed_len(H, name) // H)
        return ForwardPlan(path, n, n_total, gates, (n, _lstm.units_scratch(B, H, name)),
                           _lstm.packed_len(H, name), (B, H), reason, pre, proj)
    return ForwardPlan(path, nt, n_total, gates, (nt, B * 4 * _panel_units(dtype)),
                       _lstm.stacked_len(I, H, dtype_name(dtype)), (B, H), reason, pre)


def plan_backward(B, n_threads, bf16=False, facts=None, T=None, I=None, H=None,
                  dtype=np.float32):
    """How :func:`lstm_backward` splits its work: a BackwardPlan.  ``bf16``: the
    cache is a ``compute_dtype="bfloat16"`` forward's; its products run on AMX
    tiles where ``facts`` (default: this machine's, and this process may use
    AMX now) has them.  With the sequence length ``T`` and the sizes ``I``, ``H``:
    a batch split whose slices hold fewer rows (samples x T) than the weight
    gradient (I + H) runs that gradient's GEMMs once, over the whole batch
    (_tuning.BACKWARD_WHOLE_GRADS).  With few samples a thread and a U^T (of
    ``dtype``) larger than a core's L2, the time loop splits by units
    (_tuning.backward_units)."""
    n_total = int(n_threads)
    if n_total < 1:
        raise ValueError(f"num_threads must be >= 1; got {n_total}")
    nt = max(1, min(n_total, B // _tuning.MIN_ROWS_PER_THREAD))
    why = (f"batch split, {nt} threads of >= MIN_ROWS_PER_THREAD rows" if nt > 1
           else "one thread (BLAS threaded)")
    amx = False
    if bf16:
        if facts is None:
            facts = _bf16_facts_now(_tuning.cpu_facts())
        amx = facts.amx_bf16 or facts.bf16_dots
        why += ("; bf16 products on AMX tiles" if facts.amx_bf16 else
                "; bf16 products on AVX512-BF16 dots" if amx else
                "; bf16 products emulated (float32 BLAS over bf16 values)")
    if (n_total > 1 and not bf16 and H is not None
            and _tuning.backward_units(B, n_total, H, facts, np.dtype(dtype).itemsize)):
        return BackwardPlan(n_total, n_total,
                            f"time loop split by units ({B // n_total} samples a thread "
                            f"<= BACKWARD_UNITS_MAX_ROWS, U^T past a core's L2); weight "
                            f"gradients over the whole batch on BLAS's threads",
                            units=True)
    whole = (nt > 1 and not amx and T is not None and _tuning.BACKWARD_WHOLE_GRADS
             and (B // nt) * T < I + H)
    if whole:
        why += "; weight gradients over the whole batch on BLAS's threads"
    return BackwardPlan(nt, n_total, why, amx, whole)


def _amx_backward_pack(W, U):
    """U^T then W^T in the AMX kernel's tile layout (bf16; pool buffer): the
    backward's dh_prev = dz U^T and dx = dz W^T."""
    I, H4 = W.shape
    H = U.shape[0]
    nu = _lstm.bf16_tiles_len(H4, H)
    out = take((nu + _lstm.bf16_tiles_len(H4, I),), np.uint16)
    _lstm.bf16_tiles_pack(U, out[:nu], transposed=True, hardware=True)
    _lstm.bf16_tiles_pack(W, out[nu:], transposed=True, hardware=True)
    return out


def _panel_units(dtype):
    return _lstm.PANEL_UNITS_F32 if dtype == np.float32 else _lstm.PANEL_UNITS_F64


def _threads_for(B, num_threads):
    """(threads asked for, threads a batch split runs: MIN_ROWS_PER_THREAD rows each)."""
    n = _config.get_num_threads() if num_threads is None else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1; got {n}")
    return n, max(1, min(n, B // _tuning.MIN_ROWS_PER_THREAD))


_INT_MAX = 2**31 - 1  # BLAS (LP64) dimensions and leading dimensions are C ints


def _mem_available():
    """Bytes the kernel may still get (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


_versions = itertools.count(1)


def new_weights_version() -> int:
    """A process-wide unique number to pass as ``weights_version`` (this module's
    :func:`lstm_forward`, and :mod:`cylstm.cuda.functional`'s): take a new one after
    every change of the weights (optimizer step, ``set_weights``, an edit in place)."""
    return next(_versions)


def _check_version(version):
    try:
        hash(version)
    except TypeError:
        raise TypeError(f"weights_version must be hashable (an int from "
                        f"new_weights_version(), a string, ...) or None; got "
                        f"{type(version).__name__}") from None


def _check_sizes(B, T, I, H, itemsize, training):
    """Refuse, before allocating anything, work that cannot be done.

    Element indices are 64-bit throughout the kernels; what stays 32-bit is
    each BLAS dimension (rows B*T of the input projection, columns 4H, and
    the inner size I).  Large buffers are checked against the memory
    available, so an impossible request is a clear error, not the OOM killer.
    """
    if B * T > _INT_MAX or 4 * H > _INT_MAX or I > _INT_MAX:
        raise ValueError(
            f"x of shape ({B}, {T}, {I}) with {H} units exceeds the BLAS index range "
            f"(batch*time={B * T}, 4*units={4 * H}, features={I}; each must be < 2**31)"
        )
    per_row = 4 * H + H  # gate buffer + outputs
    if training:
        per_row += 2 * H  # cell states and previous h
    need = B * T * per_row * itemsize
    if need > 2**30:
        avail = _mem_available()
        if avail is not None and need > avail:
            raise MemoryError(
                f"lstm_forward on x of shape ({B}, {T}, {I}) with {H} units needs about "
                f"{need / 2**30:.1f} GiB of buffers; only {avail / 2**30:.1f} GiB is available "
                f"(use a smaller batch{'' if training else ' or return_sequences=False'})"
            )


def lstm_forward(x: ArrayLike, kernel: ArrayLike, recurrent_kernel: ArrayLike,
                 bias: ArrayLike | None = None, *,
                 initial_state: Sequence[ArrayLike] | None = None,
                 lengths: ArrayLike | None = None, go_backwards: bool = False,
                 return_sequences: bool = True, training: bool = False,
                 recurrent_mask: ArrayLike | None = None,
                 checkpoint_every: int | str | None = None,
                 compute_dtype: str | None = None, num_threads: int | None = None,
                 weights_version: Hashable | None = None,
                 weights_dtype: str | None = None,
                 _plan: ForwardPlan | None = None) -> LSTMForward:
    """Run an LSTM over whole sequences.

    Parameters
    ----------
    x : array (B, T, I)
        Input; integer arrays are cast, complex and object arrays refused.
    kernel, recurrent_kernel, bias : arrays (I, 4H), (H, 4H), (4H,) or None
        Weights in Keras layout (gates i, f, c, o).  Their dtype (float32 or
        float64) is the compute dtype; other inputs are cast to it.
    initial_state : (h0, c0), each (B, H), or None for zeros.
    lengths : int array (B,) or None
        Valid steps per sample (0 <= L <= T), PyTorch packed-sequence
        semantics: outputs past a sample's length are zero, its final state
        is the one after its last valid step (for L = 0, the initial state),
        and with ``go_backwards`` it runs from its own last valid step back to
        step 0.
    go_backwards : bool
        Process time in reverse.  ``output[:, t]`` is still the state
        computed at time ``t`` (PyTorch's convention; the Keras layer flips).
    return_sequences : bool
        Return all outputs (B, T, H) or only the final h (B, H).
    training : bool
        Keep what :func:`lstm_backward` needs (the activated gates, cell
        states and previous hidden states); inference keeps nothing extra.
    recurrent_mask : array (B, H) or None
        Recurrent dropout as in Keras: one mask per sequence (already scaled
        by 1 / (1 - rate)) that multiplies h_prev in the recurrent product
        ``h_prev @ U`` at every step; the carried state is not masked.
    checkpoint_every : None, int >= 1 or "auto"
        Training only: keep just the state (h, c) at the start of every segment of
        this many steps instead of the whole cache; :func:`lstm_backward` reruns
        each segment's forward from its checkpoint (the same kernels, so the same
        values) and back-propagates through it, for the same gradients at the
        cost of one more forward pass.  Everything a step computes, the input
        projection ``x @ W`` included, is then one segment long.  A value of T or
        more is one segment.  "auto": full BPTT while its cache (7 H floats per
        sample and step) fits in :func:`cylstm.get_memory_budget`, else about
        sqrt(T) steps per segment (see :func:`plan_checkpoints`).  A segment that
        cannot fit in the budget is a MemoryError, raised before allocating.
    compute_dtype : None, "float32", "float64" or "bfloat16"
        None, or the weights' own dtype's name: compute in that dtype.
        "bfloat16" (float32 weights; the mixed_bfloat16 policy's products, emulated
        exactly on any CPU): x, ``kernel`` and ``recurrent_kernel`` are rounded to
        bfloat16 once (copies: the caller's arrays are not changed) and h_prev
        before every step's ``h_prev @ U``; the products of bf16 values are exact
        in float32, so the float32 GEMMs over them are the bf16-operand,
        float32-accumulate products.  The bias, the gate math, c, h and the
        outputs stay float32.  The training cache holds the rounded operands, so
        :func:`lstm_backward` gives the straight-through gradients (the casts'
        derivative taken as 1, as Keras and TensorFlow do) with the backward's
        products on bf16 operands too, as a bf16 matmul's gradient is in Keras,
        TensorFlow and torch.autocast: dz16 = bf16(dz), dW = x16^T dz16,
        dU = h16^T dz16, dx = dz16 W16^T, dh_prev = dz16 U16^T, summed in float32;
        db sums the float32 dz.  On AMX tiles where the CPU has them
        (BackwardPlan.amx), else emulated by float32 BLAS and panels over the
        rounded values.
    num_threads : int or None
        Defaults to :func:`cylstm.get_num_threads`.
    weights_version : hashable or None
        The caller's promise that ``kernel``, ``recurrent_kernel`` and ``bias`` (the
        same array objects) have not changed since a call with the same version,
        as in :mod:`cylstm.cuda.functional`: inference then takes the weights it
        packed then without reading them again.  Without it (None), each call
        compares the arrays with the copy it packed from, byte for byte, which at
        batch 1 can be a quarter of the call (see cylstm/_packcache.py).  Give a
        new version after every change (:func:`new_weights_version` makes one);
        new array objects always repack, whatever the version.  Training ignores it.
    weights_dtype : None or "int8"
        "int8" (float32 weights, inference): the products read per-output-channel
        symmetric int8 weights, ``quantize_int8`` of ``kernel`` and
        ``recurrent_kernel`` (exact for the weights of ``model.quantize("int8")``,
        which already are such values; :mod:`cylstm.quantization`), with float32
        scales, as the streaming runner's ``weights_dtype='int8'``.  Each step's
        ``[x_t, h_prev]`` row is quantized to int16 (at most 2^-15 of the row's
        largest value off), multiplied with exact int32 sums, and scaled back in
        float32; the bias, the gate math, c and h stay float32.  Runs on the "int8"
        path only (the panel kernel ``cyl_panel_i8``, include/cylstm_panel.h),
        a quarter of the weight bytes of float32: on the AMD EPYC (2 cores), Zen 3,
        0.42-0.58x of the float32 call at batch 1 and 0.66-0.88x at batch 32 with
        H >= 128 (one thread, 2026-12-03; within 1.1x of it at H <= 64 and batch
        16 or more).  Its outputs differ from the float32 call on the same int8
        weights by the int16 rows' rounding (about 1e-4 absolute at H = 512,
        tests/test_int8_forward.py).  Not for training: train in float32 or
        mixed_bfloat16 and quantize after.
    _plan : str or ForwardPlan, optional
        Private: force a kernel path ("rows", "rows_fused", "units", "stacked";
        "int8", the only one, with ``weights_dtype="int8"``; see
        :func:`plan_forward`) instead of letting the planner choose, for tests
        and :func:`cylstm.tune`.  A path the call cannot take is a ValueError
        (with ``compute_dtype="bfloat16"``, either panel path).

    Returns
    -------
    LSTMForward(output, h, c, cache)
    """
    every = _checkpoint.check_every(checkpoint_every)
    _check_version(weights_version)
    dtype = _float_dtype(kernel)
    bf16 = _bf16_products(compute_dtype, dtype)
    i8 = _int8_products(weights_dtype, dtype, training, bf16)
    W = as_float_array("kernel", kernel, dtype, 2)
    xs = np.shape(x) if isinstance(x, np.ndarray) else np.shape(real_array("x", x))
    if len(xs) != 3:
        raise ValueError(f"x must have 3 dims (batch, time, features); got shape {xs}")
    cplan = None
    if W.shape[1] % 4 == 0 and W.shape[1]:
        if training and every is not None and xs[0] and xs[1] and xs[2]:
            lp = check_lengths(lengths, xs[0], xs[1])
            cplan = plan_checkpoints(xs[0], xs[1], xs[2], W.shape[1] // 4, dtype, every,
                                     n_threads=_threads_for(xs[0], num_threads)[1],
                                     max_steps=None if lp is None else int(lp.max()))
        if cplan is None:
            _check_sizes(xs[0], xs[1], xs[2], W.shape[1] // 4, dtype.itemsize, training)
    x = as_float_array("x", x, dtype)
    B, T, I = x.shape
    U, b, H = check_weights(x.shape, W, recurrent_kernel, bias, dtype)
    lens = check_lengths(lengths, B, T)
    hs, cs, rmask = check_states(initial_state, recurrent_mask, B, H, dtype)
    if i8:
        if rmask is not None:
            raise ValueError("weights_dtype='int8' takes no recurrent_mask (recurrent "
                             "dropout is for training; int8 weights are for inference)")
        n_total, _ = _threads_for(B, num_threads)
        plan = plan_forward(B, T, I, H, dtype, n_total, has_lengths=lens is not None,
                            reverse=bool(go_backwards), force=_plan, weights_dtype="int8")
        y = None
        if return_sequences:   # (every step written but past the lengths)
            y = np.empty((B, T, H), dtype) if lens is None else np.zeros((B, T, H), dtype)
        own = W is kernel and U is recurrent_kernel and (bias is None or b is bias)
        key = None if _plan is not None else _team_key(plan, "int8", B, I, H, dtype, False)
        _timed_team(plan, key, T, lambda p: _int8_forward(
            p, x, W, U, b, None if bias is None else b, lens, bool(go_backwards), y, hs, cs,
            own, weights_version))
        return LSTMForward(y if return_sequences else hs.copy(), hs, cs, None)
    n_total, _ = _threads_for(B, num_threads)
    ragged = lens is not None
    plan = None
    if cplan is None:
        plan = plan_forward(B, T, I, H, dtype, n_total, training, rmask is not None, ragged,
                            bool(go_backwards), force=_plan,
                            compute_dtype="bfloat16" if bf16 else None)
    rounded = False
    if bf16 and (plan is None or plan.path not in BF16_PATHS):
        # the operands rounded once (copies; the bias joins in float32, in the cell);
        # on the AMX paths the pack rounds W and U, the kernel x, and in training
        # the AMX backward rounds them as it packs (lstm_backward rounds copies
        # where its plan has no AMX)
        x, W, U = round_bfloat16(x), round_bfloat16(W), round_bfloat16(U)
        rounded = True
    # the recurrent operand, h_prev * mask and/or bf16(h_prev), built per step
    hm = None if rmask is None and not bf16 else np.empty((B, H), dtype)
    c0 = cs.copy() if training else None
    _config._blas()
    if cplan is not None:
        y, cache = _checkpoint.forward(x, W, U, b, lens, hs, cs, rmask, go_backwards,
                                       return_sequences, n_total, cplan, force=_plan,
                                       bf16=bf16)
        return LSTMForward(y if return_sequences else hs.copy(), hs, cs, cache)

    alloc = np.zeros if ragged else np.empty
    G = take(plan.gates, dtype) if plan.gates is not None else None
    y = alloc((B, T, H), dtype) if (return_sequences or training) else None
    C = take((B, T, H), dtype) if training else None
    Hp = take((B, T, H), dtype, zero=ragged) if training else None
    if B:  # an empty batch has nothing to run (the kernel addresses element 0 of x)
        # the cache keys on the caller's arrays: only when none was converted
        # (a converted copy is new every call, and would only evict)
        own = W is kernel and U is recurrent_kernel and (bias is None or b is bias)
        key = (None if _plan is not None or plan.path != "units" else
               _team_key(plan, "units", B, I, H, dtype, training))
        _timed_team(plan, key, T, lambda p: _run_forward_plan(
            p, x, W, U, b, lens, go_backwards, rmask, hm, y, hs, cs, G, C, Hp,
            None if bias is None else b, own, weights_version))
    if not training:
        give(G)
    cache = None
    if training:
        cache = {
            "x": x, "W": W, "U": U, "c0": c0, "lengths": lens,
            "reverse": bool(go_backwards), "G": G, "C": C, "Hp": Hp, "rmask": rmask,
            "return_sequences": bool(return_sequences), "used": False, "bf16": bf16,
            "rounded": rounded,
        }
    out = y if return_sequences else hs.copy()
    return LSTMForward(out, hs, cs, cache)


def _team_key(plan, kind, B, I, H, dtype, training):
    """The shape class whose team of threads is timed against one thread
    (_tuning.team_threads), or None: plans of one thread, U's bytes times the batch
    above _tuning.TEAM_MEASURE_MAX_BYTES (a team pays there), CYLSTM_TUNE=0."""
    if plan.n_threads < 2 or not _tuning.tuning_enabled():
        return None
    item = 1 if kind == "int8" else dtype.itemsize
    if H * 4 * H * item * max(B, 1) > _tuning.TEAM_MEASURE_MAX_BYTES:
        return None
    return (kind, B, I, H, dtype_name(dtype), plan.n_threads, bool(training))


def _timed_team(plan, key, T, run):
    """``run(plan)``, or ``run`` of the plan on one thread where its team was measured
    no faster (``key``: _team_key; None runs the plan as it is).  The unit split and
    the int8 runner sum every output in one order, so either gives the same bits."""
    if key is None:
        run(plan)
        return
    threads, how = _tuning.team_threads(key, plan.n_threads)
    if threads != plan.n_threads:
        plan = _on_threads(plan, threads)
    t0 = time.perf_counter_ns()
    run(plan)
    _tuning.note_team_time(key, threads, (time.perf_counter_ns() - t0) / max(T, 1), how)


@functools.lru_cache(maxsize=64)
def _on_threads(plan, threads):
    """``plan`` on ``threads`` threads (a replaced copy costs a few us: kept)."""
    return dataclasses.replace(plan, n_threads=threads, blas_threads=threads,
                               row_slices=min(plan.row_slices, threads))


def _run_forward_plan(plan, x, W, U, b, lens, reverse, rmask, hm, y, hs, cs, G, C, Hp,
                      bias=None, cache=False, version=None):
    """Run ``plan``'s kernel entry point on validated buffers, with the per-step
    scratch it names (the only place that calls the forward kernels).  ``cache``:
    W, U and ``bias`` (None: zeros, ``b``) are the caller's own arrays, so a
    prepacked plan may take their packed copy from the cache (``version``: the
    caller's ``weights_version``)."""
    dtype = W.dtype
    if plan.path in BF16_PATHS:
        _run_amx_plan(plan, x, W, U, b, lens, reverse, rmask, hm, y, hs, cs, G, C, Hp, bias,
                      cache, version)
        return
    P = None
    if plan.prepacked and cache:
        units = plan.path == "units"
        P = _packcache.lookup(W, U, bias, "units" if units else "stacked",
                              with_w=plan.panel_projection or not units,
                              n_threads=plan.blas_threads, version=version)
    Pp = None
    if plan.panel_projection and P is None:
        # no cache entry (skipped, too big, or converted arrays): pack here as the
        # cache would, so that the projection runs on the same panels and a call's
        # bits never depend on the cache's state (BLAS's projection rounds
        # differently: 1 ulp in half the outputs of a debug build's units path)
        Pp = take((_lstm.stacked_len(W.shape[0], U.shape[0], dtype_name(dtype)),), dtype, align=64)
        _lstm.pack_units(W, U, b, Pp)
        P = Pp
    # per-thread panel products (64-byte aligned for the panel kernel), the packed
    # weights (unless cached), the other half of h
    Z = take(plan.z, dtype, align=64) if plan.packed else take(plan.z, dtype)
    Pu = take((plan.packed,), dtype, align=64) if plan.packed and P is None else None
    hs2 = take(plan.hs2, dtype) if plan.hs2 is not None else None
    try:
        args = (x, W, U, b, lens, bool(reverse), rmask, hm, y, hs, cs, G, C, Hp, Z)
        if plan.path in ("rows", "rows_fused"):
            _lstm.forward_rows(*args, plan.n_threads, plan.blas_threads, plan.fuse,
                               plan.tile_steps, plan.bf16)
        elif plan.bf16:  # (the planner never makes one)
            raise ValueError(f"a bfloat16 plan must run on 'rows' or 'rows_fused'; got "
                             f"{plan.path!r}")
        elif plan.path == "units":
            _lstm.forward_units(*args, Pu if P is None else P, hs2, plan.n_threads,
                                plan.blas_threads, P is not None, plan.panel_projection)
        else:
            _lstm.forward_stacked(*args, Pu if P is None else P, hs2, plan.n_threads,
                                  plan.blas_threads, P is not None)
    finally:
        give(Z, Pu, hs2, Pp)


def _amx_pack(W, U, bias=None):
    """W then U in the AMX kernel's tile layout (bf16, one uint16 array), read-only."""
    I, H4 = W.shape
    nw = _lstm.bf16_tiles_len(I, H4)
    out = _packcache._aligned(nw + _lstm.bf16_tiles_len(U.shape[0], H4), np.uint16)
    _lstm.bf16_tiles_pack(W, out[:nw], hardware=True)
    _lstm.bf16_tiles_pack(U, out[nw:], hardware=True)
    out.flags.writeable = False
    return out


def _run_amx_plan(plan, x, W, U, b, lens, reverse, rmask, hm, y, hs, cs, G, C, Hp, bias,
                  cache, version):
    """The AMX paths: forward_rows with W and U tile-packed (from the packed-weight
    cache when the caller's own weights are cached there, else packed here)."""
    WUt = None
    if plan.prepacked and cache:
        WUt = _packcache.lookup(W, U, bias, "amx", n_threads=plan.blas_threads,
                                version=version, make=_amx_pack)
    if WUt is None:
        WUt = _amx_pack(W, U)
    Z = take(plan.z, np.float32)
    abuf = take(plan.abuf, np.uint16)
    try:
        _lstm.forward_rows(x, W, U, b, lens, bool(reverse), rmask, hm, y, hs, cs, G, C, Hp, Z,
                           plan.n_threads, plan.blas_threads, plan.fuse, False, True, WUt,
                           abuf)
    finally:
        give(Z, abuf)


def lstm_backward(cache: dict, grad_output: ArrayLike | None = None,
                  grad_h: ArrayLike | None = None, grad_c: ArrayLike | None = None, *,
                  need_input_grad: bool = True, num_threads: int | None = None,
                  out: Sequence[np.ndarray | None] | None = None,
                  _plan: BackwardPlan | None = None) -> LSTMGrads:
    """Backpropagate through a training-mode :func:`lstm_forward`.

    Parameters
    ----------
    cache : the ``cache`` of a ``lstm_forward(..., training=True)`` call.
        It is consumed (its gate buffer becomes dL/dz): call backward once.  A
        checkpointed cache (``checkpoint_every``) reruns each segment's forward
        from its checkpoint first; the weights and ``x`` must not change between
        the forward and the backward (the recomputation reads them).
    grad_output : dL/d output, same shape as the forward's ``output``, or None.
    grad_h, grad_c : dL/d final h and c, (B, H) each, or None.
    need_input_grad : compute dL/dx (skip it for a first layer).
    out : (dkernel, drecurrent_kernel, dbias) arrays to write the weight
        gradients into (C-contiguous, the weights' shapes and dtype; any may be
        None), e.g. views of a model's flat gradient buffer.

    Returns
    -------
    LSTMGrads(dx, dkernel, drecurrent_kernel, dbias, dh0, dc0); ``dx`` is None
    when ``need_input_grad`` is False.
    """
    if not isinstance(cache, dict) or ("G" not in cache and "checkpoints" not in cache):
        raise TypeError("cache must be the cache of lstm_forward(..., training=True)")
    if cache["used"]:
        raise ValueError("this cache was already used by lstm_backward; run the forward again")
    x, W, U, G = cache["x"], cache["W"], cache["U"], cache.get("G")
    dtype = W.dtype
    B, T, I = x.shape
    H = U.shape[0]
    dy, dhs, dcs = check_output_grads(grad_output, grad_h, grad_c, cache["return_sequences"],
                                      B, T, H, dtype)
    steps = T if "checkpoints" not in cache else min(T, cache["plan"].every)  # per GEMM
    if _plan is None:
        bplan = plan_backward(B, _threads_for(B, num_threads)[0],
                              bf16=cache.get("bf16", False), T=steps, I=I, H=H,
                              dtype=dtype)
    elif isinstance(_plan, BackwardPlan):  # tests force a split
        bplan = _plan
    else:
        raise TypeError(f"_plan must be a BackwardPlan or None; got {type(_plan).__name__}")
    n_total, nt = bplan.blas_threads, bplan.n_threads
    _config._blas()
    outs = check_grad_out(out, I, H, dtype)
    cache["used"] = True
    if B == 0:  # no samples, zero gradients (the kernel would address element 0 of empty dy)
        give(cache.get("G"), cache.get("C"), cache.get("Hp"))
        cache["G"] = cache["C"] = cache["Hp"] = None
        grads = []
        for k, shape in enumerate(((I, 4 * H), (H, 4 * H), (4 * H,))):
            if outs[k] is None:
                grads.append(np.zeros(shape, dtype))
            else:  # the caller's buffers are written, as for any other batch
                outs[k][...] = 0
                grads.append(outs[k])
        return LSTMGrads(np.zeros((0, T, I), dtype) if need_input_grad else None,
                         *grads, dhs, dcs)
    scratch = []  # gradients the caller did not ask for: pool buffers, given back below
    if out is None:
        # dW and dU as the two halves of one [dW; dU] array: the kernel's one GEMM
        # over [x_t, h_prev] writes them in place (_lstm._blas_weight_grads)
        WU = np.empty((I + H, 4 * H), dtype)
        outs[0], outs[1] = WU[:I], WU[I:]
    for k, shape in enumerate(((I, 4 * H), (H, 4 * H), (4 * H,))):
        if outs[k] is None:
            outs[k] = np.empty(shape, dtype) if out is None else take(shape, dtype)
            if out is not None:
                scratch.append(outs[k])
    dW, dU, db = outs
    if "checkpoints" in cache:  # recompute each segment from its checkpoint (_checkpoint)
        dx = _checkpoint.backward(cache, dy, dhs, dcs, need_input_grad, bplan, outs)
        give(*scratch)
        return LSTMGrads(dx, dW, dU, db, dhs, dcs)
    D = take((2 * B if bplan.units else B, 4 * H), dtype, zero=True)
    dHp = take((B, _lstm.transposed_width(H, dtype_name(dtype))), dtype)
    dx = np.empty((B, T, I), dtype) if need_input_grad else None
    parts = take((nt - 1, I + H + 1, 4 * H), dtype) if nt > 1 and not bplan.units else None
    if bplan.amx:  # U^T and W^T tile-packed, rounded as they are packed
        UT, amx = None, _amx_backward_pack(W, U)
    else:
        if cache.get("bf16") and not cache.get("rounded", True):
            # an AMX forward's cache (the caller's operands), AMX now off
            x, W, U = round_bfloat16(x), round_bfloat16(W), round_bfloat16(U)
        amx = None
        UT = take((_lstm.transposed_len(H, dtype_name(dtype)),), dtype, align=64)
        _lstm.pack_transposed(U, UT)  # U^T in the panel kernel's layout, once per call
    _lstm.backward(x, W, UT, cache["c0"], cache["lengths"], cache["reverse"], cache["rmask"], G,
                   cache["C"], cache["Hp"], dy, dhs, dcs, D, dHp, dx, dW, dU, db,
                   parts, nt, n_total, cache.get("bf16", False), amx, bplan.whole_grads,
                   bplan.units_pieces())
    give(D, dHp, parts, UT, amx, G, cache["C"], cache["Hp"], *scratch)
    for k in ("G", "C", "Hp"):
        cache[k] = None  # the activations go back to the pool now
    return LSTMGrads(dx, dW, dU, db, dhs, dcs)
