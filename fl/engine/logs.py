"""Rank-prefixed logging through the standard ``logging`` module.

Rank 0 logs at the configured level; other ranks log warnings and errors only, so a
job's console reads like a single process unless something goes wrong.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "[rank{rank}] %(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(rank: int, level: str = "INFO", log_file: Path | None = None) -> None:
    """(Re)configure the ``fl`` logger for this rank; ``log_file`` also receives the lines."""
    logger = logging.getLogger("fl")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(level if rank == 0 else "WARNING")
    logger.propagate = False
    fmt = logging.Formatter(_FORMAT.format(rank=rank), datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
