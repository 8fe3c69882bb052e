"""What one client's local training is asked to do, in a form both trainers read.

A strategy turns a :class:`~fl.types.ClientTask` into a :class:`LocalJob`: the weights the
client starts from, the task (its plan may differ, e.g. FedSGD's one full batch), and an
optional :class:`LocalTerm` added to every mini-batch loss. The serial trainer
(:func:`fl.training.local.local_train`) adds the term to the loss and lets autograd
differentiate it; the batched trainer (:mod:`fl.training.batched`) adds its gradient, which is
known in closed form, to the stacked data gradients. Both give the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from fl.types import ClientTask


@dataclass(frozen=True)
class LocalTerm:
    """``prox_mu/2 * ||w - prox_anchor||^2 + <linear, w>`` over the model's parameters.

    FedProx's proximal term is the first part, SCAFFOLD's control-variate correction the
    second (its gradient is exactly ``linear``). Vectors are flat, in :class:`FlatModel` order,
    one entry per parameter scalar.
    """

    prox_mu: float = 0.0
    prox_anchor: torch.Tensor | None = None
    linear: torch.Tensor | None = None

    def loss(self, params: list[torch.Tensor], views: Callable[[torch.Tensor], list[torch.Tensor]]) -> torch.Tensor:
        """The term's value, differentiable in ``params``; ``views`` cuts a flat vector like them."""
        total = torch.zeros((), device=params[0].device, dtype=params[0].dtype)
        if self.prox_mu and self.prox_anchor is not None:
            total = total + proximal_term(params, views(self.prox_anchor), self.prox_mu)
        if self.linear is not None:
            total = total + sum((p * v).sum() for p, v in zip(params, views(self.linear), strict=True))
        return total

    def grad(self, w: torch.Tensor) -> torch.Tensor | None:
        """Its gradient at flat parameters ``w`` (``[..., P]``), or ``None`` when it is zero."""
        out = None
        if self.prox_mu and self.prox_anchor is not None:
            out = self.prox_mu * (w - self.prox_anchor)
        if self.linear is not None:
            out = self.linear if out is None else out + self.linear
        return out


def proximal_term(params: list[torch.Tensor], anchors: list[torch.Tensor], mu: float) -> torch.Tensor:
    """``mu/2 * sum ||p - a||^2`` over parameter tensors (differentiable in ``params``)."""
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))


@dataclass(frozen=True)
class LocalJob:
    """One client's local training: start from ``start``, train as ``task`` says, add ``term``.

    ``state`` is the strategy's own, handed back to it with the update (e.g. SCAFFOLD's ``c_i``).
    """

    start: torch.Tensor
    task: ClientTask
    term: LocalTerm | None = None
    state: Any = None
