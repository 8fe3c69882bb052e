"""The Walsh-Hadamard transform as a fixed sequence of butterflies, on a CPU in one pass per block.

:func:`transform` cuts a vector into consecutive blocks of ``n = m w`` entries (``m`` and ``w``
powers of two) and computes ``post * (H (pre * x))``: ``pre`` and ``post`` optional per-entry
factors (a rotation's random signs), and on each block ``H = (H_m (x) I_w) / sqrt(m)``, with
``H_m`` the m x m Hadamard matrix (Sylvester's, entries +-1) and ``I_w`` the identity: entry
``i`` of a block is mixed with its entries ``i + k w``; ``w = 1`` is the plain transform. ``H``
is orthonormal and symmetric: its own inverse.

The transform is defined by its arithmetic, not only by its matrix: ``pre`` first; then on each
block stage ``h`` (``h = w, 2w, 4w, ..., n/2``, in that order) replaces each pair
``(a, b) = (y[i], y[i + h])``, ``i`` in the first half of a run of ``2h``, by ``(a + b, a - b)``;
then the block's ``1/sqrt(m)`` (rounded to float32); then ``post``. Each of these is one
correctly rounded float32 operation, so any implementation that follows the sequence gives the
same bits: a result does not depend on the device that computed it.

* On a CPU, with numba installed (a dependency of ``fl``), a compiled kernel takes a block
  through all its stages while it is in cache, two stages per pass over it, with ``pre`` folded
  into the first pass and the scale and ``post`` into the last. With ``w = 8`` every stage adds
  runs of eight float32 entries, which the compiler turns into vector instructions. The blocks
  are shared between ``torch.get_num_threads()`` threads (the kernel releases the GIL;
  :mod:`fl.runtime.native`).
* Elsewhere (an accelerator, or no numba), torch does one operation per stage.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fl.runtime import native


def transform(x: torch.Tensor, blocks: list[tuple[int, int]], pre: torch.Tensor | None = None,
              post: torch.Tensor | None = None) -> torch.Tensor:
    """``post * (H (pre * x))`` of a vector ``x`` (float32) cut into consecutive ``blocks`` of
    ``(n, w)``: ``n = m w`` entries transformed as ``(H_m (x) I_w) / sqrt(m)``, ``n`` and ``w``
    powers of two. ``pre``, ``post``: as long as ``x``, or ``None`` for ones. A new tensor. See
    the module docstring for the order of the operations."""
    if sum(n for n, _ in blocks) != len(x):
        raise ValueError(f"blocks of {sum(n for n, _ in blocks)} entries for a vector of {len(x)}")
    for n, w in blocks:
        if n & (n - 1) or w & (w - 1) or not 1 <= w <= n:
            raise ValueError(f"a block of {n} entries and an interleave of {w}: both must be powers of two, w <= n")
    x = x.float().contiguous()
    kernel = _kernel() if x.device.type == "cpu" else None
    if kernel is None:
        return _stages(x, blocks, pre, post)
    out = torch.empty_like(x)
    arrays = [t.float().contiguous().numpy() for t in (x, x if pre is None else pre, x if post is None else post)]
    starts = np.cumsum([0] + [n for n, _ in blocks])
    jobs = []
    for first, last in _shares(starts, torch.get_num_threads()):
        lo, hi = starts[first], starts[last]
        table = np.array([(starts[i] - lo, n, w) for i, (n, w) in enumerate(blocks[first:last], first)], dtype=np.int64)
        scales = np.array([1 / math.sqrt(n // w) for n, w in blocks[first:last]], dtype=np.float32)
        src, p, q = (a[lo:hi] for a in arrays)
        jobs.append((src, out.numpy()[lo:hi], p, q, table, scales, pre is not None, post is not None))
    native.run_shares(kernel, jobs)
    return out


def _shares(starts: np.ndarray, threads: int) -> list[tuple[int, int]]:
    """Runs of consecutive blocks (first, end), one per thread, of about equal entries each."""
    total, count = int(starts[-1]), len(starts) - 1
    if threads <= 1 or count <= 1:
        return [(0, count)]
    cuts = sorted({int(np.abs(starts - total * k / threads).argmin()) for k in range(1, threads)} - {0, count})
    bounds = [0, *cuts, count]
    return list(zip(bounds[:-1], bounds[1:]))


def _stages(x: torch.Tensor, blocks: list[tuple[int, int]], pre: torch.Tensor | None,
            post: torch.Tensor | None) -> torch.Tensor:
    """The transform with one torch operation per stage (any device); equal consecutive blocks together."""
    y = x * pre if pre is not None else x.clone()
    start, i = 0, 0
    while i < len(blocks):
        n, w = blocks[i]
        rows = 1
        while i + rows < len(blocks) and blocks[i + rows] == (n, w):
            rows += 1
        part = y[start:start + rows * n].view(rows, n)
        h = w
        while h < n:
            pairs = part.reshape(rows, n // (2 * h), 2, h)
            a, b = pairs[:, :, 0], pairs[:, :, 1]
            part = torch.stack((a + b, a - b), 2).reshape(rows, n)
            h *= 2
        y[start:start + rows * n] = (part * torch.tensor(1 / math.sqrt(n // w), dtype=torch.float32,
                                                         device=x.device)).view(-1)
        start += rows * n
        i += rows
    return y * post if post is not None else y


@native.kernel
def _kernel(jit):
    """The compiled kernel."""

    @jit
    def butterflies(x, out, pre, post, table, scales, use_pre, use_post):  # pragma: no cover (compiled)
        for k in range(len(table)):
            start, n, w = table[k, 0], table[k, 1], table[k, 2]
            scale = scales[k]
            y, src = out[start:start + n], x[start:start + n]
            if use_pre:
                p = pre[start:start + n]
                for j in range(n):
                    y[j] = src[j] * p[j]
            else:
                for j in range(n):
                    y[j] = src[j]
            h = w
            while 4 * h <= n:  # stages h and 2h on each run of four quarters, in registers
                for i in range(0, n, 4 * h):
                    q0, q1, q2, q3 = y[i:i + h], y[i + h:i + 2 * h], y[i + 2 * h:i + 3 * h], y[i + 3 * h:i + 4 * h]
                    for j in range(h):
                        a, b, c, d = q0[j], q1[j], q2[j], q3[j]
                        s0, s1, s2, s3 = a + b, a - b, c + d, c - d
                        q0[j], q2[j], q1[j], q3[j] = s0 + s2, s0 - s2, s1 + s3, s1 - s3
                h *= 4
            if h < n:  # the last stage, alone
                for i in range(0, n, 2 * h):
                    lo, hi = y[i:i + h], y[i + h:i + 2 * h]
                    for j in range(h):
                        a, b = lo[j], hi[j]
                        lo[j], hi[j] = a + b, a - b
            if use_post:
                q = post[start:start + n]
                for j in range(n):
                    y[j] = y[j] * scale * q[j]
            else:
                for j in range(n):
                    y[j] = y[j] * scale

    return butterflies
