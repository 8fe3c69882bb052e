"""FedBN and fine-tuning personalization: local state stays local, and personalized evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import fork_ranks, make_cfg, run_job
from fl.training.store import ClientStore
from fl.errors import ConfigError
from fl.training.flat import FlatModel
from fl.engine.loop import run
from fl.models import build_model
from fl.runtime.env import DistEnv
from fl.strategies.fedbn import FedBN

COMMON = ("model=cnn_bn", "partition=shards", "fl.num_clients=4", "fl.rounds=3", "fl.local_epochs=2",
          "optim.lr=0.1", "fl.checkpoint_every=0", "fl.eval_every=3")


def _fm():
    torch.manual_seed(0)
    return FlatModel(build_model("cnn_bn", (1, 8, 8), 10))


def test_fedbn_keeps_bn_local_and_shares_everything_else(tmp_path):
    fork_ranks(2, run_job, tmp_path, make_cfg(*COMMON, "strategy=fedbn"), tmp_path / "run")
    final = torch.load(tmp_path / "run" / "final_model.pt", weights_only=True)
    fm = _fm()
    fm.module.load_state_dict(final)
    global_flat = fm.flat.clone()
    strategy = FedBN()
    strategy.on_model(fm)
    bn = strategy.local
    fresh = _fm()  # the initial model: the global copy of BN entries never moves under FedBN
    assert torch.equal(global_flat[bn], fresh.flat[bn])
    store = ClientStore(tmp_path / "run" / "client_state", 0, 1)
    personal = []
    for cid in range(4):
        strategy.personal_model(fm, global_flat, cid, 2, store, None)
        personal.append(fm.flat.clone())
    for p in personal:
        assert torch.equal(p[~bn], global_flat[~bn]), "non-BN weights are identical for every client"
    running_means = torch.stack([p[bn] for p in personal])
    assert all((running_means[i] - running_means[j]).abs().max() > 1e-3 for i in range(4) for j in range(i))


def test_fedbn_is_world_size_invariant(tmp_path):
    # IID and a smaller step: with 2-label shards some BatchNorm channels have near-zero batch
    # variance, which amplifies float summation-order differences (1e-7) past any tolerance.
    cfg = make_cfg(*COMMON, "strategy=fedbn", "partition=iid", "optim.lr=0.05", "fl.clients_per_round=3")
    one = fork_ranks(1, run_job, tmp_path, cfg, tmp_path / "one")[0]
    two = fork_ranks(2, run_job, tmp_path, cfg, tmp_path / "two")[0]
    a = torch.load(tmp_path / "one" / "final_model.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "final_model.pt", weights_only=True)
    for k in a:
        if "num_batches_tracked" not in k:  # a per-rank counter, not a weight
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)
    assert one["final"]["personal_accuracy_mean"] == pytest.approx(two["final"]["personal_accuracy_mean"], abs=1e-6)


def test_fedbn_needs_batch_norm():
    with pytest.raises(ConfigError, match="FedBN needs a model with BatchNorm"):
        FedBN().on_model(FlatModel(build_model("cnn_padded", (1, 8, 8), 10)))
    assert isinstance(build_model("cnn_bn", (1, 8, 8), 10)[1], nn.BatchNorm2d)


def test_finetune_reports_global_and_personalized_side_by_side(tmp_path):
    cfg = make_cfg("partition=shards", "fl.num_clients=8", "fl.rounds=4", "optim.lr=0.1", "fl.checkpoint_every=0",
                   "fl.eval_every=2", "personalization=finetune", "personalization.steps=10", "fl.holdout_fraction=0.3")
    run(cfg, tmp_path / "run", DistEnv())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    for key in ("client_accuracy_mean", "client_accuracy_p10", "personal_accuracy_mean", "personal_accuracy_p10"):
        assert key in last
    # clients holding two labels each: a few local steps adapt the global model to them
    assert last["personal_accuracy_mean"] > last["client_accuracy_mean"] + 0.1


def _ditto(tmp_path, name, lam):
    cfg = make_cfg("partition=shards", "fl.num_clients=6", "fl.clients_per_round=4", "fl.rounds=4", "optim.lr=0.1",
                   "fl.checkpoint_every=0", "fl.eval_every=4", "fl.holdout_fraction=0.3",
                   *(("strategy=ditto", f"strategy.lam={lam}") if lam is not None else ()))
    summary = fork_ranks(2, run_job, tmp_path, cfg, tmp_path / name)[0]
    return torch.load(tmp_path / name / "final_model.pt", weights_only=True), summary


def test_ditto_global_is_fedavg_and_lambda_pulls_personal_models_toward_it(tmp_path):
    fedavg, _ = _ditto(tmp_path, "fedavg", None)
    loose, loose_summary = _ditto(tmp_path, "loose", 0.01)
    tight, _ = _ditto(tmp_path, "tight", 5.0)
    for k in fedavg:
        assert torch.equal(loose[k], fedavg[k]) and torch.equal(tight[k], fedavg[k]), "Ditto's global model is FedAvg's"
    fm = _fm_cnn()
    fm.module.load_state_dict(fedavg)
    global_flat = fm.flat.clone()

    def spread(name):
        store = ClientStore(tmp_path / name / "client_state", 0, 1)
        personal = [store.load(c, 4, torch.device("cpu")) for c in range(6)]
        return [float((p["v"] - global_flat).norm()) for p in personal if p is not None]

    assert len(spread("loose")) >= 4
    assert max(spread("tight")) < min(spread("loose")), "a larger lambda keeps personal models closer to global"
    assert loose_summary["final"]["personal_accuracy_mean"] > loose_summary["final"]["client_accuracy_mean"]


def _fm_cnn():
    torch.manual_seed(0)
    return FlatModel(build_model("cnn_padded", (1, 8, 8), 10))
