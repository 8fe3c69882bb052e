"""Reports over finished runs: a Markdown table and accuracy curves (``python -m fl.report``).

Reads only what every run already writes (``run.json``, ``metrics.jsonl``, ``.hydra/`` and the
TensorBoard file), so it works on runs made before it existed:

- :mod:`fl.report.runs` finds and loads run directories;
- :mod:`fl.report.summary` is the maths: per-run numbers, seeds grouped, the table;
- :mod:`fl.report.plots` draws the curves with matplotlib (the ``plots`` extra).
"""
