"""Clustered FL: k-means and per-cluster means on tensors; group recovery end to end."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.data.federation import rotate_labels
from fl.errors import ConfigError
from fl.models import build_model
from fl.strategies.base import weighted_mean
from fl.strategies.clustered import Clustered, kmeans, per_cluster_mean


def test_kmeans_separates_directions_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50), torch.randn(50)
    rows = [(a if i % 3 else b) + 0.3 * torch.randn(50, generator=g) for i in range(12)]
    x = torch.stack(rows)
    labels = kmeans(x / x.norm(dim=1, keepdim=True), 2, torch.Generator().manual_seed(1))
    truth = torch.tensor([0 if i % 3 == 0 else 1 for i in range(12)])
    assert torch.equal(labels, truth) or torch.equal(labels, 1 - truth)
    assert labels[0] == 0, "labels are numbered by first appearance"
    assert torch.equal(labels, kmeans(x / x.norm(dim=1, keepdim=True), 2, torch.Generator().manual_seed(1)))


def test_per_cluster_mean_is_the_weighted_mean_of_each_cluster():
    v, w = torch.randn(6, 4), torch.tensor([1.0, 2, 3, 4, 5, 6])
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    means, counts = per_cluster_mean(v, w, labels, 3)
    torch.testing.assert_close(means[0], weighted_mean(v[[0, 2, 5]], w[[0, 2, 5]]))
    torch.testing.assert_close(means[1], weighted_mean(v[[1, 3, 4]], w[[1, 3, 4]]))
    assert not means[2].any() and counts.tolist() == [3, 3, 0]


def test_rotated_label_groups_disagree_on_every_class():
    y = torch.arange(10)
    assert torch.equal(rotate_labels(y, 0, 2, 10), y)
    assert not (rotate_labels(y, 1, 2, 10) == y).any()
    assert sorted(rotate_labels(y, 2, 3, 10).tolist()) == list(range(10))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="strategy.num_clusters=1"):
        Clustered(num_clusters=1)
    with pytest.raises(ConfigError, match="strategy.assignment='cosine'"):
        Clustered(assignment="cosine")
    with pytest.raises(ConfigError, match="strategy.warmup_rounds=0"):
        Clustered(assignment="kmeans", warmup_rounds=0)


GROUPS = ("partition.label_groups=2", "fl.num_clients=8", "fl.rounds=10", "fl.eval_every=5", "optim.lr=0.1",
          "fl.local_epochs=2", "fl.checkpoint_every=0", "runtime.log_level=WARNING")


def _run(tmp_path, name, *overrides, world_size=2):
    run_dir = tmp_path / name
    summary = fork_ranks(world_size, run_job, tmp_path, make_cfg(*GROUPS, *overrides), run_dir)[0]
    return run_dir, summary["final"]


@pytest.mark.parametrize("assignment", ["loss", "kmeans"])
def test_clustered_recovers_conflicting_groups_and_beats_one_model(tmp_path, assignment):
    _, fedavg = _run(tmp_path, "fedavg")
    run_dir, final = _run(tmp_path, assignment, "strategy=clustered", f"strategy.assignment={assignment}")
    clusters = json.loads((run_dir / "clusters.json").read_text())
    groups = {c: int(c) % 2 for c in clusters}
    assert len(set(clusters.values())) == 2
    assert all((clusters[c] == clusters["0"]) == (groups[c] == 0) for c in clusters), clusters
    assert final["personal_accuracy_mean"] > fedavg["client_accuracy_mean"] + 0.2, (final, fedavg)
    states = torch.load(run_dir / "cluster_models.pt", weights_only=True)
    assert len(states) == 2
    model = build_model("cnn_padded", (1, 8, 8), 10)
    model.load_state_dict(states[1])
    partition = json.loads((run_dir / "partition.json").read_text())
    assert partition["clients"]["3"]["label_group"] == 1


def test_clustered_resume_equals_uninterrupted(tmp_path):
    common = ("strategy=clustered", "strategy.assignment=kmeans", "strategy.warmup_rounds=3",
              "fl.checkpoint_every=2", "fl.clients_per_round=6", "fl.eval_every=6")
    full, _ = _run(tmp_path, "full", *common, "fl.rounds=6")
    _run(tmp_path, "resumed", *common, "fl.rounds=2")
    resumed, _ = _run(tmp_path, "resumed", *common, "fl.rounds=6")
    a = torch.load(full / "cluster_models.pt", weights_only=True)
    b = torch.load(resumed / "cluster_models.pt", weights_only=True)
    for j in range(2):
        assert all(torch.equal(a[j][k], b[j][k]) for k in a[j]), f"cluster {j}"
    assert (full / "clusters.json").read_text() == (resumed / "clusters.json").read_text()
