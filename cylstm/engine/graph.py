"""Symbolic tensors, graph nodes, and the executor of a functional model.

Calling a layer on a :class:`KerasTensor` (``LSTM(8)(Input(shape=(None, 3)))``)
builds the layer for that shape and records a :class:`Node`: the layer, the
tensors it was called on and the tensors it returned.  ``Model(inputs,
outputs)`` walks the nodes back from the outputs once and keeps them as a
:class:`GraphPlan`: a flat list of steps in topological order, each reading
and writing numbered value slots.  A forward pass is one loop over that list;
the backward pass is the same list in reverse, summing the gradients of values
used more than once.  No graph is walked per call.

Per-call state: cylstm's layers keep what their backward needs in ``_cache``
(one slot per layer).  A layer called at several nodes (a shared layer) would
overwrite it, so every step stores its layer's cache after the forward and
puts it back before the backward; the weight gradients of a shared layer are
summed over its nodes.
"""
import numpy as np

__all__ = ["GraphPlan", "KerasTensor", "Node", "is_symbolic", "symbolic_call"]

SINGLE, MERGE, RNN, BIDI, MODEL = range(5)


def _shape_str(shape):
    if isinstance(shape, list):
        return "[" + ", ".join(_shape_str(s) for s in shape) + "]"
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


class KerasTensor:
    """A symbolic tensor: the shape and dtype of a value in a functional model.

    Made by :func:`cylstm.Input` and by calling a layer on symbolic tensors.
    It holds no values; build ``cylstm.Model(inputs, outputs)`` and call
    ``predict`` or the model itself on arrays.

    Attributes
    ----------
    shape : tuple
        With the batch axis first (None where unknown).
    dtype : numpy dtype or None
        None: the model's float dtype.
    name : str
    """

    def __init__(self, shape, dtype=None, name=None, history=None):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.name = name
        # (layer, node, index of this tensor among the node's outputs); None for an Input
        self._keras_history = history

    @property
    def ndim(self):
        return len(self.shape)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            f"{self!r} is a symbolic tensor and has no values; build "
            "cylstm.Model(inputs, outputs) and call the model (or predict) on arrays")

    def __len__(self):
        raise TypeError(f"{self!r} is a symbolic tensor and has no length")

    def __repr__(self):
        return f"<KerasTensor shape={_shape_str(self.shape)} name={self.name}>"


class Node:
    """One call of a layer on symbolic tensors."""

    def __init__(self, layer, kind, inputs, states, outputs, list_input, training):
        self.layer = layer
        self.kind = kind
        self.inputs = inputs          # KerasTensors the layer was called on
        self.states = states          # initial_state tensors (LSTM/Bidirectional) or None
        self.outputs = outputs        # flat list of KerasTensors returned
        self.list_input = list_input  # the call got a list (merge layers, models)
        self.training = training

    @property
    def inbound(self):
        return self.inputs + (self.states or [])


def is_symbolic(inputs, initial_state=None):
    """True if the call gets symbolic tensors (then it builds a graph node)."""
    if isinstance(inputs, KerasTensor):
        return True
    if isinstance(inputs, (list, tuple)) and inputs and any(
            isinstance(t, KerasTensor) for t in inputs):
        return True
    if isinstance(inputs, dict) and any(isinstance(t, KerasTensor) for t in inputs.values()):
        return True
    return isinstance(initial_state, (list, tuple)) and any(
        isinstance(t, KerasTensor) for t in initial_state)


def _desc(layer):
    return f"layer {layer.name!r} ({type(layer).__name__})"


def _tensors(what, layer, items):
    out = []
    for t in items:
        if not isinstance(t, KerasTensor):
            raise TypeError(f"{_desc(layer)}: {what} mixes symbolic tensors and "
                            f"{type(t).__name__}; call a layer on Input(...) tensors or on "
                            "arrays, not both")
        out.append(t)
    return out


def _float_dtype(tensors):
    for t in tensors:
        if t.dtype is not None and np.dtype(t.dtype).kind == "f":
            return np.dtype(t.dtype)
    return None


def _feature_compatible(built, shape):
    return built[-1] is None or shape[-1] is None or built[-1] == shape[-1]


