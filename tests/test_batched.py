"""Batched client training (fl.training.batched) equals training the clients one after another."""

from __future__ import annotations

import dataclasses
import functools
import logging

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from conftest import fork_ranks, make_cfg, run_job
from fl.data.datasets import TensorData
from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.models import cnn_bn, cnn_padded
from fl.strategies import FedAvg
from fl.strategies.ditto import Ditto
from fl.strategies.fedprox import FedProx
from fl.strategies.scaffold import Scaffold
from fl.training.batched import SGD, BatchedTrainer
from fl.training.clients import ClientTraining
from fl.training.flat import FlatModel
from fl.training.job import LocalJob
from fl.training.local import local_train
from fl.training.store import ClientStore
from fl.types import ClientTask, LocalTraining, StrategyContext

SIZES = [37, 50, 64, 21, 90, 33]  # unequal: clients take 2-6 steps an epoch, so the batched chunk shrinks


def _digits_shards() -> list[ClientShard]:
    d = load_digits()
    data = TensorData(torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(d.target))
    starts = [sum(SIZES[:i]) for i in range(len(SIZES))]
    return [ClientShard(data, torch.arange(s, s + n), torch.arange(0)) for s, n in zip(starts, SIZES)]


def _mlp_dropout() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Dropout(0.3), nn.Linear(48, 32), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(32, 10))


