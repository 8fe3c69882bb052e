"""End to end: a real `torchrun --standalone --nproc_per_node=2 train.py` and the outputs a user reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO
from fl.models import build_model

pytestmark = pytest.mark.e2e


def test_torchrun_two_ranks_on_digits(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "fl.num_clients=6", "fl.clients_per_round=4", "fl.rounds=12", "fl.eval_every=3",
           "fl.checkpoint_every=4", "fl.keep_checkpoints=2", "optim.lr=0.1", "fl.local_epochs=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_dirs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1, f"all ranks must share one run directory, got {run_dirs}"
    run_dir = run_dirs[0]
    assert (run_dir / ".hydra" / "config.yaml").exists()

    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["world_size"] == 2 and info["backend"] == "gloo"

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [3, 6, 9, 12]
    for r in records:
        assert {"round", "test_accuracy", "test_loss", "train_loss", "client_accuracy_p10"} <= r.keys()
    assert records[-1]["test_accuracy"] > 0.85 and records[-1]["test_loss"] < records[0]["test_loss"]

    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert {"train/loss", "test/accuracy", "test/loss", "clients/accuracy_p10", "comm/bytes",
            "time/round_s"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 13))
    assert acc.Scalars("test/accuracy")[-1].value == pytest.approx(records[-1]["test_accuracy"], rel=1e-6)

    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["round_000008.pt", "round_000012.pt"]
    model = build_model("mlp", (1, 8, 8), 10)  # the default model
    model.load_state_dict(torch.load(run_dir / "final_model.pt", weights_only=True))

    assert "[rank0]" in proc.stderr and "[rank1]" not in proc.stderr, "rank 1 logs only warnings and errors"
    assert "Traceback" not in proc.stderr


def test_torchrun_config_error_names_the_key(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "fl.clients_per_round=5"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ERROR fl: fl.clients_per_round=5 is invalid: must be an integer >= 1 and <= 2" in proc.stderr
    # torchrun's failure summary shows our one-line reason as the rank's root cause
    assert "traceback : ConfigError: fl.clients_per_round=5 is invalid" in proc.stderr
    assert not list(tmp_path.glob("outputs/*/*/run.json")), "no work may start"


def test_torchrun_secure_aggregation_with_dp_and_tensorboard_privacy_scalars(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "secagg=masking", "privacy=dp_fedavg", "privacy.clip_norm=0.5",
           "privacy.noise_multiplier=0.3", "privacy.target_quantile=0.5", "privacy.count_noise=0.5",
           "fl.num_clients=8", "fl.clients_per_round=6", "fl.rounds=4", "fl.eval_every=4", "optim.lr=0.1",
           "runtime.progress=false", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "completed" and info["final"]["skipped"] == 0 and info["final"]["dp_epsilon"] > 0
    acc = EventAccumulator(str(next((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))))
    acc.Reload()
    assert [e.step for e in acc.Scalars("privacy/epsilon")] == [1, 2, 3, 4]
    clip = [e.value for e in acc.Scalars("privacy/clip_norm")]
    assert len(set(clip)) == 4, f"the adaptive clip norm moves every round: {clip}"


def test_local_sweep_gives_each_point_its_own_run_directory(tmp_path):
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "strategy=fedavg,fedprox", "fl.rounds=1",
           "fl.num_clients=2", "runtime.progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for num, strategy in enumerate(("FedAvg", "FedProx")):
        point = tmp_path / "sweep" / str(num)
        assert json.loads((point / "run.json").read_text())["status"] == "completed"
        assert strategy in (point / ".hydra" / "config.yaml").read_text()


def _launch(*args: str, cwd=None, restarts: int = 1) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fl.launch", "--standalone", "--nproc_per_node=2", f"--max-restarts={restarts}",
           str(REPO / "train.py"), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_fl_launch_prints_a_mistake_once_and_starts_no_worker(tmp_path):
    proc = _launch("fl.clients_per_round=5", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith("fl.clients_per_round=5 is invalid: must be an integer >= 1 and <= 2")
    assert not (tmp_path / "outputs").exists()


def test_fl_launch_names_the_rank_whose_site_is_missing(tmp_path):
    from PIL import Image

    (tmp_path / "site_0" / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "site_0" / "a" / "0.png")
    proc = _launch("data=folder", f"data.root='{tmp_path}/site_{{client}}'", "data.image_size=8",
                   "runtime.timeout_s=20", cwd=tmp_path, restarts=0)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "[launcher] rank 1 failed (exit 2): ConfigError: data.root=" in proc.stderr
    assert "client 1: " in proc.stderr and "Traceback" not in proc.stderr


def test_a_users_own_model_trains_under_torchrun_on_the_gather_transport_and_its_final_model_loads(tmp_path):
    # The all-reduce transport runs under torchrun in test_torchrun_two_ranks_on_digits; every
    # strategy's arithmetic is checked on forked gloo ranks (test_strategies, test_distributed).
    from user_models import TinyNet

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
           "model._target_=user_models.TinyNet", "+model.width=24", "strategy=trimmed_mean", "strategy.beta=0.2",
           "fl.num_clients=6", "fl.clients_per_round=5", "fl.rounds=6", "fl.eval_every=6", "optim.lr=0.2",
           "runtime.progress=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["transport"] == "gather"
    assert info["final"]["test_accuracy"] > 0.6
    model = TinyNet((1, 8, 8), 10, width=24)
    model.load_state_dict(torch.load(run_dir / "final_model.pt", weights_only=True))
    assert model.body[1].out_features == 24


def test_the_hospitals_experiment_runs_under_torchrun_and_reports_roc_auc(tmp_path):
    from fl.data.hospitals import make

    make(tmp_path / "hospitals")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
           "experiment=hospitals", "fl.rounds=6", "fl.eval_every=3", "runtime.progress=false",
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FL_DATA_ROOT": str(tmp_path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((run_dir / "run.json").read_text())["final"]
    assert final["test_roc_auc"] > 0.95 and final["client_roc_auc_mean"] > 0.9 and 0 < final["test_f1"] <= 1
    assert "test_roc_auc=" in proc.stderr
    acc = EventAccumulator(str(next((run_dir / "tb").glob("events.out.tfevents.*"))))
    acc.Reload()
    assert [e.step for e in acc.Scalars("test/roc_auc")] == [3, 6]
