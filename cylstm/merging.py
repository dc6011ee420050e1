"""The merge layers live in :mod:`cylstm.layers.merging`; this path stays for code
that imports them from here."""
from cylstm.layers.merging import (
    Add,
    Average,
    Concatenate,
    Maximum,
    Minimum,
    Multiply,
    Subtract,
    add,
    average,
    concatenate,
    maximum,
    minimum,
    multiply,
    subtract,
)

__all__ = ["Add", "Average", "Concatenate", "Maximum", "Minimum", "Multiply", "Subtract", "add",
           "average", "concatenate", "maximum", "minimum", "multiply", "subtract"]
