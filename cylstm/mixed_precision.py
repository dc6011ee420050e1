"""Dtype policies, with Keras 3's names: ``mixed_bfloat16`` on CPUs.

A policy names two dtypes: the *variable* dtype the weights are kept in, and the
*compute* dtype the layer computes in.  cylstm has three:

    "float32"         float32 variables, float32 compute (the default)
    "float64"         float64 variables, float64 compute
    "mixed_bfloat16"  float32 variables (the master copy the optimizer updates),
                      bfloat16 matrix products with float32 sums

Under ``mixed_bfloat16`` an LSTM rounds x, its kernel and its recurrent kernel to
bfloat16 once per call and h_prev before every step's recurrent product; a Dense
rounds x and its kernel.  The products of bf16 values are exact in float32, so
float32 GEMMs over the rounded operands give the bf16-operand, float32-accumulate
products of ``vdpbf16ps`` / AMX hardware on any CPU.  Where the process may use
AMX tiles, an LSTM's forward and backward products run on them
(include/cylstm_bf16.h); elsewhere, and for Dense, they are emulated
(``cylstm.show_config()`` says which the CPU has and which runs).  The
bias, the gate math, the cell state, h and every output stay float32; gradients
pass straight through the roundings (Keras's and TensorFlow's autodiff of a
cast) and arrive in float32 on the float32 variables, the backward's products
over the gate gradient rounded to bf16 as well (a bf16 matmul's gradient, as in
Keras and torch.autocast; the bias gradient sums it in float32).  bf16 has float32's
exponent range, so no loss scaling is needed.  Layers without products
(Embedding, Activation, the merge layers, ...) compute in float32 under any
policy; the LSTM or Dense after them rounds its input.

>>> from cylstm import mixed_precision
>>> mixed_precision.set_global_policy("mixed_bfloat16")   # layers made from now on
>>> layer = LSTM(64)                                      # or LSTM(64, dtype="mixed_bfloat16")
>>> layer.compute_dtype, layer.variable_dtype
('bfloat16', 'float32')

A layer made without ``dtype=`` takes the global policy at construction (Keras's
rule); wrappers (Bidirectional, TimeDistributed) take their wrapped layer's.
The rounding itself is :func:`cylstm.quantization.round_bfloat16`.
"""
from __future__ import annotations

import threading

__all__ = ["POLICY_NAMES", "DTypePolicy", "Policy", "global_policy", "set_global_policy"]

#: The policy names cylstm takes.
POLICY_NAMES = ("float32", "float64", "mixed_bfloat16")

_COMPUTE = {"float32": "float32", "float64": "float64", "mixed_bfloat16": "bfloat16"}
_VARIABLE = {"float32": "float32", "float64": "float64", "mixed_bfloat16": "float32"}
# Keras's names cylstm refuses, and why
_REFUSED = {
    "mixed_float16": "there is no float16 compute on CPUs (no float16 GEMM in SciPy's BLAS, "
                     "and float16's range would need loss scaling); use 'mixed_bfloat16', "
                     "which keeps float32's range",
    "float16": "cylstm keeps float32 master variables and has no float16 compute; use "
               "'mixed_bfloat16' (float32 variables, bfloat16 products)",
    "bfloat16": "cylstm keeps float32 master variables (bfloat16 variables would lose the "
                "optimizer's small updates); use 'mixed_bfloat16' (float32 variables, "
                "bfloat16 products)",
}


def _check_name(name, what="dtype policy"):
    if not isinstance(name, str):
        raise TypeError(f"a {what} name must be a string, one of {list(POLICY_NAMES)}; got "
                        f"{type(name).__name__} {name!r}")
    if name in _REFUSED:
        raise ValueError(f"{what} {name!r} is not supported: {_REFUSED[name]}.  Valid names: "
                         f"{', '.join(POLICY_NAMES)}")
    if name not in POLICY_NAMES:
        raise ValueError(f"unknown {what} {name!r}; valid names: {', '.join(POLICY_NAMES)}")
    return name


class DTypePolicy:
    """A dtype policy (Keras 3's ``keras.DTypePolicy``).

    Parameters
    ----------
    name : 'float32' (default), 'float64' or 'mixed_bfloat16'
        'mixed_float16', 'float16' and 'bfloat16' are ValueErrors that say why.

    Attributes
    ----------
    name : str
    compute_dtype : 'float32', 'float64' or 'bfloat16'
    variable_dtype : 'float32' or 'float64'
    """

    __slots__ = ("_name",)

    def __init__(self, name: str = "float32") -> None:
        self._name = _check_name(name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def compute_dtype(self) -> str:
        return _COMPUTE[self._name]

    @property
    def variable_dtype(self) -> str:
        return _VARIABLE[self._name]

    @property
    def quantization_mode(self):
        """None: cylstm's int8 layers say so in ``layer.quantization_mode``."""
        return None

    def get_config(self) -> dict:
        return {"name": self._name}

    @classmethod
    def from_config(cls, config: dict) -> DTypePolicy:
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, DTypePolicy) and other._name == self._name

    def __hash__(self):
        return hash(("DTypePolicy", self._name))

    def __repr__(self):
        return f'<DTypePolicy "{self._name}">'


Policy = DTypePolicy   # (Keras 2's and tf.keras's name)


def serialize(policy: DTypePolicy) -> dict:
    """The Keras 3 config of a policy, as ``layer.get_config()["dtype"]`` writes it."""
    return {"module": "keras", "class_name": "DTypePolicy",
            "config": {"name": policy.name}, "registered_name": None}


def get(identifier) -> DTypePolicy:
    """A policy from a name, a :class:`DTypePolicy` or a Keras 3 config dict
    (``{"class_name": "DTypePolicy", "config": {"name": ...}}``, or ``{"name": ...}``)."""
    if isinstance(identifier, DTypePolicy):
        return identifier
    if isinstance(identifier, dict):
        inner = identifier.get("config")
        name = inner.get("name") if isinstance(inner, dict) else identifier.get("name")
        return DTypePolicy(name)
    return DTypePolicy(identifier)


_lock = threading.Lock()
_global = DTypePolicy("float32")


def set_global_policy(policy) -> None:
    """Set the policy of the layers made from now on without ``dtype=``.

    ``policy``: a name ('float32', 'float64', 'mixed_bfloat16'), a
    :class:`DTypePolicy`, a Keras 3 policy config, or None for the default,
    'float32' (under which a layer without ``dtype=`` takes its model's dtype, as
    before policies existed).  Layers already made keep theirs.
    """
    global _global
    new = DTypePolicy("float32") if policy is None else get(policy)
    with _lock:
        _global = new


def global_policy() -> DTypePolicy:
    """The policy layers made without ``dtype=`` take ('float32' unless set)."""
    return _global
