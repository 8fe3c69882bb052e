"""DP-FedAvg: clipping, the noise's scale, world-size invariance, accounting against Opacus."""

from __future__ import annotations

import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.aggregation import SumAggregator
from fl.comm import Comm
from fl.config import validate
from fl.errors import ConfigError
from fl.privacy import DPFedAvg, epsilon
from fl.strategies.norm_bound import clip_to_norm
from fl.strategies import FedAvg
from fl.types import ClientUpdate

CPU = torch.device("cpu")


def test_clipped_updates_have_norm_at_most_clip_norm():
    g = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 100.0):
        v = torch.randn(1000, generator=g) * scale
        c = clip_to_norm(v, 1.5)
        assert float(c.norm()) <= 1.5 + 1e-5
        if float(v.norm()) <= 1.5:
            assert torch.equal(c, v)
        else:
            torch.testing.assert_close(c / c.norm(), v / v.norm())


def test_noise_std_is_noise_multiplier_times_clip_norm():
    dp = DPFedAvg(clip_norm=0.5, noise_multiplier=1.3, expected_clients=4, seed=0)
    noise = dp.privatize(torch.zeros(400_000), round_idx=3) * 4
    assert abs(float(noise.std()) - 0.65) < 0.65 * 0.01  # 400k draws: std within 1%
    assert abs(float(noise.mean())) < 0.005
    assert torch.equal(dp.privatize(torch.zeros(10), 3), dp.privatize(torch.zeros(10), 3)), "same seed, same noise"
    assert not torch.equal(dp.privatize(torch.zeros(10), 3), dp.privatize(torch.zeros(10), 4))


def test_aggregate_is_the_noised_sum_of_clipped_updates_over_the_cohort_size():
    dp = DPFedAvg(clip_norm=1.0, noise_multiplier=0.7, expected_clients=5, seed=1)
    agg = SumAggregator(FedAvg(), Comm(0, 1, CPU), 6, CPU, privacy=dp)
    deltas = [torch.randn(6, generator=torch.Generator().manual_seed(i)) * 3 for i in range(3)]
    for i, d in enumerate(deltas):
        agg.add(ClientUpdate(i, d, 10 * (i + 1), torch.tensor(0.0), 1, 1))
    result = agg.finish(torch.zeros(6), 2)
    expected = DPFedAvg(1.0, 0.7, 5, 1).privatize(sum(clip_to_norm(d, 1.0) for d in deltas), 2)
    torch.testing.assert_close(result.new_global, expected)


def test_epsilon_equals_opacus_accountant():
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(500):
        acc.step(noise_multiplier=1.1, sample_rate=0.01)
    assert epsilon(1.1, 0.01, 500, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    assert epsilon(1.1, 0.01, 0, 1e-5) == 0.0
    assert epsilon(1.1, 0.01, 1000, 1e-5) > epsilon(1.1, 0.01, 500, 1e-5)


def test_budget_and_impossible_combinations_are_refused_before_work():
    cfg = make_cfg("privacy=dp_fedavg", "fl.num_clients=100", "fl.clients_per_round=10", "fl.rounds=50",
                   "privacy.target_epsilon=0.5")
    with pytest.raises(ConfigError, match=r"privacy.target_epsilon=0.5 .*spends epsilon=\d"):
        validate(cfg, 1)
    cfg = make_cfg("privacy=dp_fedavg", "fl.num_clients=100")
    validate(cfg, 1)
    assert cfg.privacy.delta < 1 / 100
    with pytest.raises(ConfigError, match="privacy.clip_norm"):
        validate(make_cfg("privacy=dp_fedavg", "privacy.clip_norm=0"), 1)


DP_RUN = ("privacy=dp_fedavg", "privacy.clip_norm=0.5", "privacy.noise_multiplier=0.3", "fl.num_clients=6",
          "fl.clients_per_round=4", "fl.rounds=3", "fl.eval_every=3", "fl.checkpoint_every=0", "optim.lr=0.1")


def test_world_sizes_one_and_two_give_the_same_noised_model(tmp_path):
    models = []
    for ws in (1, 2):
        summary = fork_ranks(ws, run_job, tmp_path, make_cfg(*DP_RUN), tmp_path / f"ws{ws}")[0]
        models.append(torch.load(tmp_path / f"ws{ws}" / "final_model.pt", weights_only=True))
        assert summary["final"]["dp_epsilon"] > 0
    for k in models[0]:
        torch.testing.assert_close(models[1][k], models[0][k], rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="privacy='dp_fedavg' is invalid: needs a strategy"):
        fork_ranks(1, run_job, tmp_path, make_cfg(*DP_RUN, "strategy=median"), tmp_path / "median")
