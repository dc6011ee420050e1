"""cylstm: the fastest practical LSTM on CPUs.

Cython kernels over SciPy's BLAS with OpenMP, under a Keras-compatible API.
"""
__version__ = "0.1.0"

from cylstm._config import get_num_threads, set_num_threads, show_config  # noqa: F401
from cylstm import functional  # noqa: F401

__all__ = ["get_num_threads", "set_num_threads", "show_config", "functional", "__version__"]
