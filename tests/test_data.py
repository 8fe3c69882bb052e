"""Real datasets through torchvision and scikit-learn, and per-site ImageFolder data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fork_ranks, make_cfg, run_job
from fl.data import datasets
from fl.engine.loop import run
from fl.runtime.env import DistEnv


def test_digits_is_the_real_bundled_set():
    train, test, spec = datasets.load_digits(0.2, 0)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert spec.input_shape == (1, 8, 8) and spec.num_classes == 10
    assert torch.bincount(torch.cat([train.y, test.y])).tolist()[:3] == [178, 182, 177]


@pytest.mark.parametrize("name, first_label, counts0", [("mnist", 5, 5923), ("fashion_mnist", 9, 6000)])
def test_torchvision_datasets_load_offline_as_normalised_tensors(shared_data, name, first_label, counts0):
    datasets.prepare(name, str(shared_data), download=True)  # MD5-checked local files, no network
    train, test, spec = datasets.load_torchvision(name, str(shared_data))
    assert (len(train), len(test)) == (60000, 10000) and spec.input_shape == (1, 28, 28)
    assert int(train.y[0]) == first_label and int(torch.bincount(train.y)[0]) == counts0
    assert abs(float(train.x.mean())) < 1e-3 and abs(float(train.x.std()) - 1) < 1e-3


def test_mnist_federated_run(shared_data, tmp_path):
    cfg = make_cfg("data=mnist", f"data.root={shared_data}", "model=logreg", "fl.num_clients=20",
                   "fl.clients_per_round=4", "fl.rounds=2", "fl.local_steps=20", "fl.checkpoint_every=0")
    summary = run(cfg, tmp_path / "run", DistEnv())
    assert summary["final"]["test_accuracy"] > 0.6


def _write_sites(root, num_sites):
    """Site 0 holds every digit class; site 1 only classes 5-9, so class indices must follow names."""
    train, test, _ = datasets.load_digits(0.2, 0)
    raw = lambda x: Image.fromarray(((x[0] * 40 + 128).clamp(0, 255)).to(torch.uint8).numpy(), mode="L")  # noqa: E731
    for site in range(num_sites):
        for i in range(site, len(train), num_sites):
            label = int(train.y[i])
            if site == 1 and label < 5:
                continue
            folder = root / f"site_{site}" / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            raw(train.x[i]).save(folder / f"{i}.png")
    for i in range(len(test)):
        folder = root / "test" / f"digit_{int(test.y[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        raw(test.x[i]).save(folder / f"{i}.png")


def test_folder_sites_train_on_their_own_rank(tmp_path):
    _write_sites(tmp_path, 2)
    job = ("data=folder", f"data.root='{tmp_path}/site_{{client}}'", f"data.test_root={tmp_path}/test",
           "data.image_size=8", "model=cnn_padded", "fl.rounds=10", "fl.local_epochs=2", "optim.lr=0.1",
           "fl.checkpoint_every=0", "fl.eval_every=10")
    summaries = fork_ranks(2, run_job, tmp_path, make_cfg(*job), tmp_path / "run")
    # the same sites decoded lazily, batch by batch (data.stream=true), train the same model
    fork_ranks(2, run_job, tmp_path, make_cfg(*job, "fl.rounds=2", "data.stream=true", "data.workers=1"),
               tmp_path / "streamed")
    fork_ranks(2, run_job, tmp_path, make_cfg(*job, "fl.rounds=2"), tmp_path / "in_memory")
    a, b = (torch.load(tmp_path / r / "final_model.pt", weights_only=True) for r in ("streamed", "in_memory"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    part = json.loads((tmp_path / "run" / "partition.json").read_text())
    assert part["classes"] == [f"digit_{d}" for d in range(10)]
    site1 = np.array(part["clients"]["1"]["label_counts"])
    assert site1[:5].sum() == 0 and site1[5:].min() > 0, "site 1's labels must map to digits 5-9 by name"
    assert np.array(part["clients"]["0"]["label_counts"]).min() > 0
    assert summaries[0]["final"]["test_accuracy"] > 0.5
