"""A seeded random rotation that spreads a vector's mass over its coordinates.

``x -> H D x`` blockwise (Suresh, Yu, Kumar, McMahan. "Distributed Mean Estimation with Limited
Communication." ICML 2017): ``D`` is a diagonal of random signs drawn from (seed, round), ``H``
the normalised Walsh-Hadamard matrix of each block. Blocks follow the binary expansion of the
length (blocks of 2^14, then one block per remaining set bit: 21,840 = 16,384 + 4,096 + 1,024 +
256 + 64 + 16), so nothing is padded and a rotated vector is exactly as long as the vector.
The rotation is orthonormal and linear, so the sum of rotated vectors is the rotated sum: a
cohort can quantize in the rotated space, add up, and rotate the sum back once. An outlier
coordinate is spread over its block, so a shared quantization scale (the largest entry) is
much tighter after rotation than before. (Blocks of 256 would cost a CPU half as much at a
million entries, but 1-bit quantization after them diverged on the README's workload: a block
mixes too little of the vector to even out its layers.)
"""

from __future__ import annotations

import functools
import math

import torch

from fl.runtime.seeding import generator

MAX_BLOCK = 1 << 14


def blocks(dim: int) -> list[int]:
    """The block lengths, largest first: powers of two that add up to ``dim``."""
    full, rest = divmod(dim, MAX_BLOCK)
    top = MAX_BLOCK.bit_length() - 1
    return [MAX_BLOCK] * full + [1 << b for b in reversed(range(top)) if rest >> b & 1]


@functools.lru_cache(maxsize=32)
def _sylvester(n: int, device: str) -> torch.Tensor:
    """The n x n Hadamard matrix (Sylvester's construction, symmetric, entries +-1)."""
    h = torch.ones(1, 1)
    while len(h) < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.to(device)


@functools.lru_cache(maxsize=32)
def _factor(n: int, norm: float, device: str) -> torch.Tensor:
    """``H_n * norm``: the normalisation folded into a factor (no pass of its own)."""
    return (_sylvester(n, "cpu") * norm).to(device)


def fwht(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The normalised Walsh-Hadamard transform of each row of ``x`` (row length ``n``, a power of two).

    ``H_n = H_a (x) H_b (x) H_c`` with ``a b c = n``: a row reshaped to ``a x b x c`` is multiplied
    by a small Hadamard matrix along each axis, three matrix products of side at most 32 (for
    blocks of 2^14) instead of ``log2 n`` passes over memory or two products of side 128. The
    ``1/sqrt(n)`` rides in the first product's matrix (no pass of its own). ``out`` (as ``x``'s
    shape, not ``x`` itself): where the last product is written."""
    rows, n = x.shape
    k = n.bit_length() - 1
    ka = k // 3
    kb = (k - ka) // 2
    a, b, c = 1 << ka, 1 << kb, 1 << (k - ka - kb)
    device = str(x.device)
    y = x.reshape(rows, a, b, c) @ _factor(c, 1 / math.sqrt(n), device)
    y = _factor(b, 1.0, device) @ y
    if out is None:
        out = torch.empty_like(x)
    torch.matmul(_factor(a, 1.0, device), y.reshape(rows, a, b * c), out=out.view(rows, a, b * c))
    return out


def signs(seed: int, round_idx: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The round's random signs (``D``); drawn once per round and rank."""
    return _signs(int(seed), int(round_idx), int(length)).to(device)


@functools.lru_cache(maxsize=2)
def _signs(seed: int, round_idx: int, length: int) -> torch.Tensor:
    g = generator(seed, "rotation", round_idx)
    return torch.randint(0, 2, (length,), generator=g).mul_(2).sub_(1).float()


def _blockwise(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """:func:`fwht` of each block of ``x``, written into ``out`` (contiguous, as long as ``x``, not
    ``x``): the transform's last product lands there, with no copy."""
    full = len(x) // MAX_BLOCK * MAX_BLOCK
    if full:
        fwht(x[:full].view(-1, MAX_BLOCK), out[:full].view(-1, MAX_BLOCK))
    start = full
    for b in blocks(len(x) - full):
        fwht(x[start:start + b].view(1, b), out[start:start + b].view(1, b))
        start += b
    return out


def rotate(v: torch.Tensor, seed: int, round_idx: int) -> torch.Tensor:
    """``v`` rotated (as long as ``v``)."""
    signed = v.float() * signs(seed, round_idx, len(v), v.device)  # a new, contiguous tensor
    return _blockwise(signed, torch.empty_like(signed))


def unrotate(x: torch.Tensor, dim: int, seed: int, round_idx: int) -> torch.Tensor:
    """The inverse of :func:`rotate`: ``D H x`` (``H`` is its own inverse)."""
    x = x.float().contiguous()
    return _blockwise(x, torch.empty_like(x)).mul_(signs(seed, round_idx, dim, x.device))
