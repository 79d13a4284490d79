"""glibc malloc settings for a training process: keep freed memory for the next step.

A training step frees and allocates again a (V, 1000) projection gradient of ~20 MB per language.
glibc serves blocks of that size with ``mmap`` and hands them back to the kernel on ``free``, so
every step page-faults its gradients in again. Raising the mmap threshold to glibc's maximum (32 MiB)
and the trim threshold to 1 GiB keeps that memory in the heap, as jemalloc or tcmalloc would.

The cost is that resident memory stays near its peak instead of shrinking between steps; the
service's memory is sized for its peak anyway. This is a process setting, so it is called by the
programs (service, CLI, benchmarks), never by the model code on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["retain_freed_memory"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20   # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_THRESHOLD = 2**30


def retain_freed_memory() -> bool:
    """Tell glibc malloc to keep large freed blocks; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    if not ok:
        logger.warning("mallopt refused the thresholds; freed training buffers go back to the kernel")
    return ok