def _check_reuse(layer, shape):
    """A built layer called again: its weights fix the feature axis (and the rank)."""
    from cylstm import layers as L  # breaks a cycle: cylstm.layers imports this module

    built = layer._build_shape
    if built is None or isinstance(layer, L.Embedding):
        return
    any_rank = isinstance(layer, (L.Dense, L.Dropout, L.Activation))
    ok = (len(shape) >= 2 if any_rank else len(shape) == len(built)) and \
        _feature_compatible(built, shape)
    if isinstance(layer, L.RepeatVector):
        ok = len(shape) == 2
    if not ok:
        raise ValueError(f"{_desc(layer)} was built for inputs of shape {_shape_str(built)} "
                         f"and cannot be called on inputs of shape {_shape_str(shape)} (a "
                         "shared layer needs compatible inputs at every call)")


def _build(layer, shape):
    try:
        layer.build(shape)
    except ValueError as e:
        raise ValueError(f"{_desc(layer)} cannot take inputs of shape {_shape_str(shape)}: "
                         f"{e}") from e


def _check_states(layer, states, batch_shape, n_units):
    if len(states) != len(n_units):
        raise ValueError(f"{_desc(layer)}: initial_state must be a list of {len(n_units)} "
                         f"tensors; got {len(states)}")
    for k, (t, u) in enumerate(zip(states, n_units)):
        if len(t.shape) != 2 or (t.shape[1] is not None and t.shape[1] != u):
            raise ValueError(f"{_desc(layer)}: initial_state[{k}] must have shape "
                             f"(batch, {u}); got {_shape_str(t.shape)}")


def symbolic_call(layer, inputs, initial_state=None, training=None, mask=None):
    """Record a call of ``layer`` on symbolic tensors; return its symbolic output(s)."""
    from cylstm import layers as L  # breaks a cycle: cylstm.layers imports this module
    from cylstm.engine.model import Model  # breaks a cycle: cylstm.engine.model imports this module

    if mask is not None:
        raise NotImplementedError(f"{_desc(layer)}: an explicit mask= on symbolic tensors is "
                                  "not supported; masks flow from Masking and "
                                  "Embedding(mask_zero=True) layers")
    if isinstance(layer, Model):
        return _call_model(layer, inputs, training)
    is_merge = getattr(layer, "_is_merge", False)
    list_input = isinstance(inputs, (list, tuple))
    if is_merge:
        if not list_input:
            raise ValueError(f"{_desc(layer)} merges a list of tensors; got one tensor "
                             f"{inputs!r}")
        flat = _tensors("the input list", layer, inputs)
    elif list_input:
        if len(inputs) != 1:
            raise ValueError(f"{_desc(layer)} takes one input tensor; got a list of "
                             f"{len(inputs)} (merge them first, e.g. with Concatenate)")
        flat = _tensors("the input", layer, inputs)
    elif isinstance(inputs, KerasTensor):
        flat = [inputs]
    else:
        raise TypeError(f"{_desc(layer)}: inputs must be symbolic tensors; got "
                        f"{type(inputs).__name__}")
    states = None
    if initial_state is not None:
        if not isinstance(layer, (L.LSTM, L.Bidirectional)):
            raise TypeError(f"{_desc(layer)} takes no initial_state")
        if isinstance(initial_state, KerasTensor):
            initial_state = [initial_state]
        states = _tensors("initial_state", layer, list(initial_state))
    if not layer.built and layer._dtype is None:
        fdt = _float_dtype(flat)
        if fdt is not None:
            layer._set_dtype(fdt)
    if is_merge:
        shapes = [t.shape for t in flat]
        if not layer.built:
            layer.build(shapes)  # names the layer and the shapes when they do not fit
        else:
            layer._check_shapes(shapes)
        out_shape = layer.compute_output_shape(shapes)
        kind = MERGE
    else:
        shape = flat[0].shape
        if not layer.built:
            _build(layer, shape)
        else:
            _check_reuse(layer, shape)
        out_shape = layer.compute_output_shape(shape)
        kind = SINGLE
        if isinstance(layer, L.LSTM):
            if states is not None:
                _check_states(layer, states, shape, [layer.units] * 2)
            if states is not None or layer.return_state:
                kind = RNN
        elif isinstance(layer, L.Bidirectional):
            if states is not None:
                f, b = layer.forward_layer.units, layer.backward_layer.units
                _check_states(layer, states, shape, [f, f, b, b])
            if states is not None or layer.return_state or layer.merge_mode is None:
                kind = BIDI
    multi = isinstance(out_shape, list)
    shapes_out = out_shape if multi else [out_shape]
    node = Node(layer, kind, flat, states, [], list_input,
                training if isinstance(layer, L.Dropout) else None)
    dt = layer.dtype
    for k, s in enumerate(shapes_out):
        name = layer.name if len(shapes_out) == 1 else f"{layer.name}_{k}"
        node.outputs.append(KerasTensor(s, dt, name, (layer, node, k)))
    nodes = layer.__dict__.setdefault("_inbound_nodes", [])
    nodes.append(node)
    return list(node.outputs) if multi else node.outputs[0]


