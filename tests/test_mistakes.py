"""Forty-odd ordinary mistakes, each one line naming the key, and nothing lost.

Every case runs the real command line in-process (:func:`fl.cli.main`, what ``train.py``
calls) and asserts: the exit status, exactly one error line, the key it names, no
traceback; for run-directory cases, that every file there is byte-identical afterwards.
Most cases fail before any training, so the table runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, fork_ranks, make_cfg, run_job
from fl import cli

TINY = ["fl.rounds=2", "fl.num_clients=2", "runtime.progress=false"]


def _cli(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = cli.main(list(argv), config_dir=str(REPO / "conf"))
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if " ERROR " in line], err


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _site(root: Path, cid: int, classes: dict[str, int]) -> None:
    from PIL import Image

    for name, count in classes.items():
        (root / f"site_{cid}" / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("L", (8, 8), color=i * 20).save(root / f"site_{cid}" / name / f"{i}.png")


# (overrides, the key the error line must name)
VALUE_MISTAKES = [
    (["fl.rounds=0"], "fl.rounds=0 is invalid"),
    (["fl.rounds=abc"], "fl.rounds='abc' is invalid"),
    (["fl.rounds=[1,2]"], "fl.rounds=[1, 2] is invalid"),
    (["fl.clients_per_round=20"], "fl.clients_per_round=20"),
    (["optim.lr=-1"], "optim.lr=-1"),
    (["optim.lr=abc"], "optim.lr='abc'"),
    (["optim.momentum=1.5"], "optim.momentum=1.5"),
    (["train.batch_size=0"], "train.batch_size=0"),
    (["runtime.progress='false'"], "runtime.progress='false' is invalid: must be true or false"),
    (["data=mnist", "data.download='no'"], "data.download='no'"),
    (["runtime.timeout_s=-1"], "runtime.timeout_s=-1"),
    (["runtime.backend=mpi"], "runtime.backend='mpi'"),
    (["seed=-1"], "seed=-1"),
    (["fl.holdout_fraction=1.0"], "fl.holdout_fraction=1.0"),
    (["fl.dropout_rate=2"], "fl.dropout_rate=2"),
    (["partition=dirichlet", "partition.alpha=0"], "partition.alpha=0"),
    (["fl.min_client_samples=0"], "fl.min_client_samples=0"),
    # components built from a _target_
    (["strategy.server_lr=abc"], "strategy.server_lr='abc'"),
    (["strategy.server_lr=-1"], "strategy.server_lr=-1"),
    (["strategy=fedprox", "strategy.mu=abc"], "strategy.mu='abc'"),
    (["+strategy.foo=1"], "strategy.foo=1 is invalid: FedAvg takes no such argument (it takes server_lr)"),
    (["strategy._target_=fl.nope.Strategy"], "strategy._target_='fl.nope.Strategy' is invalid: cannot be imported"),
    (["strategy._target_=collections.OrderedDict"], "strategy._target_='collections.OrderedDict' is invalid: must name"),
    (["optim._target_=torch.optim.Nope"], "optim._target_='torch.optim.Nope' is invalid: cannot be imported"),
    (["optim=adam", "optim.betas=abc"], "optim.betas='abc'"),
    (["strategy.transport=ring"], "strategy.transport='ring'"),
    (["model._target_=my_lab.nets.Nope"], "model._target_='my_lab.nets.Nope' is invalid: cannot be imported"),
    (["model._target_=collections.OrderedDict"], "model._target_='collections.OrderedDict' is invalid: must build a "
                                                  "torch.nn.Module"),
    (["+model.width=3"], "model.width=3 is invalid: mlp takes no such argument (it takes input_shape, num_classes, "
                         "hidden)"),
    # combinations
    (["strategy=median", "strategy.transport=allreduce"], "strategy.transport='allreduce'"),
    (["strategy=median", "secagg=masking"], "secagg='masking' is invalid"),
    (["strategy=median", "privacy=dp_fedavg"], "privacy='dp_fedavg' is invalid"),
    (["strategy=scaffold", "optim.momentum=0.9"], "optim="),
    (["privacy=dp_fedavg", "privacy.target_epsilon=0.1", "fl.num_clients=10", "fl.clients_per_round=2"],
     "privacy.target_epsilon=0.1"),
    (["secagg=masking", "secagg.frac_bits=100"], "secagg.frac_bits=100"),
    # Hydra's grammar and composition
    (["fl.round=3"], "fl.round=3 is invalid: no such key; did you mean fl.rounds?"),
    (["+fl.round=3"], "fl.round=3 is invalid: no such key; did you mean fl.rounds?"),
    (["+seed=3"], "seed=3 is invalid: already exists: set it without '+'"),
    (["~fl.rounds"], "fl.rounds=None is invalid: cannot be removed"),
    (["~fl.nokey"], "fl.nokey=None is invalid: no such key to delete"),
    (["data=imagenet"], "data='imagenet' is invalid: must be one of cifar10, csv, custom, digits"),
    (["experiment=nope"], "experiment='nope' is invalid: must be one of bench"),
    (["data=folder"], "data.root='???' is invalid: must be set"),
    (["data.root=/x/{client}"], "data.root='/x/{client}' is invalid: is not valid override syntax"),
    (["fl.rounds"], "fl.rounds='' is invalid: is not valid override syntax"),
    (["strategy=fedavg,fedprox"], "strategy='fedavg,fedprox' is invalid: is a list of values: add -m"),
]


@pytest.mark.parametrize("overrides, named", VALUE_MISTAKES, ids=[" ".join(o) for o, _ in VALUE_MISTAKES])
def test_a_mistake_is_one_line_naming_the_key_and_nothing_is_made(overrides, named, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, errors, err = _cli(capsys, *TINY, *overrides, f"hydra.run.dir={run_dir}")
    assert code == 2, err
    assert len(errors) == 1, err
    assert named in errors[0], errors[0]
    assert "Traceback" not in err and "+fl.round=" not in err and "HYDRA_FULL_ERROR" not in err
    assert not run_dir.exists(), "a refused job makes no run directory"


def test_mistakes_in_the_data(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    sites = tmp_path / "sites"
    _site(sites, 0, {"a": 3, "b": 3})
    _site(sites, 1, {"a": 3})
    (sites / "site_1" / "b").mkdir()  # a class folder without images
    cases = [
        (["data=mnist", f"data.root={empty}", "data.download=false"], "data.root='", "must contain MNIST/raw/"),
        (["data=folder", f"data.root='{sites}/site_{{client}}'", "data.channels=1", "fl.num_clients=2"], "data.root='",
         "client 1: class folder 'b' holds no images"),
        (["data=folder", f"data.root='{tmp_path}/nowhere_{{client}}'"], "data.root='", "must be a folder"),
        (["fl.num_clients=5000"], "fl.num_clients=5000 is invalid", "the dataset has 1438 training samples"),
    ]
    for overrides, named, detail in cases:
        run_dir = tmp_path / "run"
        code, errors, err = _cli(capsys, "fl.rounds=1", "runtime.progress=false", *overrides, f"hydra.run.dir={run_dir}")
        assert code == 2 and len(errors) == 1, err
        assert named in errors[0] and detail in errors[0], errors[0]
        assert "Traceback" not in err
        assert not run_dir.exists(), f"{overrides}: a job that fails before its first round leaves no directory"


def test_a_model_the_privacy_setting_cannot_train_fails_before_the_first_round(tmp_path, capsys):
    run_dir = tmp_path / "outputs" / "day" / "run"
    code, errors, err = _cli(capsys, *TINY, "privacy=dp_sgd_local", "model=cnn_bn", f"hydra.run.dir={run_dir}")
    assert code == 2 and len(errors) == 1 and "model='cnn_bn' is invalid: privacy=dp_sgd_local" in errors[0], err
    assert not (tmp_path / "outputs" / "day").exists(), "no empty outputs/<date>/ litter either"
    chosen = tmp_path / "my_runs"
    chosen.mkdir()
    code, _, _ = _cli(capsys, *TINY, "privacy=dp_sgd_local", "model=cnn_bn", f"hydra.run.dir={chosen / 'run'}")
    assert code == 2 and chosen.is_dir() and not (chosen / "run").exists(), "a folder the user chose stays"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed 2-round run with checkpoints, made by the real command line."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main([*TINY, "fl.checkpoint_every=1", f"hydra.run.dir={run_dir}"], config_dir=str(REPO / "conf")) == 0
    return run_dir


RUN_DIR_MISTAKES = [
    (["optim.lr=0.3"], "optim.lr=0.3 is invalid: the checkpoint in"),
    (["fl.rounds=1"], "fl.rounds=1 is invalid: must be >= 2"),
    (["fl.rounds=abc"], "fl.rounds='abc' is invalid"),
    (["model=cnn_padded"], "model._target_='fl.models.cnn_padded' is invalid: the checkpoint in"),
    (["fl.num_clients=3"], "fl.num_clients=3 is invalid: the checkpoint in"),
    (["seed=1"], "seed=1 is invalid: the checkpoint in"),
    (["strategy=fedprox"], "strategy._target_='fl.strategies.fedprox.FedProx' is invalid: the checkpoint in"),
]


@pytest.mark.parametrize("overrides, named", RUN_DIR_MISTAKES, ids=[" ".join(o) for o, _ in RUN_DIR_MISTAKES])
def test_a_refused_resume_leaves_every_file_byte_identical(overrides, named, finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = _hashes(run_dir)
    code, errors, err = _cli(capsys, *TINY, "fl.checkpoint_every=1", *overrides, f"hydra.run.dir={run_dir}")
    assert code == 2 and len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err
    assert _hashes(run_dir) == before


def test_a_finished_run_run_again_says_so_and_touches_nothing(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = _hashes(run_dir)
    code, errors, err = _cli(capsys, *TINY, "fl.checkpoint_every=1", f"hydra.run.dir={run_dir}")
    assert code == 0 and not errors, err
    assert "is already complete (2 rounds" in err and "test_accuracy=" in err
    assert _hashes(run_dir) == before
    assert json.loads((run_dir / "run.json").read_text())["final"]["test_accuracy"] > 0


def test_raising_the_rounds_continues_a_finished_run(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    code, _, err = _cli(capsys, *TINY, "fl.checkpoint_every=1", "fl.rounds=3", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed_from_round"] == 2 and info["rounds_run"] == 1


def test_unreadable_checkpoints_are_one_line_and_nothing_changes(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    for ckpt in (run_dir / "checkpoints").glob("*.pt"):
        ckpt.write_bytes(b"garbage")
    before = _hashes(run_dir)
    code, errors, err = _cli(capsys, *TINY, "fl.checkpoint_every=1", f"hydra.run.dir={run_dir}")
    assert code == 2 and len(errors) == 1, err
    assert "hydra.run.dir=" in errors[0] and "none is readable" in errors[0] and "Traceback" not in err
    assert _hashes(run_dir) == before


def test_a_completed_run_without_checkpoints_is_not_overwritten(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main([*TINY, "fl.checkpoint_every=0", f"hydra.run.dir={run_dir}"], config_dir=str(REPO / "conf")) == 0
    capsys.readouterr()
    before = _hashes(run_dir)
    code, errors, err = _cli(capsys, *TINY, "fl.checkpoint_every=0", "fl.rounds=4", f"hydra.run.dir={run_dir}")
    assert code == 2 and len(errors) == 1 and "fl.rounds=4 is invalid: the run in" in errors[0], err
    assert "kept no checkpoint" in errors[0]
    assert _hashes(run_dir) == before
    code, errors, err = _cli(capsys, *TINY, "fl.checkpoint_every=0", f"hydra.run.dir={run_dir}")
    assert code == 0 and "already complete" in err and _hashes(run_dir) == before


def test_a_directory_of_other_files_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("my own notes\n")
    before = _hashes(run_dir)
    code, errors, err = _cli(capsys, *TINY, f"hydra.run.dir={run_dir}")
    assert code == 2 and len(errors) == 1 and "hydra.run.dir=" in errors[0] and "notes.txt" in errors[0], err
    assert _hashes(run_dir) == before and sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


def test_a_sweep_reports_every_bad_point_before_running_any(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    code, errors, err = _cli(capsys, "-m", "fl.rounds=1", "fl.num_clients=2", "runtime.progress=false",
                             "strategy=fedavg,fedprox", "optim.lr=0.1,-1,abc", f"hydra.sweep.dir={sweep}")
    assert code == 2, err
    assert len(errors) == 5, err  # 4 bad points of 6, then the count
    assert sum("optim.lr=-1 is invalid" in e for e in errors) == 2
    assert sum("optim.lr='abc' is invalid" in e for e in errors) == 2
    assert "4 of 6 sweep points are invalid; none was run" in errors[-1]
    assert not sweep.exists()


def test_non_finite_metrics_are_json_null(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = _cli(capsys, *TINY, "optim.lr=1e12", f"hydra.run.dir={run_dir}")
    assert code == 0, err

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    info = json.loads((run_dir / "run.json").read_text(), parse_constant=refuse)
    assert info["final"]["train_loss"] is None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)


def test_the_round_line_shows_training_and_evaluation_time_apart(tmp_path, capsys):
    code, _, err = _cli(capsys, *TINY, "fl.eval_every=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0
    lines = [line for line in err.splitlines() if "round 1/2" in line or "round 2/2" in line]
    assert "train_s=" in lines[0] and "eval_s=" not in lines[0], "round 1 was not evaluated"
    assert "train_s=" in lines[1] and "eval_s=" in lines[1] and " s=" not in lines[1]


def test_the_real_command_line_prints_one_line_for_a_hydra_typo(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "fl.roudns=3", f"hydra.run.dir={tmp_path / 'r'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].endswith("fl.roudns=3 is invalid: no such key; did you mean fl.rounds?")
    assert not (tmp_path / "r").exists()


def test_a_traceback_is_there_when_asked_for(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "optim.lr=-1", f"hydra.run.dir={tmp_path / 'r'}"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "FL_TRACEBACK": "1"})
    assert proc.returncode == 2 and "optim.lr=-1 is invalid" in proc.stderr and "Traceback" in proc.stderr


def test_changing_the_world_size_is_refused_and_leaves_the_files(tmp_path, capsys):
    run_dir = tmp_path / "run"
    job = ["fl.rounds=2", "fl.checkpoint_every=1"]
    assert cli.main([*job, "runtime.progress=false", f"hydra.run.dir={run_dir}"], config_dir=str(REPO / "conf")) == 0
    before = _hashes(run_dir)  # one rank: fl.num_clients defaulted to 1
    with pytest.raises(RuntimeError, match=r"fl.num_clients=2 is invalid: the checkpoint in .* was written with "
                                           r"fl.num_clients=1"):
        fork_ranks(2, run_job, tmp_path, make_cfg(*job, "model=mlp", "fl.local_epochs=2"), run_dir)
    assert _hashes(run_dir) == before
