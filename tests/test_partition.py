import json

import pytest
import torch

from fl.data import partition as P
from fl.errors import ConfigError

LABELS = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=torch.Generator().manual_seed(1))]


def _check_cover(parts, n):
    allidx = torch.cat(parts)
    assert len(allidx) == n and len(torch.unique(allidx)) == n, "clients must be disjoint and cover every sample"


def _classes_per_client(parts, share=0.1):
    counts = [torch.bincount(LABELS[p], minlength=10).float() for p in parts]
    return sum(int((c / c.sum() > share).sum()) for c in counts) / len(parts)


def test_iid_is_a_balanced_disjoint_cover_and_deterministic():
    parts = P.iid(1000, 7, seed=3)
    _check_cover(parts, 1000)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(torch.equal(a, b) for a, b in zip(parts, P.iid(1000, 7, seed=3), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(parts, P.iid(1000, 7, seed=4), strict=True))


def test_dirichlet_cover_determinism_and_skew_grows_as_alpha_shrinks():
    skewed = P.dirichlet(LABELS, 20, alpha=0.1, seed=0)
    mild = P.dirichlet(LABELS, 20, alpha=100.0, seed=0)
    for parts in (skewed, mild):
        _check_cover(parts, 1000)
        assert min(len(p) for p in parts) >= 2
    assert all(torch.equal(a, b) for a, b in zip(skewed, P.dirichlet(LABELS, 20, alpha=0.1, seed=0), strict=True))
    assert _classes_per_client(skewed) < 4 < _classes_per_client(mild)


def test_dirichlet_impossible_minimum_is_a_config_error():
    with pytest.raises(ConfigError, match="partition.alpha"):
        P.dirichlet(LABELS[:30], 20, alpha=0.01, seed=0, min_samples=2, max_tries=20)


def test_shards_gives_each_client_few_labels():
    parts = P.shards(LABELS, 50, shards_per_client=2, seed=0)
    _check_cover(parts, 1000)
    assert all(len(p) == 20 for p in parts)
    # 100 shards of 10 over 10 sorted labels of 100: every shard is a single label.
    assert max(len(torch.unique(LABELS[p])) for p in parts) <= 2
    assert _classes_per_client(parts) <= 2 < _classes_per_client(P.iid(1000, 50, seed=0))


def test_shards_more_than_samples_is_a_config_error():
    with pytest.raises(ConfigError, match="shards_per_client"):
        P.shards(LABELS[:10], 10, shards_per_client=2, seed=0)


def test_holdout_split_is_disjoint_nonempty_and_seeded():
    idx = torch.arange(100, 120)
    train, hold = P.holdout_split(idx, 0.25, seed=5)
    assert len(hold) == 5 and len(train) == 15
    assert set(train.tolist()).isdisjoint(hold.tolist()) and set(train.tolist()) | set(hold.tolist()) == set(idx.tolist())
    assert torch.equal(hold, P.holdout_split(idx, 0.25, seed=5)[1])
    assert len(P.holdout_split(torch.arange(3), 0.01, seed=0)[1]) == 1  # a tiny fraction still holds one out
    assert len(P.holdout_split(torch.arange(3), 0.0, seed=0)[1]) == 0


def test_a_users_partitioner_by_target_gets_labels_clients_and_seed_and_is_checked(tmp_path, monkeypatch):
    from conftest import REPO, make_cfg
    from fl.config.build import prepare
    from fl.api import run_job

    monkeypatch.syspath_prepend(str(REPO / "tests"))
    job = ("data=custom", "data._target_=user_data.blobs", "model=logreg", "fl.num_clients=4", "fl.rounds=1")
    run_job(make_cfg(*job, "partition._target_=user_data.Blocks", "+partition.first=0.5"), tmp_path / "a")
    clients = json.loads((tmp_path / "a" / "partition.json").read_text())["clients"]
    assert [c["num_train"] + c["num_holdout"] for c in clients.values()] == [150, 50, 50, 50]  # of 300
    with pytest.raises(ConfigError, match=r"partition.colour='red' is invalid: Blocks takes no such argument"):
        prepare(make_cfg(*job, "partition._target_=user_data.Blocks", "+partition.colour=red"), 1)
    with pytest.raises(ConfigError, match=r"partition._target_='user_data.overlapping' is invalid: returned a "
                                          r"sample for more than one client"):
        run_job(make_cfg(*job, "partition._target_=user_data.overlapping"), tmp_path / "b")
