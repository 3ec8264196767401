"""Train one epoch with --stream on a generated 4 GB .npy; print samples/s and peak RSS.

Run from the repository root (takes a few minutes, needs ~4 GB of free disk in the temp dir):

    .venv/bin/python benchmarks/bench_stream.py [--gib 4] [--batch-size 4096]

The file is written chunk by chunk through np.lib.format.open_memmap, so generating it stays
small too, and it is deleted afterwards. Training runs `python -m torchlr train --stream` in a
subprocess; its peak RSS comes from the kernel (wait4 of that child) and must stay under
1 GiB. The epoch includes the pass that computes the epoch's loss over all rows.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, NoReturn, Optional

import numpy as np

from torchlr.argnumbers import read_negative_numbers

NUM_FEATURES = 15  # plus the target: 16 float32 columns, 64 bytes a row
CHUNK_ROWS = 1 << 20
MAX_GIB = 2**20  # a PiB: far beyond any disk, and within float and int range
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


PROG = "bench_stream.py"
# torchlr.train.MAX_THREADS (a test keeps them equal): torch is not imported here, so the
# generator's peak RSS printed below stays its own.
MAX_THREADS = 1024


class UsageError(Exception):
    """A bad command line: main says it in one line, `bench_stream.py: error: ...`, exit 2."""


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except an unset option's None, whose help says what unset means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action) or ""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are UsageError: one line, not the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        read_negative_numbers(self)  # --lr -1e-3 is a bad rate, not a missing one

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(message)


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a finite number above 0 of kind (int or float)."""
    def parse(text: str) -> Any:
        what = "a whole number" if kind is int else "a number"
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be {what} above 0, got {text}")
        return value
    return parse


def _threads(text: str) -> int:
    value = _positive(int)(text)
    if value > MAX_THREADS:  # torch's OpenMP crashes with tens of thousands
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {value}")
    return value


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """The command line, checked before the file is generated (UsageError if it is bad)."""
    parser = _Parser(prog=PROG, description="one streamed epoch on a large .npy",
                     formatter_class=_DefaultsHelp)
    parser.add_argument("--gib", type=_positive(float), default=4.0,
                        help="size of the generated file, in GiB")
    parser.add_argument("--batch-size", type=_positive(int), default=4096,
                        help="the training's --batch-size")
    parser.add_argument("--lr", type=_positive(float), default=0.1,
                        help="the training's --lr")
    parser.add_argument("--threads", type=_threads, default=None,
                        help="OMP_NUM_THREADS for the training process: torch's threads "
                             "outside the fit. torchlr.fit's steps run on its own "
                             "FitConfig.threads, which `torchlr train` has no option for "
                             "(default: unset, torch's choice)")
    args = parser.parse_args(argv)
    if args.gib > MAX_GIB:  # larger ones overflowed the row count (a traceback)
        parser.error(f"argument --gib: must be at most {MAX_GIB}, got {args.gib:g}")
    if int(args.gib * 2**30) // (4 * (NUM_FEATURES + 1)) == 0:
        parser.error(f"argument --gib: {args.gib} GiB holds no row of "
                     f"{4 * (NUM_FEATURES + 1)} bytes")
    return args


def fit_threads() -> Optional[int]:
    """The torch threads torchlr.fit runs on in `torchlr train`: FitConfig's default, since
    the command has no option for it. Imported only after the run (torch is large)."""
    from torchlr.train import FitConfig

    return FitConfig().threads


def run_measured(command: list[str], env: dict[str, str]) -> tuple[int, str, str, int]:
    """Run command to its end: its exit code, stdout, stderr, and its own peak RSS in bytes.

    The peak is wait4's account of that one child. RUSAGE_CHILDREN would be the largest of
    every child this process has waited for: called from a test run, an earlier test's
    1.2 GiB child made a 50 MiB training process look over the limit.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: the child goes too
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss * 1024  # KiB on Linux


def main(argv: Optional[list[str]] = None) -> int:
    """Generate the file, train one epoch on it, print the figures; 2 on a bad command line,
    130 on Ctrl-C (the file and the training process go with it), 141 quietly when stdout's
    reader goes away (`| head`)."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, where a reader gone is caught, not at the interpreter's exit
        return code
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # as bench.reader_gone, which this file (no torch) cannot import
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: Optional[list[str]]) -> int:
    args = parse_args(argv)
    row_bytes = 4 * (NUM_FEATURES + 1)
    rows = int(args.gib * 2**30) // row_bytes
    # Checked before writing: a full disk under the memory-mapped file is a bus error.
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if rows * row_bytes + 2**20 > free:
        raise UsageError(f"--gib {args.gib:g} needs {rows * row_bytes / 2**30:.2f} GiB in "
                         f"{folder}, which has {free / 2**30:.2f} GiB free; point TMPDIR at "
                         f"a larger disk or ask for fewer GiB")
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
        if args.threads is not None:
            env["OMP_NUM_THREADS"] = str(args.threads)
        returncode, stdout, stderr, peak = run_measured(command, env)
        wall = time.perf_counter() - start
    print(stdout.rstrip())
    if returncode != 0:
        print(stderr.rstrip(), file=sys.stderr)
        return returncode
    print(f"one epoch: {wall:.1f} s wall (process start included), "
          f"{rows / wall:,.0f} samples/s")
    print(f"peak RSS of the training process: {peak / 2**20:.0f} MiB "
          f"({'under' if peak < LIMIT else 'OVER'} the 1 GiB limit)")
    fit = fit_threads()
    steps = f"{fit} torch thread{'' if fit == 1 else 's'}" if fit else "torch's own threads"
    # --threads reaches the process, not the fit: the line says which ran on what.
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}, training process OMP_NUM_THREADS="
          f"{env.get('OMP_NUM_THREADS', 'unset')}, torchlr.fit's steps on {steps} "
          f"(FitConfig.threads, which `torchlr train` keeps)")
    return 0 if peak < LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
