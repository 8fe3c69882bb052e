"""Bad input: one clear error naming the key, the value and what is allowed, before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from conftest import REPO, make_cfg
from fl.config.validate import validate
from fl.errors import ConfigError


@pytest.mark.parametrize("overrides, world_size, message", [
    (["fl.num_clients=10", "fl.clients_per_round=20"], 1, r"fl.clients_per_round=20 is invalid: .*<= 10"),
    (["fl.num_clients=2"], 4, r"fl.num_clients=2 is invalid: must be an integer >= 4"),
    (["optim.lr=-0.1"], 1, r"optim.lr=-0.1 is invalid: must be > 0"),
    (["optim=sgd", "optim.momentum=1.5"], 1, r"optim.momentum=1.5 is invalid"),
    (["fl.rounds=0"], 1, r"fl.rounds=0 is invalid: must be an integer >= 1"),
    (["train.batch_size=0"], 1, r"train.batch_size=0 is invalid"),
    (["fl.holdout_fraction=1.0"], 1, r"fl.holdout_fraction=1.0 is invalid: must be a number in \[0, 1\)"),
    (["strategy.transport=ring"], 1, r"strategy.transport='ring' is invalid: must be one of auto, allreduce, gather"),
    (["runtime.backend=mpi"], 1, r"runtime.backend='mpi' is invalid"),
    (["runtime.malloc=jemalloc"], 1, r"runtime.malloc='jemalloc' is invalid: must be one of keep, system"),
    (["partition=dirichlet", "partition.alpha=0"], 1, r"partition.alpha=0 is invalid: must be a number > 0"),
    (["partition=shards", "partition.shards_per_client=0"], 1, r"partition.shards_per_client=0 is invalid"),
    (["data=synthetic", "data.shape=[1,8]"], 1, r"data.shape=\[1, 8\] is invalid"),
    (["fl.eval_clients=0"], 1, r"fl.eval_clients=0 is invalid"),
    (["fl.residual_memory_mb=-1"], 1, r"fl.residual_memory_mb=-1 is invalid: must be a number of megabytes >= 0"),
    (["fl.local_epochs=2", "fl.local_epochs_max=1"], 1, r"fl.local_epochs_max=1 is invalid: must be an integer >= 2"),
    (["data=folder", "data.root='/x/{client}'", "data.channels=2"], 1, r"data.channels=2 is invalid: must be one of 1, 3"),
])
def test_bad_values_name_key_value_and_allowed(overrides, world_size, message):
    from fl.config.build import prepare  # every check that runs before any work, the components' own included

    with pytest.raises(ConfigError, match=message):
        prepare(make_cfg(*overrides), world_size)


def test_data_root_without_files(tmp_path):
    with pytest.raises(ConfigError, match=r"data.root='.*' is invalid: must contain MNIST/raw/"):
        validate(make_cfg("data=mnist", f"data.root={tmp_path}", "data.download=false"), 1)


def test_folder_root_must_name_the_client(tmp_path):
    with pytest.raises(ConfigError, match=r"data.root=.* must contain '\{client\}'"):
        validate(make_cfg("data=folder", f"data.root={tmp_path}"), 1)
    with pytest.raises(ConfigError, match=r"client 0: .*site_0 must be a folder of class folders"):
        validate(make_cfg("data=folder", f"data.root='{tmp_path}/site_{{client}}'"), 1)


def test_unknown_dataset_and_unknown_key_are_refused_by_hydra():
    with pytest.raises(ConfigCompositionException, match="imagenet"):
        make_cfg("data=imagenet")
    with pytest.raises(ConfigCompositionException, match="fl.round"):
        make_cfg("fl.round=3")


def test_nulls_are_filled_from_the_world_size():
    cfg = make_cfg()
    validate(cfg, 3)
    assert cfg.fl.num_clients == 3 and cfg.fl.clients_per_round == 3


def test_cli_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "fl.num_clients=4", "fl.clients_per_round=9",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "fl.clients_per_round=9 is invalid: must be an integer >= 1 and <= 4" in proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()
