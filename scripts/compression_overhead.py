"""What compression costs a CPU round at about one million parameters (README).

Workload: MNIST, 100 clients x 600 images (IID), 10 per round, E=1, B=32, SGD lr 0.05,
`mlp` with hidden layers [1024, 256] (1,068,810 parameters), one process. Every codec runs the
same rounds; codecs are interleaved within each repeat (in reverse order every other repeat),
and the median over repeats of each run's times is compared with no compression's.

    FL_DATA_ROOT=<folder with MNIST/raw> python scripts/compression_overhead.py [--rounds 10] [--repeats 3]
        [--transport-only] [--touch-memory-gb G] [--codecs none topk1%+EF ...] [--checkpoint-every 5]
    python scripts/compression_overhead.py --breakdown    # where the aggregation's time goes

First prints what one round's aggregation costs per codec (10 client vectors of 1,068,810 entries
through the real all-reduce transport, no training; the mean of 20 rounds, four of which end
with a checkpoint's write-back of error-feedback residuals), then the round times (each run: its
wall time after the first round, checkpoints every 5 rounds included, per round; the median of
its rounds' own times, which leave the checkpoints out; and the difference, what checkpoints
cost per round), each the median over repeats, and the aggregation cost each codec adds as a
share of an uncompressed round.

``--touch-memory-gb G`` first writes to G GiB of memory once and frees it. A freshly booted
virtual machine may back a page of its memory only when the page is first touched (and again
after handing cold memory back to its host), which makes a program's first use of new memory
several times slower than later uses: on the machine of
the README, writing a 4 MB file took about 10 ms the first time the kernel needed new pages for
it and 0.9 ms after 12 GiB had been touched once. Error feedback writes a new file per client
and round until the store can write over old versions, so on such a machine the first rounds
measure the machine, not the codec.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compression_table import read, run_row  # noqa: E402

Q = "compression/uplink=quantize"
CODECS = {
    "none": [],
    "fp16": ["compression/uplink=fp16"],
    "4bit": [Q, "compression.uplink.bits=4"],
    "4bit+rotation": [Q, "compression.uplink.bits=4", "compression.uplink.rotate=true"],
    "topk1%+EF": ["compression/uplink=topk", "compression.uplink.fraction=0.01"],
    "randk10%": ["compression/uplink=randk", "compression.uplink.fraction=0.1"],
    "randk10%+8bit": ["compression/uplink=randk", "compression.uplink.fraction=0.1", "compression.uplink.bits=8"],
    "4bit up+down": [Q, "compression.uplink.bits=4", "compression/downlink=quantize", "compression.downlink.bits=4"],
}


def client_deltas(dim: int, clients: int) -> list:
    """``clients`` fixed random updates of ``dim`` entries (float32, about 0.01 each)."""
    import torch

    return [torch.randn(dim, generator=torch.Generator().manual_seed(c)) * 0.01 for c in range(clients)]


def aggregate_round(codec, round_idx: int, deltas: list, store, checkpoint_every: int = 0) -> float:
    """Seconds for one round's aggregation of ``deltas`` on one rank through the all-reduce
    transport (``SumAggregator``: the pipeline, error feedback with ``store``, the shared scale,
    encoding, the sum, decoding the sum and the server's transforms), and, when the round ends
    with a checkpoint (every ``checkpoint_every`` rounds), the residuals' write-back."""
    import time

    import torch

    from fl.compression.uplink import Uplink
    from fl.runtime.comm import Comm
    from fl.strategies import FedAvg
    from fl.transport.plain import SumAggregator
    from fl.types import ClientUpdate

    cpu, dim = torch.device("cpu"), len(deltas[0])
    t0 = time.perf_counter()
    agg = SumAggregator(FedAvg(), Comm(0, 1, cpu), dim, cpu, uplink=Uplink(codec, 0, round_idx, dim, store))
    for c, delta in enumerate(deltas):
        agg.add(ClientUpdate(c, delta, 600, torch.tensor(1.0), 600, 19))
    combined = agg.combine(round_idx)
    agg.pipeline.server(combined.aggregate, combined.counters, round_idx)
    if checkpoint_every and (round_idx + 1) % checkpoint_every == 0 and store is not None and store.memory:
        store.write_back()
    return time.perf_counter() - t0


def transport_costs(dim: int = 1_068_810, clients: int = 10, repeats: int = 20,
                    checkpoint_every: int = 5) -> dict[str, float]:
    """Milliseconds that one round's aggregation costs on one rank, codec by codec: ``clients``
    updates of ``dim`` entries go through the real all-reduce transport (``SumAggregator``: the
    pipeline, error feedback with its residuals stored as a one-rank run stores them, the shared
    scale, encoding, the sum, and decoding the sum), with no training around it; the mean of
    ``repeats`` rounds, every ``checkpoint_every``-th of which also writes the residuals back. The
    difference from ``none`` is what the codec adds to a round, measured without the
    round-to-round noise of training."""
    from fl.compression.codecs import Cast, NoCompression, Quantize, RandK, TopK
    from fl.runtime import allocator
    from fl.training.store import ClientStore

    allocator.configure("keep")  # as a run does (runtime.malloc's default)
    deltas = client_deltas(dim, clients)
    codecs = {"none": NoCompression(), "fp16": Cast("float16"), "4bit": Quantize(4),
              "4bit+rotation": Quantize(4, rotate=True), "topk1%+EF": TopK(0.01), "randk10%": RandK(0.1),
              "randk10%+8bit": RandK(0.1, bits=8)}
    out: dict[str, list[float]] = {name: [] for name in codecs}
    with tempfile.TemporaryDirectory() as d:
        # as a one-process run with the default checkpoints (every 5 rounds, 3 kept) stores them
        store = ClientStore(Path(d), checkpoint_every=checkpoint_every, keep_checkpoints=3, memory_mb=1024)
        # Warm-up passes: the first, and until every client's residual file has a version to write
        # over (the store keeps checkpoint_every * (keep_checkpoints + 1) rounds, then the newest
        # older one): a run's first writes of a client's file cost more than the later ones.
        warm = checkpoint_every * (-(-(1 + store.horizon + 1) // checkpoint_every))
        for r in range(warm + repeats):
            for name, codec in codecs.items():  # interleaved
                seconds = aggregate_round(codec, r, deltas, store, checkpoint_every)
                if r >= warm:
                    out[name].append(seconds)
    costs = {name: statistics.mean(v) * 1000 for name, v in out.items()}
    print(f"| codec | aggregation, ms per round of {clients} clients | added by the codec, ms |")
    print("| --- | --- | --- |")
    for name, ms in costs.items():
        print(f"| {name} | {ms:.1f} | {ms - costs['none']:+.1f} |")
    return costs


def breakdown(dim: int = 1_068_810, clients: int = 10, rounds: int = 45, warm: int = 25,
              checkpoint_every: int = 5) -> None:
    """Where one round's aggregation goes, for 4-bit + rotation and for top-k + error feedback:
    the parts are timed by wrapping the functions that do them (ms per round, mean of the rounds
    after ``warm``, every ``checkpoint_every``-th with the residuals' write-back; a part called
    inside another is counted in both)."""
    import functools
    import time

    from fl.compression import codecs, hadamard, topk
    from fl.runtime import allocator
    from fl.training.store import ClientStore

    allocator.configure("keep")
    spent: dict[str, float] = {}

    def timed(owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
        setattr(owner, name, wrapper)

    parts = [(hadamard, "_blockwise", "Hadamard transforms (all rotations)"), (hadamard, "signs", "random signs"),
             (codecs.Quantize, "add_codes", "codes (drawn, rounded and added up in one pass)"),
             (codecs.Quantize, "local_scale", "shared scale"), (ClientStore, "load", "residuals: loaded"),
             (ClientStore, "save", "residuals: saved"),
             (ClientStore, "write_back", "residuals: written back at checkpoints"),
             (topk, "top_indices", "top-k selection"), (codecs.TopK, "add_decoded", "top-k: added into the sum")]
    for owner, name, label in parts:
        timed(owner, name, label)
    deltas = client_deltas(dim, clients)
    for name, codec in {"4bit+rotation": codecs.Quantize(4, rotate=True), "topk1%+EF": codecs.TopK(0.01)}.items():
        with tempfile.TemporaryDirectory() as d:
            store = ClientStore(Path(d), checkpoint_every=checkpoint_every, keep_checkpoints=3, memory_mb=1024)
            total = 0.0
            for r in range(rounds):
                if r == warm:
                    spent.clear()
                    total = 0.0
                total += aggregate_round(codec, r, deltas, store, checkpoint_every)
        n = rounds - warm
        print(f"{name}: {total / n * 1000:.1f} ms per round of {clients} clients")
        for label, seconds in spent.items():
            print(f"  {label}: {seconds / n * 1000:.1f} ms")
        spent.clear()


def touch_memory(gib: float) -> None:
    """Write to ``gib`` GiB (at most half of the available memory) once, in 256 MiB pieces, and free it."""
    import os

    import numpy as np

    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    size = int(min(gib * 2 ** 30, available / 2))
    pieces = [np.ones(2 ** 25) for _ in range(size // 2 ** 28)]  # 2^25 float64 = 256 MiB each
    print(f"touched {len(pieces) * 256 / 1024:.1f} GiB of memory once", file=sys.stderr)
    del pieces


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--transport-only", action="store_true", help="only the aggregation's cost per round")
    p.add_argument("--breakdown", action="store_true",
                   help="only where the aggregation's time goes, for 4-bit + rotation and top-k + error feedback")
    p.add_argument("--codecs", nargs="+", choices=list(CODECS), default=list(CODECS),
                   help="the codecs of the training runs, beside none (default: all; the aggregation timing has all)")
    p.add_argument("--checkpoint-every", type=int, default=5,
                   help="fl.checkpoint_every of the training runs (default 5, fl's default; 0: none, and no residual files)")
    p.add_argument("--touch-memory-gb", type=float, default=0.0,
                   help="write to this much memory once before measuring (at most half of what is available)")
    args = p.parse_args()
    if args.touch_memory_gb > 0:
        touch_memory(args.touch_memory_gb)
    if args.breakdown:
        return breakdown()
    costs = transport_costs()
    if args.transport_only:
        return
    base = ["data=mnist", "model=mlp", "+model.hidden=[1024,256]", "fl.num_clients=100", "fl.clients_per_round=10",
            "fl.local_epochs=1", "train.batch_size=32", "optim.lr=0.05", f"fl.rounds={args.rounds}",
            f"fl.eval_every={args.rounds}", "fl.holdout_fraction=0", f"fl.checkpoint_every={args.checkpoint_every}"]
    runs = {name: CODECS[name] for name in dict.fromkeys(["none", *args.codecs])}  # none: the reference
    # per run: wall time per round after the first (checkpoints included), its rounds' median, and
    # what the rounds' own times leave out per round (checkpoints: the model, and error feedback's
    # residuals written back)
    times: dict[str, list[float]] = {name: [] for name in runs}
    rounds: dict[str, list[float]] = {name: [] for name in runs}
    outside: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as d:
        for rep in range(args.repeats):
            order = list(runs.items())
            for name, extra in (order if rep % 2 == 0 else order[::-1]):  # drift during a repeat cancels out
                run_dir = run_row(name, base + extra, Path(d))
                records, summary = read(run_dir), json.loads((run_dir / "run.json").read_text())
                # wall time after round 1 (which warms up), checkpoints included: train_s counts them
                later = [r["round_s"] for r in records[1:]]
                times[name].append((summary["train_s"] - records[0]["round_s"]) / len(later))
                rounds[name].append(statistics.median(later))
                outside[name].append(times[name][-1] - statistics.fmean(later))
                print(f"repeat {rep + 1} {name:>14} {times[name][-1]:.3f} s/round, median round {rounds[name][-1]:.3f}, "
                      f"outside rounds {outside[name][-1] * 1000:.0f} ms/round", file=sys.stderr, flush=True)
    med = {name: (statistics.median(times[name]), statistics.median(rounds[name]), statistics.median(outside[name]))
           for name in runs}
    ref, ref_round, _ = med["none"]
    print(json.dumps(med), file=sys.stderr)
    print("| uplink codec | s/round, checkpoints included | vs none | median round, s | vs none "
          "| outside the rounds (checkpoints), ms/round | aggregation cost added, % of none's round |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (whole, median_round, rest) in med.items():
        added = f"{(costs[name] - costs['none']) / 1000 / ref * 100:+.1f}%" if name in costs else ""
        print(f"| {name} | {whole:.3f} | {whole / ref:.3f}x | {median_round:.3f} | {median_round / ref_round:.3f}x "
              f"| {rest * 1000:.0f} | {added} |")


if __name__ == "__main__":
    main()
