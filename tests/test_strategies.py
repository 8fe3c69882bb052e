"""Strategies against properties their papers state."""

from __future__ import annotations

import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.errors import ConfigError
from fl.strategies import FedAvg
from fl.strategies.base import weighted_mean
from fl.strategies.fedavgm import FedAvgM
from fl.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fl.strategies.krum import Krum, krum_scores, multi_krum
from fl.strategies.norm_bound import NormBound, clip_to_norm
from fl.strategies.robust import Median, TrimmedMean, coordinate_median, trimmed_mean
from fl.types import ClientUpdate

def _ctx(clients_per_round, lr=0.1, **optim):
    from functools import partial

    from fl.types import StrategyContext
    return StrategyContext(20, clients_per_round, partial(torch.optim.SGD, lr=lr, **optim))


DELTAS = [torch.randn(7, generator=torch.Generator().manual_seed(r)) for r in range(4)]


@pytest.mark.parametrize("cls", [FedAdagrad, FedAdam, FedYogi])
def test_fedopt_matches_the_paper_update_written_out(cls):
    lr, b1, b2, tau = 0.05, 0.8, 0.95, 0.01
    strategy = cls(server_lr=lr, beta1=b1, beta2=b2, tau=tau)
    w = w_ref = torch.zeros(7)
    m, v = [0.0] * 7, [tau ** 2] * 7
    for d in DELTAS:
        w = strategy.server_update(w, d)
        for i in range(7):  # Reddi et al. 2021, Algorithm 2, one coordinate at a time
            g = float(d[i])
            m[i] = b1 * m[i] + (1 - b1) * g
            if cls is FedAdagrad:
                v[i] = v[i] + g * g
            elif cls is FedAdam:
                v[i] = b2 * v[i] + (1 - b2) * g * g
            else:
                v[i] = v[i] - (1 - b2) * g * g * (1.0 if v[i] - g * g > 0 else -1.0 if v[i] - g * g < 0 else 0.0)
        w_ref = w_ref + lr * torch.tensor([m[i] / (v[i] ** 0.5 + tau) for i in range(7)])
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)


def test_fedopt_state_round_trips():
    a, b = FedAdam(), FedAdam()
    w = a.server_update(torch.zeros(7), DELTAS[0])
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.server_update(w, DELTAS[1]), b.server_update(w, DELTAS[1]))


def test_fedavgm_momentum_zero_is_fedavg_and_momentum_accumulates():
    w = torch.zeros(7)
    plain, zero, heavy = FedAvg(), FedAvgM(momentum=0.0), FedAvgM(momentum=0.5)
    for d in DELTAS:
        torch.testing.assert_close(zero.server_update(w, d), plain.server_update(w, d))
    heavy.server_update(w, DELTAS[0])
    torch.testing.assert_close(heavy.server_update(w, DELTAS[1]), w + 0.5 * DELTAS[0] + DELTAS[1])


def _attacked(kind: str):
    """10 client updates near (1, ..., 1); the last 2 are malicious."""
    g = torch.Generator().manual_seed(0)
    honest = 1.0 + 0.1 * torch.randn(8, 50, generator=g)
    bad = -10 * honest[:2] if kind == "sign_flip" else 20 * honest[:2]
    return torch.cat([honest, bad]), honest.mean(0)


@pytest.mark.parametrize("kind", ["sign_flip", "scale"])
def test_robust_aggregators_resist_two_of_ten_malicious(kind):
    vectors, honest_mean = _attacked(kind)
    weights = torch.full((10,), 60.0)
    err = lambda agg: float((agg - honest_mean).norm() / honest_mean.norm())  # noqa: E731
    assert err(weighted_mean(vectors, weights)) > 1.0, "the plain mean must be pulled away"
    assert err(Median().aggregate(vectors, weights)) < 0.1
    assert err(TrimmedMean(beta=0.2).aggregate(vectors, weights)) < 0.1
    assert err(Krum(num_byzantine=2).aggregate(vectors, weights)) < 0.15
    assert err(Krum(num_byzantine=2, m=5).aggregate(vectors, weights)) < 0.1
    assert set(krum_scores(vectors, 2).argsort()[:8].tolist()) == set(range(8))


