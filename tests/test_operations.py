"""Operations end to end: kill -9 under torchrun --max-restarts, SIGTERM, hung ranks, two "nodes".

Each test compares a disturbed run's final model with an undisturbed run of the same
config on two gloo ranks: they must be equal, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, fork_ranks, make_cfg, run_job

pytestmark = pytest.mark.e2e

# 12 short rounds: enough to be stopped in (after two) and to resume from (a checkpoint every two).
# Evaluation and checkpoints do not change the model, so one undisturbed run is every test's reference.
JOB = ["model=cnn_padded", "fl.num_clients=10", "fl.clients_per_round=8", "fl.rounds=12", "fl.local_epochs=1", "optim.lr=0.1",
       "fl.eval_every=4", "fl.checkpoint_every=2", "runtime.progress=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The undisturbed run's final model (2 forked gloo ranks)."""
    tmp = tmp_path_factory.mktemp("reference")
    fork_ranks(2, run_job, tmp, make_cfg(*JOB), tmp / "run")
    return torch.load(tmp / "run" / "final_model.pt", weights_only=True)


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, str(REPO / "train.py")]


def _assert_same_model(path: Path, reference: dict[str, torch.Tensor]) -> None:
    model = torch.load(path, weights_only=True)
    for k in reference:
        assert torch.equal(model[k], reference[k]), f"{k} differs from the undisturbed run"


