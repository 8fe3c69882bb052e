"""Stop cleanly on SIGTERM / SIGUSR1 (SLURM preemption, ``scancel``, a torchrun shutdown).

The handler only sets a flag. The round loop carries each rank's flag in the round's own
collective (no extra message), so all ranks see the same decision after the same round:
finish it, write a checkpoint, and leave with :data:`EXIT_PREEMPTED`. Restarting the job
with the same run directory continues from that checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 143  # 128 + SIGTERM: "terminated", as the shell reports it


class StopRequest:
    """Context manager: while active, SIGTERM and SIGUSR1 set :attr:`requested` instead of killing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.warning("received %s: stopping after the current round with a checkpoint",
                        signal.Signals(signum).name)
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals can only be handled there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
