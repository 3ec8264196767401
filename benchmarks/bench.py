"""Side-by-side timings: torchlr against the loops users copy today, and against a read of X.

Run `make bench` (or `python benchmarks/bench.py --help`). Every size runs each
implementation `--repeats` times (3x that at the chapter's size, where a call takes tens of
milliseconds and a busy spell on a shared machine moves a short median most), in interleaved
rounds, after one warm-up call, and reports the median; at 1Mx100 the slow references run
`--slow-repeats` times (default 3) with no warm-up. Ratios are paired: the median over
the rounds of (torchlr's time / the reference's time in the same round), with their range.
The JSON written under benchmarks/results/ names the machine, the date and the torch version.

References, in the styles users copy:
  (a) loop_port    the older PyTorch port of the chapter: a Python list of indices shuffled
                   with `random`, `torch.tensor(indices[i:i+B])` per batch, autograd, and an
                   sgd that divides by the batch size
  (b) dataloader   nn.Linear, DataLoader(TensorDataset), optim.SGD and MSELoss
  (c) sklearn      SGDRegressor with a constant learning rate (needs the `bench` extra)
  (d) lstsq        the closed form, torch.linalg.lstsq on [X, 1]
  read             one read pass over X (X.sum()): the memory floor
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, Optional

import torch
from torch import nn

import torchlr
from torchlr.atomic import write_atomic
from torchlr.train import MAX_THREADS
from torchlr.validation import cannot_create_in

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LR = 0.03  # the chapter's learning rate, used by every SGD loop
REFERENCES = ("loop_port", "dataloader", "sklearn", "lstsq")
TORCHLR = ("torchlr_scratch", "torchlr_concise")
# The same fits with the opt-in gradient="analytic", at every size.
ANALYTIC = ("torchlr_scratch_analytic", "torchlr_concise_analytic")
# Fits with cuda_graphs=True, on either gradient, timed at the CUDA sizes only.
GRAPHED = ("torchlr_scratch_graphs", "torchlr_concise_graphs",
           "torchlr_scratch_analytic_graphs", "torchlr_concise_analytic_graphs")
# The graphed fits again with permutation="hashed": each epoch's order computed on the GPU.
HASHED = tuple(f"{name}_hashed" for name in GRAPHED)
CUDA_ONLY = GRAPHED + HASHED
ALL_TORCHLR = TORCHLR + ANALYTIC + CUDA_ONLY
LABELS = {
    "torchlr_scratch": "torchlr scratch",
    "torchlr_concise": "torchlr concise",
    "torchlr_scratch_analytic": "scratch, analytic",
    "torchlr_concise_analytic": "concise, analytic",
    "torchlr_scratch_graphs": "scratch, graphs",
    "torchlr_concise_graphs": "concise, graphs",
    "torchlr_scratch_analytic_graphs": "scratch, an.+graphs",
    "torchlr_concise_analytic_graphs": "concise, an.+graphs",
    "torchlr_scratch_graphs_hashed": "scratch, graphs, hashed",
    "torchlr_concise_graphs_hashed": "concise, graphs, hashed",
    "torchlr_scratch_analytic_graphs_hashed": "scratch, an.+graphs, hashed",
    "torchlr_concise_analytic_graphs_hashed": "concise, an.+graphs, hashed",
    "us_per_step": "µs per step",
    "marginal_us_per_step": "marginal µs/step",
    "loop_port": "(a) loop port",
    "dataloader": "(b) DataLoader",
    "sklearn": "(c) sklearn SGD",
    "lstsq": "(d) lstsq",
    "read": "read pass X.sum()",
}


@dataclass(frozen=True)
class Size:
    """One benchmark problem: n examples of d features, trained for epochs with batch_size."""

    name: str
    n: int
    d: int
    batch_size: int
    epochs: int
    device: str = "cpu"
    # The references run at this size: on a GPU the Python-list and per-example
    # DataLoader loops would take minutes at the large sizes, for a known answer.
    references: tuple[str, ...] = REFERENCES

    @property
    def steps(self) -> int:
        """Minibatch steps in the whole run (the short last batch counts as one)."""
        return self.epochs * math.ceil(self.n / self.batch_size)


SIZES = {
    "chapter": Size("chapter", 1000, 2, 10, 3),
    "1Mx100": Size("1Mx100", 1_000_000, 100, 1024, 1),
    "cuda-chapter": Size("cuda-chapter", 1000, 2, 10, 3, "cuda"),
    # On CUDA the per-example DataLoader costs minutes at 1M rows: (b) runs at the chapter size.
    "cuda-1Mx100": Size("cuda-1Mx100", 1_000_000, 100, 1024, 1, "cuda", ("loop_port", "lstsq")),
    "cuda-10Mx100": Size("cuda-10Mx100", 10_000_000, 100, 8192, 1, "cuda", ("lstsq",)),
}
CPU_SIZES = ("chapter", "1Mx100")
# Sizes up to SMALL_N rows run SMALL_REPEATS times as many rounds: a chapter-sized call takes
# tens of milliseconds, so the extra rounds cost seconds and steady the median.
SMALL_N, SMALL_REPEATS = 10_000, 3
# At those sizes torchlr's fits are also timed with LONG_EPOCHS times the epochs. The extra
# time per extra step is what a step costs once a fit's once-per-fit work is paid (setup,
# and with cuda_graphs the warm-ups and the capture), which a 300-step fit spreads over its
# steps. Per-epoch work (the permutation, the host reads, the epoch loss) stays in it.
LONG_EPOCHS, MARGINAL_PAIRS = 10, 3
# Targets measured in a row's own figures, not as a ratio to another job's time.
OWN_FIGURES = {"read": "x_read", "us_per_step": "us_per_step",
               "marginal_us_per_step": "marginal_us_per_step"}
# The targets: (size, implementation, reference, the most time / reference time).
TARGETS = (
    ("chapter", "torchlr_scratch", "loop_port", 0.8),
    ("chapter", "torchlr_concise", "dataloader", 0.5),
    *(("1Mx100", impl, ref, limit) for impl in TORCHLR
      for ref, limit in (("loop_port", 0.25), ("dataloader", 0.05), ("sklearn", 0.67))),
    # The stretch goal, which allows an opt-in fast option: gradient="analytic".
    *(("1Mx100", impl, "read", 10.0) for impl in TORCHLR + ANALYTIC),
    # The GPU goals: an epoch at 10Mx100 within 3 reads, and at most 20 µs (not a ratio) per
    # chapter-sized step with CUDA graphs.
    *(("cuda-10Mx100", impl, "read", 3.0) for impl in ALL_TORCHLR),
    *(("cuda-chapter", impl, per_step, 20.0) for impl in CUDA_ONLY
      for per_step in ("us_per_step", "marginal_us_per_step")),
)
CUDA_SIZES = ("cuda-chapter", "cuda-1Mx100", "cuda-10Mx100")


def make_data(size: Size, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The chapter's data for size (w = [2, -3.4] at d = 2), on the size's device."""
    gen = torch.Generator().manual_seed(seed)
    if size.d == 2:
        true_w = torch.tensor([2.0, -3.4])
    else:
        true_w = torch.randn(size.d, generator=gen)
    X, y = torchlr.synthetic_data(true_w, 4.2, size.n, generator=gen)
    return X.to(size.device), y.to(size.device)


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---- (a) the older port's loop, written as users copied it ----------------------------------

