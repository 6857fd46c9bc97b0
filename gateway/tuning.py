# SPDX-License-Identifier: Apache-2.0
"""Process tuning for a daemon that turns over a lot of short-lived memory.

Each batch allocates and frees megabytes of small buffers (JSON bodies, rows). glibc hands
the top of the heap back to the kernel whenever more than 128 KiB is free there, so the next
batch page-faults the same memory in again: measured here at 3.7 µs per reading, nearly half
the cost of stamping. Raising the trim threshold and the top pad keeps that memory mapped.
The figures are bounds on what is kept, not allocations: 32 MiB covers a 5000-reading batch
several times over; more would only keep the high-water mark of a rare transient resident.
(RSS stepping up by tens of MiB under overload, first blamed on a 256 MiB bound here, was
mostly orjson's over-allocated bodies: see `gateway.canonical.right_sized`.)
"""

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_KEEP = 32 * 1024 * 1024
_PAD = 16 * 1024 * 1024


def keep_heap() -> bool:
    """Ask glibc not to trim the heap after every batch; False where that is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, _KEEP)) and bool(mallopt(_M_TOP_PAD, _PAD))


def settle() -> None:
    """Freeze what start-up allocated, so garbage collections scan only later objects."""
    gc.collect()
    gc.freeze()
