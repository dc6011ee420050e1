"""The ISA levels the kernel tests run at (cylstm._cpu): each one this CPU has,
forced in turn; the ones above it skip, with the reason.  Shared by the test
files that check a kernel at every level."""
import pytest

from cylstm import _cpu

DETECTED = _cpu.detected_level()
LEVELS = [pytest.param(n, id=_cpu.level_name(n),
                       marks=pytest.mark.skipif(
                           n > DETECTED,
                           reason=f"this CPU runs up to {_cpu.level_name(DETECTED)!r}"))
          for n in (2, 1, 0)]
