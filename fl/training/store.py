"""Per-client state on disk: readable by whichever rank hosts the client this round.

State that lives with a client across rounds (SCAFFOLD's control variate, a personal model,
local BatchNorm statistics, an error-feedback residual) is saved as one file per client and
round under ``<run dir>/client_state/<client>/round_<r>.bin``. Nothing is held in memory
between rounds, so 500 clients cost disk, not RAM. With several nodes the run directory must
be on a shared filesystem.

A file is a JSON header (each tensor's name, dtype, shape and byte offset) followed by the
tensors' raw bytes: written with plain ``write`` calls, which release the GIL (so the writer
thread really runs beside the rank's training), and read straight into the tensors' memory.
At a million float32 entries that is about half the time of ``torch.save`` and ``torch.load``,
which pickle and zip. Files written as ``round_<r>.pt`` by earlier versions are still read.
A version that no kept checkpoint can need any more is not deleted before the client's next
version is written but renamed to that version's temporary name and written over: its pages
are already in the page cache (on a virtual machine that backs its memory lazily, a newly
allocated page costs several times its copy: 4 MB took about 2.5 ms to write to a new file and
0.7 ms over an old one).

Writes can be handed to a writer thread (``save(..., wait=False)``): error-feedback residuals are
then written while the rank trains and encodes its next clients. :meth:`flush` waits for them;
the transports call it before the round's collective, so no rank can start the next round (and
read a client's file) before every file of this round is complete; :meth:`load` waits for the
client's own pending writes only.

Crash consistency: a client reads the newest version written *before* the current round.
After resuming from the checkpoint taken when round R was done, round R (0-based) reads
versions < R only, so files a crashed attempt wrote in rounds >= R are never used (and are
rewritten, identically, when those rounds run again).

Held in memory (``memory_mb > 0``, for clients that only this rank ever hosts): a saved state
stays in memory, without a file, until :meth:`write_back` writes every state not yet on disk,
which every rank does before a checkpoint is written. Between checkpoints nothing is written or
read, and a checkpoint still finds each client's newest state on disk; a crash loses only
states newer than the last checkpoint, which a resumed run recomputes. States beyond
``memory_mb`` are written and dropped, oldest first.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from fl.runtime import native

_NAME = re.compile(r"^round_(\d{6})\.(bin|pt)$")
_MAGIC = b"flstate1"
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool)}


class ClientStore:
    def __init__(self, folder: Path, checkpoint_every: int, keep_checkpoints: int, memory_mb: float = 0.0) -> None:
        self.folder = folder
        # versions that a kept checkpoint may still need when a run resumes from it
        self.horizon = (keep_checkpoints + 1) * checkpoint_every
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[tuple[int, Future]] = []  # (client, its write on the writer thread)
        self.memory = int(memory_mb * 2 ** 20)  # bytes of states held in memory (0: every save is a file)
        self._held: OrderedDict[int, tuple[int, dict, bool]] = OrderedDict()  # client -> (round, state, on disk)
        self._held_bytes = 0

    def _files(self, cid: int) -> dict[int, Path]:
        """The client's files by the round that wrote them."""
        folder = self.folder / str(cid)
        if not folder.is_dir():
            return {}
        return {int(m.group(1)): p for p in folder.iterdir() if (m := _NAME.match(p.name))}

    def _path(self, cid: int, round_idx: int) -> Path:
        return self.folder / str(cid) / f"round_{round_idx:06d}.bin"

    def load(self, cid: int, before_round: int, device: torch.device) -> dict | None:
        """The client's newest state written in a round ``< before_round``, or ``None`` (after the
        client's own writes on the writer thread are done; other clients' writes go on). A state
        held in memory is handed over, not copied: the caller may change it, and saves the client's
        next state."""
        held = self._release(cid)
        if held is not None:
            if held[0] < before_round:
                return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in held[1].items()}
            self._held[cid] = held  # not older than the round: stays, and the files answer
            self._held_bytes += _nbytes(held[1])
        self._wait_for(cid)
        files = self._files(cid)
        older = [v for v in sorted(files) if v < before_round]
        if not older:
            return None
        path = files[older[-1]]
        if path.suffix == ".pt":
            return torch.load(path, map_location=device, weights_only=True)
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in read_state(path).items()}

    def save(self, cid: int, round_idx: int, state: dict, wait: bool = True) -> None:
        """Write the client's state produced in ``round_idx`` atomically; prune old versions.
        ``wait=False``: on the writer thread (the caller must not change ``state``'s tensors). With
        ``memory_mb``: held in memory instead (module docstring); the caller must not change them either."""
        state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        self._release(cid)  # a newer state replaces a held one
        if self.memory:
            self._held[cid] = (round_idx, state, False)
            self._held_bytes += _nbytes(state)
            while self._held_bytes > self.memory:  # the oldest go to disk and out of memory
                old = next(iter(self._held))
                old_round, old_state, on_disk = self._release(old)  # type: ignore[misc]
                if not on_disk:
                    self._submit(old, old_round, old_state)
            return
        if wait:
            self._wait_for(cid)  # the client's versions are written in order
            return self._write(cid, round_idx, state)
        self._submit(cid, round_idx, state)

    def write_back(self) -> None:
        """Write every state held in memory that is not on disk yet, and wait until every write is
        done: each rank calls it before a checkpoint is written. The states stay in memory. The
        files are shared between ``torch.get_num_threads()`` threads (writes release the GIL)."""
        self.flush()  # writes already handed to the writer thread first: a client's versions are written in order
        dirty = [(cid, round_idx, state) for cid, (round_idx, state, on_disk) in self._held.items() if not on_disk]
        threads = max(1, min(len(dirty), torch.get_num_threads()))
        native.run_shares(self._write_each, [(dirty[t::threads],) for t in range(threads) if dirty[t::threads]])
        for cid, round_idx, state in dirty:
            self._held[cid] = (round_idx, state, True)

    def _write_each(self, entries: list[tuple[int, int, dict]]) -> None:
        for cid, round_idx, state in entries:
            self._write(cid, round_idx, state)

    def _submit(self, cid: int, round_idx: int, state: dict) -> None:
        """Write on the writer thread."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="fl-client-store")
        self._pending.append((cid, self._writer.submit(self._write, cid, round_idx, state)))

    def _release(self, cid: int) -> tuple[int, dict, bool] | None:
        """The client's state held in memory, taken out of it (``None`` if none is)."""
        held = self._held.pop(cid, None)
        if held is not None:
            self._held_bytes -= _nbytes(held[1])
        return held

    def _wait_for(self, cid: int) -> None:
        """Wait for the client's own writes on the writer thread (re-raises their error)."""
        for owner, write in self._pending:
            if owner == cid:
                write.result()

    def flush(self) -> None:
        """Wait until every write handed to the writer thread is on disk (re-raises its error)."""
        pending, self._pending = self._pending, []
        for _, write in pending:
            write.result()

    def _write(self, cid: int, round_idx: int, state: dict) -> None:
        path = self._path(cid, round_idx)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        files = self._files(cid)
        # versions no kept checkpoint can resume with: all older than the horizon but the newest of them
        stale = [files[v] for v in sorted(files) if v < round_idx - self.horizon][:-1]
        if stale and stale[0].suffix == ".bin":  # written over in place: its cached pages are reused
            os.replace(stale.pop(0), tmp)
        write_state(tmp, state)
        os.replace(tmp, path)
        for old in stale:
            old.unlink(missing_ok=True)


