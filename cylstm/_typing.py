"""Names for the types of cylstm's public signatures (annotations only).

The layers take their initializers, regularizers, constraints and activations the
way Keras does: by name, as an object, or as a ``{"class_name", "config"}`` dict;
these aliases say so once.  Every module that uses them has
``from __future__ import annotations``, so none of this is evaluated at run time.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import numpy.typing as npt

__all__ = ["ActivationLike", "ArrayLike", "ConstraintLike", "DTypeLike", "InitializerLike",
           "RegularizerLike", "ShapeLike"]

ArrayLike = npt.ArrayLike
#: 'float32' or 'float64' (a NumPy dtype, a type, or a Keras dtype-policy dict)
DTypeLike = Union[str, type, np.dtype, dict, None]
#: a shape without the batch axis, None for an axis of any size
ShapeLike = Union[int, Sequence[Union[int, None]]]
#: a Keras name ('glorot_uniform'), an initializer object or callable
#: (shape, dtype=None, rng=None) -> array, or a config dict
InitializerLike = Union[str, Callable[..., Any], dict, None]
#: a name ('l2'), a cylstm.regularizers.Regularizer (class or instance), a config dict
RegularizerLike = Union[str, Any, dict, None]
#: a name ('max_norm'), a callable w -> w, or a config dict
ConstraintLike = Union[str, Callable[[np.ndarray], np.ndarray], dict, None]
#: 'linear' (or None), 'relu', 'tanh', 'sigmoid', 'softmax', or cylstm.activations.<name>
ActivationLike = Union[str, Callable[..., Any], None]
