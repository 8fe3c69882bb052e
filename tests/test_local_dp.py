"""DP-SGD inside clients (privacy=dp_sgd_local): per-example clipping, noise scale, accounting
per client, world-size invariance, resume, and refusals."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import fork_ranks, make_cfg, run_job
from fl.privacy.dp_sgd import LocalDP, client_epsilon, dp_sgd


def _one_step(dp: LocalDP, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with dp_sgd(model, opt, dp, batch_size=len(y), noise=torch.Generator().manual_seed(0)) as (m, o):
        o.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        o.step()
    return {k: before[k] - v.detach() for k, v in model.named_parameters()}


def test_a_step_follows_the_mean_of_per_example_clipped_gradients():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(8, 5) * 3, torch.randint(0, 3, (8,))
    expected = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    for i in range(8):  # per-example gradients the slow way
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters()}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        for k in grads:
            expected[k] += grads[k] * min(1.0, 0.1 / float(norm)) / 8
    step = _one_step(LocalDP(noise_multiplier=0.0, max_grad_norm=0.1), x, y, model)
    for k in expected:
        torch.testing.assert_close(step[k], expected[k], rtol=1e-5, atol=1e-7)
    assert not list(model._forward_hooks.values()), "the per-example hooks are gone after training"


def test_the_noise_std_is_noise_multiplier_times_max_grad_norm_over_the_batch():
    model = torch.nn.Linear(500, 200)
    x, y = torch.zeros(4, 500), torch.zeros(4, dtype=torch.long)  # weight gradients are exactly zero
    step = _one_step(LocalDP(noise_multiplier=2.0, max_grad_norm=0.5), x, y, model)
    assert abs(float(step["weight"].std()) - 2.0 * 0.5 / 4) < 0.25 * 0.01  # 100k draws


def test_client_epsilon_equals_opacus_accountant():
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(120):
        acc.step(noise_multiplier=1.1, sample_rate=32 / 400)
    dp = LocalDP(1.1, 1.0)
    assert client_epsilon(dp, 400, 32, 120) == pytest.approx(acc.get_epsilon(400 ** -1.1), rel=1e-12)
    assert client_epsilon(LocalDP(1.1, 1.0, delta=1e-5), 400, 32, 120) == pytest.approx(acc.get_epsilon(1e-5))


RUN = ("privacy=dp_sgd_local", "privacy.noise_multiplier=0.8", "model=mlp", "fl.num_clients=4", "fl.rounds=3",
       "fl.eval_every=1", "fl.checkpoint_every=1", "optim.lr=0.1")


def test_runs_are_world_size_invariant_resume_exactly_and_account_per_client(tmp_path):
    out = {ws: fork_ranks(ws, run_job, tmp_path, make_cfg(*RUN), tmp_path / f"ws{ws}")[0] for ws in (1, 2)}
    a, b = (torch.load(tmp_path / f"ws{ws}" / "final_model.pt", weights_only=True) for ws in (1, 2))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    sizes = [c["num_train"] for c in json.loads((tmp_path / "ws1" / "partition.json").read_text())["clients"].values()]
    expected = max(client_epsilon(LocalDP(0.8, 1.0), n, 32, 3 * -(-n // 32)) for n in sizes)
    assert out[1]["final"]["dp_local_epsilon"] == pytest.approx(expected, rel=1e-9)
    assert out[2]["final"]["dp_local_epsilon"] == pytest.approx(expected, rel=1e-9)
    fork_ranks(1, run_job, tmp_path, make_cfg(*RUN, "fl.rounds=2"), tmp_path / "resumed")
    resumed = fork_ranks(1, run_job, tmp_path, make_cfg(*RUN), tmp_path / "resumed")[0]
    assert resumed["resumed_from_round"] == 2
    assert resumed["final"]["dp_local_epsilon"] == pytest.approx(expected, rel=1e-9)
    c = torch.load(tmp_path / "resumed" / "final_model.pt", weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("extra, message", [
    (("strategy=fedprox",), r"privacy='dp_sgd_local' is invalid: clips per-example gradients .* FedProx changes"),
    (("model=cnn_bn",), r"model='cnn_bn' is invalid: privacy=dp_sgd_local cannot train it: .*BatchNorm"),
    (("privacy.target_epsilon=1",), r"privacy.target_epsilon=1 is invalid: over fl.rounds=3 client \d+ would spend"),
])
def test_impossible_settings_are_refused_before_training(tmp_path, extra, message):
    with pytest.raises(RuntimeError, match=message):
        fork_ranks(1, run_job, tmp_path, make_cfg(*RUN, *extra), tmp_path / "refused")
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()