def _nbytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))


def write_state(path: Path, state: dict) -> None:
    """``state`` (names to CPU tensors, or to numbers and strings) as a header and raw bytes."""
    header: dict = {"byteorder": sys.byteorder, "entries": {}}
    offset, blobs = 0, []
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            dtype = str(t.dtype).removeprefix("torch.")
            if dtype not in _DTYPES:
                raise TypeError(f"client state {name!r}: dtype {t.dtype} is not one of {', '.join(_DTYPES)}")
            blob = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
            header["entries"][name] = {"tensor": [dtype, list(t.shape), offset]}
            offset += len(blob)
            blobs.append(blob)
        elif value is None or isinstance(value, (bool, int, float, str)):
            header["entries"][name] = {"value": value}
        else:
            raise TypeError(f"client state {name!r}: {type(value).__name__} is neither a tensor nor a number")
    head = json.dumps(header).encode()
    # An existing file is written over and cut to length rather than truncated first: on some
    # virtual machines a page the page cache must newly allocate costs several times the copy.
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(_MAGIC + struct.pack("<Q", len(head)) + head)
        for blob in blobs:
            f.write(blob)
        f.truncate()


def read_state(path: Path) -> dict:
    """What :func:`write_state` wrote, each tensor read straight into its own memory."""
    with open(path, "rb") as f:
        magic, size = f.read(len(_MAGIC)), f.read(8)
        if magic != _MAGIC or len(size) != 8:
            raise ValueError(f"{path} is not a client state file")
        header = json.loads(f.read(struct.unpack("<Q", size)[0]))
        if header["byteorder"] != sys.byteorder:
            raise ValueError(f"{path} was written on a {header['byteorder']}-endian machine")
        start = f.tell()
        out: dict = {}
        for name, entry in header["entries"].items():
            if "value" in entry:
                out[name] = entry["value"]
                continue
            dtype, shape, offset = entry["tensor"]
            t = torch.empty(shape, dtype=_DTYPES[dtype])
            if t.numel():
                f.seek(start + offset)
                view = t.reshape(-1).view(torch.uint8).numpy()
                if f.readinto(view) != len(view):
                    raise ValueError(f"{path} is truncated: client state {name!r} is incomplete")
            out[name] = t
        return out