class _Wrapped(nn.Module):
    """cnn_padded inside a module of its own: not an nn.Sequential, so it trains under vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.net = cnn_padded((1, 8, 8), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _tasks(make, epochs=(2,), batch_size=16, store=None):
    return [ClientTask(cid, 3, 7, LocalTraining(epochs[cid % len(epochs)], None, batch_size), make, store)
            for cid in range(len(SIZES))]


def _assert_same(serial, batched, atol=1e-6):
    for a, b in zip(serial, batched, strict=True):
        assert (a.client_id, a.num_steps, a.num_seen, a.num_samples) == (b.client_id, b.num_steps, b.num_seen,
                                                                          b.num_samples)
        torch.testing.assert_close(b.delta, a.delta, rtol=0, atol=atol)
        torch.testing.assert_close(b.loss_sum, a.loss_sum, rtol=1e-5, atol=1e-4)
        if a.extra is not None:
            torch.testing.assert_close(b.extra, a.extra, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model, opt", [
    (lambda: cnn_padded((1, 8, 8), 10), dict(lr=0.05)),
    (lambda: cnn_padded((1, 8, 8), 10), dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)),
    (_mlp_dropout, dict(lr=0.1, momentum=0.5, dampening=0.1)),
    (_Wrapped, dict(lr=0.05, momentum=0.9)),
], ids=["cnn-sgd", "cnn-nesterov-wd", "mlp-dropout-momentum", "cnn-vmap"])
def test_batched_clients_equal_serial_clients_with_unequal_sizes_and_epochs(model, opt):
    shards = _digits_shards()
    torch.manual_seed(0)
    fm = FlatModel(model())
    start = fm.flat.detach().clone()
    make = functools.partial(torch.optim.SGD, **opt)
    tasks = _tasks(make, epochs=(1, 3, 2))
    serial = [local_train(fm, start, shard, task) for shard, task in zip(shards, tasks)]
    trainer = BatchedTrainer(fm, SGD.of(make), "classification", (1, 8, 8), memory_mb=1024, max_clients=4)
    batched = trainer.train([(LocalJob(start, task), shard) for shard, task in zip(shards, tasks)])
    assert (trainer.grouped is None) == (model is _Wrapped), "sequential models run grouped, others under vmap"
    assert trainer.path == ("torch.func.vmap: _Wrapped is not an nn.Sequential" if model is _Wrapped
                            else "grouped convolutions, channels-last")
    assert len({u.num_steps for u in serial}) > 3, "clients must differ in their number of steps"
    assert trainer.train([]) == []  # a rank whose clients all dropped out
    _assert_same(serial, batched)
    assert float(serial[0].delta.norm()) > 1e-3


def test_dropout_masks_come_from_each_clients_stream():
    """The masks follow each client's (seed, round, client) stream, equal the serial ones, and act."""
    shards = _digits_shards()
    torch.manual_seed(0)
    fm = FlatModel(_mlp_dropout())
    start = fm.flat.detach().clone()
    make = functools.partial(torch.optim.SGD, lr=0.1)
    tasks = _tasks(make)
    trainer = BatchedTrainer(fm, SGD.of(make), "classification", (1, 8, 8), memory_mb=1024)
    batched = trainer.train([(LocalJob(start, t), s) for s, t in zip(shards, tasks)])
    other_round = [ClientTask(t.client_id, 4, t.seed, t.plan, make) for t in tasks]
    moved = trainer.train([(LocalJob(start, t), s) for s, t in zip(shards, other_round)])
    assert all(not torch.allclose(a.delta, b.delta, atol=1e-4) for a, b in zip(batched, moved))
    serial = [local_train(fm, start, s, t) for s, t in zip(shards, other_round)]
    _assert_same(serial, moved)
    without = FlatModel(nn.Sequential(*[nn.Identity() if isinstance(m, nn.Dropout) else m for m in _mlp_dropout()]))
    plain = BatchedTrainer(without, SGD.of(make), "classification", (1, 8, 8), memory_mb=1024)
    undropped = plain.train([(LocalJob(start, t), s) for s, t in zip(shards, tasks)])
    assert all(not torch.allclose(a.delta, b.delta, atol=1e-4) for a, b in zip(batched, undropped)), "masks act"


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_dp_sgd_batched_equals_the_opacus_path(momentum):
    """Per-example clipping, noise from each client's stream, empty Poisson batches skipped (batch size 2:
    a client of 90 samples then has an empty batch about one step in eight)."""
    from fl.privacy.dp_sgd import LocalDP

    shards = _digits_shards()
    torch.manual_seed(0)
    fm = FlatModel(_mlp_dropout())
    start = fm.flat.detach().clone()
    make = functools.partial(torch.optim.SGD, lr=0.1, momentum=momentum)
    dp = LocalDP(noise_multiplier=0.7, max_grad_norm=0.5)
    tasks = [ClientTask(c, 2, 3, LocalTraining(1, None, 2), make, dp=dp) for c in range(len(SIZES))]
    serial = [local_train(fm, start, s, t) for s, t in zip(shards, tasks)]
    trainer = BatchedTrainer(fm, SGD.of(make), "classification", (1, 8, 8), memory_mb=1024, max_clients=4)
    batched = trainer.train([(LocalJob(start, t), s) for s, t in zip(shards, tasks)])
    _assert_same(serial, batched, atol=1e-6)
    assert any(u.num_seen < 2 * u.num_steps - 4 for u in serial), "some Poisson batches must be small or empty"
    noiseless = [ClientTask(c, 2, 3, LocalTraining(1, None, 2), make, dp=LocalDP(0.0, 0.5)) for c in range(len(SIZES))]
    quiet = trainer.train([(LocalJob(start, t), s) for s, t in zip(shards, noiseless)])
    assert all(not torch.allclose(a.delta, b.delta, atol=1e-3) for a, b in zip(batched, quiet)), "the noise acts"


