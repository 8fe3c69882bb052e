"""Per-site tables (``data=csv``): each hospital or bank reads its own file; no row leaves it.

``data.root`` contains ``{client}`` (``/data/hospital_{client}.csv``, or ``.parquet``); the rank
that hosts client ``c`` reads only that file. ``data.target`` names the label column (class names, or with
``data.task=regression`` a numeric target such as a risk score); every other column is a feature (or only ``data.features`` when given). Numeric columns are used as they are;
columns with non-numeric values, and those listed in ``data.categorical``, are one-hot encoded.

What the sites agree on, and how, without moving a row:

* the feature columns: every site must have the same ones (else one error naming the site);
* the categories of each categorical column and the label classes: the union of the *names*
  the sites hold, gathered once (one small all-gather of sets of strings), then sorted, so a
  category present at one site only still gets the same one-hot column everywhere;
* feature scaling: each site sums ``[n, sum x, sum x^2]`` over its training rows, one all-reduce
  of those ``1 + 2F`` numbers gives the global mean and standard deviation, and every site
  standardises with them (equal to the pooled data's statistics; no site's rows are sent).

The pure functions here (reading, encoding, sums) never call ``torch.distributed``; the two
collectives go through :class:`fl.runtime.comm.Comm` in :func:`load_sites`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fl.runtime.comm import Comm
from fl.data.datasets import TensorData
from fl.errors import ConfigError


@dataclass(frozen=True)
class Table:
    """One site's table: column names and rows of strings (as read)."""

    path: str
    columns: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        i = self.columns.index(name)
        return [r[i] for r in self.rows]


def site_path(root_template: str, cid: int) -> Path:
    return Path(root_template.format(client=cid))


def read_table(path: Path) -> Table:
    """A CSV (header row first) or Parquet file as strings; raises ConfigError naming ``data.root``."""
    if not path.is_file():
        raise ConfigError("data.root", str(path), "must be a CSV or Parquet file (one per site, {client} in the path)")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("data.root", str(path), "is Parquet, which needs pyarrow: pip install pyarrow") from None
        table = pq.read_table(path)
        cols = table.column_names
        data = [table.column(c).to_pylist() for c in cols]
        rows = [["" if v is None else str(v) for v in row] for row in zip(*data)]
        return Table(str(path), list(cols), rows)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ConfigError("data.root", str(path), "is empty: a header row of column names is needed")
        rows = [r for r in reader if r]
    bad = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if bad is not None:
        raise ConfigError("data.root", str(path), f"row {bad + 2} has {len(rows[bad])} fields, the header {len(header)}")
    return Table(str(path), [h.strip() for h in header], rows)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@dataclass(frozen=True)
class Schema:
    """The agreed encoding: numeric columns, categorical columns with their categories, label classes."""

    numeric: list[str]
    categorical: dict[str, list[str]]
    classes: list[str]

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(c) for c in self.categorical.values())


def local_schema(table: Table, target: str, features: list[str] | None, categorical: list[str],
                 regression: bool = False) -> dict:
    """What this site contributes to the agreement: its feature columns, which of them are not
    numeric, and the category and label *names* it holds (no rows; no labels for a regression target)."""
    if target not in table.columns:
        raise ConfigError("data.target", target, f"is not a column of {table.path} (it has {', '.join(table.columns)})")
    cols = [c for c in (features or table.columns) if c != target]
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ConfigError("data.features", features, f"{table.path} has no column {missing[0]!r}")
    if not table.rows:
        raise ConfigError("data.root", table.path, "has no rows")
    non_numeric = sorted(c for c in cols if c in categorical or not all(_is_number(v) for v in table.column(c)))
    if regression:
        bad = next((v for v in table.column(target) if not _is_number(v)), None)
        if bad is not None:
            raise ConfigError("data.target", target, f"is a regression target (data.task=regression) but {table.path} "
                              f"has the non-numeric value {bad!r} in it")
    return {"path": table.path, "features": cols, "categorical": {c: sorted(set(table.column(c))) for c in non_numeric},
            "labels": [] if regression else sorted(set(table.column(target)))}


def agree(parts: list[dict]) -> Schema:
    """The union of the sites' contributions; every site must have the same feature columns."""
    first = parts[0]
    for p in parts[1:]:
        if p["features"] != first["features"]:
            extra = sorted(set(p["features"]) ^ set(first["features"])) or ["(their order)"]
            raise ConfigError("data.root", p["path"], f"has feature columns that differ from {first['path']}'s: "
                              f"{', '.join(extra)}; every site needs the same columns")
    categorical_cols = sorted({c for p in parts for c in p["categorical"]})
    categories = {c: sorted({v for p in parts for v in p["categorical"].get(c, [])}) for c in categorical_cols}
    for p in parts:  # a column numeric at one site, text at another: its numbers are categories too
        for c in categorical_cols:
            if c not in p["categorical"]:
                raise ConfigError("data.categorical", c, f"is text at some sites but numeric in {p['path']}: list it "
                                  f"in data.categorical to treat it as a category everywhere")
    numeric = [c for c in first["features"] if c not in categories]
    labels = sorted({v for p in parts for v in p["labels"]}, key=lambda v: (not _is_number(v), _num_or(v)))
    return Schema(numeric, categories, labels)