def _call_model(model, inputs, training):
    """A model used as a layer: one node whose outputs mirror the model's outputs."""
    names = model.input_names
    if isinstance(inputs, dict):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ValueError(f"model {model.name!r} needs inputs {names}; the dict lacks "
                             f"{missing}")
        flat = [inputs[n] for n in names]
    elif isinstance(inputs, (list, tuple)):
        flat = list(inputs)
    else:
        flat = [inputs]
    flat = _tensors("the input", model, flat)
    if len(flat) != len(names):
        raise ValueError(f"model {model.name!r} takes {len(names)} input(s) {names}; got "
                         f"{len(flat)}")
    if not model.built:
        if len(flat) != 1:
            raise ValueError(f"model {model.name!r} is not built")
        if model._dtype is None and _float_dtype(flat) is not None:
            model._dtype = _float_dtype(flat)
        model.build(flat[0].shape)
    for t, spec in zip(flat, model._input_specs()):
        want = spec[1]
        if len(t.shape) != len(want) or not all(
                a is None or b is None or a == b for a, b in zip(want[1:], t.shape[1:])):
            raise ValueError(f"model {model.name!r} expects input {spec[0]!r} of shape "
                             f"{_shape_str(want)}; got {_shape_str(t.shape)}")
    node = Node(model, MODEL, flat, None, [], isinstance(inputs, (list, tuple, dict)), None)
    dt = model.dtype
    out_shapes = model._output_shapes()
    batch = flat[0].shape[0]
    for k, (oname, s) in enumerate(zip(model.output_names, out_shapes)):
        node.outputs.append(KerasTensor((batch,) + tuple(s[1:]), dt, oname, (model, node, k)))
    model.__dict__.setdefault("_inbound_nodes", []).append(node)
    return model._pack(list(node.outputs))


# ---------------------------------------------------------------------------- caches
def cache_get(layer):
    """What ``layer`` keeps between its forward and backward (sub-layers included)."""
    sub = getattr(layer, "_caches_get", None)
    if sub is not None:
        return sub()
    c = layer._cache
    fl = getattr(layer, "forward_layer", None)
    if fl is not None:
        return (c, fl._cache, layer.backward_layer._cache)
    inner = getattr(layer, "layer", None)
    if inner is not None and hasattr(inner, "_cache"):
        return (c, cache_get(inner))
    return c


def cache_set(layer, c):
    sub = getattr(layer, "_caches_set", None)
    if sub is not None:
        sub(c)
        return
    fl = getattr(layer, "forward_layer", None)
    if fl is not None:
        if c is None:
            layer._cache = fl._cache = layer.backward_layer._cache = None
        else:
            layer._cache, fl._cache, layer.backward_layer._cache = c
        return
    inner = getattr(layer, "layer", None)
    if inner is not None and hasattr(inner, "_cache"):
        layer._cache, ic = (None, None) if c is None else c
        cache_set(inner, ic)
        return
    layer._cache = c


def param_items(layer):
    return layer._param_items()