def run_loop_port(X: torch.Tensor, y: torch.Tensor, size: Size, seed: int):
    """Python-list shuffling, torch.tensor per batch, autograd, sgd dividing by batch size."""
    rng = random.Random(seed)

    def iterate(batch_size, features, labels):
        num_examples = len(features)
        indices = list(range(num_examples))
        rng.shuffle(indices)
        for i in range(0, num_examples, batch_size):
            batch_indices = torch.tensor(indices[i:min(i + batch_size, num_examples)],
                                         device=features.device)
            yield features[batch_indices], labels[batch_indices]

    def linreg(X, w, b):
        return torch.matmul(X, w) + b

    def squared_loss(y_hat, y):
        return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2

    def sgd(params, lr, batch_size):
        with torch.no_grad():
            for param in params:
                param -= lr * param.grad / batch_size
                param.grad.zero_()

    torch.manual_seed(seed)
    w = torch.normal(0, 0.01, size=(X.shape[1], 1), requires_grad=True, device=X.device)
    b = torch.zeros(1, requires_grad=True, device=X.device)
    for _ in range(size.epochs):
        for X_batch, y_batch in iterate(size.batch_size, X, y):
            loss = squared_loss(linreg(X_batch, w, b), y_batch)
            loss.sum().backward()
            sgd([w, b], LR, size.batch_size)
        with torch.no_grad():
            float(squared_loss(linreg(X, w, b), y).mean())  # the printed epoch loss
    return w.detach().reshape(-1), float(b.detach())


# ---- (b) nn.Linear + DataLoader + optim.SGD + MSELoss ---------------------------------------

def run_dataloader(X: torch.Tensor, y: torch.Tensor, size: Size, seed: int):
    """The concise chapter as commonly written: DataLoader over a TensorDataset."""
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=size.batch_size, shuffle=True)
    net = nn.Sequential(nn.Linear(X.shape[1], 1)).to(X.device)
    net[0].weight.data.normal_(0, 0.01)
    net[0].bias.data.fill_(0)
    loss = nn.MSELoss()
    trainer = torch.optim.SGD(net.parameters(), lr=LR)
    for _ in range(size.epochs):
        for X_batch, y_batch in loader:
            batch_loss = loss(net(X_batch), y_batch)
            trainer.zero_grad()
            batch_loss.backward()
            trainer.step()
        with torch.no_grad():
            float(loss(net(X), y))  # the printed epoch loss
    return net[0].weight.detach().reshape(-1), float(net[0].bias.detach())


# ---- (c) scikit-learn, (d) the closed form, and the read pass -------------------------------

def sklearn_eta0(d: int) -> float:
    """Per-example SGD diverges once eta0 * |x|^2 > 2 (|x|^2 ~ d): cap eta0 at 0.5 / d."""
    return min(LR, 0.5 / d)


