"""Stochastic rounding of a vector to integer codes, on a CPU in one pass over it.

For entry ``i`` of a float32 vector ``x``, with float32 ``inv`` and ``offset`` and ``levels``
the largest code, the code is

    t = (x[i] * inv + offset) + u[i]        (three correctly rounded float32 operations)
    code = min(max(floor(t), 0), levels)

with ``u[i] = (r + 1/2) / 2^16`` and ``r`` 16 random bits: half ``i mod 2`` of ``hash(i div 2)``,
``hash(j) = mix(mix(j xor k0) xor k1)``, ``k0`` and ``k1`` the low and high 32 bits of the
message's key, ``mix`` a 32-bit integer finaliser (two multiplications and three xor-shifts,
modulo 2^32). ``t`` is rounded up with probability equal to the fractional part of
``x[i] * inv + offset``, to within 2^-16: the code is an unbiased estimate of it.

``u`` is a function of the key and the position only (a counter-based generator), so any part of
a vector can be coded on its own, and any implementation of the definition gives the same codes:

* on a CPU, with numba, a compiled kernel draws, rounds and stores (or adds into a sum) in one
  pass, the vector shared between ``torch.get_num_threads()`` threads (:mod:`fl.runtime.native`);
* elsewhere (an accelerator, or no numba), torch does it in integer and float32 operations.
"""

from __future__ import annotations


import numpy as np
import torch

from fl.runtime import native

_MIX = (0x7FEB352D, 0x846CA68B)  # the finaliser's multipliers
_MASK32 = 0xFFFFFFFF


def codes(x: torch.Tensor, key: int, inv: float, offset: float, levels: int) -> torch.Tensor:
    """The codes of ``x`` (float32 tensor of exact integers 0 .. ``levels``; module docstring).
    ``key``: 64 bits; ``inv`` and ``offset`` are rounded to float32."""
    out = torch.empty(len(x), dtype=torch.float32, device=x.device)
    if not _run(out, x, key, inv, offset, levels, 0.0, accumulate=False):
        out.copy_(_torch_codes(x, key, inv, offset, levels))
    return out


def add_codes(out: torch.Tensor, x: torch.Tensor, key: int, inv: float, offset: float, levels: int,
              weight: float) -> None:
    """``out += weight * codes(x, ...)``; with a float32 ``out`` on a CPU, in the kernel's one pass
    (no vector of codes), where the products and the sums must be exact integers (below 2^24), so
    that the result does not depend on how they are computed."""
    if out.dtype != torch.float32 or not _run(out, x, key, inv, offset, levels, weight, accumulate=True):
        out.add_(codes(x, key, inv, offset, levels).to(out.dtype), alpha=weight)


def _run(out: torch.Tensor, x: torch.Tensor, key: int, inv: float, offset: float, levels: int, weight: float,
         accumulate: bool) -> bool:
    """The compiled kernel on ``out`` (False where it cannot run: not a CPU, or no numba)."""
    kernel = _kernel() if x.device.type == "cpu" and out.is_contiguous() else None
    if kernel is None:
        return False
    src, dst = x.float().contiguous().numpy(), out.numpy()
    k0, k1 = np.uint32(key & _MASK32), np.uint32(key >> 32 & _MASK32)
    consts = (np.float32(inv), np.float32(offset), np.float32(levels), np.float32(weight), accumulate)
    n, threads = len(x), max(1, torch.get_num_threads())
    cuts = [min(n, 2 * (-(-n * t // (2 * threads)))) for t in range(threads + 1)]  # even starts: whole pairs
    native.run_shares(kernel, [(src[a:b], dst[a:b], a, k0, k1, *consts) for a, b in zip(cuts, cuts[1:]) if b > a])
    return True


def _mix(h: torch.Tensor) -> torch.Tensor:
    """The 32-bit finaliser on int64 tensors holding values below 2^32."""
    h = h ^ (h >> 16)
    h = (h * _MIX[0]) & _MASK32
    h = h ^ (h >> 15)
    h = (h * _MIX[1]) & _MASK32
    return h ^ (h >> 16)


def _torch_codes(x: torch.Tensor, key: int, inv: float, offset: float, levels: int) -> torch.Tensor:
    """The definition in torch operations (any device)."""
    n = len(x)
    pairs = torch.arange((n + 1) // 2, dtype=torch.int64, device=x.device) & _MASK32  # a pair's index mod 2^32, as the kernel's
    h = _mix(_mix(pairs ^ (key & _MASK32)) ^ (key >> 32 & _MASK32))
    r = torch.stack((h & 0xFFFF, h >> 16), 1).reshape(-1)[:n]
    u = r.to(torch.float32).mul_(2.0 ** -16).add_(2.0 ** -17)  # exact: 17 significant bits
    t = x.float() * float(np.float32(inv))
    t.add_(float(np.float32(offset))).add_(u)
    return t.floor_().clamp_(0, levels)


@native.kernel
def _kernel(jit):
    """The compiled kernel."""
    m0, m1 = np.uint32(_MIX[0]), np.uint32(_MIX[1])
    s15, s16, low = np.uint32(15), np.uint32(16), np.uint32(0xFFFF)

    @jit
    def mix(h):  # pragma: no cover (compiled)
        h = np.uint32(h ^ (h >> s16))
        h = np.uint32(h * m0)
        h = np.uint32(h ^ (h >> s15))
        h = np.uint32(h * m1)
        return np.uint32(h ^ (h >> s16))

    @jit
    def bits(j, k0, k1):  # pragma: no cover (compiled)
        """hash(j): the 32 random bits of pair j."""
        return mix(np.uint32(mix(np.uint32(np.uint32(j) ^ k0)) ^ k1))

    @jit
    def code(v, h, half, inv, offset, levels):  # pragma: no cover (compiled)
        u = np.float32((h >> np.uint32(16 * half)) & low) * np.float32(2.0 ** -16) + np.float32(2.0 ** -17)
        return min(max(np.floor((v * inv + offset) + u), np.float32(0.0)), levels)

    @jit
    def quantize(x, out, start, k0, k1, inv, offset, levels, weight, accumulate):  # pragma: no cover (compiled)
        n, first = len(x), start >> 1  # start is even: x begins with a whole pair
        if accumulate:
            for p in range(n >> 1):
                h = bits(first + p, k0, k1)
                for half in range(2):
                    out[2 * p + half] += weight * code(x[2 * p + half], h, half, inv, offset, levels)
        else:
            for p in range(n >> 1):
                h = bits(first + p, k0, k1)
                for half in range(2):
                    out[2 * p + half] = code(x[2 * p + half], h, half, inv, offset, levels)
        if n & 1:
            c = code(x[n - 1], bits(first + (n >> 1), k0, k1), 0, inv, offset, levels)
            out[n - 1] = out[n - 1] + weight * c if accumulate else c

    return quantize