def _wait_for(path_glob, proc: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while not path_glob():
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before {what}: {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _workers(agent_pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes that a torchrun agent started."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode().split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if ppid == agent_pid and "RANK" in env:
            out[int(env["RANK"])] = int(proc.name)
    return out


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the worker pids")
def test_kill_9_of_a_rank_under_max_restarts_gives_the_same_model(tmp_path, reference):
    # The default run directory (outputs/<date>/<time>): the restart must find it again.
    proc = subprocess.Popen(_torchrun("--standalone", "--nproc_per_node=2", "--max-restarts=1") + JOB,
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: list(tmp_path.glob("outputs/*/*/checkpoints/round_000004.pt")), proc, "round 4's checkpoint")
    workers = _workers(proc.pid)
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    run_dirs = [p for p in tmp_path.glob("outputs/*/*") if p.is_dir()]
    assert len(run_dirs) == 1, f"the restarted attempt must reuse the first attempt's run directory: {run_dirs}"
    info = json.loads((run_dirs[0] / "run.json").read_text())
    assert info["status"] == "completed" and info["restart_count"] == 1 and info["resumed_from_round"] >= 4
    _assert_same_model(run_dirs[0] / "final_model.pt", reference)
    rounds = [json.loads(x)["round"] for x in (run_dirs[0] / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [4, 8, 12], "metrics from the killed attempt's unfinished rounds are dropped"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_with_c10d_rendezvous_equal_one_node(tmp_path, reference):
    run_dir = tmp_path / "run"
    port = _free_port()
    nodes = [subprocess.Popen(_torchrun("--nnodes=2", f"--node_rank={i}", "--nproc_per_node=1",
                                        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                        "--rdzv-id=two-nodes") + JOB + [f"hydra.run.dir={run_dir}"],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "completed"
    _assert_same_model(run_dir / "final_model.pt", reference)


def _hung_rank(rank: int, world_size: int, init_method: str, timeout_s: float):
    from fl.runtime.comm import Comm
    from fl.runtime.env import DistEnv, process_group

    with process_group(DistEnv(rank, world_size, rank), torch.device("cpu"), "gloo", timeout_s, init_method):
        comm = Comm(rank, world_size, torch.device("cpu"), timeout_s)
        comm.all_reduce_sum(torch.ones(3))  # both ranks are up
        if rank == 1:
            time.sleep(3 * timeout_s)  # hangs: never joins the next collective
            return None
        start = time.perf_counter()
        try:
            comm.all_reduce_sum(torch.ones(5))
        except Exception as e:  # noqa: BLE001 - the error is the result
            return type(e).__name__, str(e), time.perf_counter() - start
        return None


def test_a_hung_rank_ends_the_collective_with_an_error_naming_rank_and_operation(tmp_path):
    error = fork_ranks(2, _hung_rank, tmp_path, 2.0, timeout_s=60)[0]
    assert error is not None, "the collective must not wait forever"
    name, message, waited = error
    assert name == "CollectiveError"
    assert message.startswith("rank 0/2: all_reduce of (5,) float32 did not complete (runtime.timeout_s=2)")
    assert 1.5 < waited < 10


def _interrupt_after_two_rounds(cmd: list[str], run_dir: Path, signals: int = 1) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, proc, "two rounds")
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    return proc, err


CTRL_C_JOB = JOB + ["fl.checkpoint_every=100", "fl.eval_every=1"]


def _ctrl_c_then_rerun(cmd: list[str], run_dir: Path, reference: dict[str, torch.Tensor],
                      exit_code: int | None = None) -> str:
    """Ctrl-C after two rounds: status interrupted and one checkpoint before the last round; the
    rerun completes from it with the ``reference`` model (the uninterrupted run's).
    ``exit_code``: the interrupted job's exit status (any failure when None). Returns its stderr."""
    proc, err = _interrupt_after_two_rounds(cmd, run_dir)
    assert proc.returncode == exit_code if exit_code is not None else proc.returncode != 0, err[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted", err[-3000:]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert len(ckpts) == 1 and ckpts[0] != "round_000012.pt", ckpts
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed_from_round"] == int(ckpts[0][6:12])
    _assert_same_model(run_dir / "final_model.pt", reference)
    return err


def test_ctrl_c_checkpoints_says_interrupted_and_the_rerun_gives_the_uninterrupted_model(tmp_path):
    fork_ranks(1, run_job, tmp_path, make_cfg(*CTRL_C_JOB), tmp_path / "reference")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *CTRL_C_JOB, f"hydra.run.dir={run_dir}"]
    reference = torch.load(tmp_path / "reference" / "final_model.pt", weights_only=True)
    err = _ctrl_c_then_rerun(cmd, run_dir, reference, exit_code=130)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    run_dir = tmp_path / "run"
    # rounds of about a second, so that the second Ctrl-C (50 ms after the first) lands inside one
    cmd = [sys.executable, str(REPO / "train.py"), *JOB, "fl.local_epochs=20", "fl.eval_every=1",
           f"hydra.run.dir={run_dir}"]
    proc, err = _interrupt_after_two_rounds(cmd, run_dir, signals=2)
    assert proc.returncode == 130, err[-3000:]
    assert "second Ctrl-C: stopping now" in err and "Traceback" not in err
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"].startswith("interrupted: stopped at once"), info["status"]
    assert not (run_dir / "final_model.pt").exists()


def test_sigterm_then_ctrl_c_under_torchrun_checkpoint_and_the_reruns_give_the_uninterrupted_model(tmp_path, reference):
    # SIGTERM: what SLURM sends to the job step on preemption or scancel; SIGINT: Ctrl-C in a terminal.
    run_dir = tmp_path / "run"
    cmd = _torchrun("--standalone", "--nproc_per_node=2") + CTRL_C_JOB + [f"hydra.run.dir={run_dir}"]
    metrics = run_dir / "metrics.jsonl"
    stopped = []
    for sig, status, says in ((signal.SIGTERM, "preempted", "stop requested: checkpoint of round"),
                              (signal.SIGINT, "interrupted", "received SIGINT: stopping after the current round")):
        done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= done + 2, proc, "two rounds")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert json.loads((run_dir / "run.json").read_text())["status"] == status, err[-3000:]
        assert says in err and not (run_dir / "final_model.pt").exists()
        ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
        assert len(ckpts) == len(stopped) + 1 and ckpts[-1] != "round_000012.pt", ckpts  # one per stop
        stopped.append(int(ckpts[-1][6:12]))
        if len(stopped) == 2:
            info = json.loads((run_dir / "run.json").read_text())
            assert info["resumed_from_round"] == stopped[0] < stopped[1], (info, stopped)
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed_from_round"] == stopped[1]
    _assert_same_model(run_dir / "final_model.pt", reference)
