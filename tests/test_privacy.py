"""DP-FedAvg: clipping, the noise's scale, world-size invariance, accounting against Opacus."""

from __future__ import annotations

import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.transport.plain import SumAggregator
from fl.runtime.comm import Comm
from fl.errors import ConfigError
from fl.config.build import build_privacy_settings, prepare
from fl.privacy.dp_fedavg import DPFedAvg, epsilon
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
    noise = dp.noised_sum(torch.zeros(400_000), 0.0, round_idx=3)[0] * 4
    assert abs(float(noise.std()) - 0.65) < 0.65 * 0.01  # 400k draws: std within 1%
    assert abs(float(noise.mean())) < 0.005

    def draw(rnd):
        return dp.noised_sum(torch.zeros(10), 0.0, rnd)[0]

    assert torch.equal(draw(3), draw(3)), "same seed, same noise"
    assert not torch.equal(draw(3), draw(4))


def test_noise_shares_of_a_cohort_add_up_to_the_central_noise():
    dp = DPFedAvg(clip_norm=0.5, noise_multiplier=1.3, expected_clients=4, seed=0)
    total = sum(dp.noise_share(200_000, 3, cid)[0] for cid in range(4))
    assert abs(float(total.std()) - 0.65) < 0.65 * 0.015
    a, b = dp.noise_share(1000, 3, 0)[0], dp.noise_share(1000, 3, 1)[0]
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.1, "clients' shares are independent"


def test_aggregate_is_the_noised_sum_of_clipped_updates_over_the_cohort_size():
    dp = DPFedAvg(clip_norm=1.0, noise_multiplier=0.7, expected_clients=5, seed=1)
    agg = SumAggregator(FedAvg(), Comm(0, 1, CPU), 6, CPU, privacy=dp)
    deltas = [torch.randn(6, generator=torch.Generator().manual_seed(i)) * 3 for i in range(3)]
    for i, d in enumerate(deltas):
        agg.add(ClientUpdate(i, d, 10 * (i + 1), torch.tensor(0.0), 1, 1))
    result = agg.finish(torch.zeros(6), 2)
    expected = DPFedAvg(1.0, 0.7, 5, 1).noised_sum(sum(clip_to_norm(d, 1.0) for d in deltas), 0.0, 2)[0]
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
        prepare(cfg, 1)
    cfg = make_cfg("privacy=dp_fedavg", "fl.num_clients=100")
    prepare(cfg, 1)
    delta = build_privacy_settings(cfg).delta
    assert delta == pytest.approx(100 ** -1.1) and delta < 1 / 100
    with pytest.raises(ConfigError, match="privacy.clip_norm"):
        prepare(make_cfg("privacy=dp_fedavg", "privacy.clip_norm=0"), 1)


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


def test_update_noise_leaves_room_for_the_count_noise():
    from fl.privacy.dp_fedavg import update_noise_multiplier

    # Andrew et al. 2021: z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2; z=1, sigma_b=1 -> 1/sqrt(3/4)
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(1 / 0.75 ** 0.5, rel=1e-12)
    assert update_noise_multiplier(1.0, 1e9) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="count noise"):
        update_noise_multiplier(1.0, 0.5)


def _adapt(quantile: float, rounds: int = 80) -> list[float]:
    """Clip norms over ``rounds`` rounds of 20 clients whose update norms are 0.5, 1.0, ..., 10."""
    dp = DPFedAvg(clip_norm=1.0, noise_multiplier=0.0, expected_clients=20, seed=0, target_quantile=quantile)
    history = []
    for rnd in range(rounds):
        agg = SumAggregator(FedAvg(), Comm(0, 1, CPU), 4, CPU, privacy=dp)
        for cid in range(20):
            agg.add(ClientUpdate(cid, torch.tensor([0.5 * (cid + 1), 0, 0, 0]), 1, torch.tensor(0.0), 1, 1))
        agg.finish(torch.zeros(4), rnd)
        history.append(dp.clip_norm)
    return history


def test_adaptive_clip_norm_tracks_the_target_quantile_of_update_norms():
    median, low = _adapt(0.5), _adapt(0.2)
    assert 4.0 < sum(median[-20:]) / 20 < 6.5, median[-20:]  # the median norm is 5.25
    assert 1.0 < sum(low[-20:]) / 20 < 3.0, low[-20:]        # the 20% quantile is 2.25
    assert median[0] > 1.0, "all 20 norms exceed the initial clip norm: it must grow"


def test_adaptive_clipping_is_refused_when_the_count_noise_is_too_small():
    with pytest.raises(ConfigError, match=r"privacy.count_noise=None .*needs count_noise > noise_multiplier / 2"):
        prepare(make_cfg("privacy=dp_fedavg", "privacy.target_quantile=0.5", "fl.num_clients=10"), 1)
    prepare(make_cfg("privacy=dp_fedavg", "privacy.target_quantile=0.5", "privacy.count_noise=1",
                     "fl.num_clients=10"), 1)


def test_adaptive_clip_norm_is_checkpointed_and_resumes_exactly(tmp_path):
    run = (*DP_RUN, "privacy.target_quantile=0.5", "privacy.count_noise=0.5", "fl.checkpoint_every=1",
           "fl.eval_every=1")
    straight = fork_ranks(1, run_job, tmp_path, make_cfg(*run, "fl.rounds=4"), tmp_path / "straight")[0]
    fork_ranks(1, run_job, tmp_path, make_cfg(*run, "fl.rounds=2"), tmp_path / "resumed")
    resumed = fork_ranks(1, run_job, tmp_path, make_cfg(*run, "fl.rounds=4"), tmp_path / "resumed")[0]
    assert resumed["resumed_from_round"] == 2
    assert resumed["final"]["dp_clip_norm"] == straight["final"]["dp_clip_norm"] != 0.5
    a, b = (torch.load(tmp_path / d / "final_model.pt", weights_only=True) for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fixed_size_epsilon_equals_dp_accounting_composed_step_by_step():
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    from fl.privacy.accounting import epsilon_fixed_size

    event = dp_accounting.SampledWithoutReplacementDpEvent(50, 10, dp_accounting.GaussianDpEvent(1.0))
    acc = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    for _ in range(4):  # each compose costs about 0.3 s: a few steps show that steps add up
        acc.compose(event)
    assert epsilon_fixed_size(1.0, 50, 10, 4, 50 ** -1.1) == pytest.approx(acc.get_epsilon(50 ** -1.1), rel=1e-9)
    # replace-one adjacency on a fixed-size cohort costs more than the Poisson approximation
    assert epsilon_fixed_size(1.0, 50, 10, 40, 1e-5) > epsilon(1.0, 0.2, 40, 1e-5)


def test_the_accountant_is_chosen_by_config():
    base = ("privacy=dp_fedavg", "fl.num_clients=50", "fl.clients_per_round=10", "fl.rounds=40")
    fixed, poisson = (build_privacy_settings(make_cfg(*base, f"privacy.accountant={a}")).epsilon(50, 10, 40)
                      for a in ("fixed_size", "poisson"))
    assert poisson == pytest.approx(epsilon(1.0, 0.2, 40, 50 ** -1.1))
    assert fixed > poisson
    with pytest.raises(ConfigError, match="privacy.accountant='prv' is invalid: must be one of fixed_size, poisson"):
        prepare(make_cfg(*base, "privacy.accountant=prv"), 1)
