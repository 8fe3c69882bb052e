"""The per-client state store: its file format, old files, and writes behind the rank's back."""

from __future__ import annotations

import time

import pytest
import torch

import fl.training.store as store_module
from fl.training.store import ClientStore, read_state, write_state

CPU = torch.device("cpu")


def test_a_state_file_gives_back_every_tensor_and_number_as_saved(tmp_path):
    state = {
        "c": torch.randn(3, 5, dtype=torch.float64),
        "half": torch.randn(7).to(torch.bfloat16),
        "steps": torch.tensor(12),
        "empty": torch.empty(0, 4),
        "mask": torch.tensor([True, False, True]),
        "cluster": 3,
        "name": "a",
        "lr": 0.5,
    }
    write_state(tmp_path / "s.bin", state)
    back = read_state(tmp_path / "s.bin")
    assert list(back) == list(state)
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
        else:
            assert back[k] == v, k


def test_a_truncated_or_foreign_file_is_refused_with_its_path(tmp_path):
    path = tmp_path / "s.bin"
    write_state(path, {"c": torch.arange(1000, dtype=torch.float32)})
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated.*'c'"):
        read_state(path)
    torch.save({"c": torch.zeros(3)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="not a client state file"):
        read_state(tmp_path / "other.bin")
    with pytest.raises(TypeError, match="'bad'"):
        write_state(tmp_path / "x.bin", {"bad": [1, 2]})


def test_files_of_earlier_versions_are_read_and_the_newest_version_wins(tmp_path):
    store = ClientStore(tmp_path, checkpoint_every=1, keep_checkpoints=5)
    (tmp_path / "4").mkdir()
    torch.save({"c": torch.full((3,), 1.0)}, tmp_path / "4" / "round_000001.pt")  # an earlier version's file
    assert torch.equal(store.load(4, 2, CPU)["c"], torch.full((3,), 1.0))
    store.save(4, 2, {"c": torch.full((3,), 2.0)})
    assert torch.equal(store.load(4, 2, CPU)["c"], torch.full((3,), 1.0)), "round 2 reads what was written before it"
    assert torch.equal(store.load(4, 3, CPU)["c"], torch.full((3,), 2.0))


def test_load_waits_for_the_clients_own_write_behind(tmp_path, monkeypatch):
    slow = store_module.write_state

    def late(path, state):
        time.sleep(0.3)
        slow(path, state)

    monkeypatch.setattr(store_module, "write_state", late)
    store = ClientStore(tmp_path, checkpoint_every=1, keep_checkpoints=1)
    store.save(7, 0, {"residual": torch.full((10,), 7.0)}, wait=False)
    got = store.load(7, 1, CPU)
    assert got is not None and torch.equal(got["residual"], torch.full((10,), 7.0))
    store.flush()


def test_versions_past_the_horizon_are_written_over_and_read_back_exactly(tmp_path):
    store = ClientStore(tmp_path, checkpoint_every=1, keep_checkpoints=1)  # keeps 2 rounds, then the newest older
    for r in range(9):
        size = 1000 if r < 4 else 10  # later states are shorter than the files they are written over
        store.save(3, r, {"c": torch.full((size,), float(r)), "round": r}, wait=r % 2 == 0)
    store.flush()
    assert sorted(store._files(3)) == [5, 6, 7, 8]
    for r in (6, 7, 8, 9):
        got = store.load(3, r, CPU)
        assert got["round"] == r - 1 and torch.equal(got["c"], torch.full((10,), float(r - 1)))
    fresh = tmp_path / "fresh.bin"
    write_state(fresh, {"c": torch.full((10,), 8.0), "round": 8})
    assert (tmp_path / "3" / "round_000008.bin").stat().st_size == fresh.stat().st_size
    assert not list(tmp_path.glob("3/*.tmp*"))


def _versions(folder, cid):
    return sorted(int(p.name[6:12]) for p in (folder / str(cid)).glob("round_*.bin")) if (folder / str(cid)).is_dir() else []


def test_held_states_are_written_only_by_write_back_and_a_crash_resumes_from_it(tmp_path):
    store = ClientStore(tmp_path, checkpoint_every=2, keep_checkpoints=1, memory_mb=1)
    store.save(3, 0, {"r": torch.full((4,), 1.0)}, wait=False)
    assert _versions(tmp_path, 3) == [], "held in memory: no file"
    got = store.load(3, 1, CPU)["r"]
    assert torch.equal(got, torch.full((4,), 1.0))
    store.save(3, 1, {"r": got.add_(1.0)}, wait=False)  # the loaded state is the caller's to change
    store.write_back()  # a checkpoint after round 1 (0-based): the newest state goes to disk
    assert _versions(tmp_path, 3) == [1]
    store.save(3, 2, {"r": store.load(3, 2, CPU)["r"].add_(1.0)}, wait=False)
    assert _versions(tmp_path, 3) == [1], "between checkpoints nothing is written"
    assert torch.equal(store.load(3, 3, CPU)["r"], torch.full((4,), 3.0)), "the held state of round 2"
    crashed = ClientStore(tmp_path, checkpoint_every=2, keep_checkpoints=1, memory_mb=1)
    assert torch.equal(crashed.load(3, 2, CPU)["r"], torch.full((4,), 2.0)), "resumed at round 2: the written state"
    assert crashed.load(5, 2, CPU) is None


def test_beyond_its_memory_the_store_writes_the_oldest_states_and_reads_them_back(tmp_path):
    store = ClientStore(tmp_path, checkpoint_every=1, keep_checkpoints=1, memory_mb=3 * 4096 / 2 ** 20)  # 3 states
    for cid in range(5):
        store.save(cid, 0, {"r": torch.full((1024,), float(cid))}, wait=False)
    store.flush()
    assert [_versions(tmp_path, cid) for cid in range(5)] == [[0], [0], [], [], []], "the two oldest spilled"
    for cid in range(5):
        assert torch.equal(store.load(cid, 1, CPU)["r"], torch.full((1024,), float(cid)))
    assert store.load(4, 1, CPU) is None, "a held state is handed over once: the next one is saved"


def test_a_held_state_is_not_read_by_its_own_round(tmp_path):
    store = ClientStore(tmp_path, checkpoint_every=1, keep_checkpoints=1, memory_mb=1)
    store.save(2, 0, {"r": torch.zeros(3)})
    store.write_back()
    store.save(2, 1, {"r": torch.ones(3)})
    assert torch.equal(store.load(2, 1, CPU)["r"], torch.zeros(3)), "round 1 reads what was written before it"
    assert torch.equal(store.load(2, 2, CPU)["r"], torch.ones(3)), "and the held state is still there"
