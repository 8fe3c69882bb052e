"""Data by ``data._target_``: a user's function (tensors or a Dataset) and any torchvision class."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import REPO
from fl.api import run_job
from fl.errors import ConfigError


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["runtime.progress=false", *overrides])


@pytest.mark.parametrize("as_dataset", [False, True])
def test_a_users_function_returning_feature_vectors_trains(tmp_path, monkeypatch, as_dataset):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    cfg = _compose("data=custom", "data._target_=user_data.blobs",
                   f"+data.as_dataset={as_dataset}", "model=logreg", "fl.num_clients=4", "fl.rounds=5",
                   "optim.lr=0.2")
    result = run_job(cfg, tmp_path / "run")
    assert result.summary["input_shape"] == [6] and result.summary["num_classes"] == 3
    assert result.summary["final"]["test_accuracy"] > 0.9


def test_a_component_that_returns_something_else_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    cfg = _compose("data=custom", "data._target_=user_data.not_data")
    with pytest.raises(ConfigError, match=r"data._target_='user_data.not_data' is invalid: must return \(train, test\)"):
        run_job(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_users_regression_target_trains_and_label_partitions_are_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    task = ["data=custom", "data._target_=user_data.linear", "data.task=regression", "model=logreg", "fl.num_clients=4"]
    result = run_job(_compose(*task, "fl.rounds=10", "optim.lr=0.1"), tmp_path / "run")
    assert result.summary["num_classes"] == 1
    # the noise has variance 0.01 and the target about 5: a fitted linear model reaches the noise floor
    assert result.summary["final"]["test_mse"] < 0.02 and result.summary["final"]["client_mae_mean"] < 0.15
    assert result.model(torch.zeros(2, 5)).shape == (2, 1)
    with pytest.raises(ConfigError, match=r"partition='dirichlet' is invalid: works on class labels, but the data "
                                          r"has a regression target"):
        run_job(_compose(*task, "partition=dirichlet"), tmp_path / "run2")
    with pytest.raises(ConfigError, match=r"labels must be class indices 0..C-1; for real-valued targets set "
                                          r"data.task=regression"):
        run_job(_compose("data=custom", "data._target_=user_data.linear"), tmp_path / "run3")


def test_any_torchvision_dataset_class_by_target(tmp_path, shared_data):
    cfg = _compose("data=torchvision", "data.cls=torchvision.datasets.FashionMNIST", f"data.root={shared_data}",
                   "data.download=true", "fl.num_clients=20", "fl.clients_per_round=4", "fl.local_steps=25",
                   "fl.local_epochs=1", "fl.rounds=4", "fl.eval_every=4", "optim.lr=0.1", "fl.holdout_fraction=0")
    result = run_job(cfg, tmp_path / "run")
    assert result.summary["input_shape"] == [1, 28, 28] and result.summary["num_classes"] == 10
    assert result.summary["final"]["test_accuracy"] > 0.6


def test_the_command_line_passes_plus_keys_to_a_users_data_component(tmp_path, monkeypatch, capsys):
    from fl import cli

    monkeypatch.syspath_prepend(str(REPO / "tests"))
    run = ["data=custom", "data._target_=user_data.blobs", "model=logreg", "fl.rounds=1", "runtime.progress=false"]
    assert cli.main([*run, "+data.n=120", f"hydra.run.dir={tmp_path / 'run'}"], config_dir=str(REPO / "conf")) == 0
    assert cli.main([*run, "+data.m=1", f"hydra.run.dir={tmp_path / 'bad'}"], config_dir=str(REPO / "conf")) == 2
    assert "data.m=1 is invalid: blobs takes no such argument (it takes n, features" in capsys.readouterr().err
