import pytest
import torch

from fl.engine import checkpoint
from fl.errors import ConfigError


def _payload(r):
    return {"round": r, "global": torch.full((4,), float(r)), "strategy": {}, "seed": 0, "fingerprint": {}}


def test_atomic_save_keeps_the_newest(tmp_path):
    for r in range(1, 6):
        checkpoint.save(tmp_path, r, _payload(r), keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["round_000004.pt", "round_000005.pt"]
    assert not list(tmp_path.glob("*.tmp"))
    state = checkpoint.load_latest(tmp_path)
    assert state["round"] == 5 and torch.equal(state["global"], torch.full((4,), 5.0))


def test_truncated_newest_falls_back_to_the_previous(tmp_path, caplog):
    for r in (2, 4):
        checkpoint.save(tmp_path, r, _payload(r), keep=3)
    newest = checkpoint.checkpoint_path(tmp_path, 4)
    newest.write_bytes(newest.read_bytes()[:100])  # a half-written file from a crash
    with caplog.at_level("WARNING", logger="fl"):
        assert checkpoint.load_latest(tmp_path)["round"] == 2
    assert "round_000004.pt is unreadable" in caplog.text


def test_a_flipped_byte_is_detected_and_the_previous_checkpoint_used(tmp_path, caplog):
    for r in (2, 4):
        checkpoint.save(tmp_path, r, _payload(r), keep=3)
    newest = checkpoint.checkpoint_path(tmp_path, 4)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # silent corruption that may still parse
    newest.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="fl"):
        assert checkpoint.load_latest(tmp_path)["round"] == 2
    assert "round_000004.pt is unreadable (its SHA-256 does not match round_000004.pt.sha256)" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "round_000002.pt", "round_000002.pt.sha256", "round_000004.pt", "round_000004.pt.sha256"]


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    checkpoint.checkpoint_path(tmp_path, 1).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="none is readable .*refusing to start over"):
        checkpoint.load_latest(tmp_path)
    assert checkpoint.load_latest(tmp_path / "none") is None