# ---------------------------------------------------------------------------- plan
class _Step:
    __slots__ = ("cache", "i0", "index", "ins", "kind", "layer", "node", "o0", "outs",
                 "plain", "shared", "sts", "training", "yshape")


def _topo_nodes(outputs, inputs):
    """Nodes between ``inputs`` and ``outputs``, producers before consumers."""
    input_ids = {id(t) for t in inputs}

    def producer(t):
        if id(t) in input_ids:
            return None
        if t._keras_history is None:
            raise _disconnected(t, inputs)
        return t._keras_history[1]

    order, done = [], set()
    for out in outputs:
        first = producer(out)
        if first is None or id(first) in done:
            continue
        stack = [(first, iter(first.inbound))]
        while stack:
            node, it = stack[-1]
            for src in it:
                p = producer(src)
                if p is not None and id(p) not in done:
                    stack.append((p, iter(p.inbound)))
                    break
            else:
                stack.pop()
                if id(node) not in done:
                    done.add(id(node))
                    order.append(node)
    return order


def _disconnected(t, inputs):
    names = [i.name for i in inputs]
    return ValueError(
        f"the graph is disconnected: the outputs depend on input {t.name!r} of shape "
        f"{_shape_str(t.shape)}, which is not one of the model's inputs {names}; pass it in "
        "inputs= (or build the outputs from the given inputs)")


