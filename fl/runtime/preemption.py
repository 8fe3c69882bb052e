"""Stop cleanly on SIGTERM / SIGUSR1 (SLURM preemption, ``scancel``, a torchrun shutdown) and
on Ctrl-C (SIGINT).

The handler only sets a flag. The round loop carries each rank's flag in the round's own
collective (no extra message), so all ranks see the same decision after the same round:
finish it, write a checkpoint, and leave with :data:`EXIT_PREEMPTED` (SIGTERM, SIGUSR1) or
:data:`EXIT_INTERRUPTED` (SIGINT). Restarting the job with the same run directory continues
from that checkpoint. A second Ctrl-C does not wait for the round: it raises
``KeyboardInterrupt`` at once, and the run resumes from the previous checkpoint.

Under torchrun, Ctrl-C reaches the launcher, which forwards SIGINT to every worker (each in
its own session), so the workers stop the same way.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_PREEMPTED = 143  # 128 + SIGTERM: "terminated", as the shell reports it
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for Ctrl-C


class StopRequest:
    """Context manager: while active, the signals above set :attr:`requested` instead of killing."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: signal.Signals | None = None  # the first one received
        self._previous: dict[int, object] = {}

    @property
    def interrupted(self) -> bool:
        """The stop came from Ctrl-C (status ``interrupted``), not from a scheduler (``preempted``)."""
        return self.signal == signal.SIGINT

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and self.requested:
            log.warning("second Ctrl-C: stopping now, without finishing the round; the run resumes from its "
                        "latest checkpoint")
            raise KeyboardInterrupt
        if not self.requested:
            hint = " (Ctrl-C again to stop at once)" if sig == signal.SIGINT else ""
            log.warning("received %s: stopping after the current round with a checkpoint%s", sig.name, hint)
            self.signal = sig
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
