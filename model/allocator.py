"""glibc malloc settings for a training process: keep freed memory for the next step.

A training step frees and allocates again a (V, 1000) projection gradient of ~20 MB per language.
glibc serves blocks of that size with ``mmap`` and hands them back to the kernel on ``free``, so
every step page-faults its gradients in again. Raising the mmap threshold to glibc's maximum (32 MiB)
and the trim threshold to 1 GiB keeps that memory in the heap, as jemalloc or tcmalloc would.

The cost is that resident memory stays near its peak instead of shrinking between steps; the
service's memory is sized for its peak anyway. A one-off peak is another matter: restoring a
checkpoint decodes a copy of the whole state, and with these thresholds its freed blocks would stay
resident for the life of the process (a restarted service holding more memory than one that never
stopped). :func:`release_freed_memory` hands such memory back once, after the peak.

These are process settings, so they are called by the programs (service, CLI, benchmarks), never
by the model code on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["release_freed_memory", "retain_freed_memory"]

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


def release_freed_memory() -> bool:
    """Return the heap's free pages to the kernel now (glibc ``malloc_trim(0)``); False where the C
    library is not glibc. For after a one-off peak, such as restoring a checkpoint."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
