"""Metrics sinks: TensorBoard scalars and ``metrics.jsonl`` on rank 0, a no-op elsewhere.

The round loop calls the same methods on every rank; only rank 0's sink writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fl.engine.records import dumps, write_text

# metric key -> TensorBoard tag
TAGS = {
    "train_loss": "train/loss",
    "test_loss": "test/loss",
    "test_accuracy": "test/accuracy",
    "client_accuracy_weighted": "clients/accuracy_weighted",
    "client_accuracy_mean": "clients/accuracy_mean",
    "client_accuracy_p10": "clients/accuracy_p10",
    "client_loss_mean": "clients/loss_mean",
    "test_mse": "test/mse",
    "test_mae": "test/mae",
    "client_mae_weighted": "clients/mae_weighted",
    "client_mae_mean": "clients/mae_mean",
    "client_mae_p90": "clients/mae_p90",
    "client_mse_mean": "clients/mse_mean",
    "personal_mae_weighted": "personalized/mae_weighted",
    "personal_mae_mean": "personalized/mae_mean",
    "personal_mae_p90": "personalized/mae_p90",
    "personal_mse_mean": "personalized/mse_mean",
    "test_roc_auc": "test/roc_auc",
    "test_f1": "test/f1",
    "client_roc_auc_mean": "clients/roc_auc_mean",
    "client_roc_auc_p10": "clients/roc_auc_p10",
    "client_f1_mean": "clients/f1_mean",
    "personal_accuracy_weighted": "personalized/accuracy_weighted",
    "personal_accuracy_mean": "personalized/accuracy_mean",
    "personal_accuracy_p10": "personalized/accuracy_p10",
    "personal_loss_mean": "personalized/loss_mean",
    "comm_bytes": "comm/bytes",
    "uplink_bytes": "comm/uplink_bytes",
    "downlink_bytes": "comm/downlink_bytes",
    "collective_bytes": "comm/collective_bytes",
    "round_s": "time/round_s",
    "sim_time": "time/sim_time",
    "staleness_mean": "async/staleness_mean",
    "staleness_max": "async/staleness_max",
    "stale_dropped": "async/stale_dropped",
    "eval_s": "time/eval_s",
    "clients": "round/clients",
    "dropped": "round/dropped",
    "late": "round/late",
    "rejected": "round/rejected",
    "skipped": "round/skipped",
    "dp_epsilon": "privacy/epsilon",
    "dp_clip_norm": "privacy/clip_norm",
    "dp_local_epsilon": "privacy/local_epsilon_max",
}


class NullSink:
    """What non-zero ranks get: every call does nothing."""

    def log_round(self, round_num: int, metrics: dict[str, float], evaluated: bool) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsSink(NullSink):
    """TensorBoard event files under ``<run dir>/tb`` and one JSON line per evaluated round.

    ``round_num`` is 1-based: the number of completed rounds. On resume, lines for rounds
    after the checkpoint (from a crashed attempt) are dropped, so the file reads as one run.
    """

    def __init__(self, run_dir: Path, resume_round: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl_path = run_dir / "metrics.jsonl"
        _truncate_after(self.jsonl_path, resume_round)
        self.jsonl = self.jsonl_path.open("a")
        self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=resume_round + 1 if resume_round else None)

    def log_round(self, round_num: int, metrics: dict[str, float], evaluated: bool) -> None:
        for key, value in metrics.items():
            if key in TAGS and value is not None and math.isfinite(value):
                self.tb.add_scalar(TAGS[key], value, round_num)
        if evaluated:
            self.jsonl.write(dumps({"round": round_num, **metrics}) + "\n")  # NaN -> null
            self.jsonl.flush()
            self.tb.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.tb.close()


def _truncate_after(path: Path, round_num: int) -> None:
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip()
            and json.loads(line)["round"] <= round_num]
    write_text(path, "".join(line + "\n" for line in keep))
