"""Top-k selection: the positions of a vector's ``k`` largest entries, in order, ties to the
lower position (what :class:`fl.compression.codecs.TopK` sends)."""

from __future__ import annotations


import numpy as np
import torch

from fl.runtime import native


def top_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """The sorted indices of the ``k`` entries of ``x`` largest in magnitude (ties go to the lower
    index), found among the candidates at or above a threshold read off a strided sample.

    A full ``topk`` of a million entries costs about 20 ms on a CPU; one pass to find the
    entries above a threshold that keeps about 1.5 k of them, and a selection among those, cost
    about a millisecond. The threshold is lowered (to 0 at worst: every entry) until at least
    ``k`` entries pass, so the result is always exact."""
    n = len(x)
    stride = min(k // 64, n // 64)  # the k-th largest is about the 64th of the sample
    if stride < 2:
        return _k_largest(x.abs(), k)
    sample = x[::stride].abs()
    rank = min(len(sample), max(1, (3 * k) // (2 * stride)))  # about 1.5 k entries of a pass
    while True:
        threshold = float(sample.topk(rank, sorted=True).values[-1])
        candidates = _at_least(x, threshold)
        if len(candidates) >= k or rank == len(sample):
            break
        rank = min(len(sample), 2 * rank)
    if len(candidates) < k:  # the sample's smallest entry keeps too few: every entry is a candidate
        return _k_largest(x.abs(), k)
    return candidates[_k_largest(x[candidates].abs(), k)]


def _k_largest(a: torch.Tensor, k: int) -> torch.Tensor:
    """The sorted positions of the ``k`` largest entries of ``a``, ties to the lower position: the
    k-th largest value by selection, then a mask, so the positions come out in order (no sort)."""
    if k >= len(a):
        return torch.arange(len(a), device=a.device)
    kth = a.kthvalue(len(a) - k + 1).values
    keep = a > kth
    short = k - int(keep.sum())
    if short:
        tie = a == kth
        keep |= tie & (tie.cumsum(0) <= short)
    return keep.nonzero().squeeze(1)


def _at_least(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """The (sorted, int64) indices of the entries of ``x`` at least ``threshold`` in magnitude:
    on a CPU in one pass of the compiled scan, the vector shared between threads; elsewhere (or
    without numba) by torch."""
    kernel = _kernel() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if kernel is None:
        return (x.abs() >= threshold).nonzero().squeeze(1)
    src = x.contiguous().numpy()
    n, threads = len(x), max(1, torch.get_num_threads())
    cuts = [n * t // threads for t in range(threads + 1)]
    found = [np.empty(b - a + 1, dtype=np.int64) for a, b in zip(cuts, cuts[1:])]  # pages only as they fill
    counts = np.zeros(threads, dtype=np.int64)
    native.run_shares(kernel, [(src, a, b, np.float32(threshold), found[t], counts[t:t + 1])
                               for t, (a, b) in enumerate(zip(cuts, cuts[1:]))])
    return torch.from_numpy(np.concatenate([f[:c] for f, c in zip(found, counts)]))


@native.kernel
def _kernel(jit):
    """The compiled scan."""

    @jit
    def scan(x, start, end, threshold, out, count):  # pragma: no cover (compiled)
        c = 0
        for i in range(start, end):  # branch-free: every index is written, the next overwrites a miss
            out[c] = i
            c += abs(x[i]) >= threshold
        count[0] = c

    return scan
