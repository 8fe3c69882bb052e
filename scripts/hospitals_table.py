"""Four hospitals, federated vs central: per-site accuracy and ROC-AUC on each site's held-out patients.

Writes the hospitals' tables (``python -m fl.data.hospitals``), runs ``experiment=hospitals``
(FedAvg, logistic regression, 30 rounds of one local epoch, one process), then trains the same
model centrally: the same optimizer, batch size and number of epochs on the pooled training rows
of all four sites (which a real federation could not do). Both are evaluated on every site's own
held-out split and on the central test table, with the same encoding and scaling.

    python scripts/hospitals_table.py [--folder data/hospitals] [--rounds 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fl.api import run_job  # noqa: E402
from fl.engine.binary_metrics import positive_scores, roc_auc_f1  # noqa: E402
from fl.runtime.comm import Comm  # noqa: E402
from fl.data import tabular  # noqa: E402
from fl.data.datasets import TensorData  # noqa: E402
from fl.data.hospitals import make  # noqa: E402
from fl.data.partition import holdout_split  # noqa: E402
from fl.models import build_model  # noqa: E402
from fl.runtime.seeding import derive_seed  # noqa: E402


def _metrics(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        acc = float((model.eval()(x).argmax(1) == y).double().mean())
    return acc, roc_auc_f1(positive_scores(model, TensorData(x, y), None, 1024), y)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=None, help="where to write the tables (default: a temp dir)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    folder = a.folder or Path(tempfile.mkdtemp()) / "hospitals"
    stats = make(folder, seed=a.seed)
    root, test_root = str(folder / "site_{client}.csv"), str(folder / "test.csv")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "experiment=hospitals", f"data.root='{root}'", f"data.test_root={test_root}", f"fl.rounds={a.rounds}",
            f"seed={a.seed}", "runtime.progress=false", "runtime.log_level=WARNING", "fl.checkpoint_every=0"])
    fed = run_job(cfg, folder / "run")

    # The same encoding and scaling as the federation (world size 1: the same sums), and its splits.
    n_sites, fraction = int(cfg.fl.num_clients), float(cfg.fl.holdout_fraction)

    def train_rows(cid: int, n: int) -> torch.Tensor:
        return holdout_split(torch.arange(n), fraction, derive_seed(a.seed, "holdout", cid))[0]

    sites, schema, sums = tabular.load_sites(Comm(0, 1, torch.device("cpu")), root, list(range(n_sites)),
                                             "diagnosis", None, [], train_rows)
    splits = {c: holdout_split(torch.arange(len(d)), fraction, derive_seed(a.seed, "holdout", c))
              for c, d in sites.items()}
    test_table = tabular.encode(tabular.read_table(Path(test_root)), "diagnosis", schema, key="data.test_root")
    test_x = tabular.standardise(test_table.x, len(schema.numeric), sums)

    torch.manual_seed(a.seed)
    central = build_model(cfg.model, (schema.width,), len(schema.classes))
    opt = torch.optim.SGD(central.parameters(), lr=float(cfg.optim.lr))
    x = torch.cat([sites[c].x[splits[c][0]] for c in sites])
    y = torch.cat([sites[c].y[splits[c][0]] for c in sites])
    g = torch.Generator().manual_seed(a.seed)
    for _ in range(a.rounds * int(cfg.fl.local_epochs)):
        for rows in torch.randperm(len(y), generator=g).split(int(cfg.train.batch_size)):
            opt.zero_grad()
            F.cross_entropy(central.train()(x[rows]), y[rows]).backward()
            opt.step()

    print(f"Breast cancer (569 patients, {len(schema.numeric)} numeric features + referral), 4 hospitals, "
          f"logistic regression, {a.rounds} rounds / epochs, seed {a.seed}; held-out fraction {fraction}.\n")
    print("| data | patients (malignant) | federated accuracy | federated ROC-AUC | central accuracy | central ROC-AUC |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for c in sites:
        hx, hy = sites[c].x[splits[c][1]], sites[c].y[splits[c][1]]
        fa, fr = _metrics(fed.model, hx, hy)
        ca, cr = _metrics(central, hx, hy)
        print(f"| hospital {c} held-out ({len(hy)}) | {stats[c]['patients']} ({stats[c]['malignant']:.0%}) | "
              f"{fa:.3f} | {fr:.3f} | {ca:.3f} | {cr:.3f} |")
    fa, fr = _metrics(fed.model, test_x, test_table.y)
    ca, cr = _metrics(central, test_x, test_table.y)
    print(f"| central test table ({len(test_table.y)}) | | {fa:.3f} | {fr:.3f} | {ca:.3f} | {cr:.3f} |")


if __name__ == "__main__":
    main()
