"""ONNX import (:func:`from_onnx`): a graph around the ``LSTM`` operator to cylstm.

Import walks the graph once, from the data input to the first graph output, tracking
*what each tensor means* rather than its values: the data stream carries a label per axis
(batch ``B``, time ``T``, features ``F``, and the LSTM's ``D``irection and ``H``idden axes),
so the Transpose / Squeeze / Reshape plumbing exporters put between operators is checked
to be pure bookkeeping, and every operator becomes a cylstm layer or an error that names
it.  Small constant sub-graphs (the ``Shape -> Gather -> Concat -> Expand`` chains that
build zero initial states) are folded on the way.  The file is untrusted: it is parsed
without following external-data references, and every size is checked before anything is
allocated.  The weight layouts are in :mod:`cylstm.interop.onnx`.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from cylstm.interop._onnx_common import require_onnx as _require_onnx
from cylstm.interop._spec import (
    BidirectionalSpec,
    DenseSpec,
    EmbeddingSpec,
    LSTMSpec,
    ModelSpec,
    build_sequential,
    reorder_gates,
)

if TYPE_CHECKING:  # annotations only
    from cylstm.models import Sequential

__all__ = ["from_onnx", "onnx_to_spec"]

_MAX_ELEMENTS = 1 << 28  # largest constant (in elements) a model may ask us to materialize


# --------------------------------------------------------------------------- values

class _Stream:
    """The data-dependent tensor, described by one (label, size) pair per axis.

    ``size`` is an int, or None for the run-time batch and time extents.  ``reversed``
    means cylstm holds this sequence in reversed time order relative to ONNX (a Keras
    ``go_backwards`` LSTM returns its outputs in processing order).  ``dense`` is the
    DenseSpec whose output this is, while an Add or an activation may still fold into it.
    """

    def __init__(self, axes, reversed=False, dense=None):
        self.axes = tuple(axes)
        self.reversed = reversed
        self.dense = dense

    @property
    def labels(self):
        return tuple(a[0] for a in self.axes)

    def size(self, label):
        return dict(self.axes)[label]

    def __repr__(self):
        return "(" + ", ".join(f"{lab}={'?' if s is None else s}" for lab, s in self.axes) + ")"


class _Fill:
    """A tensor filled with one constant value, of a shape known only at run time."""

    def __init__(self, value):
        self.value = value


class _Sym:
    """A 1-D integer tensor some of whose entries are run-time sizes (a shape vector).

    ``entries`` holds ints, or labels ('B', 'T', ...) standing for the size of that axis.
    """

    def __init__(self, entries):
        self.entries = list(entries)


class _GraphInput:
    """A graph input that is not the data stream (an initial state, sequence lengths)."""

    def __init__(self, name):
        self.name = name


def _err(node, msg):
    where = f"ONNX node {node.name!r} ({node.op_type})" if node.name else \
        f"ONNX operator {node.op_type}"
    return ValueError(f"{where}: {msg}")


# --------------------------------------------------------------------------- loading

def _load_model(path):
    # The argument's type first, so that from_onnx(None) is the same clear TypeError
    # whether or not the onnx package is installed (a ModelProto implies it is).
    is_path = isinstance(path, (str, bytes, os.PathLike))
    if not is_path and type(path).__name__ != "ModelProto":
        raise TypeError(f"path must be a file path or an onnx.ModelProto; got "
                        f"{type(path).__name__}")
    onnx = _require_onnx()
    if isinstance(path, onnx.ModelProto):
        model = path
    else:
        if not is_path:
            raise TypeError(f"path must be a file path or an onnx.ModelProto; got "
                            f"{type(path).__name__}")
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ONNX file at {path!r}")
        try:
            with open(path, "rb") as f:
                data = f.read()
            model = onnx.ModelProto()
            model.ParseFromString(data)
        except Exception as e:
            raise ValueError(f"{path!r} is not a readable ONNX model ({type(e).__name__}: "
                             f"{e})") from e
    if not model.HasField("graph") or len(model.graph.output) == 0:
        raise ValueError("the ONNX model has no graph or no graph outputs (corrupt file?)")
    # Before anything else reads tensors: never follow a file's pointers to other files.
    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            raise ValueError(f"tensor {t.name!r} refers to external data; cylstm only reads "
                             "self-contained ONNX files (save with all tensors inside the "
                             "file)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ValueError(f"the ONNX model is not valid: {e}") from e
    return model


def _tensor_to_array(t, what):
    from onnx import TensorProto, numpy_helper  # defers import cost: onnx is optional

    if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
        raise ValueError(f"{what} {t.name!r} refers to external data; cylstm only reads "
                         "self-contained ONNX files (save with all tensors inside the file)")
    dims = list(t.dims)
    if any(d < 0 for d in dims) or int(np.prod(dims, dtype=np.float64)) > _MAX_ELEMENTS:
        raise ValueError(f"{what} {t.name!r} has an unusable shape {dims}")
    try:
        a = numpy_helper.to_array(t)
    except Exception as e:
        raise ValueError(f"{what} {t.name!r} cannot be decoded: {e}") from e
    if list(a.shape) != dims:
        raise ValueError(f"{what} {t.name!r} holds {a.size} values for shape {dims}")
    return a


def _attrs(node):
    from onnx import helper  # defers import cost: onnx is optional

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


# --------------------------------------------------------------------------- import

class _Importer:
    def __init__(self, model):
        g = model.graph
        self.graph = g
        self.opset = 0
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = imp.version
        self.env = {}
        self.layers = []
        self.n_lstm = 0
        init_names = set()
        for t in g.initializer:
            self.env[t.name] = _tensor_to_array(t, "initializer")
            init_names.add(t.name)
        for t in g.sparse_initializer:
            raise ValueError(f"sparse initializer {t.values.name!r} is not supported")
        self.inputs = [i for i in g.input if i.name not in init_names]

    # -- helpers -------------------------------------------------------------------
    def const(self, node, name, what):
        v = self.env.get(name)
        if not isinstance(v, np.ndarray):
            raise _err(node, f"{what} ({name!r}) must be a constant (an initializer or a "
                             "Constant), not computed from the model input")
        return v

    def stream_in(self, node, idx=0):
        v = self.env.get(node.input[idx])
        if not isinstance(v, _Stream):
            raise _err(node, f"input {idx} ({node.input[idx]!r}) is expected to be the "
                             "data flowing through the model")
        return v

    def clean(self, node, s):
        """Require a stream of only batch / time / feature axes (no raw LSTM D or H)."""
        named = [lab for lab in s.labels if not lab.startswith("?")]  # "?k": not yet known
        if not set(named) <= {"B", "T", "F"} or len(set(named)) != len(named):
            raise _err(node, f"its input has axes {s!r}; expected batch, time and feature "
                             "axes (an LSTM output whose direction axis was not squeezed "
                             "or merged into the features?)")
        return s

    def set_out(self, node, idx, value):
        if idx < len(node.output) and node.output[idx]:
            self.env[node.output[idx]] = value

    # -- the walk ------------------------------------------------------------------
    def needed_nodes(self):
        g = self.graph
        producer = {}
        for n in g.node:
            for o in n.output:
                if o:
                    producer[o] = n
        need, stack, seen = set(), [g.output[0].name], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            n = producer.get(t)
            if n is not None and id(n) not in need:
                need.add(id(n))
                stack.extend(i for i in n.input if i)
        self.needed_tensors = seen
        return [n for n in g.node if id(n) in need]

    def pick_data_input(self, nodes):
        aux = set()  # graph inputs used directly as LSTM sequence_lens / initial states / P
        for n in nodes:
            if n.op_type in ("LSTM", "DynamicQuantizeLSTM"):
                aux.update(i for i in list(n.input)[4:8] if i)
        cands = [i for i in self.inputs if i.name not in aux and i.name in self.needed_tensors]
        if len(cands) != 1:
            raise ValueError("the ONNX graph must have exactly one data input feeding its "
                             f"first output; found {[c.name for c in cands]}")
        inp = cands[0]
        tt = inp.type.tensor_type
        from onnx import TensorProto  # defers import cost: onnx is optional

        floats = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
        ints = (TensorProto.INT64, TensorProto.INT32)
        if tt.elem_type not in floats + ints:
            raise ValueError(f"graph input {inp.name!r} must be a float tensor (or integer token "
                             f"ids); got elem_type {tt.elem_type}")
        self.dtype = np.float64 if tt.elem_type == TensorProto.DOUBLE else np.float32
        self.token_ids = tt.elem_type in ints
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(dims) != (2 if self.token_ids else 3):
            raise ValueError(f"graph input {inp.name!r} must have rank 3 (a batch of "
                             "sequences), or rank 2 for integer token ids; got shape "
                             f"{dims}")
        for i in self.inputs:
            if i is not inp:
                self.env[i.name] = _GraphInput(i.name)
        # Axes are unnamed until an LSTM (or a Dense) tells which is which.
        self.env[inp.name] = _Stream([(f"?{k}", d) for k, d in enumerate(dims)])

    def bind(self, node, s, labels):
        """Name the input's still-anonymous axes (the first consumer decides the layout)."""
        mapping = {}
        for (old, _size), new in zip(s.axes, labels):
            if old.startswith("?"):
                mapping[old] = new
            elif old != new:
                raise _err(node, f"expects axes {labels}; got {s!r}")
        if len(set(mapping.values()) | {lab for lab in s.labels if not lab.startswith("?")}) \
                != len(s.labels):
            raise _err(node, f"cannot read axes {s!r} as {labels}")
        if mapping:
            for v in list(self.env.values()):
                if isinstance(v, _Stream):
                    v.axes = tuple((mapping.get(lab, lab), sz) for lab, sz in v.axes)
        return s

    def run(self):
        nodes = self.needed_nodes()
        self.pick_data_input(nodes)
        uses = {}
        for n in nodes:
            if n.op_type == "Shape":
                continue  # reading a shape is not a second data path
            for i in n.input:
                uses[i] = uses.get(i, 0) + 1
        uses[self.graph.output[0].name] = uses.get(self.graph.output[0].name, 0) + 1
        for n in nodes:
            if n.domain not in ("", "ai.onnx") and (n.domain, n.op_type) != (
                    "com.microsoft", "DynamicQuantizeLSTM"):
                raise _err(n, f"operators of domain {n.domain!r} are not supported (of "
                              "com.microsoft: DynamicQuantizeLSTM only)")
            handler = getattr(self, "op_" + n.op_type, None)
            if handler is None:
                raise _err(n, "this operator is not supported by cylstm's ONNX importer "
                              "(supported: LSTM, DynamicQuantizeLSTM, Gemm, MatMul, Add, "
                              "Relu, Tanh, Sigmoid, Softmax, Transpose, Squeeze, Reshape, Slice "
                              "(time reversal), ReduceSum/Mean/Prod (direction merge), "
                              "Identity, Dropout, and constant shape arithmetic)")
            streams = [i for i in n.input if isinstance(self.env.get(i), _Stream)]
            for i in streams:
                if uses.get(i, 0) > 1:
                    raise _err(n, f"the graph branches at tensor {i!r}; only a chain of "
                                  "layers can become a Sequential model")
            for i in n.input:
                if i and i not in self.env:
                    raise _err(n, f"input {i!r} is neither a graph input, an initializer nor "
                                  "an earlier node's output")
            try:
                handler(n)
            except (ValueError, TypeError):
                raise
            except (IndexError, KeyError, ArithmeticError, AttributeError) as e:
                # a missing input, an out-of-range axis or index: a malformed graph
                raise _err(n, f"malformed operator ({type(e).__name__}: {e})") from e
        out = self.env.get(self.graph.output[0].name)
        if not isinstance(out, _Stream):
            raise ValueError(  # noqa: TRY004 - a property of the file, not of an argument
                "the first graph output does not depend on the data input")
        if self.n_lstm == 0:
            raise ValueError("the ONNX graph has no LSTM operator on the path to its first "
                             "output")
        s = out
        if not set(s.labels) <= {"B", "T", "F"} or s.labels[-1] != "F" or "B" not in s.labels:
            raise ValueError(f"the first graph output has axes {s!r}; cylstm can reproduce "
                             "(batch, [time,] features) outputs only")
        if s.reversed and "T" in s.labels:
            raise ValueError("the first graph output is the sequence of a direction='reverse' "
                             "LSTM; cylstm's go_backwards layer returns it in reversed time "
                             "order, so it cannot reproduce this graph")
        # The graph's input element type is its compute type (float16 graphs run in float32);
        # a token-id graph computes in its embedding table's type.
        first = self.layers[0]
        return ModelSpec(self.layers, getattr(first, "input_dim", None), self.dtype)

    # -- constants and shape arithmetic -------------------------------------------
    def op_Constant(self, n):
        a = _attrs(n)
        from onnx import TensorProto  # defers import cost: onnx is optional

        if "value" in a:
            t = a["value"]
            if not isinstance(t, TensorProto):
                raise _err(n, "unsupported Constant payload")
            v = _tensor_to_array(t, "Constant")
        elif "value_float" in a:
            v = np.array(a["value_float"], np.float32)
        elif "value_floats" in a:
            v = np.array(a["value_floats"], np.float32)
        elif "value_int" in a:
            v = np.array(a["value_int"], np.int64)
        elif "value_ints" in a:
            v = np.array(a["value_ints"], np.int64)
        else:
            raise _err(n, f"unsupported Constant attribute(s) {sorted(a)}")
        self.set_out(n, 0, v)

    def op_Identity(self, n):
        self.set_out(n, 0, self.env[n.input[0]])

    def op_Dropout(self, n):
        if len(n.output) > 1 and n.output[1] and n.output[1] in self.needed_tensors:
            raise _err(n, "its mask output is used; only inference-mode Dropout is supported")
        v = self.env[n.input[0]]
        if isinstance(v, _Stream):
            v = _Stream(v.axes, v.reversed)  # a no-op at inference; ends any Dense folding
        self.set_out(n, 0, v)

    def op_Shape(self, n):
        v = self.env[n.input[0]]
        a = _attrs(n)
        if isinstance(v, _Stream):
            ent = [lab if size is None else size for lab, size in v.axes]
        elif isinstance(v, np.ndarray):
            ent = list(v.shape)
        else:
            raise _err(n, "Shape of this tensor is not known before run time")
        ent = ent[a.get("start", 0):a["end"]] if "end" in a else ent[a.get("start", 0):]
        self.set_out(n, 0, _Sym(ent) if any(isinstance(e, str) for e in ent)
                     else np.array(ent, np.int64))

    def _small_int(self, n, name):
        v = self.env.get(name)
        if isinstance(v, _Sym):
            return v.entries
        if isinstance(v, np.ndarray) and v.dtype.kind in "iu" and v.ndim <= 1:
            return [int(e) for e in np.atleast_1d(v)]
        raise _err(n, f"input {name!r} must be a constant integer vector")

    def op_Gather(self, n):
        data = self.env[n.input[0]]
        idx = self.env[n.input[1]]
        axis = _attrs(n).get("axis", 0)
        if isinstance(data, _Sym) and isinstance(idx, np.ndarray) and axis == 0:
            ent = data.entries
            pick = [ent[int(i)] for i in np.atleast_1d(idx)]
            if idx.ndim == 0:
                out = pick[0]
                self.set_out(n, 0, _Sym([out]) if isinstance(out, str) else
                             np.array(out, np.int64))
                if isinstance(out, str):
                    self.env[n.output[0]].scalar = True
                return
            self.set_out(n, 0, _Sym(pick) if any(isinstance(e, str) for e in pick)
                         else np.array(pick, np.int64))
            return
        if isinstance(data, np.ndarray) and isinstance(idx, _Stream) and axis == 0:
            # an embedding lookup of the token-id input: Embedding(vocabulary, dim)
            if self.layers or len(idx.axes) != 2 or data.ndim != 2 or data.dtype.kind != "f":
                raise _err(n, "only a first-layer embedding lookup (table[ids], ids of shape "
                              "(batch, time), a float (vocabulary, dim) table) is supported")
            self.dtype = np.float64 if data.dtype == np.float64 else np.float32
            self.layers.append(EmbeddingSpec(data.astype(self.dtype), False))
            self.set_out(n, 0, _Stream(list(idx.axes) + [("F", data.shape[1])]))
            return
        if isinstance(data, np.ndarray) and isinstance(idx, np.ndarray):
            if idx.dtype.kind not in "iu" or data.size > _MAX_ELEMENTS:
                raise _err(n, "unsupported constant Gather")
            self.set_out(n, 0, np.asarray(np.take(data, idx.astype(np.int64), axis=axis)))
            return
        raise _err(n, "Gather is supported on constants, shape vectors, and as a first-layer "
                      "embedding lookup table[ids]")

    def op_Unsqueeze(self, n):
        v = self.env[n.input[0]]
        axes = _attrs(n).get("axes") if self.opset < 13 else \
            (self._small_int(n, n.input[1]) if len(n.input) > 1 else None)
        if isinstance(v, _Sym):
            if getattr(v, "scalar", False) and list(axes) == [0]:
                self.set_out(n, 0, _Sym(v.entries))
                return
            raise _err(n, "unsupported Unsqueeze of a shape vector")
        if isinstance(v, _Fill):
            self.set_out(n, 0, v)
            return
        if isinstance(v, np.ndarray):
            out = v
            for ax in sorted(int(a) % (v.ndim + len(axes)) for a in axes):
                out = np.expand_dims(out, ax)
            self.set_out(n, 0, out)
            return
        raise _err(n, "Unsqueeze of the data stream is not supported")

    def op_Concat(self, n):
        vals = [self.env[i] for i in n.input]
        if all(isinstance(v, np.ndarray) for v in vals):
            self.set_out(n, 0, np.concatenate(vals, axis=_attrs(n).get("axis", 0)))
            return
        if all(isinstance(v, (np.ndarray, _Sym)) for v in vals):
            ent = []
            for v in vals:
                if isinstance(v, _Sym):
                    ent += v.entries
                elif v.ndim == 1 and v.dtype.kind in "iu":
                    ent += [int(e) for e in v]
                else:
                    raise _err(n, "unsupported Concat of shape vectors")
            self.set_out(n, 0, _Sym(ent))
            return
        raise _err(n, "Concat is supported on constants and shape vectors only (the model "
                      "must be a chain of layers)")

    def op_Cast(self, n):
        v = self.env[n.input[0]]
        if isinstance(v, np.ndarray):
            from onnx import helper  # defers import cost: onnx is optional

            to = helper.tensor_dtype_to_np_dtype(_attrs(n)["to"])
            self.set_out(n, 0, v.astype(to))
        elif isinstance(v, (_Sym, _Fill)):
            self.set_out(n, 0, v)
        else:
            raise _err(n, "Cast of the data stream is not supported")

    def _fill(self, n, value, shape):
        if isinstance(shape, _Sym):
            return _Fill(value)
        dims = [int(d) for d in np.atleast_1d(shape)]
        if any(d < 0 for d in dims) or int(np.prod(dims, dtype=np.float64)) > _MAX_ELEMENTS:
            raise _err(n, f"refusing to build a constant of shape {dims}")
        return np.broadcast_to(value, dims)

    def op_Expand(self, n):
        v = self.env[n.input[0]]
        shape = self.env[n.input[1]]
        if isinstance(v, np.ndarray) and v.size and np.all(v == v.flat[0]) and \
                isinstance(shape, _Sym):
            self.set_out(n, 0, _Fill(v.flat[0]))
            return
        if isinstance(v, np.ndarray) and isinstance(shape, np.ndarray):
            try:
                dims = np.broadcast_shapes(v.shape, tuple(int(d) for d in shape))
            except ValueError as e:
                raise _err(n, f"cannot expand {v.shape} to {shape.tolist()}") from e
            self.set_out(n, 0, self._fill(n, v, np.array(dims)))
            return
        if isinstance(v, _Fill):
            self.set_out(n, 0, v)
            return
        raise _err(n, "Expand is supported only for broadcasting a constant (initial states)")

    def op_Slice(self, n):
        v = self.env[n.input[0]]
        if self.opset < 10:
            a = _attrs(n)
            starts, ends = list(a["starts"]), list(a["ends"])
            axes, steps = a.get("axes"), None
        else:
            ins = list(n.input) + [""] * (5 - len(n.input))
            starts, ends = self._small_int(n, ins[1]), self._small_int(n, ins[2])
            axes = self._small_int(n, ins[3]) if ins[3] else None
            steps = self._small_int(n, ins[4]) if ins[4] else None
        if any(isinstance(e, str) for e in list(starts) + list(ends)):
            raise _err(n, "slice bounds computed from run-time sizes are not supported")
        rank = len(v.axes) if isinstance(v, _Stream) else (
            1 if isinstance(v, _Sym) else getattr(v, "ndim", 0))
        axes = list(range(len(starts))) if axes is None else [int(x) % max(rank, 1)
                                                               for x in axes]
        steps = [1] * len(starts) if steps is None else list(steps)
        if not (len(starts) == len(ends) == len(axes) == len(steps)) or 0 in steps:
            raise _err(n, "inconsistent starts / ends / axes / steps")
        if isinstance(v, _Fill):
            self.set_out(n, 0, v)
            return
        if isinstance(v, (np.ndarray, _Sym)):
            arr = np.array(v.entries, dtype=object) if isinstance(v, _Sym) else v
            idx = [slice(None)] * arr.ndim
            for st, en, ax, sp in zip(starts, ends, axes, steps):
                idx[ax] = slice(st, en, sp)
            out = arr[tuple(idx)]
            self.set_out(n, 0, _Sym(list(out)) if isinstance(v, _Sym) else out)
            return
        s = self.stream_in(n)
        # The one slice of the data that is layer plumbing: reversing the whole time axis
        # (how exporters, cylstm's included, undo a go_backwards layer's order).
        big = 1 << 31
        if len(axes) == 1 and s.axes[axes[0]][0] == "T" and steps[0] == -1:
            T = s.axes[axes[0]][1]
            from_end = starts[0] == -1 or starts[0] >= big or (T is not None and
                                                             starts[0] >= T - 1)
            to_start = ends[0] <= -big or (T is not None and ends[0] <= -T - 1)
            if from_end and to_start:
                self.set_out(n, 0, _Stream(s.axes, not s.reversed))
                return
        raise _err(n, f"slices the data {s!r}; only a full reversal of the time axis is "
                      "supported")

    def op_ConstantOfShape(self, n):
        t = _attrs(n).get("value")
        value = np.zeros((), np.float32) if t is None else \
            _tensor_to_array(t, "ConstantOfShape value").reshape(())
        self.set_out(n, 0, self._fill(n, value, self.env[n.input[0]]))

    # -- plumbing on the data stream ------------------------------------------------
    def op_Transpose(self, n):
        v = self.env[n.input[0]]
        if isinstance(v, np.ndarray):
            self.set_out(n, 0, np.transpose(v, _attrs(n).get("perm")))
            return
        if isinstance(v, _Fill):
            self.set_out(n, 0, v)
            return
        s = self.stream_in(n)
        perm = _attrs(n).get("perm", list(range(len(s.axes)))[::-1])
        if sorted(perm) != list(range(len(s.axes))):
            raise _err(n, f"perm {perm} does not fit input axes {s!r}")
        self.set_out(n, 0, _Stream([s.axes[p] for p in perm], s.reversed))

    def op_Squeeze(self, n):
        v = self.env[n.input[0]]
        if self.opset < 13:
            axes = _attrs(n).get("axes")
        else:
            axes = self._small_int(n, n.input[1]) if len(n.input) > 1 and n.input[1] else None
        if isinstance(v, np.ndarray):
            self.set_out(n, 0, np.squeeze(v, None if axes is None else tuple(axes)))
            return
        if isinstance(v, _Fill):
            self.set_out(n, 0, v)
            return
        s = self.stream_in(n)
        r = len(s.axes)
        if axes is None:
            if any(sz == 1 for lab, sz in s.axes if lab in ("B", "T")):
                raise _err(n, f"squeezes every size-1 axis of {s!r}, batch or time included; "
                              "give the axes")
            drop = {k for k, (_, sz) in enumerate(s.axes) if sz == 1}
        else:
            drop = {int(a) % r for a in axes}
        for k in drop:
            if s.axes[k][1] != 1:
                raise _err(n, f"squeezes axis {k} of {s!r}, which is not known to have size 1")
        self.set_out(n, 0, self._relabel(_Stream(
            [a for k, a in enumerate(s.axes) if k not in drop], s.reversed)))

    @staticmethod
    def _relabel(s):
        """Once an LSTM output's direction axis is gone, its hidden axis is the features."""
        if "H" in s.labels and "D" not in s.labels:
            s.axes = tuple(("F" if lab == "H" else lab, sz) for lab, sz in s.axes)
        return s

    def op_Reshape(self, n):
        v = self.env[n.input[0]]
        allowzero = _attrs(n).get("allowzero", 0)
        shp = self.env.get(n.input[1])
        if isinstance(v, np.ndarray) and isinstance(shp, np.ndarray):
            tgt = [int(d) for d in shp]
            tgt = [v.shape[k] if d == 0 and not allowzero else d for k, d in enumerate(tgt)]
            self.set_out(n, 0, v.reshape(tgt))
            return
        if isinstance(v, _Fill):
            self.set_out(n, 0, v)
            return
        s = self.stream_in(n)
        if isinstance(shp, _Sym):
            tgt = list(shp.entries)
        elif isinstance(shp, np.ndarray) and shp.ndim == 1 and shp.dtype.kind in "iu":
            tgt = [int(d) for d in shp]
        else:
            raise _err(n, "its shape input must be a constant or computed from Shape")
        # A target 0 copies the input's extent (unless allowzero); a label names one.
        ent = []
        for k, d in enumerate(tgt):
            if isinstance(d, str):
                ent.append(("sym", d))
            elif d == 0 and not allowzero:
                if k >= len(s.axes):
                    raise _err(n, f"shape {tgt} copies axis {k} of {s!r}, which has none")
                ent.append(("copy", None))
            elif d == -1:
                ent.append(("rest", None))
            elif d > 0:
                ent.append(("int", d))
            else:
                raise _err(n, f"invalid target shape {tgt}")
        if sum(e[0] == "rest" for e in ent) > 1:
            raise _err(n, f"invalid target shape {tgt} (two -1 entries)")
        groups = self._match_groups(n, s, ent, tgt)
        axes = []
        for grp in groups:
            labs = [lab for lab, sz in grp if sz != 1 or lab in ("B", "T")]
            sizes = [sz for _, sz in grp]
            total = None if any(sz is None for sz in sizes) else int(np.prod(sizes))
            if not labs:
                labs = [grp[0][0]] if grp else ["1"]
            if len(labs) == 1:
                axes.append((labs[0], total))
            elif labs == ["D", "H"]:
                axes.append(("F", total))  # direction-major: [forward h, backward h]
            else:
                raise _err(n, f"reshapes {s!r} to {tgt}, merging axes {labs}; only the "
                              "LSTM's (direction, hidden) axes may be merged, in that order")
        self.set_out(n, 0, self._relabel(_Stream(axes, s.reversed)))

    def _match_groups(self, n, s, ent, tgt):
        """Split the input axes into consecutive groups, one per target entry."""
        axes = list(s.axes)

        def take(seq, e):
            kind, val = e
            if not seq:
                raise _err(n, f"cannot reshape {s!r} to {tgt}")
            if kind in ("sym", "copy"):
                # exactly one input axis: the one named (or copied by a 0 entry)
                if kind == "sym" and seq[0][0] != val:
                    raise _err(n, f"cannot reshape {s!r} to {tgt}")
                return [seq.pop(0)]
            grp, prod = [], 1
            while seq and (not grp or prod < val):
                if seq[0][1] is None:
                    raise _err(n, f"reshapes {s!r} to {tgt}, mixing a run-time sized axis "
                                  "into a fixed one")
                prod *= seq[0][1]
                grp.append(seq.pop(0))
            if prod != val:
                raise _err(n, f"cannot reshape {s!r} to {tgt}")
            return grp

        if any(e[0] == "rest" for e in ent):
            r = [e[0] for e in ent].index("rest")
            left, right = ent[:r], ent[r + 1:]
            head = [take(axes, e) for e in left]
            rev = axes[::-1]
            tail = []
            for e in right[::-1]:
                grp = take(rev, e)
                tail.insert(0, grp[::-1])
            mid = rev[::-1]
            if not mid:
                raise _err(n, f"cannot reshape {s!r} to {tgt}")
            return head + [mid] + tail
        groups = [take(axes, e) for e in ent]
        if axes:
            raise _err(n, f"cannot reshape {s!r} to {tgt}")
        return groups

    # -- the recurrent core ---------------------------------------------------------
    _LSTM_ATTRS = frozenset({"activation_alpha", "activation_beta", "activations", "clip",
                             "direction", "hidden_size", "input_forget", "layout"})
    # ONNX Runtime's contrib DynamicQuantizeLSTM: the LSTM's attributes but ``layout``
    _DQ_LSTM_ATTRS = _LSTM_ATTRS - {"layout"}

    def op_LSTM(self, n):
        self._lstm(n, self._LSTM_ATTRS, self._float_weights)

    def op_DynamicQuantizeLSTM(self, n):
        self._lstm(n, self._DQ_LSTM_ATTRS, self._int8_weights)

    def _float_weights(self, n, ins, D):
        """The standard LSTM's W [D, 4H, I] and R [D, 4H, H]; not int8 values."""
        W = self.const(n, ins[1], "input W")
        R = self.const(n, ins[2], "input R")
        if W.ndim != 3 or W.shape[0] != D or W.shape[1] % 4 or W.shape[1] == 0:
            raise _err(n, f"input W must have shape ({D}, 4*hidden_size, input_size); got "
                          f"{W.shape}")
        H = W.shape[1] // 4
        if R.shape != (D, 4 * H, H):
            raise _err(n, f"input R must have shape {(D, 4 * H, H)}; got {R.shape}")
        return W, R, False

    def _int8_weights(self, n, ins, D):
        """DynamicQuantizeLSTM's W [D, I, 4H] and R [D, H, 4H] (int8 or uint8), dequantized
        ``(q - zero_point) * scale`` (scale and zero point [D] per tensor or [D, 4H] per
        output column) into the standard LSTM's float64 W [D, 4H, I], R [D, 4H, H].  The
        flag says whether the weights are cylstm's int8 values: ``q - zero_point`` in
        [-127, 127] times the per-column scale :func:`cylstm.quantization.quantize_int8`
        gives (what :func:`to_onnx` writes, as uint8 with zero point 128)."""
        from cylstm.quantization import dequantize_int8, quantize_int8  # (a leaf module)

        ins = ins + [""] * (12 - len(ins))
        W = self.const(n, ins[1], "input W")
        R = self.const(n, ins[2], "input R")
        if W.ndim != 3 or W.shape[0] != D or W.shape[2] % 4 or W.shape[2] == 0:
            raise _err(n, f"input W must have shape ({D}, input_size, 4*hidden_size); got "
                          f"{W.shape}")
        H = W.shape[2] // 4
        if R.shape != (D, H, 4 * H):
            raise _err(n, f"input R must have shape {(D, H, 4 * H)}; got {R.shape}")
        if W.dtype not in (np.int8, np.uint8) or R.dtype != W.dtype:
            raise _err(n, f"inputs W and R must both be int8 or both uint8; got {W.dtype} and "
                          f"{R.dtype}")
        out, on_grid = [], True
        for q, k, nm in ((W, 8, "W"), (R, 10, "R")):
            if not ins[k] or not ins[k + 1]:
                raise _err(n, f"input {nm}_scale and {nm}_zero_point are required")
            scale = self.const(n, ins[k], f"input {nm}_scale").astype(np.float64)
            zp = self.const(n, ins[k + 1], f"input {nm}_zero_point")
            for v, what in ((scale, "scale"), (zp, "zero_point")):
                if v.shape not in ((D,), (D, 4 * H)):
                    raise _err(n, f"input {nm}_{what} must have shape ({D},) (per tensor) or "
                                  f"({D}, {4 * H}) (per output channel); got {v.shape}")
            if zp.dtype != q.dtype:
                raise _err(n, f"input {nm}_zero_point must be {q.dtype} as {nm}; got {zp.dtype}")
            if not np.all(np.isfinite(scale)):
                raise _err(n, f"input {nm}_scale holds NaN or infinite values")
            # broadcast [D] or [D, 4H] over the rows of [D, rows, 4H]
            sc = scale.reshape(D, 1, -1)
            z = zp.astype(np.float64).reshape(D, 1, -1)
            w = (q.astype(np.float64) - z) * sc                          # [D, rows, 4H]
            if not np.all(np.abs(w) <= np.finfo(np.float32).max):
                raise _err(n, f"input {nm}_scale makes the dequantized weights overflow "
                              f"float32 (max |w| {np.abs(w).max():.3g})")
            if on_grid:
                for d in range(D):
                    # cylstm's layout: rows stay, columns become i, f, c, o (a permutation:
                    # the grid test does not depend on the column order)
                    w32 = w[d].astype(np.float32)
                    on_grid = on_grid and bool(np.array_equal(
                        dequantize_int8(*quantize_int8(w32)), w32))
            out.append(w.transpose(0, 2, 1))                             # [D, 4H, rows]
        return out[0], out[1], on_grid

    def _lstm(self, n, known_attrs, weights):
        """An ``LSTM`` or ``DynamicQuantizeLSTM`` node; ``weights(n, ins, D)`` gives the
        standard LSTM's float W, R and whether they are int8 values."""
        a = _attrs(n)
        for k in a:
            if k not in known_attrs:
                raise _err(n, f"unknown {n.op_type} attribute {k!r}")
        direction = _s(a.get("direction", b"forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            raise _err(n, f"unsupported direction {direction!r}")
        D = 2 if direction == "bidirectional" else 1
        if "clip" in a:
            raise _err(n, f"attribute clip={a['clip']} (cell clipping) is not supported")
        if a.get("input_forget", 0):
            raise _err(n, "attribute input_forget=1 (coupled input-forget gate) is not "
                          "supported")
        if "activations" in a:
            acts = [_s(x).lower() for x in a["activations"]]
            if acts != ["sigmoid", "tanh", "tanh"] * D:
                raise _err(n, f"attribute activations={[_s(x) for x in a['activations']]} "
                              "is not supported (only the default Sigmoid, Tanh, Tanh)")
        for k in ("activation_alpha", "activation_beta"):
            if k in a:
                raise _err(n, f"attribute {k} is not supported (only the default "
                              "activations)")
        layout = a.get("layout", 0)
        if layout not in (0, 1):
            raise _err(n, f"unsupported layout={layout}")
        ins = list(n.input) + [""] * (8 - len(n.input))
        if ins[7]:
            P = self.env[ins[7]]
            if not (isinstance(P, np.ndarray) and not np.any(P)) and not (
                    isinstance(P, _Fill) and not np.any(P.value)):
                raise _err(n, "peephole weights (input P) are not supported")
        s = self.stream_in(n)
        if len(s.axes) != 3:
            raise _err(n, f"input X must have rank 3; got axes {s!r}")
        self.bind(n, s, ("T", "B", "F") if layout == 0 else ("B", "T", "F"))
        self.clean(n, s)
        W, R, int8 = weights(n, ins, D)
        H = W.shape[1] // 4
        if "hidden_size" in a and a["hidden_size"] != H:
            raise _err(n, f"hidden_size={a['hidden_size']} but W has shape {W.shape}")
        I = W.shape[2]
        if s.size("F") is not None and s.size("F") != I:
            raise _err(n, f"input X has {s.size('F')} features but W has shape {W.shape}")
        Bv = None
        if ins[3]:
            Bv = self.const(n, ins[3], "input B")
            if Bv.shape != (D, 8 * H):
                raise _err(n, f"input B must have shape {(D, 8 * H)}; got {Bv.shape}")
        # Inputs fed at run time cannot be honoured by a Sequential model, whose predict
        # takes the data alone: taking them as zeros / full lengths would run silently
        # wrong (0.12-0.16 off ONNX Runtime for non-zero states), so they are refused.
        fed = [f"{ins[k]!r} ({nm})" for k, nm in ((4, "sequence_lens"), (5, "initial_h"),
                                                  (6, "initial_c"))
               if ins[k] and isinstance(self.env[ins[k]], _GraphInput)]
        if fed:
            raise _err(n, f"graph input(s) {', '.join(fed)} are fed at run time, but the "
                          "cylstm model built from this graph takes only the data input, so "
                          "it could not honour them; export the graph with zero initial "
                          "states (constants, or no initial_h / initial_c) and without "
                          "sequence_lens (a Masking or Embedding(mask_zero=True) layer in "
                          "cylstm gives per-sample lengths)")
        if ins[4]:
            sl = self.env[ins[4]]
            full = isinstance(sl, np.ndarray) and sl.size and s.size("T") is not None and \
                np.all(sl == s.size("T"))
            if not full:
                raise _err(n, "a constant or computed sequence_lens is not supported (only "
                              "one that equals the fixed time length)")
        for k, nm in ((5, "initial_h"), (6, "initial_c")):
            if ins[k]:
                v = self.env[ins[k]]
                zero = (isinstance(v, np.ndarray) and not np.any(v)) or (
                    isinstance(v, _Fill) and not np.any(v.value))
                if not zero:
                    raise _err(n, f"input {nm} must be zeros (cylstm's layers start from a "
                                  "zero state)")
        outs = list(n.output) + [""] * (3 - len(n.output))
        used = [bool(o) and o in self.needed_tensors for o in outs]
        if used[2]:
            raise _err(n, "its cell-state output Y_c is used; cylstm layers output h only")
        if used[0] and used[1]:
            raise _err(n, "both its Y and Y_h outputs are used; a Sequential layer has one "
                          "output")
        seq = used[0]
        dtype = self.dtype

        def spec(d, go_backwards):
            k = reorder_gates(W[d].astype(np.float64), "iofc").T
            r = reorder_gates(R[d].astype(np.float64), "iofc").T
            b = None
            if Bv is not None:
                b = reorder_gates(Bv[d, :4 * H].astype(np.float64) + Bv[d, 4 * H:], "iofc")
            return LSTMSpec(k.astype(dtype), r.astype(dtype),
                            None if b is None else b.astype(dtype),
                            return_sequences=seq, go_backwards=go_backwards,
                            quantized=int8 and dtype == np.float32)

        # cylstm (Keras) LSTMs with go_backwards return their sequence in processing order,
        # so a reverse layer leaves the stream time-reversed relative to ONNX; a following
        # forward layer then reads it backwards to undo that.
        if direction == "forward":
            self.layers.append(spec(0, s.reversed))
            rev_out = False
        elif direction == "reverse":
            self.layers.append(spec(0, not s.reversed))
            rev_out = True
        else:
            if s.reversed:
                raise _err(n, "a bidirectional LSTM reading the output sequence of a "
                              "direction='reverse' LSTM cannot be expressed with cylstm layers")
            self.layers.append(BidirectionalSpec(spec(0, False), spec(1, True), "concat"))
            rev_out = False
        self.n_lstm += 1
        Bsz, Tsz = s.size("B"), s.size("T")
        if layout == 0:
            y_axes = [("T", Tsz), ("D", D), ("B", Bsz), ("H", H)]
            yh_axes = [("D", D), ("B", Bsz), ("H", H)]
        else:
            y_axes = [("B", Bsz), ("T", Tsz), ("D", D), ("H", H)]
            yh_axes = [("B", Bsz), ("D", D), ("H", H)]
        self.set_out(n, 0, _Stream(y_axes, rev_out))
        self.set_out(n, 1, _Stream(yh_axes, False))

    def _reduce_directions(self, n, mode):
        """Sum / mean / product over the direction axis: a Bidirectional's merge mode."""
        s = self.stream_in(n)
        a = _attrs(n)
        if "axes" in a:
            axes = list(a["axes"])
        elif len(n.input) > 1 and n.input[1]:
            axes = self._small_int(n, n.input[1])
        else:
            axes = None
        if a.get("noop_with_empty_axes", 0) and not axes:
            self.set_out(n, 0, _Stream(s.axes, s.reversed))
            return
        r = len(s.axes)
        axes = list(range(r)) if axes is None else [int(x) % r for x in axes]
        last = self.layers[-1] if self.layers else None
        if len(axes) != 1 or s.axes[axes[0]] != ("D", 2) or not isinstance(
                last, BidirectionalSpec) or last.merge_mode != "concat":
            raise _err(n, f"reduces axes {axes} of {s!r}; only merging the two directions of "
                          "a bidirectional LSTM is supported")
        last.merge_mode = mode
        ax = axes[0]
        keep = a.get("keepdims", 1)
        new = [(lab, sz) for k, (lab, sz) in enumerate(s.axes) if k != ax]
        if keep:
            new.insert(ax, ("D", 1))
        out = _Stream(new, s.reversed)
        if not keep:
            out = self._relabel(out)
        self.set_out(n, 0, out)

    def op_ReduceSum(self, n):
        self._reduce_directions(n, "sum")

    def op_ReduceMean(self, n):
        self._reduce_directions(n, "ave")

    def op_ReduceProd(self, n):
        self._reduce_directions(n, "mul")

    # -- heads ----------------------------------------------------------------------
    def _dense(self, n, s, kernel, bias):
        s = self.clean(n, s)
        if s.labels[-1] != "F":
            if s.labels[-1].startswith("?"):
                self.bind(n, s, s.labels[:-1] + ("F",))
            else:
                raise _err(n, f"multiplies axes {s!r} by a matrix; only the feature (last) "
                              "axis may be")
        if s.size("F") is not None and s.size("F") != kernel.shape[0]:
            raise _err(n, f"weight of shape {kernel.shape} does not fit {s.size('F')} input "
                          "features")
        d = DenseSpec(kernel, bias, "linear")
        self.layers.append(d)
        axes = list(s.axes[:-1]) + [("F", kernel.shape[1])]
        return _Stream(axes, s.reversed, dense=d)

    def op_Gemm(self, n):
        a = _attrs(n)
        s = self.stream_in(n, 0)
        if len(s.axes) != 2:
            raise _err(n, f"input A must be 2-D (batch, features); got {s!r}")
        if a.get("transA", 0):
            raise _err(n, "transA=1 is not supported")
        Bm = self.const(n, n.input[1], "input B").astype(np.float64)
        if Bm.ndim != 2:
            raise _err(n, f"input B must be 2-D; got shape {Bm.shape}")
        if a.get("transB", 0):
            Bm = Bm.T
        kernel = a.get("alpha", 1.0) * Bm
        bias = None
        if len(n.input) > 2 and n.input[2]:
            C = self.const(n, n.input[2], "input C").astype(np.float64)
            bias = self._bias_vector(n, C, kernel.shape[1]) * a.get("beta", 1.0)
        self.set_out(n, 0, self._dense(n, s, kernel, bias))

    def op_MatMul(self, n):
        if isinstance(self.env.get(n.input[1]), _Stream):
            raise _err(n, "the data must be the left operand of MatMul (x @ W)")
        s = self.stream_in(n, 0)
        Wm = self.const(n, n.input[1], "input B").astype(np.float64)
        if Wm.ndim != 2:
            raise _err(n, f"the weight must be a 2-D matrix; got shape {Wm.shape}")
        self.set_out(n, 0, self._dense(n, s, Wm, None))

    def _bias_vector(self, n, c, units):
        if c.size == 1:
            return np.full(units, float(c.reshape(())))
        if c.shape[-1] != units or any(d != 1 for d in c.shape[:-1]):
            raise _err(n, f"bias of shape {c.shape} is not a per-unit vector of {units}")
        return c.reshape(units)

    def op_Add(self, n):
        vals = [self.env[i] for i in n.input]
        if all(isinstance(v, np.ndarray) for v in vals):
            self.set_out(n, 0, vals[0] + vals[1])
            return
        k = 0 if isinstance(vals[0], _Stream) else 1
        s, c = vals[k], vals[1 - k]
        if not isinstance(s, _Stream) or not isinstance(c, np.ndarray):
            raise _err(n, "only adding a constant bias to a matrix product is supported")
        d = s.dense
        if d is None or d.activation != "linear":
            raise _err(n, "adds a constant that does not follow a MatMul/Gemm; only a "
                          "Dense-style bias is supported")
        units = d.kernel.shape[1]
        if c.ndim > len(s.axes):
            raise _err(n, f"bias of shape {c.shape} broadcasts beyond the data's rank")
        b = self._bias_vector(n, c.astype(np.float64), units)
        d.bias = b if d.bias is None else d.bias + b
        self.set_out(n, 0, _Stream(s.axes, s.reversed, dense=d))

    def _activation(self, n, name):
        s = self.stream_in(n)
        d = s.dense
        if d is None or d.activation != "linear":
            raise _err(n, f"{n.op_type} must directly follow a MatMul/Gemm (+ Add) head; "
                          "cylstm has no standalone activation layer to map it to")
        d.activation = name
        self.set_out(n, 0, _Stream(s.axes, s.reversed, dense=d))

    def op_Relu(self, n):
        self._activation(n, "relu")

    def op_Tanh(self, n):
        self._activation(n, "tanh")

    def op_Sigmoid(self, n):
        self._activation(n, "sigmoid")

    def op_Softmax(self, n):
        s = self.stream_in(n)
        r = len(s.axes)
        axis = _attrs(n).get("axis", -1 if self.opset >= 13 else 1)
        # Before opset 13 Softmax flattens from `axis`: the same as a last-axis softmax only
        # when `axis` is the last axis.
        if axis % r != r - 1:
            raise _err(n, f"axis={axis} on a rank-{r} tensor; only a softmax over the last "
                          "(feature) axis is supported")
        self._activation(n, "softmax")


def from_onnx(path: str | os.PathLike | Any, *, name: str | None = None) -> Sequential:
    """Build a cylstm ``Sequential`` from an ONNX file whose core is the ``LSTM`` operator.

    Parameters
    ----------
    path : str, os.PathLike or onnx.ModelProto
        The model.  It is read with the ``onnx`` package, without following any
        external-data references (such files are refused).
    name : str, optional
        Name of the returned model.

    Returns
    -------
    cylstm.models.Sequential
        Reproduces the graph's first output.  ``predict`` takes batch-first x (batch,
        time, features) and returns batch-first results, whatever the graph's layout
        (a ``layout=0`` graph takes and gives time-major tensors: transpose them).

    Supported graphs
    ----------------
    A chain from one float input of rank 3 (or integer token ids of rank 2, read by a
    first ``Gather`` from a constant table: an ``Embedding``) to the first output made of:

    * ``LSTM`` (any opset) with direction forward, reverse or bidirectional (becoming
      ``LSTM``, ``LSTM(go_backwards=True)`` or ``Bidirectional(merge_mode='concat')``),
      ``layout`` 0 or 1, using either its ``Y`` (``return_sequences=True``) or its ``Y_h``
      output.  ``initial_h`` / ``initial_c`` must be zero constants (what
      ``torch.onnx.export`` emits when no state is passed); a ``sequence_lens``
      constant must equal the fixed time length.  ``sequence_lens``, ``initial_h`` or
      ``initial_c`` fed as graph inputs are refused, naming them: ``predict`` takes the
      data alone and could not honour them;
    * ONNX Runtime's ``com.microsoft.DynamicQuantizeLSTM`` (what :func:`to_onnx` writes
      for int8 LSTMs), under the same rules (it has no ``layout``): its int8 or uint8
      ``W`` [D, I, 4H] and ``R`` [D, H, 4H] are dequantized, ``(q - zero_point) *
      scale`` with per-tensor [D] or per-channel [D, 4H] scales and zero points, into
      a float model.  When the weights are exactly cylstm's int8 values
      (:func:`cylstm.quantization.quantize_int8` of the dequantized weights gives them
      back; whatever the zero point), the layers come back quantized
      (``quantization_mode == "int8"``, bit for bit).  ONNX Runtime's run-time
      quantization of the activations is not reproduced;
    * ``Transpose``, ``Squeeze``, ``Reshape``, ``Identity``, ``Dropout`` that only
      rearrange axes; ``ReduceSum`` / ``ReduceMean`` / ``ReduceProd`` over a bidirectional
      LSTM's direction axis (merge modes sum / ave / mul); a ``Slice`` reversing the whole
      time axis (how a ``go_backwards`` sequence is undone); and constant shape arithmetic
      (``Shape``, ``Gather``, ``Concat``, ``Unsqueeze``, ``Slice``, ``Expand``,
      ``ConstantOfShape``, ``Cast``);
    * heads ``Gemm`` or ``MatMul`` (+ ``Add``) on the feature axis, optionally followed by
      ``Relu``, ``Tanh``, ``Sigmoid`` or a last-axis ``Softmax`` (each becoming a
      ``Dense``).

    Other graph outputs (such as the final states ``torch.onnx.export`` adds) are not
    reproduced.  Every file :func:`to_onnx` writes imports back.

    Raises
    ------
    ValueError
        For a corrupt file, or an operator, attribute or input outside the above: peephole
        weights ``P`` (non-zero), ``clip``, ``input_forget=1``, non-default
        ``activations``, run-time ``initial_h`` / ``initial_c`` / ``sequence_lens``
        inputs, a used ``Y_c``, a branching graph... The message names the operator and
        the attribute or input.
    """
    model = _load_model(path)
    spec = _Importer(model).run()
    return build_sequential(spec, name=name)


def onnx_to_spec(path):
    """The :class:`ModelSpec` :func:`from_onnx` would build (for tests and tooling)."""
    return _Importer(_load_model(path)).run()
