"""Process tuning for workers that run models: keep the model's working arrays in the heap."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def keep_freed_memory() -> None:
    """Keep the model's working arrays in this process's heap between batches.

    By default glibc serves arrays of a few MB with fresh mmap()s and trims the heap top after frees, so
    every batch page-faults its arrays in (zeroed) again; the first pass over a corpus measured ~20% slower
    than later passes in the same process, and a job worker only ever makes one. Fixing both thresholds
    removes that (measured: first pass as fast as raw ``nlp.pipe`` on a warm process). Workers are
    single-purpose processes, so the memory kept costs nothing once they exit. Not glibc: nothing to tune.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum on 64-bit systems
    mallopt(_M_TRIM_THRESHOLD, 1024 * 1024 * 1024)
