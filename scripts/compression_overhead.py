"""What compression costs a CPU round at about one million parameters (README).

Workload: MNIST, 100 clients x 600 images (IID), 10 per round, E=1, B=32, SGD lr 0.05,
`mlp` with hidden layers [1024, 256] (1,068,810 parameters), one process. Every codec runs the
same rounds; codecs are interleaved within each repeat, and the median of the repeats' mean
round time is compared with no compression's.

    FL_DATA_ROOT=<folder with MNIST/raw> python scripts/compression_overhead.py [--rounds 10] [--repeats 3]
        [--messages-only]

First prints what one client message costs to encode and decode (the codec alone, 1,068,810
entries), then the round times.
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
    "4bit up+down": [Q, "compression.uplink.bits=4", "compression/downlink=quantize", "compression.downlink.bits=4"],
}


def message_costs(dim: int = 1_068_810, repeats: int = 20) -> None:
    """Milliseconds to encode and decode one client message of ``dim`` entries (rotation included)."""
    import time

    import torch

    from fl.compression.codecs import Cast, Key, Quantize, RandK, TopK

    v = torch.randn(dim, generator=torch.Generator().manual_seed(0))
    print("| codec | encode + decode, ms per message |")
    print("| --- | --- |")
    for codec in (Cast("float16"), Quantize(4), Quantize(4, rotate=True), TopK(0.01), RandK(0.1)):
        key = Key(0, 0, 1)

        def once() -> None:
            x = codec.forward(v, key)
            codec.backward(codec.decode(codec.encode(x, key, float(x.abs().max())), key), dim, key)

        once()
        t0 = time.perf_counter()
        for _ in range(repeats):
            once()
        print(f"| {codec.name} | {(time.perf_counter() - t0) / repeats * 1000:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--messages-only", action="store_true", help="only the per-message codec costs")
    args = p.parse_args()
    message_costs()
    if args.messages_only:
        return
    base = ["data=mnist", "model=mlp", "+model.hidden=[1024,256]", "fl.num_clients=100", "fl.clients_per_round=10",
            "fl.local_epochs=1", "train.batch_size=32", "optim.lr=0.05", f"fl.rounds={args.rounds}",
            f"fl.eval_every={args.rounds}", "fl.holdout_fraction=0", "fl.checkpoint_every=0"]
    times: dict[str, list[float]] = {name: [] for name in CODECS}
    with tempfile.TemporaryDirectory() as d:
        for rep in range(args.repeats):
            for name, extra in CODECS.items():
                records = read(run_row(name, base + extra, Path(d)))
                times[name].append(sum(r["round_s"] for r in records[1:]) / (len(records) - 1))  # round 1 warms up
                print(f"repeat {rep + 1} {name:>14} {times[name][-1]:.3f} s/round", file=sys.stderr, flush=True)
    ref = statistics.median(times["none"])
    print(json.dumps({k: statistics.median(v) for k, v in times.items()}), file=sys.stderr)
    print("| uplink codec | s/round (median of repeats) | vs none |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {med / ref:.3f}x |")


if __name__ == "__main__":
    main()
