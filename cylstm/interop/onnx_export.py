"""ONNX export (:func:`to_onnx`): a cylstm ``Sequential`` as a standard ONNX graph.

Each LSTM becomes one ``LSTM`` operator with its gate blocks permuted to ONNX's i, o, f,
c order and its weights transposed (the layouts are in :mod:`cylstm.interop.onnx`).  An
int8-quantized LSTM (``quantization_mode == "int8"``) becomes ONNX Runtime's contrib
operator ``com.microsoft.DynamicQuantizeLSTM`` instead, holding cylstm's own int8
values q and column scales (:func:`cylstm.quantization.quantize_int8`), untransposed:

    W        [num_directions, I, 4H]   uint8 q + 128, gates i, o, f, c
    R        [num_directions, H, 4H]   uint8 q + 128
    W_scale  [num_directions, 4H]      float32, one scale per output column
    W_zero_point  [num_directions, 4H] uint8 128 (and the same for R)

so ``(W - W_zero_point) * W_scale`` is exactly the layer's ``q * scale``.  Why uint8 and
not int8 with zero point 0: on x86 CPUs without VNNI, ONNX Runtime multiplies uint8
activations by int8 weights with ``vpmaddubsw``, which saturates the int16 sum of two
products when the weights use the full [-127, 127] range; with uint8 weights it takes
its u8u8 kernel, which does not.  Measured on an AVX2 CPU, one LSTM(16): int8 weights
are up to 0.30 off the float LSTM, uint8 weights 8e-3.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from cylstm import __version__
from cylstm._files import atomic_write
from cylstm.interop._onnx_common import require_onnx as _require_onnx
from cylstm.interop._spec import DENSE_ACTIVATIONS

if TYPE_CHECKING:  # annotations only
    from cylstm.models import Sequential

__all__ = ["to_onnx"]


_OPSET = 17
_IR_VERSION = 8  # the oldest IR that carries opset 17: readable by older runtimes too
_MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators (DynamicQuantizeLSTM)
_ONNX_ACT = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softmax": "Softmax"}


def _gates_to(a, dst):
    """Permute the four gate blocks of ``a`` (axis 0) from cylstm's i, f, c, o to ``dst``."""
    blocks = np.split(a, 4, axis=0)
    return np.concatenate([blocks["ifco".index(g)] for g in dst], axis=0)


