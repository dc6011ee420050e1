"""The recurrent layers: :class:`LSTM` over cylstm's compiled kernels, and
:class:`Bidirectional`.  How an LSTM runs Keras's masks is in
:mod:`cylstm.layers.masks`."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from cylstm import _config
from cylstm import activations as _act
from cylstm import functional as _F
from cylstm._checkpoint import check_every as _check_every
from cylstm._typing import (
    ActivationLike,
    ArrayLike,
    ConstraintLike,
    InitializerLike,
    RegularizerLike,
)
from cylstm.engine import graph as _graph
from cylstm.layers import masks as _masks
from cylstm.layers.base import (
    Layer,
    _as_float_input,
    _check_rate,
    _check_units,
    _constraint,
    _constraint_config,
    _init_config,
    _initializer,
    _make_rng,
    _reg_config,
    _regularizer,
    sealed_version,
)


class LSTM(Layer):
    """Long Short-Term Memory layer (Keras signature and semantics).

    Inputs are (batch, time, features); the compiled kernels run the whole
    sequence (forward and BPTT) without Python per time step.

    Parameters
    ----------
    units : int
    activation, recurrent_activation : only 'tanh' and 'sigmoid' (what the kernels compute)
    use_bias : bool
    kernel_initializer, recurrent_initializer, bias_initializer : initializers
    unit_forget_bias : bool
        The forget-gate block of the bias starts at exactly 1 (Keras default; the
        other blocks come from ``bias_initializer``, as Keras's
        ``concatenate([init(units), ones(units), init(2 * units)])``).
    kernel_regularizer, recurrent_regularizer, bias_regularizer, activity_regularizer
        Optional :mod:`cylstm.regularizers` names or objects (see :class:`Layer`).
    kernel_constraint, recurrent_constraint, bias_constraint
        Optional :mod:`cylstm.constraints` names or callables.
    dropout : float
        Fraction of the inputs dropped during ``fit``; one mask per sequence,
        shared across time steps (Keras; when ``recurrent_dropout`` is also set,
        Keras draws one mask per gate, cylstm one for all gates).
    recurrent_dropout : float
        Fraction of ``h_prev`` dropped before the recurrent product during
        ``fit``; one mask per sequence.  Keras draws a separate mask per gate
        here; cylstm draws one for all four gates.
    return_sequences : bool
        Return the output at every step (batch, time, units), else the last.
    return_state : bool
        Standalone calls return ``[output, h, c]``.
    go_backwards : bool
        Process the sequence in reverse and return the reversed sequence (Keras).
    stateful : bool
        The final state of batch k is the initial state of batch k + 1 (same
        batch size) until :meth:`reset_states`.
    seed : int, optional
        Seeds the weight initialization and the dropout masks.
    zero_output_for_mask : bool
        With a mask, masked steps output zeros instead of the previous output
        (Keras's RNN option; Bidirectional sets it for sequence outputs).
    use_cudnn : 'auto', True or False
        Kept (attribute and config) so Keras code and files carry it; cylstm runs
        its own kernels on the CPU and on CUDA either way.
    checkpoint_every : None, int >= 1 or "auto"
        Training in bounded memory (not a Keras option): keep the state only every
        this many steps and recompute each segment in the backward, for the same
        gradients at the cost of one more forward pass (see
        :func:`cylstm.functional.lstm_forward`).  "auto" does so, with about
        sqrt(T) steps per segment, only when a batch's full cache would exceed
        :func:`cylstm.get_memory_budget`.  On a CUDA device the layer trains with
        full BPTT and warns once.
    dtype : see :class:`cylstm.layers.Layer`.  'mixed_bfloat16': float32 weights,
        the products on bfloat16 operands (x, both kernels and h_prev rounded; the
        gates, c, h and outputs float32), emulated on any CPU
        (:mod:`cylstm.mixed_precision`); CPU only.

    Notes
    -----
    Masks (from :class:`Masking` or ``Embedding(mask_zero=True)``) follow Keras:
    a masked step leaves h and c unchanged and outputs the previous output
    (zeros before the first valid step).  Right-padded batches map directly
    onto the kernels' sequence lengths (length 0 included), with or without
    ``go_backwards``; left padding under ``go_backwards`` costs the reversed
    copy Keras makes; any other mask pattern (left padding, holes) is handled by
    compacting each sequence's valid steps first, which costs a gather and a
    scatter.
    """

    _REGULARIZED = (("kernel", "kernel_regularizer"),
                    ("recurrent_kernel", "recurrent_regularizer"), ("bias", "bias_regularizer"))
    _CONSTRAINED = (("kernel", "kernel_constraint"),
                    ("recurrent_kernel", "recurrent_constraint"), ("bias", "bias_constraint"))
    # (the bias stays float, as Keras's quantized layers keep theirs)
    _QUANTIZED_WEIGHTS = ("kernel", "recurrent_kernel")

    def __init__(self, units: int, activation: ActivationLike = "tanh",
                 recurrent_activation: ActivationLike = "sigmoid", use_bias: bool = True,
                 kernel_initializer: InitializerLike = "glorot_uniform",
                 recurrent_initializer: InitializerLike = "orthogonal",
                 bias_initializer: InitializerLike = "zeros", unit_forget_bias: bool = True,
                 kernel_regularizer: RegularizerLike = None,
                 recurrent_regularizer: RegularizerLike = None,
                 bias_regularizer: RegularizerLike = None,
                 activity_regularizer: RegularizerLike = None,
                 kernel_constraint: ConstraintLike = None,
                 recurrent_constraint: ConstraintLike = None,
                 bias_constraint: ConstraintLike = None, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0, return_sequences: bool = False,
                 return_state: bool = False, go_backwards: bool = False, stateful: bool = False,
                 unroll: bool = False, seed: int | None = None,
                 zero_output_for_mask: bool = False, use_cudnn: bool | str = "auto",
                 time_major: bool = False, implementation: int = 2,
                 checkpoint_every: int | str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checkpoint_every = _check_every(checkpoint_every)
        self.kernel_regularizer = _regularizer("kernel_regularizer", kernel_regularizer)
        self.recurrent_regularizer = _regularizer("recurrent_regularizer",
                                                  recurrent_regularizer)
        self.bias_regularizer = _regularizer("bias_regularizer", bias_regularizer)
        self.activity_regularizer = _regularizer("activity_regularizer", activity_regularizer)
        self.kernel_constraint = _constraint("kernel_constraint", kernel_constraint)
        self.recurrent_constraint = _constraint("recurrent_constraint", recurrent_constraint)
        self.bias_constraint = _constraint("bias_constraint", bias_constraint)
        if use_cudnn not in ("auto", True, False) or isinstance(use_cudnn, int) and \
                not isinstance(use_cudnn, bool):
            raise ValueError(f"use_cudnn must be 'auto', True or False; got {use_cudnn!r}")
        self.use_cudnn = use_cudnn
        if implementation not in (1, 2) or isinstance(implementation, bool):
            raise ValueError(f"implementation must be 1 or 2; got {implementation!r}")
        self.implementation = int(implementation)  # both run cylstm's fused kernels
        if time_major:
            raise NotImplementedError("time_major=True is not supported; inputs are batch-first")
        self.units = _check_units("units", units)
        act, ract = _act.get(activation), _act.get(recurrent_activation)
        if act != "tanh" or ract != "sigmoid":
            raise ValueError(
                "cylstm's LSTM kernels compute activation='tanh' and "
                f"recurrent_activation='sigmoid'; got activation={act!r}, "
                f"recurrent_activation={ract!r}"
            )
        self.activation, self.recurrent_activation = act, ract
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.unit_forget_bias = bool(unit_forget_bias)
        self.dropout = _check_rate("dropout", dropout)
        self.recurrent_dropout = _check_rate("recurrent_dropout", recurrent_dropout)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.unroll = bool(unroll)  # accepted for compatibility; the kernels never unroll
        self.seed = seed
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.kernel = self.recurrent_kernel = self.bias = None
        self.input_dim = None
        self._states = None
        self._rng = None
        self._last_state = None
        self._device = None  # None: CPU; ('cuda', index) after model.to('cuda')
        self._weights_version = None
        self._warned_checkpoint = False
        # fit(tbptt=k) attaches a carrier: (h, c) pass from one window to the next
        # (cylstm.engine.tbptt), as ``stateful`` passes them from batch to batch
        self._carry = None

    def _check_device(self, device):
        """Refuse a GPU ``device`` (not None) under mixed_bfloat16, which runs on the CPU
        only (``Model.to`` asks before it moves any layer)."""
        if device is not None and self._bf16:
            raise ValueError(f"LSTM {self.name!r} has the mixed_bfloat16 policy, which runs "
                             "on the CPU only (the CUDA backend computes float32); make the "
                             "layer with dtype='float32' to run it on a GPU")

    def _ops(self):
        """(functional module, extra kwargs) for this layer's device."""
        if self._device is None:
            # mixed_bfloat16: the kernels' bf16 products (cylstm.functional.lstm_forward)
            return _F, ({"compute_dtype": "bfloat16"} if self._bf16 else {})
        self._check_device(self._device)
        from cylstm.cuda import functional as gpu  # defers import cost: the CUDA backend

        return gpu, {"device": self._device[1], "weights_version": self._weights_version}

    def _int8_kernel(self):
        """Whether inference takes the quantized path (the int8 kernel, or the float32
        products on the int8 values where ``int8_kernel_pays`` says so, vouched for by
        the sealed weights): a layer quantized by ``quantize("int8")``, on the CPU, in
        float32."""
        return (self.quantization_mode == "int8" and self._device is None
                and self.dtype == np.float32 and not self._bf16)

    def _weights_changed(self):
        if self._device is not None:
            from cylstm.cuda.functional import new_weights_version  # defers import cost: CUDA

            self._weights_version = new_weights_version()

    # ---- build / weights -----------------------------------------------------------------
    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(
                f"LSTM {self.name!r} expects 3-D inputs (batch, time, features); got input "
                f"shape {input_shape}"
            )
        if input_shape[-1] is None:
            raise ValueError(f"LSTM {self.name!r} needs a known feature count; got input shape "
                             f"{input_shape}")
        if self.stateful and self._batch_input_shape is not None \
                and self._batch_input_shape[0] is None:
            pass  # Keras 3 also accepts an unknown batch size; it is fixed by the first batch
        I, H = input_shape[-1], self.units
        self.input_dim = I
        rng = _make_rng(self.seed)
        self._new_weight("kernel", self.kernel_initializer, (I, 4 * H), rng)
        self._new_weight("recurrent_kernel", self.recurrent_initializer, (H, 4 * H), rng)
        if self.use_bias:
            if self.unit_forget_bias:
                # Keras: concatenate([init(units), ones(units), init(2 * units)]); the forget
                # block is exactly 1, whatever the initializer (not 1 + its value)
                init = _initializer(self.bias_initializer)
                parts = [np.asarray(init((H,), self.dtype, rng), self.dtype),
                         np.ones(H, self.dtype),
                         np.asarray(init((2 * H,), self.dtype, rng), self.dtype)]
                if parts[0].shape != (H,) or parts[2].shape != (2 * H,):
                    raise ValueError(f"bias_initializer of {self.name!r} returned shapes "
                                     f"{parts[0].shape}, {parts[2].shape}; expected "
                                     f"{(H,)}, {(2 * H,)}")
                self.bias = np.ascontiguousarray(np.concatenate(parts))
                self._grads["bias"] = np.zeros(4 * H, self.dtype)
            else:
                self._new_weight("bias", self.bias_initializer, (4 * H,), rng)
            self._wnames = ("kernel", "recurrent_kernel", "bias")
        else:
            # the kernels always add a bias; a constant zero one keeps them branch-free
            self.bias = np.zeros(4 * H, self.dtype)
            self._wnames = ("kernel", "recurrent_kernel")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        B, T = input_shape[0], input_shape[1]
        out = (B, T, self.units) if self.return_sequences else (B, self.units)
        if self.return_state:
            return [out, (B, self.units), (B, self.units)]
        return out

    @property
    def states(self):
        """[h, c] of a stateful layer (None before its first batch)."""
        return [None, None] if self._states is None else list(self._states)

    def reset_states(self, states=None):
        """Zero the carried state of a stateful layer, or set it to ``states=[h, c]``."""
        if not self.stateful:
            raise AttributeError(f"layer {self.name!r} is not stateful")
        if states is None:
            if self._states is not None:
                for s in self._states:
                    s[...] = 0
            return
        h, c = self._check_state(states, None)
        self._states = [h.copy(), c.copy()]

    reset_state = reset_states  # Keras 3 spelling

    def _reset_state(self):
        if self.stateful:
            self.reset_states()

    def _check_state(self, state, B):
        if not isinstance(state, (list, tuple)) or len(state) != 2:
            raise TypeError(f"LSTM {self.name!r}: initial_state must be a list [h, c]; "
                            f"got {type(state).__name__}")
        out = []
        for nm, s in zip(("h", "c"), state):
            s = _as_float_input(f"initial_state {nm}", s, self.dtype)
            want = (s.shape[0] if B is None else B, self.units)
            if s.ndim != 2 or s.shape != want:
                raise ValueError(f"LSTM {self.name!r}: initial_state {nm} must have shape "
                                 f"{want}; got {s.shape}")
            out.append(s)
        return out

    # ---- standalone call -----------------------------------------------------------------
    def __call__(self, inputs, initial_state=None, training=False, mask=None):
        """Run the layer on (batch, time, features) inputs.

        Returns the output, or ``[output, h, c]`` with ``return_state=True``.  On
        symbolic tensors, records a node of a functional model (``initial_state``
        may then be symbolic ``[h, c]``).
        """
        if _graph.is_symbolic(inputs, initial_state):
            return _graph.symbolic_call(self, inputs, initial_state=initial_state,
                                        training=training, mask=mask)
        x = self._cast(inputs)
        if x.ndim != 3:
            raise ValueError(f"LSTM {self.name!r} expects 3-D inputs (batch, time, features); "
                             f"got shape {x.shape}")
        if not self.built:
            self._build_for(x)
        if initial_state is not None:
            initial_state = self._check_state(initial_state, x.shape[0])
        y, _ = self._forward(x, mask, bool(training), initial_state=initial_state)
        self._cache = None
        self._activity_outs = None
        if self.return_state:
            h, c = self._last_state
            return [y, h, c]
        return y

    # ---- training-time forward / backward ------------------------------------------------
    def _forward(self, x, mask, training, initial_state=None, flip=False):
        """Forward over whole sequences.  ``flip`` returns the Keras-order output
        reversed in time (Bidirectional uses it to get the backward layer's
        outputs in time order without two copies)."""
        if x.ndim != 3:
            raise ValueError(f"LSTM {self.name!r} expects 3-D inputs (batch, time, features); "
                             f"got shape {x.shape}")
        B, _T, I = x.shape
        if I != self.input_dim:
            raise ValueError(f"LSTM {self.name!r} was built for {self.input_dim} features; got "
                             f"inputs of shape {x.shape}")
        state = initial_state
        if state is None and self.stateful and self._states is not None:
            if self._states[0].shape[0] != B:
                raise ValueError(
                    f"stateful LSTM {self.name!r} carries state for batch size "
                    f"{self._states[0].shape[0]}; got a batch of {B} (use a fixed batch size, "
                    "or call reset_states() after changing it)")
            state = self._states
        carry = self._carry if training else None
        if state is None and carry is not None:
            state = carry.state  # None at the start of a batch: zeros
        dmask = rmask = None
        kw = {}
        if training and (self.dropout or self.recurrent_dropout):
            if self._rng is None:
                self._rng = _make_rng(None if self.seed is None else self.seed + 7919)
            if self.dropout:
                keep = 1.0 - self.dropout
                dmask = (self._rng.random((B, I)) < keep).astype(x.dtype)
                dmask *= 1.0 / keep
                x = x * dmask[:, None, :]
            if self.recurrent_dropout:
                keep = 1.0 - self.recurrent_dropout
                rmask = (self._rng.random((B, self.units)) < keep).astype(x.dtype)
                rmask *= 1.0 / keep
                kw["recurrent_mask"] = rmask
        mask_in = mask = None if mask is None else np.asarray(mask)
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"LSTM {self.name!r}: mask must have shape (batch, time) = "
                                 f"{x.shape[:2]}; got {mask.shape}")
            if mask.all():
                mask = None  # nothing masked: the plain path is exact
        F, extra = self._ops()
        if training and self.checkpoint_every is not None:
            extra = self._checkpoint_kw(extra)
        if not training and self._int8_kernel():
            # the int8 weights on the int8 kernel (a quarter of the bytes), or the
            # float32 products on them where those are faster (int8_kernel_pays), the
            # pack vouched for by the sealed weights' version; training (a frozen
            # quantized layer under fit) runs the float32 products, for the backward
            extra = dict(extra, weights_version=sealed_version(self))
            if _F.int8_kernel_pays(B, self.units, _config.get_num_threads()):
                extra["weights_dtype"] = "int8"
        if mask is None:
            r = F.lstm_forward(x, self.kernel, self.recurrent_kernel, self.bias,
                               initial_state=state, go_backwards=self.go_backwards,
                               return_sequences=self.return_sequences, training=training,
                               **kw, **extra)
            y, h, c = r.output, r.h, r.c
            if self.return_sequences and (self.go_backwards != flip):
                y = y[:, ::-1]
            info = None
        else:
            info = _masks.plan(mask, self.go_backwards, self.return_sequences,
                               self.zero_output_for_mask, flip)
            y, h, c, r = _masks.forward(self, x, info, state, training, kw, F, extra)
        self._last_state = (h, c)
        if self.stateful:
            self._states = [h.copy(), c.copy()]
        if carry is not None:
            carry.state = (h.copy(), c.copy())  # copies: the gradient stops at the window edge
        if training:
            self._cache = (r.cache, dmask, kw, info, flip, F)
        if self.activity_regularizer is not None or self._activity_losses:
            self._record_activity([y, h, c] if self.return_state else y, training)
        return y, (mask_in if self.return_sequences else None)

    def _checkpoint_kw(self, extra):
        """The forward's extra arguments with ``checkpoint_every`` (CPU), or as they
        are with a one-time warning (the CUDA backend keeps the full cache)."""
        if self._device is None:
            return dict(extra, checkpoint_every=self.checkpoint_every)
        if not self._warned_checkpoint:
            self._warned_checkpoint = True
            warnings.warn(
                f"LSTM {self.name!r}: checkpoint_every={self.checkpoint_every!r} is not "
                "implemented by the CUDA backend; this layer trains with full BPTT on the GPU "
                "(it keeps 7 * units floats per sample and step)", RuntimeWarning, stacklevel=3)
        return extra

    def _backward(self, dy, need_input_grad=True, grad_h=None, grad_c=None):
        # the forward's cache carries the recurrent mask (kw): the backward takes none
        fcache, dmask, _kw, info, flip, F = self._cache
        gr = self._grads
        act_g = self._activity_grads()
        if act_g is not None:  # the activity penalty's gradient joins the incoming ones
            dy = dy + act_g[0]
            if self.return_state:
                grad_h = act_g[1] if grad_h is None else grad_h + act_g[1]
                grad_c = act_g[2] if grad_c is None else grad_c + act_g[2]
        # the weight gradients go straight into the model's gradient buffer: the CPU
        # kernels write them there, the GPU copies them back there (host memory in use,
        # not fresh arrays: at I = H = 1024 that copy took 15 ms into new arrays)
        out_kw = {"out": (gr["kernel"], gr["recurrent_kernel"],
                          gr["bias"] if self.use_bias else None)}
        self._cache = None
        need_dx = need_input_grad
        if info is None:
            if self.return_sequences and (self.go_backwards != flip):
                dy = dy[:, ::-1]
            g = F.lstm_backward(fcache, grad_output=dy, grad_h=grad_h, grad_c=grad_c,
                                need_input_grad=need_dx, **out_kw)
            dx = g.dx
        else:
            g, dx = _masks.backward(info, fcache, dy, grad_h, grad_c, F, need_dx, out_kw)
        if dx is not None and dmask is not None:
            dx *= dmask[:, None, :]
        # dL/d initial state (a functional model's symbolic initial_state takes it)
        self._state_grads = (g.dh0, g.dc0)
        self._add_regularizer_grads()
        return dx

    _OBJECT_ARGS = (
        ("kernel_initializer", _init_config), ("recurrent_initializer", _init_config),
        ("bias_initializer", _init_config), ("kernel_regularizer", _reg_config),
        ("recurrent_regularizer", _reg_config), ("bias_regularizer", _reg_config),
        ("activity_regularizer", _reg_config), ("kernel_constraint", _constraint_config),
        ("recurrent_constraint", _constraint_config), ("bias_constraint", _constraint_config))

    def get_config(self):
        return self._config(live=False)

    def _config(self, live):
        """The config; ``live=True`` keeps the initializer / regularizer / constraint
        objects themselves (an in-memory copy needs no JSON form of a custom one)."""
        cfg = super().get_config()
        cfg.update(
            units=self.units, activation=self.activation,
            recurrent_activation=self.recurrent_activation, use_bias=self.use_bias,
            unit_forget_bias=self.unit_forget_bias, use_cudnn=self.use_cudnn,
            dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout, return_sequences=self.return_sequences,
            return_state=self.return_state, go_backwards=self.go_backwards,
            stateful=self.stateful, unroll=self.unroll, seed=self.seed,
            zero_output_for_mask=self.zero_output_for_mask)
        for k, ser in self._OBJECT_ARGS:
            v = getattr(self, k)
            cfg[k] = v if live else ser(v)
        if self.checkpoint_every is not None:  # (not a Keras key: only when set)
            cfg["checkpoint_every"] = self.checkpoint_every
        return cfg


