"""A seeded random rotation that spreads a vector's mass over its coordinates.

``x -> H D x / sqrt(B)`` blockwise (Suresh, Yu, Kumar, McMahan. "Distributed Mean Estimation
with Limited Communication." ICML 2017): ``D`` is a diagonal of random signs drawn from
(seed, round), ``H`` the Walsh-Hadamard matrix of a block of ``B`` coordinates (a power of two).
The rotation is orthonormal and linear, so the sum of rotated vectors is the rotated sum: a
cohort can quantize in the rotated space, add up, and rotate the sum back once. An outlier
coordinate is spread over its block, so a shared quantization scale (the largest entry) is
much tighter after rotation than before. The vector is zero-padded to whole blocks.
"""

from __future__ import annotations

import math

import torch

from fl.runtime.seeding import generator

MAX_BLOCK = 1 << 14


def block_size(dim: int) -> int:
    """The block length for a vector of ``dim`` entries: the next power of two, at most 2^14."""
    return min(MAX_BLOCK, 1 << max(0, math.ceil(math.log2(max(dim, 1)))))


def padded_dim(dim: int) -> int:
    b = block_size(dim)
    return -(-dim // b) * b


def fwht(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised Walsh-Hadamard transform of each row of ``x`` (row length a power of two)."""
    rows, n = x.shape
    h = 1
    while h < n:
        y = x.view(rows, n // (2 * h), 2, h)
        x = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2).view(rows, n)
        h *= 2
    return x


def signs(seed: int, round_idx: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    g = generator(seed, "rotation", round_idx)
    return (torch.randint(0, 2, (length,), generator=g) * 2 - 1).to(device=device, dtype=torch.float32)


def rotate(v: torch.Tensor, seed: int, round_idx: int) -> torch.Tensor:
    """``v`` (length ``dim``) rotated: a vector of :func:`padded_dim` entries."""
    dim, b = len(v), block_size(len(v))
    x = torch.zeros(padded_dim(dim), device=v.device, dtype=torch.float32)
    x[:dim] = v
    x *= signs(seed, round_idx, len(x), v.device)
    return fwht(x.view(-1, b)).view(-1) / math.sqrt(b)


def unrotate(x: torch.Tensor, dim: int, seed: int, round_idx: int) -> torch.Tensor:
    """The inverse of :func:`rotate`: the first ``dim`` entries of ``D H x / sqrt(B)``."""
    b = block_size(dim)
    y = fwht(x.reshape(-1, b).float()).view(-1) / math.sqrt(b)
    return (y * signs(seed, round_idx, len(y), x.device))[:dim]
