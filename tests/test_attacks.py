"""Malicious clients, non-finite updates, dropouts and stragglers: the maths and end to end."""

from __future__ import annotations

import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.transport.plain import GatherAggregator, SumAggregator
from fl.attacks import Adversary, Gaussian, NanUpdate, Scale, SignFlip, flip_labels, malicious_clients
from fl.training.cohort import drops_out, local_steps, slowdown
from fl.runtime.comm import Comm
from fl.errors import ConfigError
from fl.strategies import FedAvg
from fl.strategies.base import weighted_mean
from fl.strategies.fedavgm import FedAvgM
from fl.types import ClientUpdate

CPU = torch.device("cpu")


def _update(cid: int, delta: torch.Tensor, n: int = 10) -> ClientUpdate:
    return ClientUpdate(cid, delta, n, torch.tensor(1.0), n, 1)


def test_malicious_set_is_fixed_by_the_seed_and_sized_by_the_fraction():
    a = malicious_clients(0, 50, 0.2)
    assert len(a) == 10 and a == malicious_clients(0, 50, 0.2) and a <= set(range(50))
    assert a != malicious_clients(1, 50, 0.2)
    assert malicious_clients(0, 50, 0.0) == frozenset()


def test_attack_transforms_only_malicious_clients():
    d = torch.randn(6)
    for cls, expected in ((SignFlip, -3 * d), (Scale, 3 * d)):
        attack = Adversary(cls(factor=3.0), frozenset({1}), 0)
        torch.testing.assert_close(attack.poison(_update(1, d), 0).delta, expected)
        assert attack.poison(_update(2, d), 0).delta is d
    noise = Adversary(Gaussian(std=2.0), frozenset({1}), 0).poison(_update(1, torch.zeros(20000)), 0).delta
    assert abs(float(noise.std()) - 2.0) < 0.05 and abs(float(noise.mean())) < 0.05
    assert torch.isnan(Adversary(NanUpdate(), frozenset({1}), 0).poison(_update(1, d), 0).delta).all()
    assert torch.equal(flip_labels(torch.arange(10), 10), torch.arange(9, -1, -1))


@pytest.mark.parametrize("cls", [SumAggregator, GatherAggregator])
def test_non_finite_updates_never_reach_the_model(cls):
    comm = Comm(0, 1, CPU)
    agg = cls(FedAvg(), comm, 4, CPU, 4) if cls is GatherAggregator else cls(FedAvg(), comm, 4, CPU)
    good = [torch.tensor([1.0, 2, 3, 4]), torch.tensor([3.0, 2, 1, 0])]
    agg.add(_update(0, good[0]))
    agg.add(_update(1, torch.tensor([1.0, float("nan"), 0, 0])))
    agg.add(_update(2, torch.tensor([float("inf"), 0, 0, 0])))
    agg.add(_update(3, good[1]))
    result = agg.finish(torch.zeros(4), 0)
    torch.testing.assert_close(result.new_global, (good[0] + good[1]) / 2)
    assert (result.num_clients, result.rejected, result.num_samples) == (2, 2, 20)


