"""Compiled CPU kernels, and the helper threads that share a piece of work (a kernel's, or a
store's file writes).

numba (a dependency of ``fl``) compiles the few loops that torch would run as many passes over
a vector: the Hadamard transform's butterflies (:mod:`fl.compression.wht`) and stochastic
rounding (:mod:`fl.compression.rounding`). Each also has a torch implementation with the same
bits, which runs on accelerators, and on a CPU when numba is missing (said once, in the log).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


@functools.cache
def jit() -> Callable | None:
    """numba's ``njit`` for a kernel that releases the GIL and is cached on disk, or ``None``
    (said once) when numba is not installed."""
    try:
        from numba import njit
    except ImportError:
        log.warning("numba is not installed: the compression kernels (Hadamard rotation, stochastic rounding) "
                    "run as torch operations on the CPU (the same results, slower); pip install numba")
        return None
    return functools.partial(njit, nogil=True, cache=True, boundscheck=False)


def kernel(build: Callable[[Callable], Callable]) -> Callable[[], Callable | None]:
    """Decorator: ``build(jit)`` compiles a kernel with :func:`jit`; the decorated name becomes a
    cached factory that returns the kernel, or ``None`` when numba is not installed."""
    @functools.cache
    def factory() -> Callable | None:
        decorate = jit()
        return None if decorate is None else build(decorate)

    factory.__doc__ = build.__doc__
    return factory


def run_shares(kernel: Callable, shares: Sequence[tuple]) -> None:
    """``kernel(*share)`` for every share: the first on this thread, the others at the same time
    on helper threads (a kernel or a write that releases the GIL runs in parallel); returns when all
    are done."""
    if not shares:
        return
    waits = [_pool(len(shares) - 1).submit(kernel, *share) for share in shares[1:]] if len(shares) > 1 else []
    kernel(*shares[0])
    for wait in waits:
        wait.result()


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """This process's helper threads (a forked child gets threads of its own)."""
    key = (os.getpid(), workers)
    if key not in _pools:
        _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix="fl-kernel")
    return _pools[key]
