"""Keras 3's ``keras.preprocessing`` spellings of cylstm's data helpers.

``cylstm.preprocessing.timeseries_dataset_from_array`` and
``cylstm.preprocessing.sequence.pad_sequences`` are the functions of
:mod:`cylstm.utils`.
"""
from cylstm.preprocessing import sequence
from cylstm.utils import pad_sequences, timeseries_dataset_from_array

__all__ = ["pad_sequences", "sequence", "timeseries_dataset_from_array"]
