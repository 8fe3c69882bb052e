"""``python -m fl.report RUN_OR_MULTIRUN_DIR... [--out DIR] [--target 0.99]``

Writes ``<out>/report.md`` (the table, and the figure under it) and ``<out>/<metric>.png`` (or
``--figure``), and prints the table. Runs that differ only by seed are one row: mean ± standard
deviation, and a min-max band on the curves.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fl.report.runs import find_runs, load_run
from fl.report.summary import group, labels, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fl.report", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, help="run directories, or folders holding them (a multirun)")
    p.add_argument("--out", type=Path, default=Path("report"), help="where report.md and the figure go")
    p.add_argument("--metric", default="test_accuracy", help="the metrics.jsonl key to report (default test_accuracy)")
    p.add_argument("--target", type=float, default=None, help="add a 'rounds to TARGET' column")
    p.add_argument("--label", action="append", default=[], metavar="KEY",
                   help="name runs by these config keys (e.g. strategy._target_); default: their differing overrides")
    p.add_argument("--figure", type=Path, default=None, help="where the PNG goes (default <out>/<metric>.png)")
    p.add_argument("--title", default="", help="the figure's title")
    p.add_argument("--log-mb", action="store_true", help="logarithmic MB axis (runs that compress differ 10-100x)")
    p.add_argument("--no-plot", action="store_true", help="the table only (no matplotlib needed)")
    args = p.parse_args(argv)
    try:
        runs = [load_run(path) for path in find_runs(args.paths)]
        empty = [r for r in runs if not r.records]
        for r in empty:
            print(f"fl.report: skipping {r.path}: no round recorded (status: {r.info.get('status')})", file=sys.stderr)
        runs = [r for r in runs if r.records]
        for r in runs:
            if r.info.get("status") != "completed":
                print(f"fl.report: {r.path} is not a completed run (status: {r.info.get('status')}); "
                      f"reporting its {int(r.records[-1]['round'])} recorded rounds", file=sys.stderr)
        if not runs:
            raise ValueError("no run with a recorded round")
        groups = group(runs, labels(runs, args.label))
        text = table(groups, args.metric, args.target)
        args.out.mkdir(parents=True, exist_ok=True)
        figure = args.figure or args.out / f"{args.metric}.png"
        if not args.no_plot:
            from fl.report.plots import plot

            plot(groups, figure, args.metric, args.title, args.log_mb, args.target)
    except ValueError as e:
        print(f"fl.report: error: {e}", file=sys.stderr)
        return 2
    command = "python -m fl.report " + " ".join(sys.argv[1:] if argv is None else argv)
    image = "" if args.no_plot else f"\n![{args.metric}]({os.path.relpath(figure, args.out)})\n"
    (args.out / "report.md").write_text(text + image + f"\nMade by `{command}`.\n")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
