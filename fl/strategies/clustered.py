"""Clustered FL: one global model per cluster of clients whose data agree.

Two ways to find the clusters (``assignment``):

* ``loss`` (IFCA): Ghosh, Chung, Yin, Ramchandran. "An Efficient Framework for Clustered
  Federated Learning." NeurIPS 2020. https://arxiv.org/abs/2006.04088 . The ``K`` models
  start from different initialisations; each round a client evaluates all of them on its
  training data, trains the one with the lowest loss and sends its update for that
  cluster; the server averages updates per cluster (the paper's model-averaging variant).
* ``kmeans`` (clustering by update similarity, the "K-means aggregation" of FL surveys;
  Briggs, Fan, Andras. "Federated learning with hierarchical clustering of local updates."
  IJCNN 2020): ``warmup_rounds`` rounds of FedAvg on one shared model; in the last of them
  the server runs k-means on the clients' update directions (unit vectors) and gives each
  cluster the shared model plus its members' mean update. From then on a client trains
  its cluster's model; a client not seen at clustering time joins the cluster whose model
  has the lowest loss on its data.

Either way each client evaluates with its own cluster's model (federated evaluation's
``personal_*`` metrics). The engine's global model, used for centralized test metrics
and ``final_model.pt``, is cluster 0's; ``cluster_models.pt`` holds all ``K`` and
``clusters.json`` each client's cluster. Server state (the ``K`` models, the assignments,
the phase) is in checkpoints; each rank holds ``K`` models, not one per client.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from fl.training.local import evaluate
from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.training.flat import FlatModel
from fl.training.job import LocalJob
from fl.training.objective import CLASSIFICATION, REGRESSION
from fl.runtime.seeding import derive_seed, generator
from fl.strategies.base import weighted_mean
from fl.strategies.fedavg import FedAvg
from fl.types import ClientTask, ClientUpdate, StrategyContext

ASSIGNMENTS = ("loss", "kmeans")


def kmeans(x: torch.Tensor, k: int, g: torch.Generator, iters: int = 100) -> torch.Tensor:
    """Cluster labels ``[N]`` of the rows of ``x`` ``[N, D]`` (Lloyd's algorithm, k-means++ seeding).

    Pure and deterministic given ``g``; labels are renumbered by first appearance, so the
    same partition always gets the same labels.
    """
    x = x.double()
    n = x.shape[0]
    centers = [x[int(torch.randint(n, (1,), generator=g))]]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centers)).pow(2).min(dim=1).values
        if float(d2.sum()) == 0:
            centers.append(x[int(torch.randint(n, (1,), generator=g))])
        else:
            centers.append(x[int(torch.multinomial(d2 / d2.sum(), 1, generator=g))])
    c = torch.stack(centers)
    labels = torch.cdist(x, c).argmin(dim=1)
    for _ in range(iters):
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(dim=0)
        new = torch.cdist(x, c).argmin(dim=1)
        if torch.equal(new, labels):
            break
        labels = new
    order = {int(v): i for i, v in enumerate(dict.fromkeys(labels.tolist()))}
    return torch.tensor([order[int(v)] for v in labels])


def per_cluster_mean(vectors: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([k, D] weighted mean of each cluster's rows (zeros if empty), [k] member counts)``."""
    means = torch.zeros(k, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
    counts = torch.zeros(k, dtype=vectors.dtype, device=vectors.device)
    for j in range(k):
        rows = labels == j
        counts[j] = rows.sum()
        if counts[j] > 0:
            means[j] = weighted_mean(vectors[rows], weights[rows])
    return means, counts


class Clustered(FedAvg):
    is_weighted_mean = False
    personalizes = True
    changes_local_training = True

    def __init__(self, num_clusters: int = 2, assignment: str = "loss", warmup_rounds: int = 2,
                 server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or num_clusters < 2:
            raise ConfigError("strategy.num_clusters", num_clusters, "must be an integer >= 2")
        if assignment not in ASSIGNMENTS:
            raise ConfigError("strategy.assignment", assignment, f"must be one of {', '.join(ASSIGNMENTS)}")
        if isinstance(warmup_rounds, bool) or not isinstance(warmup_rounds, int) or warmup_rounds < 1:
            raise ConfigError("strategy.warmup_rounds", warmup_rounds,
                              "must be an integer >= 1 (FedAvg rounds, the last of which is clustered)")
        self.k, self.assignment, self.warmup = num_clusters, assignment, warmup_rounds
        self.num_clients = self.seed = 0
        self.models: torch.Tensor | None = None  # [K, D]
        self.labels = torch.zeros(0, dtype=torch.long)  # [num_clients], -1: not assigned yet
        self.updates = 0  # server updates applied so far

    def check(self, ctx: StrategyContext) -> None:
        if self.assignment == "kmeans" and ctx.clients_per_round < self.k:
            raise ConfigError("strategy.num_clusters", self.k,
                              f"k-means needs at least as many clients per round, got {ctx.clients_per_round}")
        self.num_clients, self.seed = ctx.num_clients, ctx.seed
        self.labels = torch.full((ctx.num_clients,), -1, dtype=torch.long)

    def on_model(self, fm: FlatModel) -> None:
        """Cluster 0 starts from the run's model; IFCA's other clusters from their own seeds."""
        start = fm.flat.detach().clone()
        models = [start]
        for j in range(1, self.k):
            if self.assignment == "loss":
                torch.manual_seed(derive_seed(self.seed, "init", "cluster", j))
                for m in fm.module.modules():
                    if hasattr(m, "reset_parameters") and m is not fm.module:
                        m.reset_parameters()
                models.append(fm.flat.detach().clone())
            else:
                models.append(start.clone())
        fm.load_(start)
        self.models = torch.stack(models)

    @property
    def clustered(self) -> bool:
        return self.assignment == "loss" or self.updates >= self.warmup

    def cluster_of(self, fm: FlatModel, shard: ClientShard, client_id: int) -> int:
        """The cluster a client trains and evaluates with now (by loss: MSE for float regression targets)."""
        if not self.clustered:
            return 0
        if self.assignment == "kmeans" and self.labels[client_id] >= 0:
            return int(self.labels[client_id])
        objective = REGRESSION if shard.data.y.is_floating_point() else CLASSIFICATION
        losses = []
        for j in range(self.k):
            fm.load_(self.models[j].to(fm.flat.device))
            loss_sum, _, count = evaluate(fm.module, shard.data, shard.train_idx, 1024, objective).tolist()
            losses.append(loss_sum / max(count, 1))
        return min(range(self.k), key=lambda j: losses[j])

    def local_job(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard, task: ClientTask) -> LocalJob:
        j = self.cluster_of(fm, shard, task.client_id)
        return LocalJob(self.models[j].to(global_flat.device), task, state=j)

    def finish_update(self, job: LocalJob, update: ClientUpdate) -> ClientUpdate:
        tag = torch.tensor([job.state, job.task.client_id], dtype=update.delta.dtype, device=update.delta.device)
        return dataclasses.replace(update, extra=tag)

    def vector_dim(self, model_dim: int) -> int:
        return model_dim + 2  # delta, cluster trained, client id

    def client_vector(self, update: ClientUpdate) -> torch.Tensor:
        return torch.cat([update.delta, update.extra])

    def aggregate_dim(self, model_dim: int) -> int:
        return self.k * model_dim + self.k + self.num_clients  # per-cluster means, counts, assignments

    def aggregate(self, vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        deltas, trained, cids = vectors[:, :-2], vectors[:, -2].long(), vectors[:, -1].long()
        assigned = torch.full((self.num_clients,), -1.0, device=vectors.device)
        labels = trained
        if self.assignment == "kmeans" and self.updates + 1 == self.warmup:  # the clustering round
            directions = deltas / deltas.norm(dim=1, keepdim=True).clamp_min(1e-12)
            labels = kmeans(directions, self.k, generator(self.seed, "kmeans")).to(vectors.device)
        if self.updates + 1 >= self.warmup or self.assignment == "loss":
            assigned[cids] = labels.to(assigned.dtype)
        means, counts = per_cluster_mean(deltas, weights, labels, self.k)
        return torch.cat([means.flatten(), counts, assigned])

    def server_update(self, global_flat: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        d = global_flat.numel()
        means = aggregate[:self.k * d].view(self.k, d)
        counts = aggregate[self.k * d:self.k * d + self.k]
        assigned = aggregate[self.k * d + self.k:].long().cpu()
        models = self.models.to(global_flat.device)
        if self.assignment == "kmeans" and self.updates + 1 < self.warmup:  # shared FedAvg phase
            models = (models[0] + self.server_lr * means[0]).expand(self.k, d).clone()
        else:
            for j in range(self.k):
                if counts[j] > 0:
                    models[j] = models[j] + self.server_lr * means[j]
        self.models = models
        self.labels = torch.where(assigned >= 0, assigned, self.labels)
        self.updates += 1
        return models[0].clone()

    def personal_model(self, fm: FlatModel, global_flat: torch.Tensor, client_id: int, round_idx: int,
                       store: object, shard: ClientShard) -> None:
        j = self.cluster_of(fm, shard, client_id)
        fm.load_(self.models[j].to(global_flat.device))

    def save_outputs(self, fm: FlatModel, run_dir: Path) -> None:
        states = []
        for j in range(self.k):
            fm.load_(self.models[j].to(fm.flat.device))
            states.append({k: v.detach().cpu().clone() for k, v in fm.state_dict().items()})
        torch.save(states, run_dir / "cluster_models.pt")
        clusters = {str(c): int(v) for c, v in enumerate(self.labels.tolist())}
        (run_dir / "clusters.json").write_text(json.dumps(clusters, indent=1) + "\n")

    def state_dict(self) -> dict:
        return {"models": self.models.detach().cpu(), "labels": self.labels.clone(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.models, self.labels, self.updates = state["models"], state["labels"], int(state["updates"])
