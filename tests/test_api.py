"""The Python API: compose with Hydra's compose API, run in-process, get the summary and the model."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import REPO
from fl.api import run_job
from fl.errors import ConfigError


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_run_job_returns_the_summary_and_the_final_model(tmp_path):
    cfg = _compose("fl.rounds=3", "fl.num_clients=3", "runtime.progress=false")
    result = run_job(cfg, tmp_path / "run")
    assert result.summary["status"] == "completed" and result.summary["rounds_run"] == 3
    assert result.summary["final"]["test_accuracy"] > 0.5
    saved = torch.load(tmp_path / "run" / "final_model.pt", weights_only=True)
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, saved[k])
    x = torch.zeros(4, *result.summary["input_shape"])
    assert result.model(x).shape == (4, result.summary["num_classes"])
    assert cfg.fl.num_clients == 3 and cfg.fl.clients_per_round is None, "the caller's config is not modified"
    again = run_job(cfg, tmp_path / "run")
    assert again.summary.get("already_complete") and again.summary["final"] == result.summary["final"]


def test_run_job_refuses_a_bad_config_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"fl.rounds=0 is invalid"):
        run_job(_compose("fl.rounds=0"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