class _Exporter:
    def __init__(self, dtype):
        from onnx import TensorProto  # defers import cost: onnx is optional

        self.nodes, self.inits = [], []
        self.dtype = np.dtype(dtype)
        self.elem = TensorProto.DOUBLE if self.dtype == np.float64 else TensorProto.FLOAT
        self.count = 0
        self.uses_ms = False  # a com.microsoft operator was written: import its opset

    def name(self, base):
        self.count += 1
        return f"{base}_{self.count}"

    def init(self, base, array):
        from onnx import numpy_helper  # defers import cost: onnx is optional

        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), nm))
        return nm

    def node(self, op, inputs, n_out=1, domain=None, **attrs):
        from onnx import helper  # defers import cost: onnx is optional

        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), domain=domain,
                                           **attrs))
        return outs if n_out > 1 else outs[0]

    def ints(self, base, values):
        return self.init(base, np.asarray(values, np.int64))

    # -- layers: the stream is time-major (T, B, F) while it has a time axis ------------
    def lstm(self, layers, x, merge_mode, where, quantized="int8"):
        """One ONNX LSTM node for one layer (or the two halves of a Bidirectional): a
        ``DynamicQuantizeLSTM`` for int8 layers unless ``quantized == "float"``."""
        H = layers[0].units
        for lay in layers:
            for attr in ("kernel", "recurrent_kernel"):
                if getattr(lay, attr) is None:
                    raise ValueError(f"{where}: layer {lay.name!r} is not built")
            if lay.units != H:
                raise ValueError(f"{where}: forward and backward layers have different units "
                                 f"({layers[0].units} and {lay.units}); one ONNX LSTM cannot "
                                 "hold both")
            if getattr(lay, "return_state", False):
                raise ValueError(f"{where}: return_state=True cannot be exported (a Sequential "
                                 "model has one output)")
        D = len(layers)
        if D == 1:
            direction = "reverse" if layers[0].go_backwards else "forward"
        else:
            if layers[0].go_backwards or not layers[1].go_backwards:
                raise ValueError(f"{where}: only a forward layer with a go_backwards backward "
                                 "layer maps onto direction='bidirectional'")
            direction = "bidirectional"
        dt = self.dtype
        modes = {lay.quantization_mode for lay in layers}
        if quantized == "int8" and modes != {None}:
            if len(modes) > 1:
                raise ValueError(f"{where}: one half of the Bidirectional is quantized and the "
                                 "other is not; one DynamicQuantizeLSTM cannot hold both "
                                 "(quantize both, or export with quantized='float')")
            if dt != np.float32:
                raise ValueError(f"{where}: ONNX Runtime's DynamicQuantizeLSTM computes in "
                                 "float32 only; export with dtype='float32' (or "
                                 "quantized='float')")
            return self._lstm_int8(layers, x, merge_mode, where, H, direction)
        W = np.stack([_gates_to(np.asarray(lay.kernel, np.float64).T, "iofc") for lay in layers])
        R = np.stack([_gates_to(np.asarray(lay.recurrent_kernel, np.float64).T, "iofc")
                      for lay in layers])
        B = np.stack([np.concatenate([
            _gates_to(np.zeros(4 * H) if lay.bias is None else np.asarray(lay.bias, np.float64),
                      "iofc"), np.zeros(4 * H)]) for lay in layers])
        ins = [x, self.init("W", W.astype(dt)), self.init("R", R.astype(dt)),
               self.init("B", B.astype(dt))]
        y, y_h = self.node("LSTM", ins, n_out=2, hidden_size=H, direction=direction)
        return self._lstm_outputs(layers, y, y_h, merge_mode)

    def _lstm_int8(self, layers, x, merge_mode, where, H, direction):
        """A ``com.microsoft.DynamicQuantizeLSTM`` node holding the layers' int8 weights."""
        from cylstm.quantization import dequantize_int8, quantize_int8  # (a leaf module)

        qs = {"kernel": [], "recurrent_kernel": []}
        for lay in layers:
            for attr, out in qs.items():
                w = np.asarray(getattr(lay, attr), np.float32)
                q, scale = quantize_int8(w)
                if not np.array_equal(dequantize_int8(q, scale), w):
                    # quantize() left q * scale here; someone wrote the weights since
                    raise ValueError(f"{where}: layer {lay.name!r} is marked int8 but its "
                                     f"{attr} is not made of int8 values (written directly "
                                     "after quantize()?); quantize it again or export with "
                                     "quantized='float'")
                # columns (4H, cylstm's i, f, c, o) to ONNX's i, o, f, c; rows stay inputs
                out.append((_gates_to(q.T, "iofc").T, _gates_to(scale, "iofc")))
        D = len(layers)
        biased = any(getattr(lay, "use_bias", True) and lay.bias is not None for lay in layers)
        B = np.stack([np.concatenate([
            _gates_to(np.asarray(lay.bias, np.float64) if getattr(lay, "use_bias", True) and
                      lay.bias is not None else np.zeros(4 * H), "iofc"), np.zeros(4 * H)])
            for lay in layers]).astype(np.float32)
        ins = [x]
        for attr in ("kernel", "recurrent_kernel"):
            # (D, I or H, 4H): q in [-127, 127] as uint8 q + 128 in [1, 255] (see the
            # module docstring for why not int8)
            q = np.stack([q for q, _ in qs[attr]]).astype(np.int16) + 128
            ins.append(self.init("W" if attr == "kernel" else "R", q.astype(np.uint8)))
        # B is optional (zeros); no sequence_lens, initial states or peepholes
        ins += [self.init("B", B) if biased else "", "", "", "", ""]
        for attr, base in (("kernel", "W"), ("recurrent_kernel", "R")):
            ins.append(self.init(f"{base}_scale", np.stack([s for _, s in qs[attr]])))
            ins.append(self.init(f"{base}_zero_point", np.full((D, 4 * H), 128, np.uint8)))
        self.uses_ms = True
        y, y_h = self.node("DynamicQuantizeLSTM", ins, n_out=2, domain=_MS_DOMAIN,
                           hidden_size=H, direction=direction)
        return self._lstm_outputs(layers, y, y_h, merge_mode)

    def _lstm_outputs(self, layers, y, y_h, merge_mode):
        """The layer's output from Y (T, D, B, H) or Y_h (D, B, H), as Keras returns it."""
        D = len(layers)
        seq = layers[0].return_sequences
        if seq:
            if D == 1:
                out = self.node("Squeeze", [y, self.ints("axes", [1])])     # (T, B, H)
                if layers[0].go_backwards:
                    # Keras returns a go_backwards sequence in processing order: reverse time
                    out = self.node("Slice", [out, self.ints("starts", [-1]),
                                              self.ints("ends", [np.iinfo(np.int64).min]),
                                              self.ints("axes", [0]),
                                              self.ints("steps", [-1])])
                return out
            return self._merge(y, merge_mode, dir_axis=1)                   # (T, B, ...)
        if D == 1:
            return self.node("Squeeze", [y_h, self.ints("axes", [0])])      # (B, H)
        return self._merge(y_h, merge_mode, dir_axis=0)                     # (B, ...)

    def _merge(self, y, mode, dir_axis):
        """Merge the direction axis of Y (T, 2, B, H) or Y_h (2, B, H) as Keras would."""
        if mode == "concat":
            perm = [0, 2, 1, 3] if dir_axis == 1 else [1, 0, 2]
            t = self.node("Transpose", [y], perm=perm)                      # (.., B, 2, H)
            shape = [0, 0, -1] if dir_axis == 1 else [0, -1]
            return self.node("Reshape", [t, self.ints("shape", shape)])    # (.., B, 2H)
        if mode == "sum":
            return self.node("ReduceSum", [y, self.ints("axes", [dir_axis])], keepdims=0)
        if mode == "ave":
            return self.node("ReduceMean", [y], axes=[dir_axis], keepdims=0)
        if mode == "mul":
            return self.node("ReduceProd", [y], axes=[dir_axis], keepdims=0)
        raise ValueError(f"Bidirectional merge_mode={mode!r} cannot be exported (it returns "
                         "two outputs)")

    def dense(self, layer, x, where):
        if layer.kernel is None:
            raise ValueError(f"{where}: layer {layer.name!r} is not built")
        act = layer.activation if isinstance(layer.activation, str) else None
        if act not in DENSE_ACTIVATIONS:
            raise ValueError(f"{where}: Dense activation {layer.activation!r} cannot be "
                             f"exported (supported: {list(DENSE_ACTIVATIONS)})")
        y = self.node("MatMul", [x, self.init("kernel", np.asarray(layer.kernel, self.dtype))])
        if getattr(layer, "use_bias", True) and layer.bias is not None:
            y = self.node("Add", [y, self.init("bias", np.asarray(layer.bias, self.dtype))])
        if act != "linear":
            kw = {"axis": -1} if act == "softmax" else {}
            y = self.node(_ONNX_ACT[act], [y], **kw)
        return y


