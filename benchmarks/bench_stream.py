"""Train one epoch with --stream on a generated 4 GB .npy; print samples/s and peak RSS.

Run from the repository root (takes a few minutes, needs ~4 GB of free disk in the temp dir):

    .venv/bin/python benchmarks/bench_stream.py [--gib 4] [--batch-size 4096]

The file is written chunk by chunk through np.lib.format.open_memmap, so generating it stays
small too, and it is deleted afterwards. Training runs `python -m torchlr train --stream` in a
subprocess; its peak RSS comes from the kernel (getrusage of the child) and must stay under
1 GiB. The epoch includes the pass that computes the epoch's loss over all rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

NUM_FEATURES = 15  # plus the target: 16 float32 columns, 64 bytes a row
CHUNK_ROWS = 1 << 20
LIMIT = 1 << 30


def generate(path: str, rows: int, seed: int = 0) -> None:
    """y = X w + b + noise, written CHUNK_ROWS rows at a time through short-lived maps."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=NUM_FEATURES).astype(np.float32)
    shape = (rows, NUM_FEATURES + 1)
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    offset = header.offset
    del header  # a sparse file with its header; each chunk then maps only its own rows
    row_bytes = 4 * shape[1]
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, rows)
        chunk = np.memmap(path, dtype=np.float32, mode="r+", offset=offset + start * row_bytes,
                          shape=(stop - start, shape[1]))
        X = rng.standard_normal((stop - start, NUM_FEATURES), dtype=np.float32)
        chunk[:, :-1] = X
        chunk[:, -1] = X @ w + 1.0 + 0.01 * rng.standard_normal(stop - start, dtype=np.float32)
        chunk.flush()
        del chunk


def main() -> int:
    parser = argparse.ArgumentParser(description="one streamed epoch on a large .npy")
    parser.add_argument("--gib", type=float, default=4.0, help="size of the generated file")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int,
                        help="OMP_NUM_THREADS for the training process (default: torch's)")
    args = parser.parse_args()
    row_bytes = 4 * (NUM_FEATURES + 1)
    rows = int(args.gib * 2**30) // row_bytes
    with tempfile.TemporaryDirectory(prefix="torchlr-bench-") as folder:
        path = os.path.join(folder, "big.npy")
        start = time.perf_counter()
        generate(path, rows)
        gen_s = time.perf_counter() - start
        size = os.path.getsize(path)
        print(f"generated {path}: {rows} rows x {NUM_FEATURES + 1} float32 columns, "
              f"{size / 2**30:.2f} GiB in {gen_s:.1f} s (generator's own peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)")
        command = [sys.executable, "-m", "torchlr", "train", "--data", path, "--stream",
                   "--epochs", "1", "--batch-size", str(args.batch_size), "--lr",
                   str(args.lr), "--device", "cpu", "--quiet", "--no-tensorboard"]
        print("$", " ".join(command[1:]))
        start = time.perf_counter()
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    print(done.stdout.rstrip())
    if done.returncode != 0:
        print(done.stderr.rstrip(), file=sys.stderr)
        return done.returncode
    print(f"one epoch: {wall:.1f} s wall (process start included), "
          f"{rows / wall:,.0f} samples/s")
    print(f"peak RSS of the training process: {peak / 2**20:.0f} MiB "
          f"({'under' if peak < LIMIT else 'OVER'} the 1 GiB limit)")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}, training threads: {args.threads or 'default'}")
    return 0 if peak < LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