def prepare_sklearn(X: torch.Tensor, y: torch.Tensor) -> Optional[tuple[Any, Any]]:
    """float64 numpy copies made outside the timer (sklearn would convert them itself)."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return None
    return X.cpu().double().numpy(), y.cpu().double().numpy().ravel()


def run_sklearn(data: tuple[Any, Any], size: Size, seed: int):
    """SGDRegressor, constant learning rate, no penalty, exactly size.epochs passes."""
    from sklearn.linear_model import SGDRegressor

    model = SGDRegressor(loss="squared_error", penalty=None, learning_rate="constant",
                         eta0=sklearn_eta0(size.d), max_iter=size.epochs, tol=None,
                         shuffle=True, random_state=seed)
    model.fit(*data)
    return torch.as_tensor(model.coef_), float(model.intercept_[0])


def run_lstsq(X: torch.Tensor, y: torch.Tensor) -> None:
    """The closed form as users write it: append a ones column, call lstsq."""
    A = torch.cat([X, torch.ones(len(X), 1, device=X.device)], dim=1)  # (n, d + 1)
    torch.linalg.lstsq(A, y).solution  # noqa: B018  (gelsy on the CPU, gels on CUDA)


def run_read(X: torch.Tensor) -> None:
    """One pass over every byte of X."""
    X.sum()


# Options every torchlr fit of this run gets: --threads N sets threads=N (else the default).
FIT_OPTIONS: dict[str, Any] = {}


def run_torchlr(X: torch.Tensor, y: torch.Tensor, size: Size, impl: str, **options: Any):
    """torchlr.fit with default options except the size's batch, epochs and device."""
    return torchlr.fit(X, y, impl=impl, batch_size=size.batch_size, num_epochs=size.epochs,
                       device=size.device, **FIT_OPTIONS, **options)


def torchlr_fit(name: str, X: torch.Tensor, y: torch.Tensor, size: Size) -> Callable[[], Any]:
    """The call a torchlr job times: its implementation, with the options its name lists."""
    impl = name.split("_")[1]  # torchlr_<impl>[_analytic][_graphs[_hashed]]
    return partial(run_torchlr, X, y, size, impl, cuda_graphs=name in CUDA_ONLY,
                   gradient="analytic" if "_analytic" in name else "autograd",
                   permutation="hashed" if name in HASHED else "randperm")


# ---- timing -----------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], device: str) -> float:
    """Wall seconds of one call, the GPU's queued work included."""
    start = time.perf_counter()
    try:
        fn()
    finally:
        # Also when fn raised: the GPU work it queued before that (a refused lstsq's) is
        # its own, and would otherwise be timed as the next job's.
        sync(device)
    return time.perf_counter() - start


def time_round_robin(jobs: dict[str, tuple[Callable[[], Any], int]], device: str,
                     warm_up: set[str]) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Wall seconds per call: a warm-up call of the jobs in warm_up, then rounds that call
    every job once, so times[name][r] is round r's. Also returns the references that
    raised, with their errors: they sit out the rest of the run.

    Interleaving spreads a busy spell on a shared machine over all implementations
    instead of charging it to one. A job with fewer repeats sits out the later rounds.
    """
    times: dict[str, list[float]] = {name: [] for name in jobs}
    failed: dict[str, str] = {}

    def call(name: str, fn: Callable[[], Any], what: str) -> Optional[float]:
        print(f"  {what}: {LABELS[name]}", file=sys.stderr, flush=True)
        try:
            return timed(fn, device)
        except RuntimeError as err:  # torch's errors, cuSOLVER's refusals among them
            if name not in REFERENCES:  # torchlr failing is the benchmark's own failure
                raise
            # A reference that cannot run at this size (cuSOLVER's lstsq refuses 10Mx101
            # on an H100) costs its own column, not the whole report.
            failed[name] = f"{type(err).__name__.lstrip('_')}: {str(err).splitlines()[0]}"
            print(f"  {LABELS[name]} failed, left out: {failed[name]}", file=sys.stderr)
            return None

    for name, (fn, _) in jobs.items():
        if name in warm_up:
            call(name, fn, "warm-up")
    sync(device)
    for round_ in range(max(reps for _, reps in jobs.values())):
        for name, (fn, reps) in jobs.items():
            if round_ < reps and name not in failed:
                t = call(name, fn, f"round {round_ + 1}")
                if t is not None:
                    times[name].append(t)
    return {name: t for name, t in times.items() if name not in failed}, failed


def marginal_step_us(short: Callable[[], Any], long: Callable[[], Any], extra_steps: int,
                     device: str, pairs: int = MARGINAL_PAIRS) -> float:
    """µs per step beyond a fit's fixed cost: the median over back-to-back pairs of
    (long fit's time - short fit's time) / the long fit's extra steps."""
    diffs = []
    for _ in range(pairs):
        t_short = timed(short, device)
        diffs.append((timed(long, device) - t_short) / extra_steps * 1e6)
    return statistics.median(diffs)


def paired_ratio(times: list[float], ref_times: list[float]) -> tuple[float, float, float]:
    """Median, min and max over the rounds both ran of time / reference time.

    The two calls of a round ran seconds apart, so a drift in the machine's speed between
    rounds (seen here: the same fit taking 0.42 s in one round and 0.69 s three rounds on)
    cancels in each round's ratio instead of landing on whichever job ran in the slow rounds.
    """
    pairs = [t / r for t, r in zip(times, ref_times)]  # times[r] is round r's for every job
    return statistics.median(pairs), min(pairs), max(pairs)


def size_jobs(size: Size, skip: set[str]) -> set[str]:
    """The jobs a size runs, less those skipped."""
    jobs = {"read", *TORCHLR, *ANALYTIC, *(CUDA_ONLY if size.device == "cuda" else ()),
            *(ref for ref in size.references if ref != "sklearn" or size.device == "cpu")}
    return jobs - skip


