"""The report tool: its maths on hand-made runs, then a real sweep reported by the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO
from fl.report.runs import Run, find_runs, load_run
from fl.report.summary import Spread, cumulative, curve, group, labels, rounds_to, summarize, table


def _run(name: str, seed: int, accs: dict[int, float], overrides: tuple[str, ...] | None = (),
         rounds: int | None = None, bytes_per_round: float = 1e6) -> Run:
    rounds = rounds or max(accs)
    records = tuple({"round": r, "comm_bytes": bytes_per_round, "round_s": 0.5,
                     **({"test_accuracy": accs[r]} if r in accs else {})} for r in range(1, rounds + 1))
    return Run(Path(name), {"status": "completed"}, {"seed": seed, "optim.lr": 0.1},
               None if overrides is None else (*overrides, f"seed={seed}"), records)


def test_cumulative_counts_missing_rounds_at_the_next_record():
    assert cumulative([{"round": 1, "b": 2.0}, {"round": 2, "b": 3.0}, {"round": 3, "b": 1.0}], "b") == [2, 5, 6]
    # a run without TensorBoard: only rounds 2 and 5 recorded, each stands for the rounds before it
    assert cumulative([{"round": 2, "b": 3.0}, {"round": 5, "b": 1.0}], "b") == [6, 9]
    assert cumulative([{"round": 1}, {"round": 2, "b": 1.0}], "b") == [0, 1]


def test_rounds_to_target_is_the_first_round_reaching_it():
    records = [{"round": 2, "a": 0.5}, {"round": 4, "a": 0.91}, {"round": 6, "a": 0.89}, {"round": 8, "a": 0.95}]
    assert rounds_to(records, "a", 0.9) == 4
    assert rounds_to(records, "a", 0.95) == 8
    assert rounds_to(records, "a", 0.96) is None


def test_runs_that_differ_only_by_seed_are_one_row_with_mean_and_spread():
    runs = [_run("a0", 0, {2: 0.5, 4: 0.8}, ("strategy=fedavg",)), _run("a1", 1, {2: 0.6, 4: 0.9}, ("strategy=fedavg",)),
            _run("b0", 0, {2: 0.7, 4: 0.7}, ("strategy=fedprox",))]
    names = labels(runs)
    assert names == ["strategy=fedavg", "strategy=fedavg", "strategy=fedprox"]
    groups = group(runs, names)
    assert [len(g) for g in groups.values()] == [2, 1]
    rows = table(groups, target=0.85).splitlines()
    assert rows[0].startswith("| run | seeds | rounds | final test accuracy | best test accuracy | rounds to 0.85 |")
    fedavg = [c.strip() for c in rows[2].strip("|").split("|")]
    assert fedavg[:6] == ["strategy=fedavg", "2", "4", "0.8500 ± 0.0707", "0.8500 ± 0.0707", "4 (1/2 reached)"]
    assert fedavg[7] == "4.0 ± 0.0" and fedavg[8] == "0.50 ± 0.00"  # MB over 4 rounds; s/round
    assert [c.strip() for c in rows[3].strip("|").split("|")][5] == "not reached"

    xs, mean, low, high = curve(groups["strategy=fedavg"], "test_accuracy", "comm_mb")
    assert xs == [2.0, 4.0] and mean == pytest.approx([0.55, 0.85]) and low == [0.5, 0.8] and high == [0.6, 0.9]


def test_simulated_time_gets_columns_and_a_curve_when_runs_record_it():
    fast, slow = (_run(n, 0, {1: 0.5, 2: 0.9, 3: 0.95}, (f"scheduler={n}",)) for n in ("fedbuff", "sync"))
    fast = Run(fast.path, fast.info, fast.config, fast.settings,
               tuple({**r, "sim_time": 10.0 * r["round"]} for r in fast.records))
    slow = Run(slow.path, slow.info, slow.config, slow.settings,
               tuple({**r, "sim_time": 100.0 * r["round"]} for r in slow.records))
    rows = table(group([fast, slow], labels([fast, slow])), target=0.9).splitlines()
    assert rows[0].endswith("| sim time | sim time to 0.9 |")
    assert [c.strip() for c in rows[2].strip("|").split("|")][-2:] == ["30", "20"]
    assert [c.strip() for c in rows[3].strip("|").split("|")][-2:] == ["300", "200"]
    assert curve([fast], "test_accuracy", "sim_time")[0] == [10.0, 20.0, 30.0]
    assert "sim time" not in table({"a": [_run("a", 0, {1: 0.5})]}).splitlines()[0], "old runs: no empty columns"


def test_a_sweep_over_seeds_only_is_one_row_named_by_its_overrides():
    runs = [_run(f"{s}", s, {1: 0.5 + s / 10}, ("experiment=compare/fedavg",)) for s in range(3)]
    assert labels(runs) == ["experiment=compare/fedavg"] * 3
    assert [len(g) for g in group(runs, labels(runs)).values()] == [3]


def test_labels_fall_back_to_differing_config_and_name_chosen_keys():
    a, b = _run("x", 0, {1: 0.5}, None), _run("y", 1, {1: 0.5}, None)
    b = Run(b.path, b.info, {**b.config, "optim.lr": 0.3, "strategy._target_": "fl.strategies.fedopt.FedAdam"},
            None, b.records)
    assert labels([a, b]) == ["optim.lr=0.1 strategy._target_=None", "optim.lr=0.3 strategy._target_=FedAdam"]
    assert labels([a, b], ["optim.lr"]) == ["optim.lr=0.1", "optim.lr=0.3"]
    with pytest.raises(ValueError, match="--label='optim.momentum'"):
        labels([a, b], ["optim.momentum"])
    assert Spread.of([None, None]) is None and Spread.of([2.0]).show(2) == "2.00"


def test_an_unrecorded_metric_is_refused_by_name():
    with pytest.raises(ValueError, match=r"--metric='test_mae'.*recorded: comm_bytes, round_s, test_accuracy"):
        summarize(_run("a", 0, {1: 0.5}), "test_mae")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real Hydra sweep: FedAvg and FedProx, two seeds each, 3 rounds evaluated at 2 and 3."""
    root = tmp_path_factory.mktemp("sweep")
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "fl.num_clients=4", "fl.clients_per_round=2", "fl.rounds=3",
           "fl.eval_every=2", "fl.local_epochs=1", "runtime.progress=false", "seed=0,1", "strategy=fedavg,fedprox",
           f"hydra.sweep.dir={root / 'multirun'}"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "multirun"