def test_robust_maths_on_small_cases():
    v = torch.tensor([[1.0, 5.0], [2.0, 6.0], [100.0, 7.0], [3.0, -50.0], [4.0, 8.0]])
    torch.testing.assert_close(coordinate_median(v), torch.tensor([3.0, 6.0]))
    torch.testing.assert_close(trimmed_mean(v, 0.2), torch.tensor([3.0, 6.0]))
    torch.testing.assert_close(multi_krum(v, 1, 1), v[krum_scores(v, 1).argmin()])


def test_norm_bound_clips_each_update():
    big = ClientUpdate(0, torch.full((4,), 3.0), 10, torch.tensor(0.0), 10, 1)
    small = ClientUpdate(1, torch.full((4,), 0.1), 10, torch.tensor(0.0), 10, 1)
    from fl.transport.counters import Counters

    nb = NormBound(max_norm=1.0)
    (clip,) = nb.transforms()  # a stage of the update pipeline, after any attack

    def sent(update):
        return clip.client(nb.client_vector(update), Counters(), update.client_id)[0]

    assert float(sent(big).norm()) == pytest.approx(1.0)
    assert torch.equal(sent(small), small.delta)
    assert torch.equal(clip_to_norm(torch.zeros(3), 1.0), torch.zeros(3))


def test_impossible_cohorts_are_refused_before_work(caplog):
    with pytest.raises(ConfigError, match=r"strategy.num_byzantine=2 .*clients_per_round > 2 \* num_byzantine \+ 2"):
        Krum(num_byzantine=2).check(_ctx(6))
    Krum(num_byzantine=2).check(_ctx(7))
    with pytest.raises(ConfigError, match="strategy.m=9"):
        Krum(num_byzantine=1, m=9).check(_ctx(8))
    with caplog.at_level("WARNING", logger="fl"):
        TrimmedMean(beta=0.1).check(_ctx(5))
    assert "strategy.beta=0.1 trims no client of 5" in caplog.text
    with pytest.raises(ConfigError, match="strategy.momentum"):
        FedAvgM(momentum=1.0)


SMALL = ("data=digits", "model=cnn_padded", "partition=dirichlet", "fl.num_clients=8", "fl.clients_per_round=5",
         "fl.rounds=3", "fl.eval_every=3", "train.batch_size=16", "optim.lr=0.1", "fl.checkpoint_every=0")


def _final(tmp_path, name, world_size, *overrides):
    run_dir = tmp_path / name
    summaries = fork_ranks(world_size, run_job, tmp_path, make_cfg(*SMALL, *overrides), run_dir)
    return torch.load(run_dir / "final_model.pt", weights_only=True), summaries[0]


def test_fedprox_mu_zero_and_fedavgm_momentum_zero_equal_fedavg_end_to_end(tmp_path):
    ref, _ = _final(tmp_path, "fedavg", 1)
    for name, overrides in (("prox0", ("strategy=fedprox", "strategy.mu=0")),
                            ("avgm0", ("strategy=fedavgm", "strategy.momentum=0"))):
        model, _ = _final(tmp_path, name, 1, *overrides)
        assert all(torch.equal(model[k], ref[k]) for k in ref), name
    prox, _ = _final(tmp_path, "prox1", 1, "strategy=fedprox", "strategy.mu=1.0")
    assert any(not torch.equal(prox[k], ref[k]) for k in ref), "mu > 0 must change local training"


def test_median_runs_on_gather_and_is_world_size_invariant(tmp_path):
    one, s1 = _final(tmp_path, "m1", 1, "strategy=median")
    two, s2 = _final(tmp_path, "m2", 2, "strategy=median")
    assert s1["transport"] == s2["transport"] == "gather"
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5)


def test_fedadam_resume_equals_uninterrupted(tmp_path):
    common = ("strategy=fedadam", "fl.checkpoint_every=2")
    full, _ = _final(tmp_path, "full", 2, *common, "fl.rounds=4")
    _final(tmp_path, "resumed", 2, *common, "fl.rounds=2")
    resumed, summary = _final(tmp_path, "resumed", 2, *common, "fl.rounds=4")
    assert summary["resumed_from_round"] == 2
    for k in full:
        assert torch.equal(full[k], resumed[k]), f"{k}: server moments must be restored from the checkpoint"