def test_fedprox_and_scaffold_batched_equal_serial(tmp_path):
    shards = _digits_shards()
    torch.manual_seed(0)
    fm = FlatModel(cnn_padded((1, 8, 8), 10))
    start = fm.flat.detach().clone()
    make = functools.partial(torch.optim.SGD, lr=0.05)
    ctx = StrategyContext(len(SIZES), len(SIZES), make)
    for name, strategy_of in (("fedprox", lambda: FedProx(mu=0.5)), ("scaffold", Scaffold)):
        results = {}
        for mode in ("off", "auto"):
            strategy = strategy_of()
            strategy.check(ctx)
            if isinstance(strategy, Scaffold):
                strategy.c = torch.randn(len(fm), generator=torch.Generator().manual_seed(1)) * 0.05
            training = ClientTraining(mode, 1024, fm, strategy, make, shards, (1, 8, 8), "classification", 16, None,
                                      len(SIZES), False)
            assert training.batched == (mode == "auto")
            store = ClientStore(tmp_path / f"{name}-{mode}", 5, 3)
            items = list(zip(shards, _tasks(make, epochs=(1, 2), store=store)))
            results[mode] = list(training.train(strategy, fm, start, items))
        _assert_same(results["off"], results["auto"], atol=2e-6)
        if name == "fedprox":  # the term acts: without it the updates differ
            plain = [local_train(fm, start, s, t) for s, t in zip(shards, _tasks(make, epochs=(1, 2)))]
            assert not torch.allclose(plain[4].delta, results["auto"][4].delta, atol=1e-4)


def test_ditto_personal_models_batched_equal_serial(tmp_path):
    shards = _digits_shards()
    torch.manual_seed(0)
    fm = FlatModel(_mlp_dropout())
    start = fm.flat.detach().clone()
    make = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.5)
    personal = {}
    for mode in ("off", "auto"):
        strategy = Ditto(lam=0.5)
        training = ClientTraining(mode, 1024, fm, strategy, make, shards, (1, 8, 8), "classification", 16, None,
                                  len(SIZES), False)
        assert training.batched == (mode == "auto")
        store = ClientStore(tmp_path / mode, 5, 3)
        updates = []
        for rnd in (3, 4):  # round 4 starts each personal model from the one round 3 kept
            tasks = [dataclasses.replace(t, round_idx=rnd) for t in _tasks(make, epochs=(1, 2), store=store)]
            updates.append(list(training.train(strategy, fm, start, list(zip(shards, tasks)))))
        personal[mode] = [store.load(cid, 5, start.device)["v"] for cid in range(len(SIZES))]
        personal[mode + "-3"] = [store.load(cid, 4, start.device)["v"] for cid in range(len(SIZES))]
        if mode == "auto":
            for a, b in zip(serial_updates, updates, strict=True):
                _assert_same(a, b)
        serial_updates = updates
    for key in ("off", "off-3"):
        for a, b in zip(personal[key], personal[key.replace("off", "auto")], strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=2e-6)
    assert not torch.allclose(personal["auto"][0], personal["auto-3"][0]), "round 4 trained on from round 3"


class _FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.dropout(x.flatten(1), 0.2, self.training))


@pytest.mark.parametrize("model, reason", [
    (lambda: cnn_bn((1, 8, 8), 10), "buffers"),
    (_FunctionalDropout, "torch.func.vmap"),
], ids=["batchnorm", "random-op-inside-forward"])
def test_auto_trains_serially_when_it_cannot_batch_and_says_why_once(model, reason, caplog):
    fm = FlatModel(model())
    make = functools.partial(torch.optim.SGD, lr=0.05)
    with caplog.at_level(logging.INFO, logger="fl"):
        training = ClientTraining("auto", 1024, fm, FedAvg(), make, _digits_shards(), (1, 8, 8), "classification",
                                  16, None, 5, True)
    assert not training.batched and reason in training.reason
    said = [r.getMessage() for r in caplog.records if "one client at a time" in r.getMessage()]
    assert len(said) == 1 and reason in said[0]
    with pytest.raises(ConfigError, match="fl.client_batch"):
        ClientTraining(4, 1024, fm, FedAvg(), make, _digits_shards(), (1, 8, 8), "classification", 16, None, 5, True)