class GraphPlan:
    """A functional model's graph as a list of steps over numbered value slots.

    Parameters
    ----------
    inputs, outputs : lists of KerasTensor
    """

    def __init__(self, inputs, outputs):
        self.inputs, self.outputs = list(inputs), list(outputs)
        nodes = _topo_nodes(self.outputs, self.inputs)
        slot = {}

        def sid(t):
            k = id(t)
            if k not in slot:
                slot[k] = len(slot)
            return slot[k]

        self.in_slots = tuple(sid(t) for t in self.inputs)
        steps = []
        for index, node in enumerate(nodes):
            st = _Step()
            st.index = index
            st.kind, st.layer, st.node = node.kind, node.layer, node
            st.ins = tuple(sid(t) for t in node.inputs)
            st.sts = tuple(sid(t) for t in (node.states or ()))
            st.outs = tuple(sid(t) for t in node.outputs)
            st.i0, st.o0 = st.ins[0], st.outs[0]
            st.training = node.training
            st.plain = (st.kind == SINGLE and not hasattr(st.layer, "forward_layer")
                        and not hasattr(st.layer, "layer") and st.training is None)
            st.cache = None
            st.shared = ()
            st.yshape = None
            steps.append(st)
        self.out_slots = tuple(sid(t) for t in self.outputs)
        self.n_slots = len(slot)
        self.steps = steps
        self.nodes = nodes
        layers, seen = [], set()
        for node in nodes:
            if id(node.layer) not in seen:
                seen.add(id(node.layer))
                layers.append(node.layer)
        self.layers = layers
        used = set()
        for st in steps:
            used.update(st.ins)
            used.update(st.sts)
        used.update(self.out_slots)
        self.unused_inputs = [t for t, s in zip(self.inputs, self.in_slots) if s not in used]
        self._acc = None
        self.need_no = tuple(True for _ in steps)

    # ------------------------------------------------------------------ binding
    def prepare(self, trainable_ids):
        """Per-step flags after the weights are bound: which steps need dx, and which
        gradients are shared between steps (summed).  ``trainable_ids``: ids of the
        leaf layers whose weights take gradients."""
        up = [False] * self.n_slots
        need = []
        count = {}
        for st in self.steps:
            need.append(any(up[s] for s in st.ins + st.sts))
            has = _has_trainable(st.layer, trainable_ids)
            for s in st.outs:
                up[s] = need[-1] or has
            for o, n in param_items(st.layer):
                count[id(o), n] = count.get((id(o), n), 0) + 1
        self.need_no = tuple(need)
        shared = []
        for st in self.steps:
            st.shared = tuple((o, n) for o, n in param_items(st.layer)
                              if count[id(o), n] > 1)
            shared.extend(st.shared)
        uniq = {}
        for o, n in shared:
            uniq[id(o), n] = (o, n)
        self._acc = list(uniq.values()) or None

    # ------------------------------------------------------------------ forward
    def forward(self, xs, training, in_masks=None):
        """Values of the outputs (and their masks) for input values ``xs``."""
        vals = [None] * self.n_slots
        masks = [None] * self.n_slots
        for s, x in zip(self.in_slots, xs):
            vals[s] = x
        if in_masks is not None:
            for s, m in zip(self.in_slots, in_masks):
                masks[s] = m
        for st in self.steps:
            if st.plain:
                i = st.i0
                y, m = st.layer._forward(vals[i], masks[i], training)
                vals[st.o0] = y
                masks[st.o0] = m
                if training:
                    st.cache = st.layer._cache
                continue
            ys, ms = _FORWARD[st.kind](st, vals, masks, training)
            for s, y, m in zip(st.outs, ys, ms):
                vals[s] = y
                masks[s] = m
            if training:
                st.cache = cache_get(st.layer)
        outs = self.out_slots
        return [vals[s] for s in outs], [masks[s] for s in outs]

    # ------------------------------------------------------------------ backward
    def backward(self, dys, need_input_grad=False):
        """Backpropagate output gradients ``dys`` (None: no gradient for that output).

        Writes every weight gradient; returns the gradients of the inputs (None
        where not needed)."""
        g = [None] * self.n_slots
        for s, d in zip(self.out_slots, dys):
            if d is not None:
                g[s] = d if g[s] is None else g[s] + d
        acc = None
        if self._acc is not None:
            acc = {(id(o), n): np.zeros_like(o._grads[n]) for o, n in self._acc}
        need = self.need_no
        steps = self.steps
        for k in range(len(steps) - 1, -1, -1):
            st = steps[k]
            nd = need_input_grad or need[k]
            if st.plain:
                dy = g[st.o0]
                if dy is None:
                    _skip(st)
                    continue
                layer = st.layer
                layer._cache = st.cache
                st.cache = None
                dins = (layer._backward(dy, nd),)
            else:
                douts = [g[s] for s in st.outs]
                if all(d is None for d in douts):
                    _skip(st)
                    continue
                cache_set(st.layer, st.cache)
                st.cache = None
                dins = _BACKWARD[st.kind](st, douts, nd)
            for s, d in zip(st.ins + st.sts, dins):
                if d is not None:
                    g[s] = d if g[s] is None else g[s] + d
            if acc is not None:
                for o, n in st.shared:
                    acc[id(o), n] += o._grads[n]
        if acc is not None:
            for o, n in self._acc:
                o._grads[n][...] = acc[id(o), n]
        return [g[s] for s in self.in_slots]

    def clear(self):
        for st in self.steps:
            st.cache = None
            cache_set(st.layer, None)

    def caches_get(self):
        return tuple(st.cache for st in self.steps)

    def caches_set(self, c):
        if c is None:
            for st in self.steps:
                st.cache = None
            return
        for st, ci in zip(self.steps, c):
            st.cache = ci


def _has_trainable(layer, trainable_ids):
    """Does ``layer`` (a leaf layer or a nested model) hold weights that take gradients?"""
    leaves = layer._leaf_layers() if hasattr(layer, "_leaf_layers") else [layer]
    return any(id(leaf) in trainable_ids and bool(leaf._param_items()) for leaf in leaves)


def _skip(st):
    """No gradient reaches this step: its weights get zero gradients."""
    st.cache = None
    cache_set(st.layer, None)
    for o, n in param_items(st.layer):
        if (o, n) not in st.shared:
            o._grads[n][...] = 0


# ---------------------------------------------------------------------------- step kinds
def _fwd_single(st, vals, masks, training):
    i = st.i0
    tr = training if st.training is None else bool(st.training)
    if tr != training:
        cache_set(st.layer, None)  # a Dropout forced off keeps no mask; never a stale one
    y, m = st.layer._forward(vals[i], masks[i], tr)
    return (y,), (m,)


def _fwd_merge(st, vals, masks, training):
    y, m = st.layer._forward_multi([vals[i] for i in st.ins], [masks[i] for i in st.ins],
                                   training)
    return (y,), (m,)