def _num_or(v: str) -> object:
    return float(v) if _is_number(v) else v


def encode(table: Table, target: str, schema: Schema, key: str = "data.root", regression: bool = False) -> TensorData:
    """Features ``[N, width]`` (numeric columns, then one-hot blocks) and label indices ``[N]``
    (``regression``: the target's values, float32).

    ``key`` names the config key in errors (a value the agreed schema does not know)."""
    missing = [c for c in [*schema.numeric, *schema.categorical, target] if c not in table.columns]
    if missing:
        raise ConfigError(key, table.path, f"has no column {missing[0]!r}")
    n = len(table.rows)
    x = torch.zeros(n, schema.width, dtype=torch.float64)
    for j, c in enumerate(schema.numeric):
        values = table.column(c)
        if not all(_is_number(v) for v in values):
            raise ConfigError(key, table.path, f"column {c!r} must be numeric, as at the other sites")
        x[:, j] = torch.tensor([float(v) for v in values], dtype=torch.float64)
    offset = len(schema.numeric)
    for c, cats in schema.categorical.items():
        index = {v: i for i, v in enumerate(cats)}
        values = table.column(c)
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ConfigError(key, table.path, f"column {c!r} has categories no site trains on: {unknown[:3]}")
        x[torch.arange(n), offset + torch.tensor([index[v] for v in values], dtype=torch.int64)] = 1.0
        offset += len(cats)
    labels = table.column(target)
    if regression:
        bad = next((v for v in labels if not _is_number(v)), None)
        if bad is not None:
            raise ConfigError(key, table.path, f"target {target!r} has the non-numeric value {bad!r}")
        return TensorData(x, torch.tensor([float(v) for v in labels], dtype=torch.float32))
    label = {v: i for i, v in enumerate(schema.classes)}
    unknown = sorted(set(labels) - set(label))
    if unknown:
        raise ConfigError(key, table.path, f"target {target!r} has classes no site trains on: {unknown[:3]}")
    return TensorData(x, torch.tensor([label[v] for v in labels], dtype=torch.int64))


def moment_sums(x: torch.Tensor, numeric: int) -> torch.Tensor:
    """``[n, sum x_j, sum x_j^2]`` over the rows of the first ``numeric`` columns (float64)."""
    part = x[:, :numeric].double()
    return torch.cat([torch.tensor([float(len(x))], dtype=torch.float64), part.sum(0), (part ** 2).sum(0)])


def standardise(x: torch.Tensor, numeric: int, sums: torch.Tensor) -> torch.Tensor:
    """Numeric columns scaled with the global mean and std from the summed moments (one-hot kept)."""
    n = sums[0]
    mean = sums[1:1 + numeric] / n
    var = (sums[1 + numeric:] / n - mean ** 2).clamp_min(0)
    std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    out = x.clone()
    out[:, :numeric] = (x[:, :numeric] - mean) / std
    return out.float()


def load_sites(comm: Comm, root: str, clients: list[int], target: str, features: list[str] | None,
               categorical: list[str], train_rows: Callable[[int, int], torch.Tensor] | None = None,
               regression: bool = False) -> tuple[dict[int, TensorData], Schema, torch.Tensor]:
    """Collective. This rank's sites as standardised tensors, the agreed schema and the global moment sums.

    ``train_rows(client, num_rows)``: the row indices that are the client's training data (the
    moments come from those only, so held-out rows do not inform the scaling); all rows when ``None``.
    """
    if "{client}" not in root:
        raise ConfigError("data.root", root, "must contain '{client}', e.g. /data/hospital_{client}.csv")
    tables = {c: read_table(site_path(root, c)) for c in clients}
    mine = [local_schema(t, target, features, categorical, regression) for t in tables.values()]
    parts = [p for rank_parts in comm.all_gather_object(mine) for p in rank_parts]
    schema = agree(parts)
    encoded = {c: encode(t, target, schema, regression=regression) for c, t in tables.items()}
    sums = torch.zeros(1 + 2 * len(schema.numeric), dtype=torch.float64, device=comm.device)
    for c, d in encoded.items():
        rows = d.x if train_rows is None else d.x[train_rows(c, len(d))]
        sums += moment_sums(rows, len(schema.numeric)).to(sums.device)
    comm.all_reduce_sum(sums)
    sums = sums.cpu()
    return {c: TensorData(standardise(d.x, len(schema.numeric), sums), d.y) for c, d in encoded.items()}, schema, sums
