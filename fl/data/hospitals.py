"""A real, offline, tabular federation: scikit-learn's breast-cancer data as four hospitals' CSV files.

    python -m fl.data.hospitals data/hospitals        # writes site_0.csv .. site_3.csv and test.csv
    torchrun --standalone --nproc_per_node=2 train.py experiment=hospitals

569 patients (Wisconsin diagnostic breast cancer, 30 numeric features, label ``diagnosis``:
malignant or benign). A fifth of them, drawn from the seed, is the central test table. The
others go to four hospitals with a feature skew that also skews the labels, as referral patterns
do: patients are ranked by ``mean radius``, and hospital ``h`` takes most of its patients from
the ``h``-th quarter of that ranking (``skew`` of them; the rest are drawn at random), so the
hospitals differ in tumour size and in their share of malignant cases. Each site also gets a
``referral`` column (text: ``gp``, ``screening``, ``specialist``) whose categories differ by site,
to exercise the categories agreed across sites.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def make(folder: Path, num_sites: int = 4, skew: float = 0.7, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write the site tables and the test table into ``folder``; returns the per-site row counts and
    malignant fractions."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x, y = bunch.data, np.where(bunch.target == 0, "malignant", "benign")
    names = [n.replace(" ", "_") for n in bunch.feature_names]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, rest = order[:n_test], order[n_test:]
    ranked = rest[np.argsort(x[rest, 0], kind="stable")]  # by mean radius
    bands = np.array_split(ranked, num_sites)
    sites: list[list[int]] = [[] for _ in range(num_sites)]
    pool: list[int] = []
    for h, band in enumerate(bands):
        band = rng.permutation(band)
        keep = int(round(skew * len(band)))
        sites[h] += band[:keep].tolist()
        pool += band[keep:].tolist()
    for i, idx in enumerate(rng.permutation(pool)):
        sites[i % num_sites].append(int(idx))
    referrals = [["gp", "screening"], ["gp", "specialist"], ["screening"], ["gp", "screening", "specialist"]]
    folder.mkdir(parents=True, exist_ok=True)
    header = [*names, "referral", "diagnosis"]

    def write(path: Path, rows: list[int], choices: list[str]) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for r in rows:
                w.writerow([*(f"{v:.6g}" for v in x[r]), choices[r % len(choices)], y[r]])

    stats = {}
    for h, rows in enumerate(sites):
        write(folder / f"site_{h}.csv", sorted(rows), referrals[h % len(referrals)])
        stats[h] = {"patients": len(rows), "malignant": float(np.mean(y[rows] == "malignant"))}
    write(folder / "test.csv", sorted(test.tolist()), ["gp", "screening", "specialist"])
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, nargs="?", default=Path("data/hospitals"))
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--skew", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for h, s in make(a.folder, a.sites, a.skew, seed=a.seed).items():
        print(f"{a.folder}/site_{h}.csv: {s['patients']} patients, {s['malignant']:.0%} malignant")
    print(f"{a.folder}/test.csv: the central test table")


if __name__ == "__main__":
    main()
