"""A model whose parameters and floating buffers live in one contiguous flat tensor.

Loading the global model into the training model is then one ``copy_``, a client's
delta is one subtraction, and the aggregation collective runs on one buffer instead of
one call per tensor. Integer buffers (BatchNorm's ``num_batches_tracked``) are left out:
they are counters, not weights.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class FlatModel:
    """Rebinds ``module``'s parameters and floating buffers as views into ``self.flat``.

    ``flat`` has one entry per scalar of those tensors, in ``module.named_parameters()``
    then floating ``named_buffers()`` order. In-place updates (optimizer steps, BatchNorm
    running statistics) write straight into ``flat``.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        params = [(m, n, t, True) for m, n, t in _members(module, "_parameters")]
        buffers = [(m, n, t, False) for m, n, t in _members(module, "_buffers") if t.is_floating_point()]
        entries = params + buffers
        first = entries[0][2]
        self.flat = torch.cat([t.detach().reshape(-1) for _, _, t, _ in entries]).to(first.device, first.dtype)
        self.num_params = sum(t.numel() for _, _, t, is_p in entries if is_p)
        self._owners: list[tuple[nn.Module, int, int]] = []  # (module, offset, numel) per entry
        offset = 0
        for owner, name, tensor, is_param in entries:
            self._owners.append((owner, offset, tensor.numel()))
            view = self.flat[offset:offset + tensor.numel()].view_as(tensor)
            if is_param:
                tensor.data = view
            else:
                owner._buffers[name] = view
            offset += tensor.numel()

    def __len__(self) -> int:
        return int(self.flat.numel())

    def mask(self, predicate: Callable[[nn.Module], bool]) -> torch.Tensor:
        """Boolean ``[len(flat)]``: True on the entries of modules where ``predicate`` holds."""
        out = torch.zeros(len(self.flat), dtype=torch.bool, device=self.flat.device)
        for owner, offset, numel in self._owners:
            if predicate(owner):
                out[offset:offset + numel] = True
        return out

    def param_views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``flat`` (another flat vector of this layout) cut into views shaped like the parameters."""
        out, offset = [], 0
        for p in self.module.parameters():
            out.append(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    def load_(self, flat: torch.Tensor) -> None:
        """Copy ``flat`` into the model's weights."""
        self.flat.copy_(flat)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A plain, self-contained ``state_dict`` (cloned, CPU): loadable into a fresh model."""
        return {k: v.detach().clone().cpu() for k, v in self.module.state_dict().items()}


def _members(module: nn.Module, attr: str) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """(owner, name, tensor) for every parameter/buffer, deduplicated, in state-dict order."""
    seen: set[int] = set()
    out = []
    for sub in module.modules():
        for name, t in getattr(sub, attr).items():
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                out.append((sub, name, t))
    return out
