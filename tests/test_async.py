"""Asynchronous FL (FedBuff, FedAsync): the staleness maths, the event schedule, and real runs on
gloo process groups (synchronous equivalence, world-size invariance, exact resume)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.asynchronous.schedule import build, round_time
from fl.asynchronous.staleness import Staleness
from fl.config.build import prepare
from fl.errors import ConfigError
from fl.training.cohort import sample_cohort, slowdown


def test_staleness_weights_match_the_formulas():
    poly = Staleness("polynomial", exponent=0.5)
    assert [poly.weight(t) for t in (0, 3, 8)] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert Staleness("polynomial", exponent=2.0).weight(4) == pytest.approx(1 / 25)
    hinge = Staleness("hinge", hinge_a=10.0, hinge_b=4)
    assert [hinge.weight(t) for t in (0, 4, 5, 6)] == [1.0, 1.0, pytest.approx(1 / 11), pytest.approx(1 / 21)]
    assert all(Staleness("constant").weight(t) == 1.0 for t in range(20))
    with pytest.raises(ValueError):
        poly.weight(-1)


def _random_work(seed: int, fail_rate: float = 0.0):
    """Continuous random durations (no ties) and failures, fixed per (client, draw)."""
    def work(cid: int, draw: int) -> tuple[float, bool]:
        rng = random.Random(f"{seed}-{cid}-{draw}")
        return rng.uniform(1.0, 50.0), rng.random() < fail_rate
    return work


def test_schedule_obeys_its_rules():
    n, concurrency, buffer = 30, 8, 3
    sched = build(n, concurrency, buffer, 60, seed=1, work=_random_work(1, 0.1), max_staleness=4)
    steps = sched.steps
    assert [s.index for s in steps] == list(range(60))
    times = [s.time for s in steps]
    assert times == sorted(times)
    jobs = [j for s in steps for j in s.jobs]
    for s in steps:
        assert len(s.jobs) == buffer and [j.client_id for j in s.jobs] == sorted(j.client_id for j in s.jobs)
        for j in s.jobs:
            assert j.finish <= s.time and j.staleness <= 4, "an update staler than max_staleness never enters"
            assert j.base == sum(t <= j.start for t in times), "a job starts from the newest version"
            assert j.base + j.staleness == s.index == sum(t < j.finish for t in times)
    assert sum(s.stale for s in steps) > 0 and sum(s.failed for s in steps) > 0, "the case is exercised"
    assert sum(j.start == 0.0 for j in jobs) <= concurrency
    by_client: dict[int, list] = {}
    for j in jobs:
        by_client.setdefault(j.client_id, []).append((j.start, j.finish))
    for spans in by_client.values():  # a client never trains twice at once
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    again = build(n, concurrency, buffer, 90, seed=1, work=_random_work(1, 0.1), max_staleness=4)
    assert again.steps[:60] == steps, "deterministic, and a longer run extends the same schedule"
    for k in range(60):
        assert all(v <= k for v in sched.ring(k)) and len(sched.ring(k)) <= 4 + 1
        assert {j.base for j in steps[k].jobs} <= set(sched.ring(k))


def test_with_equal_speeds_and_full_buffers_every_step_is_a_synchronous_round():
    n, k = 20, 5
    sched = build(n, k, k, 10, seed=3, work=lambda cid, draw: (7.0, False))
    for step in sched.steps:
        assert [j.client_id for j in step.jobs] == sample_cohort(3, step.index, n, k)
        assert all(j.staleness == 0 and j.base == j.draw == step.index for j in step.jobs)
        assert step.time == 7.0 * (step.index + 1) and step.downloads == k


def test_heavy_tailed_slowdowns_and_synchronous_round_time():
    tail = [slowdown(0, c, 1000.0, tail=1.0) for c in range(2000)]
    assert min(tail) >= 1.0 and max(tail) <= 1000.0
    assert sum(s > 10 for s in tail) / len(tail) == pytest.approx(0.1, abs=0.03), "P(s > x) = 1/x for tail=1"
    assert sorted(tail)[len(tail) // 2] == pytest.approx(2.0, rel=0.15)
    assert round_time([3.0, 9.0, 4.0], None) == 9.0 and round_time([3.0, 9.0], 5.0) == 5.0
    assert round_time([3.0, 4.0], 5.0) == 4.0


ASYNC = ("data=digits", "model=mlp", "partition=dirichlet", "fl.num_clients=12", "fl.rounds=8", "fl.eval_every=1",
         "train.batch_size=16", "optim.lr=0.1", "fl.local_steps=4", "fl.checkpoint_every=0", "scheduler=fedbuff",
         "scheduler.concurrency=6", "scheduler.buffer_size=3", "fl.client_slowdown_max=20",
         "fl.client_slowdown_tail=1.0", "scheduler.max_staleness=2")


def _model(run_dir):
    return torch.load(run_dir / "final_model.pt", weights_only=True)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fedbuff_with_full_buffers_and_equal_speeds_equals_synchronous_fedavg(tmp_path):
    common = ("data=digits", "model=mlp", "fl.num_clients=10", "fl.clients_per_round=4", "fl.rounds=4",
              "fl.eval_every=1", "fl.local_steps=3", "optim.lr=0.1", "fl.checkpoint_every=0")
    fork_ranks(2, run_job, tmp_path, make_cfg(*common), tmp_path / "sync")
    fork_ranks(2, run_job, tmp_path, make_cfg(*common, "scheduler=fedbuff", "scheduler.concurrency=4"),
               tmp_path / "fedbuff")
    sync, fedbuff = _model(tmp_path / "sync"), _model(tmp_path / "fedbuff")
    assert all(torch.equal(sync[k], fedbuff[k]) for k in sync), "the same cohorts, starts and randomness"
    rows = _rows(tmp_path / "fedbuff")
    assert [r["staleness_max"] for r in rows] == [0] * 4
    assert [r["sim_time"] for r in rows] == [r["sim_time"] for r in _rows(tmp_path / "sync")]


def test_fedbuff_is_world_size_invariant_resumes_exactly_and_drops_stale_updates(tmp_path):
    one = fork_ranks(1, run_job, tmp_path, make_cfg(*ASYNC), tmp_path / "ws1")[0]
    fork_ranks(2, run_job, tmp_path, make_cfg(*ASYNC), tmp_path / "ws2")
    a, b = _model(tmp_path / "ws1"), _model(tmp_path / "ws2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    rows = _rows(tmp_path / "ws1")
    assert max(r["staleness_max"] for r in rows) == 2 and sum(r["stale_dropped"] for r in rows) > 0
    assert all(r["clients"] == 3 for r in rows) and one["final"]["test_accuracy"] > 0.3
    assert [r["sim_time"] for r in rows] == sorted(r["sim_time"] for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "ws1" / "tb"))
    tb.Reload()
    assert [e.value for e in tb.Scalars("time/sim_time")] == pytest.approx([r["sim_time"] for r in rows])
    assert [e.value for e in tb.Scalars("async/stale_dropped")] == [r["stale_dropped"] for r in rows]

    resumable = (*ASYNC, "fl.checkpoint_every=2", "fl.eval_every=1")
    fork_ranks(2, run_job, tmp_path, make_cfg(*resumable), tmp_path / "full")
    fork_ranks(2, run_job, tmp_path, make_cfg(*resumable, "fl.rounds=3"), tmp_path / "resumed")  # stops after 3
    second = fork_ranks(2, run_job, tmp_path, make_cfg(*resumable), tmp_path / "resumed")[0]
    assert second["resumed_from_round"] == 3
    full, resumed = _model(tmp_path / "full"), _model(tmp_path / "resumed")
    assert all(torch.equal(full[k], resumed[k]) for k in full), "resume equals the uninterrupted run exactly"
    assert [r["sim_time"] for r in _rows(tmp_path / "resumed")] == [r["sim_time"] for r in _rows(tmp_path / "full")]


def test_fedbuff_composes_with_dp_and_secure_aggregation(tmp_path):
    run = (*ASYNC, "fl.rounds=4", "privacy=dp_fedavg", "privacy.clip_norm=0.5", "privacy.noise_multiplier=0.3")
    plain = fork_ranks(2, run_job, tmp_path, make_cfg(*run), tmp_path / "dp")[0]
    masked = fork_ranks(2, run_job, tmp_path, make_cfg(*run, "secagg=masking"), tmp_path / "dp_secagg")[0]
    assert plain["final"]["dp_epsilon"] == masked["final"]["dp_epsilon"] > 0
    assert all(r["clients"] == 3 and not r["skipped"] for r in _rows(tmp_path / "dp_secagg"))


@pytest.mark.parametrize("overrides, key", [
    (("strategy=scaffold",), "strategy"),
    (("strategy=median",), "strategy"),
    (("privacy=dp_sgd_local",), "privacy"),
    (("fl.round_deadline=50",), "fl.round_deadline"),
    (("fl.clients_per_round=4",), "scheduler.buffer_size"),
    (("scheduler.concurrency=13",), "scheduler.concurrency"),
    (("scheduler.staleness=linear",), "scheduler.staleness"),
    (("scheduler.max_staleness=-1",), "scheduler.max_staleness"),
    (("fl.client_slowdown_tail=0",), "fl.client_slowdown_tail"),
])
def test_what_async_cannot_do_is_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        prepare(make_cfg(*ASYNC, *overrides), 1)
    assert e.value.key == key
