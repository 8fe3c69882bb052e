"""Augmentation: random crops and flips, seeded per (seed, round, client), world-size invariant."""

from __future__ import annotations

import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.data.augment import Augment, augment


def test_crop_moves_the_content_and_flip_mirrors_it():
    x = torch.zeros(64, 1, 6, 6)
    x[:, 0, 2, 3] = 1.0  # one bright pixel per image
    g = torch.Generator().manual_seed(0)
    out = augment(x, Augment(crop=2), g)
    assert out.shape == x.shape
    moved = [tuple(torch.nonzero(o[0]).tolist()[0]) if o.sum() else None for o in out]
    shifts = {(r - 2, c - 3) for r, c in (m for m in moved if m is not None)}
    assert shifts <= {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)} and len(shifts) > 10
    assert all(o.sum() in (0.0, 1.0) for o in out), "a crop moves pixels, it does not blend them"
    flipped = augment(x, Augment(flip=True), torch.Generator().manual_seed(1))
    mirrored = flipped[:, 0, 2, 2] == 1.0  # column 3 of 6 mirrors to column 2
    assert 10 < int(mirrored.sum()) < 54 and torch.equal(flipped[mirrored], x[mirrored].flip(-1))
    assert torch.equal(flipped[~mirrored], x[~mirrored])


def test_the_same_generator_gives_the_same_batch():
    x = torch.randn(8, 3, 5, 5)
    a = augment(x, Augment(2, True), torch.Generator().manual_seed(7))
    b = augment(x, Augment(2, True), torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.equal(a, x)


AUG = ("data=synthetic", "data.shape=[1,8,8]", "data.num_train=400", "fl.num_clients=6", "fl.clients_per_round=4",
       "fl.rounds=4", "fl.eval_every=4", "optim.lr=0.1", "fl.checkpoint_every=2")


def _model(tmp_path, name, ws, *overrides):
    run_dir = tmp_path / name
    summary = fork_ranks(ws, run_job, tmp_path, make_cfg(*AUG, *overrides), run_dir)[0]
    return torch.load(run_dir / "final_model.pt", weights_only=True), summary


def test_augmented_runs_are_world_size_invariant_resume_exactly_and_differ_from_plain(tmp_path):
    on = ("data.augment.crop=2", "data.augment.flip=true")
    one, _ = _model(tmp_path, "ws1", 1, *on)
    two, _ = _model(tmp_path, "ws2", 2, *on)
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=0, atol=1e-5)
    _model(tmp_path, "resumed", 1, *on, "fl.rounds=2")
    resumed, summary = _model(tmp_path, "resumed", 1, *on)
    assert summary["resumed_from_round"] == 2
    assert all(torch.equal(one[k], resumed[k]) for k in one)
    plain, _ = _model(tmp_path, "plain", 1)
    assert not all(torch.equal(one[k], plain[k]) for k in one)


def test_augmenting_feature_vectors_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match=r"data.augment=.* is invalid: crops and flips need images"):
        fork_ranks(1, run_job, tmp_path, make_cfg("data=custom", "data._target_=user_data.blobs", "model=logreg",
                                                  "data.augment.flip=true"), tmp_path / "run")