def bench_size(size: Size, repeats: int, slow_repeats: int, skip: set[str]) -> dict[str, Any]:
    """Time every implementation on one size; return the size's JSON record."""
    X, y = make_data(size)
    sk_data = None if "sklearn" in skip or size.device != "cpu" else prepare_sklearn(X, y)
    # The slow references run fewer times at large sizes; their spread is reported.
    slow = size.n >= 100_000
    if size.n <= SMALL_N:
        repeats *= SMALL_REPEATS
    jobs: dict[str, tuple[Callable[[], Any], int]] = {
        "read": (lambda: run_read(X), repeats),
        **{name: (torchlr_fit(name, X, y, size), repeats)
           for name in TORCHLR + ANALYTIC + (CUDA_ONLY if size.device == "cuda" else ())},
        "loop_port": (lambda: run_loop_port(X, y, size, 0), slow_repeats if slow else repeats),
        "dataloader": (lambda: run_dataloader(X, y, size, 0), slow_repeats if slow else repeats),
        "lstsq": (lambda: run_lstsq(X, y), slow_repeats if slow else repeats),
    }
    if sk_data is not None:
        jobs["sklearn"] = (lambda: run_sklearn(sk_data, size, 0), slow_repeats if slow else repeats)
    jobs = {name: job for name, job in jobs.items() if name in size_jobs(size, skip)}
    # At large sizes one untimed pass of the slow references would cost minutes: only the
    # fast jobs warm up there.
    warm_up = {"read", *ALL_TORCHLR} if slow else set(jobs)
    times, failed = time_round_robin(jobs, size.device, warm_up)
    rows = {}
    for name, t in times.items():
        med = statistics.median(t)
        row: dict[str, Any] = {"median_s": med, "times_s": t}
        if name not in ("read", "lstsq"):
            # sklearn steps once per example; the torch loops once per minibatch.
            steps = size.epochs * size.n if name == "sklearn" else size.steps
            row["us_per_step"] = med / steps * 1e6
            row["samples_per_s"] = size.epochs * size.n / med
        if "read" in times:
            x_read, low, high = paired_ratio(t, times["read"])
            row["x_read"], row["x_read_range"] = x_read, [low, high]
        if name in ALL_TORCHLR:
            pairs = {ref: paired_ratio(t, times[ref]) for ref in REFERENCES if ref in times}
            row["ratio"] = {ref: p[0] for ref, p in pairs.items()}
            row["ratio_range"] = {ref: [p[1], p[2]] for ref, p in pairs.items()}
        rows[name] = row
    if size.n <= SMALL_N:
        long_size = replace(size, epochs=size.epochs * LONG_EPOCHS)
        for name in (n for n in ALL_TORCHLR if n in rows):
            print(f"  marginal step: {LABELS[name]}", file=sys.stderr, flush=True)
            rows[name]["marginal_us_per_step"] = marginal_step_us(
                torchlr_fit(name, X, y, size), torchlr_fit(name, X, y, long_size),
                long_size.steps - size.steps, size.device)
    return {"size": {**size.__dict__, "references": list(size.references), "steps": size.steps},
            "results": rows, "failed": failed}


# ---- peak memory, one implementation per child process ---------------------------------------

def rss_child(size_name: str, impl: str) -> None:
    """Child mode: make the data, train once, print RSS figures (bytes) as JSON."""
    size = SIZES[size_name]
    _reset_peak_rss()  # a forked child starts with its parent's peak
    before_data = _rss()
    X, y = make_data(size)
    data_bytes = X.nbytes + y.nbytes
    before_fit = _rss()
    _reset_peak_rss()
    run_torchlr(X, y, size, impl.removeprefix("torchlr_"))
    peak = _peak_rss()
    print(json.dumps({"impl": impl, "data_bytes": data_bytes, "rss_before_data": before_data,
                      "rss_before_fit": before_fit, "peak_rss": max(peak, before_fit),
                      # What the fit ran under, for the file to say (--threads reaches here).
                      "torch_threads": torch.get_num_threads(),
                      "torchlr_fit_threads": FIT_OPTIONS.get("threads",
                                                             torchlr.FitConfig().threads)}))


