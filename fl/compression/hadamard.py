"""A seeded random rotation that spreads a vector's mass over its coordinates.

``x -> H D x`` blockwise (Suresh, Yu, Kumar, McMahan. "Distributed Mean Estimation with Limited
Communication." ICML 2017): ``D`` is a diagonal of random signs drawn from (seed, round), ``H``
a normalised Walsh-Hadamard matrix per block (:mod:`fl.compression.wht`). Blocks follow the
binary expansion of the length (blocks of 2^17, then one block per remaining set bit: 21,840 =
16,384 + 4,096 + 1,024 + 256 + 64 + 16), so nothing is padded and a rotated vector is exactly as
long as the vector. A block of up to 2^14 entries is mixed as a whole (``H_b``); a larger block
of ``b = 2^14 w`` entries as ``w`` interleaved groups of 2^14 (``H_{2^14} (x) I_w``: entry ``i``
with the entries ``i + k w``): as much mixing, and every butterfly stage of the transform then
adds runs of ``w`` neighbouring floats (eight in a block of 2^17), which a CPU does with vector
instructions.
The rotation is orthonormal and linear, so the sum of rotated vectors is the rotated sum: a
cohort can quantize in the rotated space, add up, and rotate the sum back once. An outlier
coordinate is spread over its group, so a shared quantization scale (the largest entry) is
much tighter after rotation than before. (Groups of 256 would cost less still, but 1-bit
quantization after them diverged on the README's workload: a group mixes too little of the
vector to even out its layers.)
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from fl.compression import wht
from fl.runtime.seeding import derive_seed

MAX_GROUP = 1 << 14  # the most entries mixed with one another
MAX_BLOCK = 1 << 17  # eight groups of float32, interleaved: the CPU kernel adds eight entries at once


def blocks(dim: int) -> list[int]:
    """The block lengths, largest first: powers of two that add up to ``dim``."""
    full, rest = divmod(dim, MAX_BLOCK)
    top = MAX_BLOCK.bit_length() - 1
    return [MAX_BLOCK] * full + [1 << b for b in reversed(range(top)) if rest >> b & 1]


def interleave(block: int) -> int:
    """How many groups a block of ``block`` entries mixes separately."""
    return max(1, block // MAX_GROUP)


def signs(seed: int, round_idx: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The round's random signs (``D``, float32 +-1); drawn once per round and rank."""
    return _signs(int(seed), int(round_idx), int(length)).to(device)


@functools.lru_cache(maxsize=2)
def _signs(seed: int, round_idx: int, length: int) -> torch.Tensor:
    """One bit a sign, 64 to a raw draw of numpy's PCG64 (on any device the same signs)."""
    raw = np.random.Generator(np.random.PCG64(derive_seed(seed, "rotation", round_idx))).bit_generator.random_raw(
        -(-length // 64))
    bits = np.unpackbits(raw.astype("<u8", copy=False).view(np.uint8), bitorder="little")[:length]
    return torch.from_numpy(1 - 2 * bits.astype(np.float32))


def _blockwise(x: torch.Tensor, pre: torch.Tensor | None, post: torch.Tensor | None) -> torch.Tensor:
    """``post * H (pre * x)``: each block transformed, a large one as interleaved groups."""
    return wht.transform(x, [(b, interleave(b)) for b in blocks(len(x))], pre, post)


def rotate(v: torch.Tensor, seed: int, round_idx: int) -> torch.Tensor:
    """``v`` rotated (as long as ``v``)."""
    return _blockwise(v, signs(seed, round_idx, len(v), v.device), None)


def unrotate(x: torch.Tensor, dim: int, seed: int, round_idx: int) -> torch.Tensor:
    """The inverse of :func:`rotate`: ``D H x`` (``H`` is its own inverse)."""
    return _blockwise(x, None, signs(seed, round_idx, dim, x.device))