_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


class Bidirectional(Layer):
    """Runs an LSTM forward and a copy of it backward, then merges the outputs.

    Parameters
    ----------
    layer : LSTM
        The forward layer's configuration (a fresh copy named ``forward_<name>``
        is built, as Keras does).
    merge_mode : 'concat' (default), 'sum', 'mul', 'ave' or None
        None returns ``[forward_output, backward_output]`` (standalone calls only).
    backward_layer : LSTM, optional
        Otherwise a copy of ``layer`` with ``go_backwards`` flipped.

    ``get_weights()`` is the forward layer's weights then the backward's.
    With ``return_sequences`` the backward outputs are put back in time order.
    """

    _WRAPPER = True

    def __init__(self, layer: LSTM, merge_mode: str | None = "concat",
                 weights: Sequence[ArrayLike] | None = None, backward_layer: LSTM | None = None,
                 activity_regularizer: RegularizerLike = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(layer, LSTM):
            raise TypeError(f"Bidirectional wraps an LSTM layer; got {type(layer).__name__}")
        if merge_mode not in _MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {list(_MERGE_MODES)}; got "
                             f"{merge_mode!r}")
        self.merge_mode = merge_mode
        self.activity_regularizer = _regularizer("activity_regularizer", activity_regularizer)
        # copies keep the regularizer / constraint / initializer objects of the layer
        fcfg = layer._config(live=True)
        fcfg.pop("batch_input_shape", None)
        base = layer.name.removeprefix("forward_")
        fcfg["name"] = "forward_" + base
        self.forward_layer = LSTM.from_config(fcfg)
        if backward_layer is None:
            bcfg = dict(fcfg)
            bcfg["name"] = "backward_" + base
            bcfg["go_backwards"] = not layer.go_backwards
            if bcfg.get("seed") is not None:
                bcfg["seed"] = bcfg["seed"] + 1  # independent dropout masks
            self.backward_layer = LSTM.from_config(bcfg)
        else:
            if not isinstance(backward_layer, LSTM):
                raise TypeError("backward_layer must be an LSTM; got "
                                f"{type(backward_layer).__name__}")
            for attr in ("return_sequences", "return_state", "stateful"):
                if getattr(backward_layer, attr) != getattr(layer, attr):
                    raise ValueError(f"forward and backward layers must agree on {attr}; got "
                                     f"{getattr(layer, attr)} and "
                                     f"{getattr(backward_layer, attr)}")
            if backward_layer.go_backwards == layer.go_backwards:
                raise ValueError("backward_layer.go_backwards must be the opposite of "
                                 "layer.go_backwards")
            bcfg = backward_layer._config(live=True)
            bcfg.pop("batch_input_shape", None)
            self.backward_layer = LSTM.from_config(bcfg)
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.stateful = layer.stateful
        explicit = kwargs.get("dtype") is not None
        for sub in (self.forward_layer, self.backward_layer):
            # Keras: sequence outputs of a bidirectional RNN are zero at masked steps
            sub.zero_output_for_mask = self.return_sequences
            sub._dtype = self._dtype if self._dtype is not None else sub._dtype
            if explicit:  # a policy given to the wrapper is its layers' policy
                sub._bf16 = self._bf16
        if self._dtype is None and layer._dtype is not None:
            self._dtype = layer._dtype
        self._initial_weights = weights

    @property
    def _computes_bf16(self):
        return self.forward_layer._bf16 or self.backward_layer._bf16

    def _set_dtype(self, dtype):
        super()._set_dtype(dtype)
        self.forward_layer._dtype = self.backward_layer._dtype = np.dtype(dtype)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for sub in (self.forward_layer, self.backward_layer):
            sub._dtype = self.dtype
            sub.build(input_shape)
        super().build(input_shape)
        if self._initial_weights is not None:
            self.set_weights(self._initial_weights)
            self._initial_weights = None

    def _param_items(self):
        return self.forward_layer._param_items() + self.backward_layer._param_items()

    def _weights_changed(self):
        self.forward_layer._weights_changed()
        self.backward_layer._weights_changed()

    def compute_output_shape(self, input_shape):
        f = self.forward_layer.compute_output_shape(input_shape)
        b = self.backward_layer.compute_output_shape(input_shape)
        fo, bo = (f[0], b[0]) if self.return_state else (f, b)
        if self.merge_mode == "concat":
            out = tuple(fo[:-1]) + (fo[-1] + bo[-1],)
        elif self.merge_mode is None:
            out = [fo, bo]
        else:
            out = fo
        if self.return_state:
            states = [f[1], f[2], b[1], b[2]]
            return [out] + states if self.merge_mode is not None else out + states
        return out

    def _sublayers(self):
        return (self.forward_layer, self.backward_layer)

    @property
    def quantization_mode(self):
        """The forward layer's (None, or 'int8' after ``quantize('int8')``)."""
        return self.forward_layer.quantization_mode

    @property
    def states(self):
        """[h_f, c_f, h_b, c_b] of a stateful layer (None before its first batch)."""
        f, b = self.forward_layer._states, self.backward_layer._states
        return None if f is None or b is None else list(f) + list(b)

    def reset_states(self, states=None):
        """Zero both directions' carried state, or set it to ``[h_f, c_f, h_b, c_b]``."""
        if not self.stateful:
            raise AttributeError(f"layer {self.name!r} is not stateful")
        if states is not None:
            if not isinstance(states, (list, tuple)) or len(states) != 4:
                raise TypeError(f"Bidirectional {self.name!r}: states must be [h_f, c_f, h_b, "
                                f"c_b]; got {type(states).__name__}")
            self.forward_layer.reset_states(states[:2])
            self.backward_layer.reset_states(states[2:])
            return
        self.forward_layer.reset_states()
        self.backward_layer.reset_states()

    reset_state = reset_states  # Keras 3 spelling

    def _reset_state(self):
        if self.stateful:
            self.reset_states()

    def __call__(self, inputs, initial_state=None, training=False, mask=None):
        """Run both directions; ``initial_state`` is [h_f, c_f, h_b, c_b] (symbolic
        tensors record a node of a functional model)."""
        if _graph.is_symbolic(inputs, initial_state):
            return _graph.symbolic_call(self, inputs, initial_state=initial_state,
                                        training=training, mask=mask)
        x = self._cast(inputs)
        if x.ndim != 3:
            raise ValueError(f"Bidirectional {self.name!r} expects 3-D inputs (batch, time, "
                             f"features); got shape {x.shape}")
        if not self.built:
            self._build_for(x)
        fs = bs = None
        if initial_state is not None:
            if not isinstance(initial_state, (list, tuple)) or len(initial_state) != 4:
                raise TypeError("Bidirectional initial_state must be [h_f, c_f, h_b, c_b]")
            fs = self.forward_layer._check_state(initial_state[:2], x.shape[0])
            bs = self.backward_layer._check_state(initial_state[2:], x.shape[0])
        y, _ = self._forward(x, mask, bool(training), fs, bs)
        self._cache = None
        self._activity_outs = None
        for sub in self._sublayers():
            sub._cache = None
            sub._activity_outs = None
        if self.return_state:
            hf, cf = self.forward_layer._last_state
            hb, cb = self.backward_layer._last_state
            return ([y] if self.merge_mode is not None else list(y)) + [hf, cf, hb, cb]
        return y

    def _forward(self, x, mask, training, fstate=None, bstate=None):
        fl, bl = self.forward_layer, self.backward_layer
        if x.ndim != 3:
            raise ValueError(f"Bidirectional {self.name!r} expects 3-D inputs (batch, time, "
                             f"features); got shape {x.shape}")
        yf, _ = fl._forward(x, mask, training, initial_state=fstate)
        # the backward layer's Keras-order output is reversed in time: flip it back
        yb, _ = bl._forward(x, mask, training, initial_state=bstate,
                            flip=self.return_sequences)
        if training:
            self._cache = (yf, yb) if self.merge_mode == "mul" else None
        m = self.merge_mode
        if m == "concat":
            y = np.concatenate([yf, yb], axis=-1)
        elif m == "sum":
            y = yf + yb
        elif m == "ave":
            y = (yf + yb) * 0.5
        elif m == "mul":
            y = yf * yb
        else:
            y = [yf, yb]
        if self.activity_regularizer is not None or self._activity_losses:
            outs = [y] if m is not None else list(y)
            if self.return_state:
                outs += [*fl._last_state, *bl._last_state]
            self._record_activity(outs, training)
        return y, (mask if self.return_sequences else None)

    def _backward(self, dy, need_input_grad=True, grad_states=None):
        """``grad_states``: optional [dh_f, dc_f, dh_b, dc_b] (entries may be None)."""
        m = self.merge_mode
        gs = list(grad_states) if grad_states is not None else [None] * 4
        act_g = self._activity_grads()
        if act_g is not None and m is not None:
            dy = dy + act_g[0]
            if self.return_state:
                gs = [g if s is None else s + g for s, g in zip(gs, act_g[1:])]
        if m == "concat":
            Hf = self.forward_layer.units
            dyf, dyb = dy[..., :Hf], dy[..., Hf:]
        elif m == "sum":
            dyf = dyb = dy
        elif m == "ave":
            dyf = dyb = dy * 0.5
        elif m == "mul":
            yf, yb = self._cache
            dyf, dyb = dy * yb, dy * yf
        else:
            raise ValueError("Bidirectional with merge_mode=None cannot be trained in a "
                             "Sequential model (its output is a list)")
        self._cache = None
        dxf = self.forward_layer._backward(dyf, need_input_grad, grad_h=gs[0], grad_c=gs[1])
        dxb = self.backward_layer._backward(dyb, need_input_grad, grad_h=gs[2], grad_c=gs[3])
        if not need_input_grad:
            return None
        dxf += dxb
        return dxf

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            layer={"class_name": "LSTM", "config": self.forward_layer.get_config()},
            backward_layer={"class_name": "LSTM", "config": self.backward_layer.get_config()},
            merge_mode=self.merge_mode,
            activity_regularizer=_reg_config(self.activity_regularizer))
        return cfg

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        if "batch_shape" in cfg and "batch_input_shape" not in cfg:
            cfg["batch_input_shape"] = cfg.pop("batch_shape")
        from cylstm.layers import deserialize  # breaks a cycle: its registry names our classes

        layer = deserialize(cfg.pop("layer"))
        back = cfg.pop("backward_layer", None)
        if back is not None:
            back = deserialize(back)
        obj = cls(layer, backward_layer=back, **cfg)
        # keep the saved sub-layer names
        obj.forward_layer.name = layer.name
        if back is not None:
            obj.backward_layer.name = back.name
        return obj

