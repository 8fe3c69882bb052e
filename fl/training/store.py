"""Per-client state on disk: readable by whichever rank hosts the client this round.

State that lives with a client across rounds (SCAFFOLD's control variate, a personal model,
local BatchNorm statistics) is saved as one file per client and round under
``<run dir>/client_state/<client>/round_<r>.pt``. Nothing is held in memory between
rounds, so 500 clients cost disk, not RAM. With several nodes the run directory must be
on a shared filesystem.

Writes can be handed to a writer thread (``save(..., wait=False)``): error-feedback residuals are
then written while the rank trains and encodes its next clients. :meth:`flush` waits for them;
the transports call it before the round's collective, so no rank can start the next round (and
read a client's file) before every file of this round is complete, and :meth:`load` calls it too.

Crash consistency: a client reads the newest version written *before* the current round.
After resuming from the checkpoint taken when round R was done, round R (0-based) reads
versions < R only, so files a crashed attempt wrote in rounds >= R are never used (and are
rewritten, identically, when those rounds run again).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

_NAME = re.compile(r"^round_(\d{6})\.pt$")


class ClientStore:
    def __init__(self, folder: Path, checkpoint_every: int, keep_checkpoints: int) -> None:
        self.folder = folder
        # versions that a kept checkpoint may still need when a run resumes from it
        self.horizon = (keep_checkpoints + 1) * checkpoint_every
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def _versions(self, cid: int) -> list[int]:
        folder = self.folder / str(cid)
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))

    def _path(self, cid: int, round_idx: int) -> Path:
        return self.folder / str(cid) / f"round_{round_idx:06d}.pt"

    def load(self, cid: int, before_round: int, device: torch.device) -> dict | None:
        """The client's newest state written in a round ``< before_round``, or ``None``."""
        self.flush()
        older = [v for v in self._versions(cid) if v < before_round]
        if not older:
            return None
        return torch.load(self._path(cid, older[-1]), map_location=device, weights_only=True)

    def save(self, cid: int, round_idx: int, state: dict, wait: bool = True) -> None:
        """Write the client's state produced in ``round_idx`` atomically; prune old versions.
        ``wait=False``: on the writer thread (the caller must not change ``state``'s tensors)."""
        state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        if wait:
            return self._write(cid, round_idx, state)
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="fl-client-store")
        self._pending.append(self._writer.submit(self._write, cid, round_idx, state))

    def flush(self) -> None:
        """Wait until every write handed to the writer thread is on disk (re-raises its error)."""
        pending, self._pending = self._pending, []
        for write in pending:
            write.result()

    def _write(self, cid: int, round_idx: int, state: dict) -> None:
        path = self._path(cid, round_idx)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)
        old = [v for v in self._versions(cid) if v < round_idx - self.horizon]
        for v in old[:-1]:  # the newest old version may still be what a kept checkpoint resumes with
            self._path(cid, v).unlink(missing_ok=True)
