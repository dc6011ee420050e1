"""``keras.preprocessing.sequence``: :func:`pad_sequences` (from :mod:`cylstm.utils`)."""
from cylstm.utils import pad_sequences

__all__ = ["pad_sequences"]
