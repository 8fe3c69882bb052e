"""scripts/slurm/train.sbatch on a real one-node SLURM cluster started on this machine.

Needs Debian's slurm-wlm and munge (CI installs them) and root; skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, fork_ranks, make_cfg, run_job

pytestmark = pytest.mark.e2e

JOB = ["model=cnn_padded", "fl.num_clients=10", "fl.clients_per_round=8", "fl.local_epochs=3", "optim.lr=0.1", "fl.eval_every=1",
       "fl.checkpoint_every=100", "runtime.progress=false"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """The environment for sbatch/squeue/scontrol against a local cluster (started here)."""
    missing = [b for b in ("sbatch", "slurmctld", "slurmd", "munged") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not found): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("starting a local SLURM cluster needs root")
    state = tmp_path_factory.mktemp("slurm")
    script = REPO / "scripts" / "slurm" / "local_cluster.sh"
    start = subprocess.run(["bash", str(script), "start", str(state)], capture_output=True, text=True, timeout=120)
    if start.returncode != 0:
        pytest.skip(f"the local SLURM cluster did not start: {start.stderr[-500:]}")
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "PYTHON": sys.executable, "FL_REPO": str(REPO),
           "OMP_NUM_THREADS": "1"}
    yield env
    subprocess.run(["bash", str(script), "stop", str(state)], timeout=60)


def _sbatch(env, cwd: Path, *args: str) -> str:
    cmd = ["sbatch", "--parsable", str(REPO / "scripts/slurm/train.sbatch"), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _job_state(env, job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True, text=True)
    return out.stdout.strip()


def _until(predicate, what: str, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_two_rank_job_checkpoints_on_the_time_limit_signal_requeues_and_continues(slurm, tmp_path):
    run_dir = tmp_path / "run"
    env = {**slurm, "FL_RUN_DIR": str(run_dir)}
    job = _sbatch(env, tmp_path, "fl.rounds=30", *JOB)
    metrics = run_dir / "metrics.jsonl"
    _until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, "two rounds")
    # What SLURM does 3 minutes before the time limit (#SBATCH --signal=B:USR1@180):
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True)
    _until(lambda: json.loads((run_dir / "run.json").read_text())["status"] == "preempted", "the checkpoint")
    _until(lambda: "fl: requeuing" in (tmp_path / f"slurm-{job}.out").read_text(), "the requeue")
    stopped_at = int(sorted((run_dir / "checkpoints").glob("*.pt"))[-1].name[6:12])
    assert stopped_at < 30

    _until(lambda: "DUE TO JOB REQUEUE" in (tmp_path / f"slurm-{job}.out").read_text(), "SLURM to requeue the job")
    # The requeued job waits out SLURM's requeue delay; run the same script with the same run
    # directory now instead, as the requeued job would.
    subprocess.run(["scancel", job], env=env, capture_output=True)
    _until(lambda: _job_state(env, job) == "", "the requeued job to be cancelled")
    again = _sbatch(env, tmp_path, "fl.rounds=30", *JOB)
    _until(lambda: _job_state(env, again) == "", "the continued job to finish", timeout_s=300)
    log = (tmp_path / f"slurm-{again}.out").read_text()
    assert f"resuming from round_{stopped_at:06d}.pt" in log, log[-3000:]
    assert "run status: completed" in log
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed_from_round"] == stopped_at
    assert info["world_size"] == 2 and info["backend"] == "gloo"

    fork_ranks(2, run_job, tmp_path, make_cfg("fl.rounds=30", *JOB), tmp_path / "clean")
    clean = torch.load(tmp_path / "clean" / "final_model.pt", weights_only=True)
    resumed = torch.load(run_dir / "final_model.pt", weights_only=True)
    assert all(torch.equal(clean[k], resumed[k]) for k in clean), "the requeued run must equal an uninterrupted one"


def test_hydra_sweep_on_slurm_runs_each_point_as_a_multi_rank_job(slurm, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=fl_slurm", "strategy=fedavg,fedprox",
           "fl.rounds=2", "runtime.progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=slurm, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for num in (0, 1):
        info = json.loads((tmp_path / "sweep" / str(num) / "run.json").read_text())
        assert info["status"] == "completed" and info["world_size"] == 2, info
