"""How this process's C library keeps the memory that tensors free (Linux with glibc).

By default glibc serves a large allocation (above a threshold that adapts, at most 32 MiB) with
a memory mapping of its own, unmaps it when it is freed, and hands the top of its heap back to
the kernel as soon as more than a little is free there. Training allocates tensors of the same
sizes over and over (a layer's gradient every step, a client's update every round), so each of
them is a fresh mapping that the kernel fills page by page on first touch, which is slow on a
virtual machine: on the README's 2-core machine, a round of the 1M-parameter ``mlp`` took 0.72x
the time with the memory kept (``scripts/malloc_cost.py``).

``runtime.malloc``:

- ``keep`` (default): no allocation is a mapping of its own (``M_MMAP_MAX=0``), and the heap's
  free top is handed back only beyond 1 GiB (``M_TRIM_THRESHOLD``). Freed memory is reused by
  the next allocations; the peak resident memory of that run grew by about 5%.
- ``system``: fl leaves the C library's settings as the process has them.

Elsewhere (macOS, Windows, musl) ``keep`` changes nothing. jemalloc or tcmalloc preloaded with
``LD_PRELOAD`` do their own caching; ``mallopt`` does not reach them, and ``keep`` then has no effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
import sys

log = logging.getLogger(__name__)

MODES = ("keep", "system")

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
KEEP_TRIM_BYTES = 1 << 30


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None elsewhere."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def configure(mode: str) -> bool:
    """Apply ``runtime.malloc`` (``mode``, already validated) to this process; whether anything
    changed. Calling it again with the same mode is harmless."""
    if mode != "keep":
        return False
    libc = _glibc()
    if libc is None:
        log.debug("runtime.malloc=keep: not glibc, the C library's settings are left as they are")
        return False
    applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_BYTES))
    if not applied:
        log.debug("runtime.malloc=keep: mallopt refused a setting")
    return applied