def test_fedsgd_is_one_step_along_the_weighted_mean_gradient(tmp_path):
    import torch.nn.functional as F

    from conftest import make_cfg as _cfg
    from fl.data.datasets import load_digits
    from fl.data.federation import partition_indices, simulated_clients
    from fl.data.partition import Dirichlet
    from fl.engine.loop import run
    from fl.models import build_model
    from fl.runtime.env import DistEnv
    from fl.runtime.seeding import derive_seed

    lr, seed = 0.3, 5
    cfg = _cfg("strategy=fedsgd", f"seed={seed}", "fl.num_clients=4", "fl.rounds=1", f"optim.lr={lr}",
               "fl.checkpoint_every=0", "partition=dirichlet")
    run(cfg, tmp_path / "run", DistEnv())
    engine = torch.load(tmp_path / "run" / "final_model.pt", weights_only=True)

    train, _, spec = load_digits(0.2, 0)
    shards = simulated_clients(train, partition_indices(train.y, 4, Dirichlet(0.5), seed),
                               0.1, seed)
    torch.manual_seed(derive_seed(seed, "init"))
    model = build_model("cnn_padded", spec.input_shape, spec.num_classes)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    grads, total = {k: torch.zeros_like(p) for k, p in model.named_parameters()}, 0
    for shard in shards:
        model.zero_grad()
        F.cross_entropy(model(train.x[shard.train_idx]), train.y[shard.train_idx]).backward()
        for k, p in model.named_parameters():
            grads[k] += shard.num_train * p.grad
        total += shard.num_train
    for k in grads:
        torch.testing.assert_close(engine[k], start[k] - lr * grads[k] / total, rtol=0, atol=1e-6)


def test_fednova_normalizes_by_local_steps():
    from fl.transport.plain import GatherAggregator, SumAggregator
    from fl.runtime.comm import Comm
    from fl.strategies.fednova import FedNova

    cpu = torch.device("cpu")
    ups = [ClientUpdate(i, DELTAS[i], n, torch.tensor(0.0), 1, tau)
           for i, (n, tau) in enumerate([(10, 4), (30, 1), (20, 2)])]
    p = torch.tensor([10.0, 30.0, 20.0]) / 60
    tau = torch.tensor([4.0, 1.0, 2.0])
    expected = (p * tau).sum() * sum(p[i] * DELTAS[i] / tau[i] for i in range(3))
    for agg in (SumAggregator(FedNova(), Comm(0, 1, cpu), 7, cpu), GatherAggregator(FedNova(), Comm(0, 1, cpu), 7, cpu, 3)):
        for u in ups:
            agg.add(u)
        result = agg.finish(torch.zeros(7), 0)
        torch.testing.assert_close(result.new_global, expected)
        assert not torch.allclose(result.new_global, weighted_mean(torch.stack(DELTAS[:3]), p))


def test_fednova_equals_fedavg_with_equal_steps_and_differs_with_unequal(tmp_path):
    # equal steps: fixed local_steps (one epoch would differ, since clients hold different amounts of data)
    ref, _ = _final(tmp_path, "avg", 1, "fl.local_steps=5")
    nova, _ = _final(tmp_path, "nova", 1, "strategy=fednova", "fl.local_steps=5")
    for k in ref:
        torch.testing.assert_close(nova[k], ref[k], rtol=0, atol=1e-6)
    het_avg, _ = _final(tmp_path, "het_avg", 2, "fl.local_epochs_max=3")
    het_nova, _ = _final(tmp_path, "het_nova", 2, "strategy=fednova", "fl.local_epochs_max=3")
    het_nova_1, _ = _final(tmp_path, "het_nova_1", 1, "strategy=fednova", "fl.local_epochs_max=3")
    assert any((het_avg[k] - het_nova[k]).abs().max() > 1e-4 for k in ref), "unequal steps must change FedNova"
    for k in ref:  # heterogeneous local work is drawn per client, not per rank
        torch.testing.assert_close(het_nova[k], het_nova_1[k], rtol=0, atol=1e-5)
