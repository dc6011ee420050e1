"""The reshaping layers live in :mod:`cylstm.layers.reshaping`; this path stays for code
that imports them from here."""
from cylstm.layers.reshaping import (
    Flatten,
    Reshape,
)

__all__ = ["Flatten", "Reshape"]
