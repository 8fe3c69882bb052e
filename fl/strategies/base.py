"""The strategy interface: a small object with a few hooks.

A round, as the engine runs it::

    for each sampled client (on the rank hosting it):
        update = strategy.client_update(...)          # local training (FedProx, SCAFFOLD override)
        v, w   = strategy.client_vector(update), strategy.client_weight(update)
    aggregate  = strategy.aggregate(V, W)             # gather path: pure, on rank 0
             or sum(w v) / sum(w) by one all-reduce   # sum path, when strategy.is_weighted_mean
    new_global = strategy.server_update(global, aggregate)   # server lr, server optimizers
    strategy.state_dict() / load_state_dict()         # server state, in checkpoints

``is_weighted_mean`` declares that ``aggregate`` is exactly the ``w``-weighted mean of the
client vectors, so the engine may compute it with one all-reduce instead of gathering
every update. Strategies that need all updates (median, Krum, clustering) leave it False
and the engine gathers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fl.training.local import local_train
from fl.data.federation import ClientShard
from fl.training.flat import FlatModel
from fl.training.job import LocalJob
from fl.types import ClientTask, ClientUpdate, StrategyContext


class Strategy:
    """Base strategy: plain local training, weighted mean, no server state."""

    is_weighted_mean: bool = True
    personalizes: bool = False  # clients evaluate their own models (see personal_model)
    changes_local_training: bool = False  # adds to the local loss, or trains more than the global model (not DP-SGD)

    def check(self, ctx: StrategyContext) -> None:
        """Refuse, before any work, a setting this strategy cannot work with (ConfigError)."""

    def on_model(self, fm: FlatModel) -> None:
        """Called once with the built model, before the first round (may raise ConfigError)."""

    def personal_model(self, fm: FlatModel, global_flat: torch.Tensor, client_id: int, round_idx: int,
                       store: object, shard: ClientShard) -> None:
        """Load the model client ``client_id`` uses after round ``round_idx`` into ``fm`` (default: global)."""
        fm.load_(global_flat)

    def local_job(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard, task: ClientTask) -> LocalJob:
        """What the client's local training does: where it starts, its plan, a term added to its loss
        (default: plain training from the global weights). Serial and batched training both run it."""
        return LocalJob(global_flat, task)

    def finish_update(self, job: LocalJob, update: ClientUpdate) -> ClientUpdate:
        """The client's update once ``job`` has trained (default: as trained); may save client state."""
        return update

    def personal_job(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard,
                     task: ClientTask) -> LocalJob | None:
        """A second local training, after the one whose update the client sends, of a model the client
        keeps (Ditto's personal model), or ``None`` (default). Serial and batched training both run it."""
        return None

    def keep_personal(self, job: LocalJob, weights: torch.Tensor) -> None:
        """Save ``weights``, what :meth:`personal_job`'s ``job`` trained."""

    def batch_support(self) -> str | None:
        """Why this strategy's clients cannot be trained together (:mod:`fl.training.batched`), or ``None``."""
        return None

    def client_update(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard,
                      task: ClientTask) -> ClientUpdate:
        """Run the client's local training (serially): its :meth:`local_job`, then :meth:`finish_update`,
        then its :meth:`personal_job`, if any."""
        job = self.local_job(fm, global_flat, shard, task)
        update = self.finish_update(job, local_train(fm, job.start, shard, job.task, job.term))
        personal = self.personal_job(fm, global_flat, shard, task)
        if personal is not None:
            local_train(fm, personal.start, shard, personal.task, personal.term)
            self.keep_personal(personal, fm.flat)
        return update

    def vector_dim(self, model_dim: int) -> int:
        """Length of :meth:`client_vector` (default: the flat model; more for strategies that
        also aggregate per-client scalars, e.g. FedNova's step counts)."""
        return model_dim

    def transforms(self) -> list:
        """Update transforms the strategy adds to the round's pipeline, after the attack and before
        DP and compression (:mod:`fl.transport.pipeline`; default: none)."""
        return []

    def compressible_dim(self, model_dim: int) -> int:
        """How many leading entries of :meth:`client_vector` are model-shaped and may be compressed
        (``compression/uplink``); the rest (step counts, ids) travel as float32."""
        return model_dim

    def aggregate_dim(self, model_dim: int) -> int:
        """Length of :meth:`aggregate`'s result (default: that of a client vector). Only gather-path
        strategies may differ (e.g. clustered FL returns one mean per cluster)."""
        return self.vector_dim(model_dim)

    def client_vector(self, update: ClientUpdate) -> torch.Tensor:
        """The flat vector a client contributes (default: its model delta)."""
        return update.delta

    def client_weight(self, update: ClientUpdate) -> float:
        """The client's aggregation weight (default: its number of training samples)."""
        return float(update.num_samples)

    def aggregate(self, vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Combine client vectors ``[K, V]`` with weights ``[K]`` into one vector of
        :meth:`aggregate_dim` (pure)."""
        return weighted_mean(vectors, weights)

    def server_update(self, global_flat: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        """The new global weights ``[D]`` from the old ones and the aggregate."""
        raise NotImplementedError

    def save_outputs(self, fm: FlatModel, run_dir: Path) -> None:
        """Write strategy-specific results next to ``final_model.pt`` (rank 0, at the end)."""

    def state_dict(self) -> dict:
        """Server-side state to checkpoint (tensors and plain Python values only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but the checkpoint has {sorted(state)}")


def weighted_mean(vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k v_k / sum_k w_k`` for ``vectors`` [K, D] and ``weights`` [K]."""
    w = weights.to(vectors.dtype)
    return (w @ vectors) / w.sum()
