"""Host memory for the big arrays of one job (features, a backbone pass, a prediction), arranged
so that page faults do not cost more than the arithmetic.

Two effects, both measured on this project's VM, where a first touch of a 4 KB page is slow:

- ``np.zeros`` takes zeroed pages from ``calloc``: the 1024² loop image's features, written tile by
  tile, took 9.5-9.8 s that way against 8.3-8.7 s on :func:`zeros`' shared anonymous mapping, and
  8.3-8.4 s on a private one advised for huge pages, whose first mapping in a process cost up to
  1 s (0.3 s more at 512²). The shared mapping's huge-page advice is granted only where the kernel
  gives shared memory huge pages (not on this VM: there it is faulted 4 KB at a time).
- glibc returns every freed block over 32 MB to the system, so a backbone pass, whose activations
  are tens of MB each, faults its memory in afresh for every tensor: 175,000 faults and 1.88 s for
  a 608-px tile, against none and 1.53 s when the freed memory is kept for reuse. Inside
  :func:`reused_heap` glibc keeps it (its peak grew by 18 MB) and hands it back when the
  outermost job ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import mmap
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HUGE_BYTES = 4 << 20
"""Arrays from this size on are mapped by :func:`zeros` (numpy advises its own from 4 MB on)."""
KEEP_BYTES = 1 << 30
"""Blocks up to this size come from (and go back to) the heap inside :func:`reused_heap`."""
OUTSIDE_MMAP, OUTSIDE_TRIM = 32 << 20, 64 << 20
"""The thresholds left after a job: where glibc's own (dynamic) ones end up on 64-bit systems,
since setting any of them turns its adjustment off for good."""


def zeros(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """``np.zeros(shape, dtype)``, large ones on a shared anonymous mapping advised for huge pages:
    zeroed and faulted in lazily like ``calloc``'s (only what is written becomes resident), and
    faster to fill tile by tile (module docstring)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if size < HUGE_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.zeros(shape, dtype)
    memory = mmap.mmap(-1, size)
    memory.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(memory, dtype).reshape(shape)


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()
_lock = threading.Lock()
_open_jobs = [0]
"""Jobs inside :func:`reused_heap` now (nested or in other threads): the last one out trims."""


@contextmanager
def reused_heap() -> Iterator[None]:
    """Inside, freed blocks up to KEEP_BYTES stay in the process's heap for the next tensor
    instead of going back to the system; when the outermost one ends, the free memory is
    returned (``malloc_trim``) and the thresholds are left at OUTSIDE_MMAP and OUTSIDE_TRIM.
    Without glibc, nothing changes."""
    if _LIBC is None:
        yield
        return
    with _lock:
        if _open_jobs[0] == 0:
            _LIBC.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)
            _LIBC.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
        _open_jobs[0] += 1
    try:
        yield
    finally:
        with _lock:
            _open_jobs[0] -= 1
            if _open_jobs[0] == 0:
                _LIBC.mallopt(M_MMAP_THRESHOLD, OUTSIDE_MMAP)
                _LIBC.mallopt(M_TRIM_THRESHOLD, OUTSIDE_TRIM)
                _LIBC.malloc_trim(0)


def release_free_memory() -> None:
    """Hand the heap's free memory back to the system (glibc keeps up to OUTSIDE_TRIM at its top
    and whatever lies below live blocks): after an image's features, the head's fit then peaks
    lower. Inside :func:`reused_heap`, or without glibc, nothing happens."""
    with _lock:
        if _LIBC is not None and _open_jobs[0] == 0:
            _LIBC.malloc_trim(0)