def to_onnx(model: Sequential, path: str | os.PathLike, *, dtype: str | None = None,
            quantized: str = "int8") -> str:
    """Write a cylstm ``Sequential`` as a standard ONNX graph (opset 17).

    Parameters
    ----------
    model : cylstm.models.Sequential
        A built model of ``LSTM``, ``Bidirectional`` (any merge mode but None),
        ``Dense``, ``Dropout`` (dropped: inference graph) and a leading ``Embedding``
        (without ``mask_zero``).
    path : str or os.PathLike
        Destination.  Written atomically: a temporary file in the same folder, renamed
        over ``path`` once complete, so readers never see a half-written model.
    dtype : None, 'float32' or 'float64'
        Element type of the graph; by default the model's.  ONNX Runtime's CPU ``LSTM``
        kernel only runs float32, so export a float64 model with ``dtype='float32'`` to
        serve it there.
    quantized : 'int8' or 'float'
        How LSTM layers quantized with ``quantize("int8")`` are written.  ``'int8'``
        (the default): as ONNX Runtime's contrib operator ``DynamicQuantizeLSTM``
        (domain ``com.microsoft``, opset 1) with the layers' int8 weights (stored as
        uint8 with zero point 128, the same values) and per-column float32 scales; the
        graph then needs ONNX Runtime and float32.
        ``'float'``: as the standard ``LSTM`` with the dequantized float weights
        (``q * scale``, exactly what cylstm computes with).  Models without quantized
        LSTMs are written the same either way; Dense layers are always float ``MatMul``
        (a quantized Dense holds ``q * scale``, exact in float32).

    Returns
    -------
    str
        ``path``.

    Notes
    -----
    The graph's input ``x`` is batch-first (batch, time, features), float32 or float64 as
    the model; the output ``y`` is what ``model.predict`` returns, batch-first.  Batch and
    time are symbolic (any size).  Inside, each layer is one ``LSTM`` operator (gates
    i, o, f, c; ``direction='bidirectional'`` for a ``Bidirectional``) on a time-major
    tensor, and each ``Dense`` a ``MatMul`` + ``Add`` + activation.  The graph is
    stateless: a ``stateful`` LSTM exports as it runs after ``reset_states()``.
    ``DynamicQuantizeLSTM`` quantizes its activations (x_t and h_t) to 8 bits at run time,
    per tensor, which cylstm's int8 layers do not (they multiply float activations by
    the int8 weights): its outputs differ from ``predict`` by about 1e-2.
    ``Masking`` and ``Embedding(mask_zero=True)`` are refused: the ONNX LSTM operator has
    no per-step mask.
    Layers with the ``mixed_bfloat16`` policy export their float32 master weights in a
    float32 graph: the ONNX ``LSTM`` and ``MatMul`` have no bf16-operand,
    float32-accumulate mode, so the graph computes the float32 model, which differs
    from ``predict`` under the policy by the bf16 rounding (a few 1e-3).
    """
    onnx = _require_onnx()
    from onnx import TensorProto, helper  # defers import cost: onnx is optional

    from cylstm import layers as L  # defers import cost: the layers

    if not hasattr(model, "layers") or not hasattr(model, "built"):
        raise TypeError(f"to_onnx expects a cylstm Sequential model; got {type(model).__name__}")
    if not model.built:
        raise ValueError("the model is not built: give its first layer input_shape= or run "
                         "it once on data before exporting")
    if dtype is None:
        dtype = model.dtype
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    if quantized not in ("int8", "float"):
        raise ValueError(f"quantized must be 'int8' or 'float'; got {quantized!r}")
    ex = _Exporter(dtype)
    layers = list(model.layers)
    if not layers:
        raise ValueError("the model has no layers")
    in_shape = model.layers[0].input_shape
    x_name = "x"
    if isinstance(layers[0], L.Embedding):
        emb = layers.pop(0)
        if emb.mask_zero:
            raise ValueError(f"layer {emb.name!r}: Embedding(mask_zero=True) cannot be exported "
                             "(the ONNX LSTM operator has no per-step mask)")
        x_info = helper.make_tensor_value_info(x_name, TensorProto.INT64, ["batch", "time"])
        cur = ex.node("Gather", [ex.init("embeddings", np.asarray(emb.embeddings, ex.dtype)),
                                 x_name], axis=0)
    else:
        n_in = in_shape[-1]
        x_info = helper.make_tensor_value_info(x_name, ex.elem, ["batch", "time", n_in])
        cur = x_name
    rank = 3
    cur = ex.node("Transpose", [cur], perm=[1, 0, 2])                      # (T, B, F)
    time_major = True
    n_lstm = 0
    for i, layer in enumerate(layers):
        where = f"layer {i} ({type(layer).__name__} {layer.name!r})"
        if isinstance(layer, L.Dropout):
            continue
        if isinstance(layer, L.LSTM):
            if rank != 3:
                raise ValueError(f"{where}: an LSTM needs a sequence input")
            cur = ex.lstm([layer], cur, None, where, quantized)
            n_lstm += 1
        elif isinstance(layer, L.Bidirectional):
            if rank != 3:
                raise ValueError(f"{where}: an LSTM needs a sequence input")
            cur = ex.lstm([layer.forward_layer, layer.backward_layer], cur, layer.merge_mode,
                          where, quantized)
            n_lstm += 1
        elif isinstance(layer, L.Dense):
            cur = ex.dense(layer, cur, where)
            continue
        else:
            why = ("the ONNX LSTM operator has no per-step mask" if isinstance(layer, L.Masking)
                   else "no ONNX mapping for this layer type")
            raise ValueError(f"{where}: cannot be exported to ONNX ({why})")  # noqa: TRY004
        seq = layer.return_sequences
        rank = 3 if seq else 2
        time_major = seq
    if rank == 3 and time_major:
        cur = ex.node("Transpose", [cur], perm=[1, 0, 2])                  # (B, T, F)
    out_shape = model.layers[-1].output_shape
    dims = ["batch", "time"][:len(out_shape) - 1] + [out_shape[-1]]
    ex.nodes.append(helper.make_node("Identity", [cur], ["y"], name="output"))
    y_info = helper.make_tensor_value_info("y", ex.elem, dims)
    graph = helper.make_graph(ex.nodes, model.name or "cylstm", [x_info], [y_info],
                              initializer=ex.inits)
    opsets = [helper.make_opsetid("", _OPSET)]
    if ex.uses_ms:
        opsets.append(helper.make_opsetid(_MS_DOMAIN, 1))
    proto = helper.make_model(graph, producer_name="cylstm", opset_imports=opsets)
    proto.ir_version = _IR_VERSION
    proto.producer_version = __version__
    # The checker has no schema for com.microsoft operators: it checks the rest of the
    # graph and skips DynamicQuantizeLSTM (tests run the graph in ONNX Runtime instead).
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    path = os.fspath(path)
    atomic_write(path, lambda f: f.write(data), prefix=".tmp-", suffix=".onnx")
    return path
