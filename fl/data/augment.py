"""Training-time augmentation of image batches: random crops (after zero padding) and
horizontal flips, the standard CIFAR recipe (He et al. 2016; Reddi et al. 2021 use it for
their federated CIFAR-10 results).

Pure: a batch ``[B, C, H, W]`` and a generator in, the augmented batch out. The generator is
the client's own, seeded from (seed, round, client) (see ``fl.training.local``), so an augmented run
still does not depend on the world size and resumes exactly. Configured in the data group:
``data.augment.crop`` (padding in pixels; 0: no crop) and ``data.augment.flip``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    crop: int = 0      # pad by this many pixels, then crop back to the original size at a random offset
    flip: bool = False  # mirror left-right with probability 1/2

    @property
    def active(self) -> bool:
        return self.crop > 0 or self.flip


def augment(x: torch.Tensor, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """``x`` [B, C, H, W] with each sample cropped and flipped independently (draws from ``g``)."""
    b, c, h, w = x.shape
    if aug.crop > 0:
        p = aug.crop
        padded = F.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (b,), generator=g, device=g.device).to(x.device)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=g, device=g.device).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if aug.flip:
        mirror = (torch.rand(b, generator=g, device=g.device) < 0.5).to(x.device)
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    return x
