"""data.stream: a Dataset read lazily by a DataLoader gives the in-memory path's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.data import ondisk
from fl.data.stream import StreamData, batches


def _write(tmp_path):
    """480 8x8 uint8 images in 3 learnable classes (mirror-symmetric, so flips keep the class), on disk
    (and 120 test images)."""
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, size=(3, 1, 8, 8))
    centres = (centres + centres[..., ::-1]) // 2
    for name, n in (("train", 480), ("test", 120)):
        y = rng.integers(0, 3, size=n)
        x = np.clip(centres[y] + rng.normal(0, 40, size=(n, 1, 8, 8)), 0, 255).astype(np.uint8)
        ondisk.write(tmp_path / name, x, y)
    return tmp_path / "train", tmp_path / "test"


def test_batches_of_a_stream_are_the_rows_asked_for_in_order(tmp_path):
    train, _ = _write(tmp_path)
    ds = ondisk.RawSamples(train)
    stream = StreamData(ds, torch.as_tensor(ds.targets), workers=2, prefetch=2)
    rows = [torch.tensor([5, 1, 9]), torch.tensor([], dtype=torch.int64), torch.tensor([300, 0])]
    got = list(batches(stream, rows, torch.device("cpu")))
    assert got[1][1] is None and [len(r) for r, _, _ in got] == [3, 0, 2]
    for r, xb, yb in (g for g in got if g[1] is not None):
        assert torch.equal(xb, torch.stack([ds[int(i)][0] for i in r]))
        assert yb.tolist() == [int(ds.targets[int(i)]) for i in r]


def _model(tmp_path, name, ws, *overrides):
    run_dir = tmp_path / name
    summary = fork_ranks(ws, run_job, tmp_path, make_cfg(*overrides), run_dir)[0]
    return torch.load(run_dir / "final_model.pt", weights_only=True), summary


def test_the_streamed_model_equals_the_in_memory_one_at_any_world_size_and_resumes_exactly(tmp_path):
    train, test = _write(tmp_path)
    job = ("data=custom", "data._target_=fl.data.ondisk.load", f"+data.root={train}", f"+data.test_root={test}",
           "model=mlp", "fl.num_clients=6", "fl.clients_per_round=4", "fl.rounds=4", "fl.eval_every=2",
           "optim.lr=0.3", "fl.local_epochs=3", "fl.checkpoint_every=2", "data.augment.flip=true")
    memory, mem_summary = _model(tmp_path, "memory", 1, *job)
    streamed, summary = _model(tmp_path, "stream", 2, *job, "data.stream=true", "data.workers=1")
    for k in memory:
        torch.testing.assert_close(memory[k], streamed[k], rtol=0, atol=1e-5)
    assert summary["final"]["test_accuracy"] == pytest.approx(mem_summary["final"]["test_accuracy"], abs=1e-6)
    assert summary["final"]["test_accuracy"] > 0.8
    _model(tmp_path, "resumed", 1, *job, "data.stream=true", "data.workers=0", "fl.rounds=2")
    resumed, summary = _model(tmp_path, "resumed", 1, *job, "data.stream=true", "data.workers=0")
    assert summary["resumed_from_round"] == 2
    for k in memory:
        torch.testing.assert_close(memory[k], resumed[k], rtol=0, atol=1e-6)


def test_streaming_tensors_is_one_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"data.stream=True is invalid: needs map-style Datasets from "
                                           r"data._target_; the train set is a tuple"):
        fork_ranks(1, run_job, tmp_path, make_cfg("data=custom", "data._target_=user_data.blobs", "model=logreg",
                                                  "data.stream=true"), tmp_path / "run")
