"""Give freed memory back to the operating system (plain Python and ctypes: no torch).

A model update is ~45 MB of arrays in many pieces (ResNet-18), and a server round or a client message
allocates several copies of one and frees them. glibc keeps freed heap memory for reuse, and with
blocks of varying sizes the heap grows round after round: a 100-client simulation's ServerApp went
from 1.3 to 2.6 GB over 6 rounds although it held the same data (bench/simulation_scale.py);
`malloc_trim(0)` returned 1 GB of it. `release_memory` after each round (server) and `trim_heap` after
each message (client) keep the processes at their working size. Elsewhere (macOS, musl) it only collects
reference cycles. Nothing it does changes a computed value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return the C heap's free pages to the OS (a few ms); True if any were returned."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def release_memory() -> bool:
    """Collect reference cycles, then `trim_heap`. The collection is the slow part (0.1-0.5 s in a
    process that imported torch, scikit-learn and pandas): once per round, not once per message."""
    gc.collect()
    return trim_heap()