def _fwd_rnn(st, vals, masks, training):
    layer = st.layer
    x = vals[st.i0]
    state = None
    if st.sts:
        state = layer._check_state([vals[s] for s in st.sts], x.shape[0])
    y, m = layer._forward(x, masks[st.i0], training, initial_state=state)
    st.yshape = y.shape
    if layer.return_state:
        h, c = layer._last_state
        return (y, h, c), (m, None, None)
    return (y,), (m,)


def _bwd_single(st, douts, need):
    return (st.layer._backward(douts[0], need),)


def _bwd_merge(st, douts, need):
    return st.layer._backward_multi(douts[0], need)


def _bwd_rnn(st, douts, need):
    layer = st.layer
    dy = douts[0]
    dh = dc = None
    if layer.return_state:
        dh, dc = douts[1], douts[2]
    if dy is None:
        dy = np.zeros(st.yshape, layer.dtype)
    dx = layer._backward(dy, need, grad_h=dh, grad_c=dc)
    if st.sts:
        dh0, dc0 = layer._state_grads
        return (dx, dh0, dc0)
    return (dx,)


def _fwd_bidi(st, vals, masks, training):
    layer = st.layer
    x = vals[st.i0]
    fs = bs = None
    if st.sts:
        sv = [vals[s] for s in st.sts]
        fs = layer.forward_layer._check_state(sv[:2], x.shape[0])
        bs = layer.backward_layer._check_state(sv[2:], x.shape[0])
    y, m = layer._forward(x, masks[st.i0], training, fs, bs)
    ys = list(y) if layer.merge_mode is None else [y]
    st.yshape = [a.shape for a in ys]
    ms = [m] * len(ys)
    if layer.return_state:
        hf, cf = layer.forward_layer._last_state
        hb, cb = layer.backward_layer._last_state
        ys += [hf, cf, hb, cb]
        ms += [None] * 4
    return ys, ms


def _bwd_bidi(st, douts, need):
    layer = st.layer
    fl, bl = layer.forward_layer, layer.backward_layer
    mode = layer.merge_mode
    n_y = 2 if mode is None else 1
    dts = douts[n_y:] if layer.return_state else [None] * 4
    if mode is None:
        dyf, dyb = douts[0], douts[1]
    else:
        dy = douts[0]
        if dy is None:
            dyf = dyb = None
        elif mode == "concat":
            dyf, dyb = dy[..., :fl.units], dy[..., fl.units:]
        elif mode == "sum":
            dyf = dyb = dy
        elif mode == "ave":
            dyf = dyb = dy * 0.5
        else:  # mul
            yf, yb = layer._cache
            dyf, dyb = dy * yb, dy * yf
    layer._cache = None
    if mode is None:
        shp_f, shp_b = st.yshape[0], st.yshape[1]
    else:
        shp_f = shp_b = st.yshape[0]
        if mode == "concat":
            shp_f, shp_b = shp_f[:-1] + (fl.units,), shp_b[:-1] + (bl.units,)
    if dyf is None:
        dyf = np.zeros(shp_f, layer.dtype)
    if dyb is None:
        dyb = np.zeros(shp_b, layer.dtype)
    dxf = fl._backward(dyf, need, grad_h=dts[0], grad_c=dts[1])
    sf = fl._state_grads
    dxb = bl._backward(dyb, need, grad_h=dts[2], grad_c=dts[3])
    sb = bl._state_grads
    dx = None
    if need:
        dx = dxf + dxb
    if st.sts:
        return (dx, sf[0], sf[1], sb[0], sb[1])
    return (dx,)


def _fwd_model(st, vals, masks, training):
    return st.layer._forward_values([vals[i] for i in st.ins], training,
                                    [masks[i] for i in st.ins])


def _bwd_model(st, douts, need):
    return st.layer._backward_values(douts, need)


_FORWARD = {SINGLE: _fwd_single, MERGE: _fwd_merge, RNN: _fwd_rnn, BIDI: _fwd_bidi,
            MODEL: _fwd_model}
_BACKWARD = {SINGLE: _bwd_single, MERGE: _bwd_merge, RNN: _bwd_rnn, BIDI: _bwd_bidi,
             MODEL: _bwd_model}
