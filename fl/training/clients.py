"""How a rank's clients train each round: together in batched chunks, or one after another.

``fl.client_batch`` chooses: ``auto`` batches (:mod:`fl.training.batched`) whenever the run
allows it and otherwise trains serially, saying once why; ``off`` always trains serially; a
number ``N`` batches in chunks of at most ``N`` clients and refuses, before any work, a run that
cannot be batched. ``fl.client_batch_memory_mb`` bounds a chunk's estimated memory. Both paths
run the strategy's :meth:`~fl.strategies.base.Strategy.local_job` and
:meth:`~fl.strategies.base.Strategy.finish_update`, so they train the same clients the same way.
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import torch

from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.strategies.base import Strategy
from fl.training.batched import SGD, BatchedTrainer, data_reason, why_not_model
from fl.training.flat import FlatModel
from fl.types import ClientTask, ClientUpdate, OptimizerFactory

log = logging.getLogger(__name__)


class ClientTraining:
    """Built once per rank, before any work; the decision is the same on every rank."""

    def __init__(self, setting: str | int, memory_mb: float, fm: FlatModel, strategy: Strategy,
                 make_optimizer: OptimizerFactory, shards: Sequence[ClientShard], input_shape: Sequence[int],
                 objective: str, batch_size: int, local_dp: object, clients_per_rank: int, is_main: bool) -> None:
        self.trainer: BatchedTrainer | None = None
        self.reason: str | None = "fl.client_batch=off" if setting == "off" else None
        if self.reason is None:
            sgd = SGD.of(make_optimizer)
            self.reason = (strategy.batch_support()
                           or (sgd if isinstance(sgd, str) else None)
                           or why_not_model(fm.module) or data_reason(shards)
                           or ("each rank trains at most one client per round: nothing to batch"
                               if setting == "auto" and clients_per_rank <= 1 else None))
            if self.reason is None:
                self.reason = self._build(setting, memory_mb, fm, sgd, input_shape, objective,  # type: ignore[arg-type]
                                          local_dp is not None)
        if self.reason is not None and setting not in ("auto", "off"):
            raise ConfigError("fl.client_batch", setting, f"cannot batch this run: {self.reason}; use "
                              "fl.client_batch=auto (trains one client at a time when it cannot batch) or off")
        if is_main:
            if self.trainer is not None:
                log.info("client training: batched (%s), up to %d clients per chunk (fl.client_batch=%s, "
                         "fl.client_batch_memory_mb=%s)", self.trainer.path, self.trainer.chunk_size(batch_size, 2),
                         setting, memory_mb)
            elif setting == "auto":
                log.info("client training: one client at a time, because %s", self.reason)

    def _build(self, setting: str | int, memory_mb: float, fm: FlatModel, sgd: SGD, input_shape: Sequence[int],
               objective: str, dp: bool) -> str | None:
        trainer = None
        try:
            trainer = BatchedTrainer(fm, sgd, objective, input_shape, memory_mb,
                                     None if setting == "auto" else int(setting))
            trainer.check(dp)
        except Exception as e:  # noqa: BLE001 - whatever cannot run batched is a reason to train serially
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            path = "torch.func.vmap" if trainer is None or dp or trainer.grouped is None else "grouped convolutions"
            return f"the model does not run under {path} ({type(e).__name__}: {first[:200]})"
        self.trainer = trainer
        return None

    @property
    def batched(self) -> bool:
        return self.trainer is not None

    def describe(self) -> str:
        """For ``run.json``: ``batched`` or ``serial: <why>``."""
        return "batched" if self.trainer is not None else f"serial: {self.reason}"

    def train(self, strategy: Strategy, fm: FlatModel, start: torch.Tensor,
              items: list[tuple[ClientShard, ClientTask]]) -> Iterator[ClientUpdate]:
        """The updates of the clients ``items`` (their training shard and task), from ``start``."""
        if self.trainer is None:
            for shard, task in items:
                yield strategy.client_update(fm, start, shard, task)
            return
        jobs = [(strategy.local_job(fm, start, shard, task), shard) for shard, task in items]
        updates = self.trainer.train(jobs)
        personal = [(job, shard) for shard, task in items
                    if (job := strategy.personal_job(fm, start, shard, task)) is not None]
        for (job, _), update in zip(personal, self.trainer.train(personal)):
            strategy.keep_personal(job, job.start.to(update.delta.device) + update.delta)
        for (job, _), update in zip(jobs, updates):
            yield strategy.finish_update(job, update)