def _report(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fl.report", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def _rows(report_md: Path) -> dict[str, list[str]]:
    lines = [line for line in report_md.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}


def _tb_bytes(run_dir: Path) -> float:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return sum(e.value for e in events.Scalars("comm/bytes"))


def test_report_of_a_real_sweep_matches_what_the_runs_recorded(sweep, tmp_path):
    run_dirs = find_runs([sweep])
    assert len(run_dirs) == 4
    proc = _report(sweep, "--out", tmp_path / "rep", "--target", "0.3")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path / "rep" / "report.md")
    assert set(rows) == {"strategy=fedavg", "strategy=fedprox"}
    for name, cells in rows.items():
        dirs = [d for d in run_dirs if f"- {name}" in (d / ".hydra" / "overrides.yaml").read_text()]
        finals = [json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])["test_accuracy"] for d in dirs]
        assert len(dirs) == 2 and cells[1] == "2" and cells[2] == "3"
        assert float(cells[3].split(" ± ")[0]) == pytest.approx(sum(finals) / 2, abs=6e-5)
        # every round's bytes, unevaluated round 1 included, as TensorBoard recorded them
        assert float(cells[7].split(" ± ")[0]) == pytest.approx(sum(map(_tb_bytes, dirs)) / 2 / 1e6, abs=0.06)
    png = tmp_path / "rep" / "test_accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, channels = matplotlib.image.imread(png).shape
    assert height > 200 and width > 600 and channels in (3, 4)
    assert "![test_accuracy](test_accuracy.png)" in (tmp_path / "rep" / "report.md").read_text()


def test_a_run_without_tensorboard_still_reports(sweep, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(find_runs([sweep])[0], old)
    full = load_run(old)
    shutil.rmtree(old / "tb")
    bare = load_run(old)
    assert [r["round"] for r in bare.records] == [2, 3]  # what metrics.jsonl holds
    # equal clients per round: round 1's bytes are counted at round 2's value, exactly
    assert summarize(bare).total_mb == pytest.approx(summarize(full).total_mb, rel=1e-6)
    assert summarize(bare).final == summarize(full).final
    assert _report(old, "--out", tmp_path / "rep", "--no-plot").returncode == 0


def test_bad_input_is_one_clear_error(tmp_path):
    proc = _report(tmp_path / "nowhere", "--out", tmp_path / "rep")
    assert proc.returncode == 2 and "nowhere: no such file or directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = _report(tmp_path / "empty", "--out", tmp_path / "rep")
    assert proc.returncode == 2 and "holds no run" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "rep").exists()
