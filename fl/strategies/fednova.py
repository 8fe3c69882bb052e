"""FedNova: normalized averaging for clients that take different numbers of local steps.

Wang, Liu, Liang, Joshi, Poor. "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization." NeurIPS 2020. https://arxiv.org/abs/2007.07481

For plain local SGD, client ``i`` with ``tau_i`` steps contributes its normalized delta
``delta_i / tau_i``; the server steps ``tau_eff * sum_i p_i delta_i / tau_i`` with
``p_i = n_i / n`` and ``tau_eff = sum_i p_i tau_i``. When every client takes the same number
of steps this is FedAvg. (This is the paper's vanilla-SGD normalization ``a_i = [1, ..., 1]``;
local momentum would need its own ``a_i``.)

The client vector is ``[delta_i / tau_i, tau_i]``: its weighted mean carries both sums, so
FedNova still runs on one all-reduce.
"""

from __future__ import annotations

import torch

from fl.strategies.fedavg import FedAvg
from fl.types import ClientUpdate


class FedNova(FedAvg):
    is_weighted_mean = True

    def vector_dim(self, model_dim: int) -> int:
        return model_dim + 1

    def client_vector(self, update: ClientUpdate) -> torch.Tensor:
        tau = float(max(update.num_steps, 1))
        return torch.cat([update.delta / tau, update.delta.new_tensor([tau])])

    def server_update(self, global_flat: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        normalized, tau_eff = aggregate[:-1], aggregate[-1]
        return global_flat + self.server_lr * tau_eff * normalized
