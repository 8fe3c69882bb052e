"""Stopping at a target metric (``fl.target``): where a run stops, and that it stays complete."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from conftest import fork_ranks, make_cfg, run_job
from fl.engine import target as stop_target
from fl.engine.resume import decide, fingerprint
from fl.engine.rundir import Existing
from fl.errors import ConfigError

JOB = ("data=digits", "model=cnn_padded", "partition=dirichlet", "fl.num_clients=10", "fl.clients_per_round=5",
       "fl.rounds=12", "train.batch_size=16", "optim.lr=0.1", "fl.checkpoint_every=5",
       "fl.target_metric=client_accuracy_mean", "fl.target=0.55")


def _hashes(run_dir):
    return {p.relative_to(run_dir): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_stops_at_the_first_evaluation_that_reaches_its_target_on_every_rank(tmp_path):
    run_dir = tmp_path / "run"
    # The client metrics exist only on rank 0: without one decision for all, rank 1 would train on alone.
    summaries = fork_ranks(2, run_job, tmp_path, make_cfg(*JOB), run_dir)
    reached = summaries[0]["reached_target"]
    assert summaries[1]["reached_target"] == reached and summaries[0]["status"] == "completed"
    records = _records(run_dir)
    rnd = reached["round"]
    assert 1 < rnd < 12 and summaries[0]["rounds_run"] == rnd and records[-1]["round"] == rnd
    assert reached["value"] == records[-1]["client_accuracy_mean"] >= 0.55
    assert all(r["client_accuracy_mean"] < 0.55 for r in records[:-1])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["reached_target"] == reached
    assert (run_dir / "final_model.pt").is_file()

    # Run again with the same target (or a looser one): complete, nothing touched.
    before = _hashes(run_dir)
    for looser in ("fl.target=0.55", "fl.target=0.4"):
        again = fork_ranks(1, run_job, tmp_path, make_cfg(*JOB, looser), run_dir)[0]
        assert again.get("already_complete") and _hashes(run_dir) == before

    # Without a target it continues from the checkpoint of the round it stopped at, to fl.rounds.
    rest = fork_ranks(1, run_job, tmp_path, make_cfg(*JOB, "fl.target=null"), run_dir)[0]
    assert rest["resumed_from_round"] == rnd and rest["rounds_run"] == 12 - rnd and "reached_target" not in rest
    assert [r["round"] for r in _records(run_dir)][-1] == 12


def test_a_target_stop_without_checkpoints_is_complete_and_cannot_be_continued(tmp_path):
    run_dir = tmp_path / "run"
    first = fork_ranks(1, run_job, tmp_path, make_cfg(*JOB, "fl.checkpoint_every=0"), run_dir)[0]
    assert first["rounds_run"] < 12
    before = _hashes(run_dir)
    assert fork_ranks(1, run_job, tmp_path, make_cfg(*JOB, "fl.checkpoint_every=0"), run_dir)[0].get("already_complete")
    with pytest.raises(RuntimeError, match=r"fl.target=0.99 is invalid: the run in .* stopped at round .*kept no checkpoint"):
        fork_ranks(1, run_job, tmp_path, make_cfg(*JOB, "fl.checkpoint_every=0", "fl.target=0.99"), run_dir)
    assert _hashes(run_dir) == before


def test_the_direction_follows_the_metric():
    acc, mae = stop_target.Target("test_accuracy", 0.9), stop_target.Target("client_mae_p90", 2.0)
    assert acc.met({"test_accuracy": 0.9}) and not acc.met({"test_accuracy": 0.8999})
    assert mae.met({"client_mae_p90": 1.5}) and not mae.met({"client_mae_p90": 2.01})
    assert not acc.met({"test_accuracy": math.nan}) and not acc.met({"test_loss": 0.1})
    assert acc.describe() == "test_accuracy >= 0.9" and mae.describe() == "client_mae_p90 <= 2"


@pytest.mark.parametrize("overrides, key, words", [
    (("fl.target_metric=accuracy",), "fl.target_metric", "must be one of test_accuracy"),
    (("fl.target=true",), "fl.target", "must be null"),
    (("fl.target=abc",), "fl.target", "must be null"),
])
def test_a_bad_target_is_refused_naming_the_key(overrides, key, words):
    with pytest.raises(ConfigError, match=rf"{key}=\S+ is invalid: {words}"):
        stop_target.of(make_cfg(*overrides))


def test_a_metric_the_run_never_evaluates_is_refused():
    t = stop_target.Target("test_mae", 1.0)
    with pytest.raises(ConfigError, match=r"fl.target_metric='test_mae' is invalid: is not evaluated by this "
                                          r"classification run, which reports test_accuracy, test_loss, client_"):
        stop_target.check(t, "classification", False, True, True)
    with pytest.raises(ConfigError, match=r"fl.holdout_fraction=0 leaves no client evaluation"):
        stop_target.check(stop_target.Target("client_accuracy_mean", 0.5), "classification", False, True, False)
    with pytest.raises(ConfigError, match=r"reports test_accuracy, test_loss; fl.holdout"):
        stop_target.check(stop_target.Target("test_roc_auc", 0.5), "classification", False, True, False)
    stop_target.check(stop_target.Target("test_roc_auc", 0.5), "classification", True, True, False)
    stop_target.check(t, "regression", False, True, False)


def _existing(status, reached, rounds=20):
    info = {"status": status, "rounds": rounds, "fingerprint": None, **({"reached_target": reached} if reached else {})}
    return Existing("run", info, True, False, ())


@pytest.mark.parametrize("target, status, complete", [
    ("0.8", "completed", True), ("0.5", "completed", True), ("0.9", "completed", False), ("null", "completed", False),
    ("0.8", "running", False),
])
def test_the_resume_decision_after_a_target_stop(target, status, complete):
    cfg = make_cfg("fl.rounds=20", "fl.target_metric=client_accuracy_mean", f"fl.target={target}")
    reached = {"round": 7, "metric": "client_accuracy_mean", "value": 0.85, "target": 0.8}
    decision = decide(cfg, {"round": 7, "fingerprint": fingerprint(cfg)}, _existing(status, reached))
    assert decision.start == 7 and decision.complete is complete