def _status_kib(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> None:
    """Linux: restart the high-water mark (VmHWM) from the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else _peak_rss()


def _peak_rss() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # elsewhere ru_maxrss is in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_rss(size_name: str) -> dict[str, Any]:
    """Peak RSS of each torchlr implementation training size_name, each in a fresh process."""
    out = {}
    for impl in TORCHLR:
        print(f"  {size_name}: peak RSS of {LABELS[impl]} ...", file=sys.stderr, flush=True)
        # The child fits under this run's --threads: its peak RSS is that of the fits timed.
        threads = ["--threads", str(FIT_OPTIONS["threads"])] if "threads" in FIT_OPTIONS else []
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", size_name, impl, *threads],
            capture_output=True, text=True, check=True)
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        record["peak_over_data"] = record["peak_rss"] / record["data_bytes"]
        record["fit_growth_over_data"] = (
            (record["peak_rss"] - record["rss_before_fit"]) / record["data_bytes"])
        out[impl] = record
    return out


# ---- machine, printing, CLI -------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What produced the figures: CPU, cores, torch threads, GPU (or None), torch version."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def print_size(record: dict[str, Any]) -> None:
    """One table per size: time, per step, throughput, ratios to references and to the read."""
    size = record["size"]
    rows = record["results"]
    print(f"\n== {size['name']}: {size['n']}x{size['d']}, batch {size['batch_size']}, "
          f"{size['epochs']} epoch(s), {size['steps']} steps, {size['device']} ==")
    refs = [r for r in REFERENCES if r in rows]
    head = (f"{'implementation':<20}{'median ms':>11}{'us/step':>10}{'samples/s':>12}"
            f"{'x read':>9}" + "".join(f"{'/' + r:>13}" for r in refs))
    print(head)
    for name, row in rows.items():
        us = f"{row['us_per_step']:10.1f}" if "us_per_step" in row else f"{'':>10}"
        sps = f"{row['samples_per_s']:12.3g}" if "samples_per_s" in row else f"{'':>12}"
        xr = f"{row['x_read']:9.1f}" if "x_read" in row else f"{'':>9}"
        ratios = "".join(f"{row['ratio'][r]:13.3f}" if "ratio" in row else f"{'':>13}"
                         for r in refs)
        print(f"{LABELS[name]:<20}{row['median_s'] * 1e3:11.4g}{us}{sps}{xr}{ratios}")
    if line := marginal_line(rows):
        print(line)
    for name, error in record.get("failed", {}).items():
        print(f"{LABELS[name]} failed at this size, left out: {error}")


def marginal_line(rows: dict[str, Any]) -> str:
    """The marginal µs per step of the rows that have one, as one line ("" if none)."""
    marginal = [f"{LABELS[name]} {row['marginal_us_per_step']:.1f}"
                for name, row in rows.items() if "marginal_us_per_step" in row]
    if not marginal:
        return ""
    return (f"marginal µs/step (a fit of {LONG_EPOCHS}x the epochs, less this one, per extra "
            f"step): " + ", ".join(marginal))


def print_rss(rss: dict[str, Any]) -> None:
    """Peak RSS per implementation, against 2x the data size."""
    for impl, r in rss.items():
        mib = 2**20
        print(f"{LABELS[impl]:<20} peak RSS {r['peak_rss'] / mib:8.0f} MiB = "
              f"{r['peak_over_data']:.2f}x data ({r['data_bytes'] / mib:.0f} MiB; target < 2x); "
              f"fit added {(r['peak_rss'] - r['rss_before_fit']) / mib:.0f} MiB")


# What a default full run uses; fewer repeats make a partial run (see partial_because).
DEFAULT_REPEATS, DEFAULT_SLOW_REPEATS = 5, 3
# What --skip may name: every job a size can run.
JOBS = ("read", *REFERENCES, *ALL_TORCHLR)
PROG = "bench.py"


class UsageError(Exception):
    """A bad command line: main says it in one line, `bench.py: error: ...`, and returns 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are UsageError: one line, not the usage block and a traceback."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(message)


def _positive_int(text: str) -> int:
    """A count of at least 1 (0 repeats would leave no time to take a median of)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _threads(text: str) -> int:
    """A thread count torch and torchlr.fit both take: checked here, not inside the first fit
    minutes into the run."""
    value = _positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS} (torchlr.fit's limit), "
                                         f"got {value}")
    return value


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """The command line, checked whole before any benchmark work (UsageError if it is bad).

    args.sizes becomes a list of size names (None: the default sizes) and args.skip a set of
    job names. --rss-child is internal.
    """
    parser = _Parser(
        prog=PROG, description=__doc__.splitlines()[0],
        epilog="A partial run (--quick, --sizes, --skip, --no-rss, --threads, or fewer "
               f"--repeats or --slow-repeats than {DEFAULT_REPEATS} and "
               f"{DEFAULT_SLOW_REPEATS}) writes a results file only with --out or --out-dir: "
               "the default file is the machine's full run, which docs/performance.md shows.")
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated, from {', '.join(SIZES)}; not with --quick "
                             "(default: the CPU sizes, plus the CUDA sizes when CUDA is present)")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="timed runs per implementation (median reported); default "
                             f"{DEFAULT_REPEATS}, times {SMALL_REPEATS} at the chapter size")
    parser.add_argument("--slow-repeats", type=_positive_int, default=DEFAULT_SLOW_REPEATS,
                        help="timed runs of the slow references at large sizes; default "
                             f"{DEFAULT_SLOW_REPEATS}")
    parser.add_argument("--quick", action="store_true",
                        help="the chapter size only, 1 repeat (x3), no RSS children; "
                             "not with --sizes")
    parser.add_argument("--skip", default="",
                        help=f"comma-separated jobs to leave out, from {', '.join(JOBS)}")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS children")
    parser.add_argument("--threads", type=_threads, default=None,
                        help=f"torch intra-op threads for every implementation, 1 to "
                             f"{MAX_THREADS}; torchlr.fit's threads too, its peak-RSS children "
                             "included (default: torch's own choice, and torchlr.fit's "
                             f"default of {torchlr.FitConfig().threads})")
    parser.add_argument("--out", default=None,
                        help="JSON path (default, for a full run only: "
                             "benchmarks/results/<machine>-<torch threads>t.json, with "
                             "-fit<N>t before .json when torchlr.fit's threads are not its "
                             "default)")
    parser.add_argument("--out-dir", default=None,
                        help="folder for the JSON under its default name "
                             "(default: benchmarks/results)")
    parser.add_argument("--markdown", metavar="JSON",
                        help="print a results file as markdown tables (those of "
                             "docs/performance.md) and exit")
    parser.add_argument("--rss-child", nargs=2, metavar=("SIZE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given_repeats = args.repeats  # None unless given: --quick refuses any it would ignore
    if args.repeats is None:
        args.repeats = DEFAULT_REPEATS
    if args.rss_child or args.markdown is not None:
        return args
    if args.quick and args.sizes is not None:
        # --quick means the chapter size: running it at other sizes, or ignoring them,
        # would each surprise someone.
        parser.error("--quick runs the chapter size only: give --quick or --sizes, not both")
    if args.quick and given_repeats not in (None, 1):
        parser.error(f"--quick runs 1 repeat, not --repeats {args.repeats}: give one of them")
    if args.sizes is not None:
        names = list(dict.fromkeys(s.strip() for s in args.sizes.split(",") if s.strip()))
        if not names:  # a report with no sizes would still be written
            parser.error(f"--sizes {args.sizes!r} names no size; choose from {', '.join(SIZES)}")
        unknown = [s for s in names if s not in SIZES]
        if unknown:
            parser.error(f"unknown size(s) {', '.join(unknown)} in --sizes; choose from "
                         f"{', '.join(SIZES)}")
        args.sizes = names
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = sorted(skip - set(JOBS))
    if unknown:  # a misspelt job would otherwise run, unremarked
        parser.error(f"unknown job(s) {', '.join(unknown)} in --skip; choose from "
                     f"{', '.join(JOBS)}")
    if skip >= set(JOBS):
        parser.error("--skip leaves no job to run")
    args.skip = skip
    return args


def partial_because(args: argparse.Namespace) -> list[str]:
    """The options that make this run other than the default full run, whose file
    docs/performance.md shows (empty for that run): such a run writes a file only where --out
    or --out-dir says."""
    why = [option for option, given in (
        ("--quick", args.quick), ("--sizes", args.sizes is not None), ("--skip", args.skip),
        ("--no-rss", args.no_rss), ("--repeats", args.repeats < DEFAULT_REPEATS),
        ("--slow-repeats", args.slow_repeats < DEFAULT_SLOW_REPEATS),
        # Another thread count measures other figures, whatever name its file gets.
        ("--threads", args.threads is not None)) if given]
    return why


def results_parser(prog: str, description: str, default_name: str) -> _Parser:
    """The command line of a script that writes one results file: --out and --out-dir
    (see results_path), its errors in one line (run_command)."""
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--out", default=None, help=f"JSON path (default: results/{default_name})")
    parser.add_argument("--out-dir", default=None,
                        help="folder for the JSON under its default name (default: results)")
    return parser


def results_path(args: argparse.Namespace, default_name: str) -> Path:
    """Where --out or --out-dir puts the results file (else RESULTS_DIR/default_name),
    checked before a run of minutes whose figures would otherwise be lost at its end."""
    for option in ("out", "out_dir"):
        if getattr(args, option) == "":  # not the default: that is the committed full run
            raise UsageError(f"--{option.replace('_', '-')} must be a path, got ''")
    path = (Path(args.out) if args.out is not None else
            Path(args.out_dir if args.out_dir is not None else RESULTS_DIR) / default_name)
    problem = unwritable(path)
    if problem:
        raise UsageError(problem)
    return path


def unwritable(path: Path) -> Optional[str]:
    """Why a results file cannot be written at path, or None."""
    try:
        return _unwritable(path)
    except OSError as err:  # a name too long for the file system, say
        return f"cannot write {path}: {err.strerror or err}"


def _unwritable(path: Path) -> Optional[str]:
    if path.is_dir():
        return f"cannot write {path}: it is a directory"
    if path.exists() and not os.access(path, os.W_OK):
        return f"cannot write {path}: it is not writable"
    folder = path.parent
    while not folder.exists():  # the folders the write would make
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot write {path}: {folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write {path}: {folder} is not writable"
    why = cannot_create_in(str(folder))  # os.access says yes to root everywhere
    return f"cannot write {path}: {folder}: {why}" if why else None


REPORT_KEYS = ("date", "machine", "settings", "sizes")


def load_results(path: str) -> dict[str, Any]:
    """A results file this script wrote, read for --markdown (UsageError if it is not one)."""
    try:
        report = json.loads(Path(path).read_text())
    except OSError as err:
        raise UsageError(f"--markdown: cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:  # not JSON, or not UTF-8 text
        raise UsageError(f"--markdown: {path} is not JSON ({err})") from None
    # graph_steps.py's files sit beside ours in results/ and are JSON too.
    if not isinstance(report, dict) or not all(k in report for k in REPORT_KEYS):
        raise UsageError(f"--markdown: {path} is not a results file of bench.py (it needs "
                         f"the keys {', '.join(REPORT_KEYS)})")
    return report


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark, print the tables and write the JSON; a bad command line is said in
    one line, with 2 returned."""
    return run_command(PROG, _main, argv)


def run_command(prog: str, body: Callable[[Optional[list[str]]], int],
                argv: Optional[list[str]]) -> int:
    """body(argv), with a bad command line (UsageError) said in one line and 2 returned,
    Ctrl-C in one line and 130 (128 + SIGINT), and a reader gone (`| head`) quietly with
    141 (128 + SIGPIPE), not a traceback."""
    try:
        code = body(argv)
        sys.stdout.flush()  # here, where a reader gone is caught, not at the interpreter's exit
        return code
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return reader_gone()


def reader_gone() -> int:
    """141, with stdout pointed at /dev/null: the interpreter's flush of it at exit would
    raise again (and print "Exception ignored")."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def _main(argv: Optional[list[str]]) -> int:
    args = parse_args(argv)
    if args.markdown is not None:
        report = load_results(args.markdown)
        try:
            text = markdown(report)
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise UsageError(f"--markdown: {args.markdown} is not a results file of bench.py "
                             f"({type(err).__name__}: {err})") from None
        print(text)
        return 0
    FIT_OPTIONS.clear()  # a second main() in one process (the tests) starts afresh
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        FIT_OPTIONS["threads"] = args.threads  # torchlr too, not only the references
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    partial = partial_because(args)  # before --quick turns the RSS children off
    if args.quick:
        names, args.repeats, args.no_rss = ["chapter"], 1, True
    elif args.sizes is not None:
        names = args.sizes
    else:
        names = list(CPU_SIZES) + (list(CUDA_SIZES) if torch.cuda.is_available() else [])
    skipped_cuda = [s for s in names if SIZES[s].device == "cuda" and not torch.cuda.is_available()]
    if skipped_cuda:
        print(f"no CUDA device: skipping {', '.join(skipped_cuda)}", file=sys.stderr)
        names = [s for s in names if s not in skipped_cuda]
        if not names:  # an empty report would overwrite this machine's results file
            raise UsageError("nothing to run: every size asked for needs CUDA")
    skip = args.skip
    emptied = [name for name in names if not size_jobs(SIZES[name], skip)]
    if emptied:  # (the CUDA-only jobs are not run on the CPU sizes)
        raise UsageError(f"--skip leaves no job to run at {', '.join(emptied)}")
    fit_threads = FIT_OPTIONS.get("threads", torchlr.FitConfig().threads)
    info = machine()
    out = None
    if not partial or args.out is not None or args.out_dir is not None:
        out = results_path(args, default_name(info, fit_threads))
    else:
        print(f"a partial run ({', '.join(partial)}): its results go to no file "
              "(--out PATH or --out-dir DIR keeps them)", file=sys.stderr)

    started = dt.datetime.now(dt.timezone.utc)
    report: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": info,
        "settings": {"repeats": args.repeats, "slow_repeats": args.slow_repeats, "lr": LR,
                     "small_sizes_repeats": args.repeats * SMALL_REPEATS,
                     # torchlr.fit's own default (FitConfig.threads); the references use
                     # torch_threads above.
                     "torchlr_fit_threads": fit_threads,
                     "sklearn_eta0": {s: sklearn_eta0(SIZES[s].d) for s in names},
                     "skipped": sorted(skip)},
        "sizes": {},
    }
    print(f"machine: {info['cpu']} ({info['cpu_count']} CPUs, {info['torch_threads']} torch "
          f"threads; torchlr.fit uses {report['settings']['torchlr_fit_threads'] or 'the same'} "
          f"on the CPU), "
          f"GPU: {info['gpu'] or 'none'}, torch {info['torch']}, {report['date']}")
    for name in names:
        record = bench_size(SIZES[name], args.repeats, args.slow_repeats, skip)
        report["sizes"][name] = record
        print_size(record)
    if not args.no_rss and "1Mx100" in names:
        report["peak_rss_1Mx100"] = measure_rss("1Mx100")
        print("\n== peak RSS, training 1Mx100 (each in its own process) ==")
        print_rss(report["peak_rss_1Mx100"])
    report["targets"] = check_targets(report["sizes"], info)
    report["machine"]["load_avg_at_end"] = (list(os.getloadavg())
                                            if hasattr(os, "getloadavg") else None)
    if report["targets"]:
        print("\n== targets (time ratio, torchlr over reference, or µs per step; this run) ==")
        for t in report["targets"]:
            print(f"{t['size']:<8} {LABELS[t['impl']]:<20} / {LABELS[t['against']]:<18} "
                  f"{t['ratio']:8.3f} {_spread(t):>15}  (at most {t['at_most']})  "
                  f"{verdict(t, info, report['sizes']).replace('**missed**', 'MISSED')}")

    if out is None:
        return 0
    print()
    write_results(out, report)
    return 0


def write_results(out: Path, report: dict[str, Any]) -> None:
    """Write a results file whole (making its folder), then say where."""
    try:
        write_atomic(out, lambda f: f.write(json.dumps(report, indent=2) + "\n"), text=True)
    except OSError as err:  # checked before the run; something changed since
        raise UsageError(f"cannot write {out}: {err.strerror or err}") from None
    print(f"wrote {out}")


def read_like_for_like(machine: dict[str, Any], device: str) -> bool:
    """Whether a fit and the read pass ran on as many CPU threads.

    On the CPU with two cores or more, a fit runs a gather thread beside its steps (about
    1.6 cores, measured); a read pass on one torch thread is then not its floor.
    """
    return device != "cpu" or machine["cpu_count"] < 2 or machine["torch_threads"] >= 2


def verdict(target: dict[str, Any], machine: dict[str, Any], sizes: dict[str, Any]) -> str:
    """'met', '**missed**', or why the comparison does not count (for files of any date)."""
    device = sizes.get(target["size"], {}).get("size", {}).get("device", "cpu")
    if target["against"] == "read" and not read_like_for_like(machine, device):
        return "not like for like: the fit's two threads against a one-thread read"
    return "met" if target["met"] else "**missed**"


def check_targets(sizes: dict[str, Any], machine: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target whose size and figure were measured, with its value and verdict."""
    out = []
    for size, impl, ref, limit in TARGETS:
        row = sizes.get(size, {}).get("results", {}).get(impl)
        if row is None:
            continue
        if ref in OWN_FIGURES:  # x_read, or µs per step
            if OWN_FIGURES[ref] not in row:
                continue
            ratio, spread = row[OWN_FIGURES[ref]], row.get(f"{OWN_FIGURES[ref]}_range")
        else:
            if ref not in row.get("ratio", {}):
                continue
            ratio, spread = row["ratio"][ref], row["ratio_range"][ref]
        device = sizes[size]["size"]["device"]
        met = ratio <= limit if ref != "read" or read_like_for_like(machine, device) else None
        out.append({"size": size, "impl": impl, "against": ref, "at_most": limit,
                    "ratio": ratio, "rounds_range": spread, "met": met})
    return out


def _spread(target: dict[str, Any]) -> str:
    """A target's lowest and highest ratio over the rounds, as "[lo-hi]" (empty if none)."""
    spread = target.get("rounds_range")
    return f"[{spread[0]:.3f}-{spread[1]:.3f}]" if spread else ""


def markdown(report: dict[str, Any]) -> str:
    """The markdown tables for one results file (docs/performance.md, the README), each
    labelled with its machine and date."""
    m = report["machine"]
    fit_threads = report["settings"].get("torchlr_fit_threads")
    load = m.get("load_avg_at_start")
    where = (f"{m['gpu'] + ', ' if m['gpu'] else ''}{m['cpu']}, {m['cpu_count']} CPUs, "
             f"{m['torch_threads']} torch threads (torchlr.fit on the CPU: "
             f"{fit_threads or 'the same'}), "
             f"torch {m['torch']}, {report['date']}"
             + (f", 1-min load average {load[0]:.2f} at the start" if load else ""))
    lines = [f"Machine: {where}.", ""]
    for record in report["sizes"].values():
        size, rows = record["size"], record["results"]
        refs = [r for r in REFERENCES if r in rows]
        lines += [f"**{size['name']}** ({size['n']}x{size['d']}, batch {size['batch_size']}, "
                  f"{size['epochs']} epoch(s), {size['device']}):", "",
                  "| implementation | median ms | µs/step | samples/s | × read |"
                  + "".join(f" / {LABELS[r]} |" for r in refs),
                  "|---" * (5 + len(refs)) + "|"]
        for name, row in rows.items():
            cells = [LABELS[name], f"{row['median_s'] * 1e3:.4g}",
                     f"{row['us_per_step']:.1f}" if "us_per_step" in row else "",
                     f"{row['samples_per_s']:.3g}" if "samples_per_s" in row else "",
                     f"{row['x_read']:.1f}" if "x_read" in row else ""]
            cells += [f"{row['ratio'][r]:.3f}" if "ratio" in row else "" for r in refs]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if line := marginal_line(rows):
            lines += [line + ".", ""]
        for name, error in record.get("failed", {}).items():
            # The error's kind, without the advice torch appends to it.
            lines += [f"{LABELS[name]} failed at this size and is left out "
                      f"({error.split(',')[0]}).", ""]
    if report.get("targets"):
        lines += ["| size | torchlr | against | ratio | rounds | at most | |",
                  "|---|---|---|---|---|---|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['size']} | {LABELS[t['impl']]} | {LABELS[t['against']]} | "
                         f"{t['ratio']:.3f} | {_spread(t)} | {t['at_most']} | "
                         f"{verdict(t, m, report['sizes'])} |")
        lines.append("")
    mib = 2**20
    for impl, r in report.get("peak_rss_1Mx100", {}).items():
        lines.append(f"- {LABELS[impl]}, training 1Mx100: peak RSS {r['peak_rss'] / mib:.0f} MiB "
                     f"= {r['peak_over_data']:.2f}x the data ({r['data_bytes'] / mib:.0f} MiB); "
                     f"the fit itself added {(r['peak_rss'] - r['rss_before_fit']) / mib:.0f} MiB.")
    return "\n".join(lines)


def slug(name: str) -> str:
    """A machine's name as a file name: lower case, runs of other characters as one dash."""
    text = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    while "--" in text:
        text = text.replace("--", "-")
    return text


def default_name(info: dict[str, Any], fit_threads: Optional[int]) -> str:
    """results/<cpu-or-gpu>-<torch threads>t.json: one file per machine and thread count.

    The count is torch's, which the references run on. torchlr.fit sets its own
    (FitConfig.threads) while it fits: where that is not its default, the name says so
    (-fit<N>t), or `--threads 2` on two cores, which fits on 2 threads, would take the name
    of the default run, which fits on 1.
    """
    fit = "" if fit_threads == torchlr.FitConfig().threads else f"-fit{fit_threads}t"
    return f"{slug(info['gpu'] or info['cpu'])}-{info['torch_threads']}t{fit}.json"


if __name__ == "__main__":
    sys.exit(main())
