"""What drawing each epoch's order ahead (torchlr.data.OrdersAhead) saves a GPU fit.

A fit on a CUDA device draws its "randperm" order for epoch e + 1 on a thread while epoch e
trains. This times the same multi-epoch fits with that on and off, side by side in one
process: the default step and cuda_graphs, at 1Mx100 (batch 1024) and 10Mx100 (batch 8192).
For each it prints the median seconds of an epoch after the first (the first epoch's order
cannot be drawn ahead), over the fits' epochs 2.., and the ratio on/off.
Writes results/<card>-orders-ahead.json.

  python benchmarks/orders_ahead.py [--epochs 4] [--out PATH | --out-dir DIR]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

import torchlr
from torchlr import data

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench.py, beside this file
import bench  # noqa: E402  (found on the path above)

PROG = "orders_ahead.py"
DEVICE = "cuda"  # tests/test_bench.py sets the CPU, at small SIZES, to check this script
# name: (rows, features, batch size)
SIZES = {"1Mx100": (1_000_000, 100, 1024), "10Mx100": (10_000_000, 100, 8192)}
LR = 0.005


def problem(rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic data set of the size, on DEVICE."""
    gen = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data(torch.linspace(-1.0, 1.0, width), 4.2, rows, generator=gen)
    return X.to(DEVICE), y.to(DEVICE)


def later_epochs(X: torch.Tensor, y: torch.Tensor, batch: int, epochs: int, graphs: bool,
                 ahead: bool) -> list[float]:
    """Seconds of each epoch after the first, of one fit with orders drawn ahead or not."""
    saved = data.AHEAD_DEVICES
    data.AHEAD_DEVICES = (torch.device(DEVICE).type,) if ahead else ()
    try:
        result = torchlr.fit(X, y, batch_size=batch, num_epochs=epochs, lr=LR, device=DEVICE,
                             cuda_graphs=graphs)
    finally:
        data.AHEAD_DEVICES = saved
    return result.epoch_seconds[1:]


def main(argv: Optional[list[str]] = None) -> int:
    """Run, print and write the JSON; a bad command line or Ctrl-C said in one line."""
    return bench.run_command(PROG, _main, argv)


def _main(argv: Optional[list[str]]) -> int:
    parser = bench.results_parser(PROG, __doc__.splitlines()[0], "<card>-orders-ahead.json")
    parser.add_argument("--epochs", type=bench._positive_int, default=4,
                        help="epochs per fit, the first not counted (default 4)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch's order is never ahead")
    if torch.device(DEVICE).type == "cuda" and not torch.cuda.is_available():
        print("orders_ahead.py needs a CUDA device: there is none here", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = bench.results_path(args, f"{bench.slug(card)}-orders-ahead.json")  # checked first
    report: dict[str, Any] = {"gpu": card, "torch": torch.__version__,
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "epochs": args.epochs, "seconds_per_later_epoch": {}}
    print(f"{card}, torch {torch.__version__}: median s of epochs 2-{args.epochs}")
    for size, (rows, width, batch) in SIZES.items():
        X, y = problem(rows, width)
        later_epochs(X, y, batch, 2, False, True)  # warm: kernels, cuBLAS, the allocator
        for graphs in (False, True):
            row: dict[str, float] = {}
            # Off and on in turn, twice, so a slow spell does not fall on one of them only.
            runs: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(2):
                for ahead in (False, True):
                    runs[ahead] += later_epochs(X, y, batch, args.epochs, graphs, ahead)
            row["off"], row["on"] = (statistics.median(runs[a]) for a in (False, True))
            row["on_over_off"] = row["on"] / row["off"]
            name = f"{size}{', graphs' if graphs else ''}"
            report["seconds_per_later_epoch"][name] = row
            print(f"{name:<16} off {row['off']:.4f}  on {row['on']:.4f}  "
                  f"on/off {row['on_over_off']:.3f}")
        del X, y
    bench.write_results(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