def test_adam_trains_serially():
    fm = FlatModel(cnn_padded((1, 8, 8), 10))
    adam = functools.partial(torch.optim.Adam, lr=0.01)
    training = ClientTraining("auto", 1024, fm, FedAvg(), adam, _digits_shards(), (1, 8, 8), "classification", 16,
                              None, 5, False)
    assert not training.batched and "Adam" in training.reason


@pytest.mark.parametrize("value", ["fast", 0, -2, True])
def test_a_bad_client_batch_value_is_refused_by_name(value):
    from fl.config.validate import validate

    with pytest.raises(ConfigError, match="fl.client_batch"):
        validate(make_cfg(f"fl.client_batch={value}"), 1, 0)


SMALL = ("fl.num_clients=12", "fl.clients_per_round=8", "fl.local_epochs_max=3", "model=mlp")


def _final(tmp_path, name, world_size, *overrides):
    run_dir = tmp_path / name
    summaries = fork_ranks(world_size, run_job, tmp_path, make_cfg(*SMALL, *overrides), run_dir)
    return torch.load(run_dir / "final_model.pt", weights_only=True), summaries[0]


def test_batched_runs_are_world_size_invariant_resume_exactly_and_match_serial(tmp_path):
    ref, summary = _final(tmp_path, "ws1", 1, "fl.rounds=4", "fl.checkpoint_every=0")
    serial, _ = _final(tmp_path, "serial", 2, "fl.rounds=4", "fl.checkpoint_every=0", "fl.client_batch=off")
    two, _ = _final(tmp_path, "ws2", 2, "fl.rounds=4", "fl.checkpoint_every=0", "fl.client_batch=3")
    for k in ref:
        torch.testing.assert_close(two[k], ref[k], rtol=0, atol=1e-5, msg=f"world size 2: {k}")
        torch.testing.assert_close(serial[k], ref[k], rtol=0, atol=1e-5, msg=f"serial: {k}")
    full, _ = _final(tmp_path, "full", 2, "fl.rounds=4", "fl.checkpoint_every=2")
    _final(tmp_path, "resumed", 2, "fl.rounds=2", "fl.checkpoint_every=2")
    resumed, second = _final(tmp_path, "resumed", 2, "fl.rounds=4", "fl.checkpoint_every=2")
    assert second["resumed_from_round"] == 2
    for k in full:
        assert torch.equal(full[k], resumed[k]), f"{k}: a resumed batched run must equal the uninterrupted one"
    assert summary["client_training"] == "batched" and summary["final"]["test_accuracy"] > 0.5
    assert _final(tmp_path, "off", 1, "fl.rounds=1", "fl.client_batch=off")[1]["client_training"] == \
        "serial: fl.client_batch=off"


def test_a_client_alone_in_its_chunk_trains_as_in_a_chunk_of_several(tmp_path):
    """At world size 4, 5 clients: a rank hosts one client, or two; at world size 1 all five share a
    chunk. A vmapped convolution over one client rounds differently from one over several (on some
    CPUs), unless a lone client runs as two lanes. 8-bit codes are summed as exact integers, so the
    aggregate does not depend on the summation order: the models must be equal bit for bit."""
    small = ("data=digits", "model=cnn_padded", "fl.num_clients=10", "fl.clients_per_round=5", "fl.rounds=2",
             "fl.checkpoint_every=0", "fl.local_epochs=1", "train.batch_size=16", "compression/uplink=quantize",
             "compression.uplink.bits=8")
    one = fork_ranks(1, run_job, tmp_path, make_cfg(*small), tmp_path / "ws1")
    four = fork_ranks(4, run_job, tmp_path, make_cfg(*small), tmp_path / "ws4")
    assert one[0]["client_training"] == four[0]["client_training"] == "batched"
    ref = torch.load(tmp_path / "ws1" / "final_model.pt", weights_only=True)
    got = torch.load(tmp_path / "ws4" / "final_model.pt", weights_only=True)
    for k in ref:
        assert torch.equal(ref[k], got[k]), f"{k}: world size 4 differs from world size 1"
