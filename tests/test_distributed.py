"""Real gloo process groups in forked processes: the engine's distributed guarantees."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.runtime.comm import Comm
from fl.errors import ConfigError
from fl.engine.loop import run
from fl.runtime.env import DistEnv, process_group

SMALL = ("data=digits", "model=cnn_padded", "partition=dirichlet", "fl.num_clients=10", "fl.clients_per_round=5",
         "fl.rounds=3", "fl.eval_every=3", "train.batch_size=16", "optim.lr=0.1", "fl.local_epochs=2", "fl.checkpoint_every=0")


def _final(tmp_path, name, world_size, *overrides):
    run_dir = tmp_path / name
    cfg = make_cfg(*SMALL, *overrides)
    summaries = fork_ranks(world_size, run_job, tmp_path, cfg, run_dir)
    return torch.load(run_dir / "final_model.pt", weights_only=True), summaries[0], run_dir


def _assert_models_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=f"{k} differs")


def _comm_ops(rank, world_size, init_method):
    with process_group(DistEnv(rank, world_size, rank), torch.device("cpu"), "gloo", 30, init_method):
        comm = Comm(rank, world_size, torch.device("cpu"))
        s = comm.all_reduce_sum(torch.full((3,), float(rank + 1)))
        rows = comm.gather_rows(torch.full((2, 2), float(rank)))
        b = comm.broadcast(torch.tensor([float(rank)]))
        return s.tolist(), None if rows is None else rows.tolist(), b.item(), comm.all_gather_object(rank * 10), \
            comm.broadcast_object({"from": rank})


def test_comm_collectives_on_gloo(tmp_path):
    results = fork_ranks(3, _comm_ops, tmp_path)
    for rank, (s, rows, b, objs, bobj) in enumerate(results):
        assert s == [6.0, 6.0, 6.0] and b == 0.0 and objs == [0, 10, 20] and bobj == {"from": 0}
        assert rows == ([[0, 0], [0, 0], [1, 1], [1, 1], [2, 2], [2, 2]] if rank == 0 else None)


def test_transports_and_world_sizes_give_the_same_model(tmp_path):
    ref, ref_summary, _ = _final(tmp_path, "ws1", 1)
    assert ref_summary["final"]["test_accuracy"] > 0.3, "the reference run must actually learn"
    for name, ws, transport in (("ws2_allreduce", 2, "allreduce"), ("ws2_gather", 2, "gather"),
                                ("ws4_allreduce", 4, "allreduce"), ("ws4_gather", 4, "gather")):
        model, summary, _ = _final(tmp_path, name, ws, f"strategy.transport={transport}")
        assert summary["world_size"] == ws and summary["transport"] == transport
        _assert_models_close(model, ref)


def test_resume_equals_uninterrupted(tmp_path):
    full, _, _ = _final(tmp_path, "full", 2, "fl.rounds=4", "fl.checkpoint_every=2", "fl.eval_every=1")
    _, first, resumed_dir = _final(tmp_path, "resumed", 2, "fl.rounds=2", "fl.checkpoint_every=2",
                                   "fl.eval_every=1")
    assert first["rounds_run"] == 2
    resumed, second, _ = _final(tmp_path, "resumed", 2, "fl.rounds=4", "fl.checkpoint_every=2", "fl.eval_every=1")
    assert second["resumed_from_round"] == 2 and second["rounds_run"] == 2
    for k in full:
        assert torch.equal(full[k], resumed[k]), f"{k}: a resumed run must equal an uninterrupted one exactly"
    rounds = [json.loads(line)["round"] for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]


def test_resume_with_a_different_config_is_refused(tmp_path):
    _final(tmp_path, "run", 1, "fl.rounds=2", "fl.checkpoint_every=1")
    with pytest.raises(RuntimeError, match=r"ConfigError: optim.lr=0.2 is invalid: .* was written with optim.lr=0.1"):
        _final(tmp_path, "run", 1, "fl.rounds=3", "fl.checkpoint_every=1", "optim.lr=0.2")
    with pytest.raises(RuntimeError, match=r"ConfigError: fl.rounds=1 is invalid: must be >= 2"):
        _final(tmp_path, "run", 1, "fl.rounds=1", "fl.checkpoint_every=1")


def test_config_error_is_raised_before_the_process_group(tmp_path):
    with pytest.raises(ConfigError, match=r"fl.num_clients=1 is invalid: must be an integer >= 2"):
        run(make_cfg(*SMALL, "fl.num_clients=1", "fl.clients_per_round=1"), tmp_path / "x", DistEnv(0, 2, 0))