@pytest.mark.parametrize("cls", [SumAggregator, GatherAggregator])
def test_dropped_clients_leave_the_weights_of_the_others_exact(cls):
    comm = Comm(0, 1, CPU)
    agg = cls(FedAvg(), comm, 3, CPU, 5) if cls is GatherAggregator else cls(FedAvg(), comm, 3, CPU)
    deltas = [torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    sizes = [5, 20, 75]
    agg.drop(7)
    agg.add(_update(0, deltas[0], sizes[0]))
    agg.drop(8, late=True)
    agg.add(_update(1, deltas[1], sizes[1]))
    agg.add(_update(2, deltas[2], sizes[2]))
    result = agg.finish(torch.zeros(3), 0)
    torch.testing.assert_close(result.new_global, weighted_mean(torch.stack(deltas), torch.tensor(sizes)))
    assert (result.num_clients, result.dropped, result.late, result.num_samples) == (3, 1, 1, 100)


@pytest.mark.parametrize("cls", [SumAggregator, GatherAggregator])
def test_too_few_clients_skip_the_round_and_keep_server_state(cls):
    strategy = FedAvgM(momentum=0.9)
    comm = Comm(0, 1, CPU)
    args = (strategy, comm, 3, CPU) + ((3,) if cls is GatherAggregator else ())
    agg = cls(*args, min_clients=2)
    agg.add(_update(0, torch.ones(3)))
    agg.drop(1)
    g = torch.full((3,), 5.0)
    result = agg.finish(g, 0)
    assert result.skipped and torch.equal(result.new_global, g)
    assert strategy.state_dict() == {}, "the server step (and its momentum) must not run"


def test_dropout_and_straggler_draws():
    draws = [drops_out(0, r, c, 0.3) for r in range(50) for c in range(20)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert draws == [drops_out(0, r, c, 0.3) for r in range(50) for c in range(20)]
    assert not any(drops_out(0, r, 0, 0.0) for r in range(20))
    speeds = [slowdown(0, c, 8.0) for c in range(200)]
    assert min(speeds) >= 1 and max(speeds) <= 8 and max(speeds) > 6 and min(speeds) < 1.2
    assert slowdown(0, 3, 1.0) == 1.0
    assert local_steps(100, 2, None, 32) == 8 and local_steps(100, 2, 5, 32) == 5


@pytest.mark.parametrize("override, key", [
    ("attack.fraction=1.0", "attack.fraction"), ("attack.factor=0", "attack.factor"),
    ("fl.dropout_rate=1", "fl.dropout_rate"), ("fl.client_slowdown_max=0.5", "fl.client_slowdown_max"),
    ("fl.round_deadline=-1", "fl.round_deadline"), ("fl.min_clients_per_round=11", "fl.min_clients_per_round"),
])
def test_bad_settings_name_the_key(override, key):
    from fl.config.build import prepare

    cfg = make_cfg("attack=scale", "fl.num_clients=10", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        prepare(cfg, 1)


def test_an_attack_of_ones_own_by_target(monkeypatch):
    from conftest import REPO
    from fl.config.build import build_adversary, prepare

    monkeypatch.syspath_prepend(str(REPO / "tests"))
    cfg = make_cfg("attack._target_=user_data.Silent", "attack.fraction=0.5", "fl.num_clients=10")
    prepare(cfg, 1)
    adversary = build_adversary(cfg, 10)
    assert len(adversary.malicious) == 5 and adversary.malicious == malicious_clients(0, 10, 0.5)
    bad, good = sorted(adversary.malicious)[0], sorted(set(range(10)) - adversary.malicious)[0]
    d = torch.ones(4)
    assert torch.equal(adversary.poison(_update(bad, d), 3).delta, torch.zeros(4))
    assert adversary.poison(_update(good, d), 3).delta is d
    with pytest.raises(ConfigError, match=r"attack._target_='user_data.Blocks' is invalid: must build a subclass of "
                                          r"fl.attacks.NoAttack"):
        prepare(make_cfg("attack._target_=user_data.Blocks", "~attack.fraction"), 1)


ATTACK_RUN = ("fl.num_clients=10", "fl.rounds=15", "fl.eval_every=15", "optim.lr=0.1", "fl.local_epochs=3",
              "fl.checkpoint_every=0", "runtime.log_level=WARNING")


def _accuracy(tmp_path, name, *overrides):
    run_dir = tmp_path / name
    summaries = fork_ranks(2, run_job, tmp_path, make_cfg(*ATTACK_RUN, *overrides), run_dir)
    model = torch.load(run_dir / "final_model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in model.values()), name
    return summaries[0]["final"]["test_accuracy"], summaries[0]


def test_scaled_updates_pull_fedavg_away_while_median_and_krum_hold(tmp_path):
    clean, _ = _accuracy(tmp_path, "clean")
    attacked, _ = _accuracy(tmp_path, "fedavg", "attack=scale", "attack.factor=30")
    median, _ = _accuracy(tmp_path, "median", "attack=scale", "attack.factor=30", "strategy=median")
    krum, _ = _accuracy(tmp_path, "krum", "attack=scale", "attack.factor=30", "strategy=krum",
                        "strategy.num_byzantine=2")
    assert clean > 0.8
    assert attacked < clean - 0.1, (clean, attacked)
    assert median > clean - 0.05 and krum > clean - 0.05, (clean, median, krum)


def test_nan_updates_are_rejected_and_counted_end_to_end(tmp_path):
    acc, summary = _accuracy(tmp_path, "nan", "attack=nan_update", "fl.rounds=4", "fl.eval_every=4")
    assert summary["final"]["rejected"] == 2 and summary["final"]["clients"] == 8
    assert acc > 0.3


def test_dropouts_complete_and_are_logged(tmp_path):
    _, summary = _accuracy(tmp_path, "drop", "fl.dropout_rate=0.3", "fl.rounds=6", "fl.eval_every=1",
                           "fl.min_clients_per_round=8")
    import json
    records = [json.loads(x) for x in (tmp_path / "drop" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["clients"] + r["dropped"] == 10 for r in records)
    assert sum(r["dropped"] for r in records) > 0
    assert any(r["skipped"] for r in records) and not all(r["skipped"] for r in records)
    assert summary["rounds_run"] == 6
