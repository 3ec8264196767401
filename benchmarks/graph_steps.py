"""Where a graphed chapter-sized step spends its time, on a CUDA GPU.

For each model (scratch and concise, autograd and analytic gradient) it captures what
cuda_graphs=True replays, a one-step graph and a chunk of steps, and times each over many
epochs of the chapter's data, in µs per step:
  fit          torchlr.fit(cuda_graphs=True): the extra time per extra step (marginal);
  replay       the graph replayed in a bare Python loop, no fit around it;
  host         that loop's time to queue its replays, not waiting for the GPU;
  gpu          an epoch of the same work captured as one graph, replayed once per epoch:
               what the GPU itself needs per step, with no launch cost left.
If `replay` is near `gpu`, a step is bound by the GPU running its kernels and only fewer
kernels help; if it is near `host`, fewer launches would. Then, at the chapter's batch and
at 10Mx100's (8192 rows of 100 features):
  kernels      one eager step under torch.profiler: how many kernels it launches, each
               one's GPU time, and their sum (the gaps between them not counted);
  chunk gpu    (10Mx100's batch only) `gpu` above for a chunk of 16 such steps: what an
               epoch's 1,221 steps need of the GPU, at the least, before any launch cost.
Then a graphed fit of TIMELINE_EPOCHS chapter epochs under torch.profiler:
  timeline     the GPU's busy and idle µs per step, and its longest idle stretches, each
               with the host calls that began during it: where the fit's time beyond its
               steps' kernels goes.
Also times the 10Mx100 epoch's fixed work on this machine's CPU: the permutation of 10M
rows and its copy to the GPU. Writes results/<card>-graph-steps.json.

  python benchmarks/graph_steps.py [--epochs 30] [--out PATH | --out-dir DIR]
"""

from __future__ import annotations

import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch

import torchlr
from torchlr import graphs
from torchlr.data import batch_order
from torchlr.train import ANALYTIC_MODELS, MODELS

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench.py, beside this file
import bench  # noqa: E402  (found on the path above)

PROG = "graph_steps.py"
# Where it all runs. tests/test_bench.py sets the CPU, with a stand-in for the capture, to
# check this script's own code without spending a GPU's time on it.
DEVICE = torch.device("cuda")
N, BATCH, LR = 1000, 10, 0.03  # the chapter's size: 100 full batches an epoch
# 10Mx100's batch and width, on a chunk's worth of rows (16 batches, 52 MB), at a rate that
# does not diverge on 100 unit-variance features (the kernels' times would not change, but
# a step of NaNs is not the step being measured).
BIG_BATCH, BIG_WIDTH, BIG_CHUNKS, BIG_LR = 8192, 100, 16, 0.005
PROFILED_STEPS = 20  # eager steps under the profiler, per model and size
TIMELINE_EPOCHS, LONGEST_IDLE = 6, 8  # the profiled fit's epochs; idle stretches listed
EPOCH_MARK = "graph_steps: epoch end"  # a range the profiled fit's on_progress marks
# A range's name (a kernel's holds '#' too, in its lambdas' names, but never starts so).
ANNOTATION = re.compile(r"[\w.]+#")


def chapter_data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data(torch.tensor([2.0, -3.4]), 4.2, N, generator=gen)
    return X.to(device), y.to(device)


def sync() -> None:
    """Wait for the GPU's queued work."""
    bench.sync(str(DEVICE))


def wall_us(fn: Callable[[], Any], steps: int) -> float:
    """µs per step of fn, which runs `steps` steps, the GPU's queued work included."""
    sync()  # nothing queued before fn is charged to it
    return bench.timed(fn, str(DEVICE)) / steps * 1e6


def error_line(err: Exception) -> str:
    """An error as the report keeps it: its type and the first line of its text."""
    return f"{type(err).__name__}: {str(err).splitlines()[0]}"


def profiled() -> Any:
    """torch.profiler over the host's calls, and the GPU's work where DEVICE is a GPU."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


def big_batch_data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """BIG_CHUNKS batches of 10Mx100's shape, drawn as synthetic_data draws them."""
    gen = torch.Generator().manual_seed(0)
    w = torch.linspace(-1.0, 1.0, BIG_WIDTH)
    X, y = torchlr.synthetic_data(w, 4.2, BIG_CHUNKS * BIG_BATCH, generator=gen)
    return X.to(device), y.to(device)


def model_on_data(model_class: Any, big: bool) -> tuple[Any, torch.Tensor, torch.Tensor, int,
                                                       torch.Generator]:
    """A model on DEVICE with its data, batch size and seeded generator: the chapter's, or
    (big) 10Mx100's batches."""
    X, y = big_batch_data(DEVICE) if big else chapter_data(DEVICE)
    gen = torch.Generator().manual_seed(0)
    model = model_class(X.shape[1], BIG_LR if big else LR, gen, DEVICE)
    return model, X, y, BIG_BATCH if big else BATCH, gen


def graphed_steps(model_class: Any, chunked: bool, big: bool = False) -> graphs.GraphedSteps:
    """A model's GraphedSteps on the chapter's data (big: 10Mx100's batches), after two
    epochs: warmed and captured."""
    model, X, y, batch, gen = model_on_data(model_class, big)
    graphed = graphs.GraphedSteps(model.step, model.leaves(), X, y, batch, drop_last=True)
    if not chunked:
        graphed.chunk = 1  # every full batch a one-step graph
    for _ in range(2):
        for batch in graphed.batches(gen):
            graphed.step(*batch)
    return graphed


def graph_units(graphed: graphs.GraphedSteps, chunked: bool) -> tuple[Any, int, int]:
    """The one-step or the chunk graph, how many of it make an epoch, and steps in each."""
    per_unit = graphed.chunk if chunked else 1
    return graphed.many if chunked else graphed.one, graphed.full // per_unit, per_unit


def epochs_of(graphed: graphs.GraphedSteps, epochs: int, launch: Callable[[], None],
              launches: int) -> Callable[[], None]:
    """A call that runs `epochs` epochs of `launches` launches each."""
    def run() -> None:
        for _ in range(epochs):
            graphed.counter.zero_()  # the one kernel outside the graphs, once per epoch
            for _ in range(launches):
                launch()
    return run


def replay_figures(graphed: graphs.GraphedSteps, chunked: bool, epochs: int) -> dict[str, float]:
    """replay and host µs per step for the one-step graph or the chunk graph."""
    unit, units, per_unit = graph_units(graphed, chunked)
    assert unit.replay is not None, "no graph was captured"
    steps = epochs * units * per_unit
    replays = epochs_of(graphed, epochs, unit.replay, units)
    out: dict[str, float] = {}
    replays()  # warm
    out["replay"] = wall_us(replays, steps)
    sync()
    start = time.perf_counter()
    replays()
    out["host"] = (time.perf_counter() - start) / steps * 1e6
    sync()
    return out


def gpu_figure(graphed: graphs.GraphedSteps, chunked: bool, epochs: int) -> float:
    """µs per step of the same work with an epoch of it captured as one graph."""
    unit, units, per_unit = graph_units(graphed, chunked)

    def epoch_of_units() -> None:
        for _ in range(units):
            unit.fn()

    graphed.counter.zero_()
    epoch_replays = epochs_of(graphed, epochs, graphs.capture(epoch_of_units, graphed.stream), 1)
    epoch_replays()  # warm
    return wall_us(epoch_replays, epochs * units * per_unit)


def profile_model(name: str, model_class: Any, epochs: int,
                  errors: dict[str, str]) -> dict[str, Any]:
    """One model's figures, in µs per step; a part that raises is noted in errors."""
    out: dict[str, Any] = {}

    def part(key: str, fn: Callable[[], Any]) -> None:
        # Each part on its own: on an H100 the one-graph epoch of the autograd models'
        # chunks failed to capture once, and took the model's other figures with it.
        try:
            out[key] = fn()
        except Exception as err:  # noqa: BLE001  (the report names it)
            errors[f"{name}: {key}"] = error_line(err)

    one = graphed_steps(model_class, chunked=False)
    chunked = graphed_steps(model_class, chunked=True)
    out["chunk_length"] = chunked.chunk
    for key, graphed, is_chunk in (("one_step", one, False), ("chunk", chunked, True)):
        part(key, partial(replay_figures, graphed, is_chunk, epochs))
        if key in out:
            part(key + "_gpu", partial(gpu_figure, graphed, is_chunk, epochs))
            if key + "_gpu" in out:
                out[key]["gpu"] = out.pop(key + "_gpu")
    impl = name.split()[0]
    gradient = "analytic" if "analytic" in name else "autograd"
    X, y = chapter_data(torch.device("cpu"))

    def fit(num_epochs: int) -> Callable[[], Any]:
        return lambda: torchlr.fit(X, y, impl=impl, gradient=gradient, device=str(DEVICE),
                                   cuda_graphs=True, num_epochs=num_epochs, drop_last=True)

    def marginal() -> float:
        fit(3)()  # warm
        short = wall_us(fit(3), 1) / 1e6
        long = wall_us(fit(3 + epochs), 1) / 1e6
        return (long - short) / (epochs * chunked.full) * 1e6

    part("fit_marginal", marginal)
    return out


def is_kernel(event: Any) -> bool:
    """Whether a profiler event is work on the device: a GPU kernel, copy or fill; on the
    CPU (the tests), an aten op that no other called."""
    if DEVICE.type == "cuda":
        # Not a range a profiled optimizer.step() marks on the GPU's timeline, which
        # torch 2.11 lists among the kernels ("Optimizer.step#SGD.step").
        return (event.device_type == torch.autograd.DeviceType.CUDA
                and not getattr(event, "is_user_annotation", False)
                and not ANNOTATION.match(event.name))
    parent = event.cpu_parent
    return event.name.startswith("aten::") and not (parent and parent.name.startswith("aten::"))


def kernel_profile(model_class: Any, big: bool) -> dict[str, Any]:
    """The kernels of one eager step on a gathered batch, per step: how many, each one's
    launches and GPU µs (longest first), and their sums."""
    model, X, y, batch, gen = model_on_data(model_class, big)
    rows = torch.randperm(len(X), generator=gen)[:batch].to(DEVICE)

    def step() -> None:  # a graph gathers a chunk's batches at once; here each step its own
        model.step(X.index_select(0, rows), y.index_select(0, rows))

    for _ in range(3):  # cuBLAS's handles and the autograd engine's state exist before
        step()
    sync()
    with profiled() as prof:
        for _ in range(PROFILED_STEPS):
            step()
        sync()
    by_name: dict[str, list[float]] = {}
    for event in prof.events():
        if is_kernel(event):
            entry = by_name.setdefault(event.name[:160], [0, 0.0])
            entry[0] += 1
            entry[1] += event.time_range.elapsed_us()
    kernels = sorted(({"name": name, "per_step": count / PROFILED_STEPS,
                       "us_per_step": us / PROFILED_STEPS}
                      for name, (count, us) in by_name.items()),
                     key=lambda k: -k["us_per_step"])
    return {"kernels_per_step": sum(k["per_step"] for k in kernels),
            "gpu_us_per_step": sum(k["us_per_step"] for k in kernels), "kernels": kernels}


def fit_timeline(impl: str) -> dict[str, Any]:
    """A graphed fit's GPU timeline at the chapter's size, over its epochs after the second
    (the first two hold the warm-ups and captures): busy and idle µs per step, and the
    longest idle stretches, each with the host calls (by total µs) that began in it."""
    X, y = chapter_data(torch.device("cpu"))

    def mark_epoch_end(progress: torchlr.Progress) -> None:
        if progress.epoch_loss is not None:
            with torch.profiler.record_function(EPOCH_MARK):
                pass

    def fit() -> None:
        torchlr.fit(X, y, impl=impl, device=str(DEVICE), cuda_graphs=True,
                    num_epochs=TIMELINE_EPOCHS, drop_last=True, on_progress=mark_epoch_end)

    fit()  # warm: the first fit of a process also loads kernels
    sync()
    with profiled() as prof:
        fit()
        sync()
    events = list(prof.events())
    marks = sorted(e.time_range.start for e in events if e.name == EPOCH_MARK)
    first, last = marks[1], marks[-1]  # the ends of epoch 2 and of the last epoch
    work = sorted((e for e in events if is_kernel(e) and first <= e.time_range.start < last),
                  key=lambda e: e.time_range.start)
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU
            and not is_kernel(e) and e.name != EPOCH_MARK]
    steps = (len(marks) - 2) * (N // BATCH)
    busy = sum(min(e.time_range.end, last) - e.time_range.start for e in work)
    # Idle: from each piece of work's end (or the window's start) to the next one's start.
    edges = [(first, "end of epoch 2")] + [(e.time_range.end, e.name) for e in work]
    nexts = [(e.time_range.start, e.name) for e in work] + [(last, "end of the last epoch")]
    gaps = sorted(((b - a, name_a, name_b, a, b) for (a, name_a), (b, name_b)
                   in zip(edges, nexts) if b > a), key=lambda g: -g[0])
    longest = []
    for gap, before, after, start, end in gaps[:LONGEST_IDLE]:
        calls: dict[str, float] = {}
        for e in host:
            if start <= e.time_range.start < end:
                calls[e.name] = calls.get(e.name, 0.0) + e.time_range.elapsed_us()
        top = sorted(calls.items(), key=lambda c: -c[1])[:6]
        longest.append({"us": gap, "after": before[:80], "before": after[:80],
                        "host_us": {name: round(us, 1) for name, us in top}})
    return {"steps": steps, "gpu_busy_us_per_step": busy / steps,
            "gpu_idle_us_per_step": (last - first - busy) / steps, "longest_idle": longest}


def fixed_work_10m() -> dict[str, float]:
    """Seconds of the 10Mx100 epoch's permutation, drawn on the CPU, and of its copy over;
    and of permutation="hashed"'s, computed on the GPU (the best of 3: the first of a
    process also pays for loading the sort's kernels)."""
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    order = batch_order(10_000_000, generator=gen)
    drawn = time.perf_counter() - start
    buffer = torch.empty_like(order, device=DEVICE)
    sync()
    start = time.perf_counter()
    buffer.copy_(order)
    sync()
    copied = time.perf_counter() - start
    hashed = []
    for _ in range(3):
        sync()
        start = time.perf_counter()
        batch_order(10_000_000, generator=gen, device=DEVICE, permutation="hashed")
        sync()
        hashed.append(time.perf_counter() - start)
    return {"randperm_10M_s": drawn, "copy_10M_order_to_gpu_s": copied,
            "hashed_10M_on_gpu_s": min(hashed)}


def main(argv: Optional[list[str]] = None) -> int:
    """Run, print and write the JSON; a bad command line or Ctrl-C said in one line."""
    return bench.run_command(PROG, _main, argv)


def _main(argv: Optional[list[str]]) -> int:
    parser = bench.results_parser(PROG, __doc__.splitlines()[0], "<card>-graph-steps.json")
    parser.add_argument("--epochs", type=bench._positive_int, default=30,
                        help="epochs per timing (default 30)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("graph_steps.py needs a CUDA device: there is none here", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name()
    out = bench.results_path(args, f"{bench.slug(card)}-graph-steps.json")  # checked first
    report: dict[str, Any] = {"gpu": card, "torch": torch.__version__,
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "epochs": args.epochs, "us_per_step": {}, "errors": {}}
    print(f"{card}, torch {torch.__version__}: µs per chapter-sized step "
          f"(one-step graph | chunk graph)")
    print(f"{'model':<18}{'fit':>7} {'replay':>7}{'host':>7}{'gpu':>7}  |{'chunk':>6} "
          f"{'replay':>7}{'host':>7}{'gpu':>7}")
    models = {"scratch": MODELS["scratch"], "concise": MODELS["concise"],
              "scratch analytic": ANALYTIC_MODELS["scratch"],
              "concise analytic": ANALYTIC_MODELS["concise"]}
    for name, model_class in models.items():
        try:
            r = profile_model(name, model_class, args.epochs, report["errors"])
        except Exception as err:  # the fits themselves failed: the other models still run
            report["errors"][name] = error_line(err)
            print(f"{name:<18}failed: {report['errors'][name]}")
            continue
        report["us_per_step"][name] = r

        def cells(figures: Optional[dict[str, float]]) -> str:
            keys = ("replay", "host", "gpu")
            figures = figures or {}
            return "".join(f"{figures[k]:7.1f}" if k in figures else f"{'-':>7}" for k in keys)

        fit = r.get("fit_marginal")
        print(f"{name:<18}{fit if fit is not None else float('nan'):7.1f} "
              f"{cells(r.get('one_step'))}  |{r['chunk_length']:6d} {cells(r.get('chunk'))}")
    report["kernels"] = {"chapter": {}, "10Mx100_batch": {}}
    report["chunk_gpu_us_per_step_10Mx100_batch"] = {}
    print("kernels of one eager step (kernels, their GPU µs); at 10Mx100's batch also a "
          "graphed chunk's GPU µs per step, and the kernel that takes longest")
    for name, model_class in models.items():
        line = f"{name:<18}"
        for size, big in (("chapter", False), ("10Mx100_batch", True)):
            try:
                k = report["kernels"][size][name] = kernel_profile(model_class, big)
            except Exception as err:  # noqa: BLE001  (the report names it)
                report["errors"][f"{name}: kernels at {size}"] = error_line(err)
                line += f"  {size}: failed"
                continue
            line += f"  {size}: {k['kernels_per_step']:4.1f} {k['gpu_us_per_step']:6.1f}"
        try:
            chunk = graphed_steps(model_class, chunked=True, big=True)
            per_step = gpu_figure(chunk, True, args.epochs)
            report["chunk_gpu_us_per_step_10Mx100_batch"][name] = per_step
            line += f"  chunk gpu {per_step:6.1f}"
        except Exception as err:  # noqa: BLE001
            report["errors"][f"{name}: 10Mx100 chunk gpu"] = error_line(err)
            line += "  chunk gpu failed"
        longest = report["kernels"]["10Mx100_batch"].get(name, {}).get("kernels")
        if longest:
            line += f"  ({longest[0]['us_per_step']:.1f} µs: {longest[0]['name'][:50]})"
        print(line)
    report["fit_timeline"] = {}
    for impl in ("scratch", "concise"):
        try:
            t = report["fit_timeline"][impl] = fit_timeline(impl)
        except Exception as err:  # noqa: BLE001
            report["errors"][f"{impl}: fit timeline"] = error_line(err)
            continue
        print(f"graphed {impl} fit, epochs 3-{TIMELINE_EPOCHS}: GPU busy "
              f"{t['gpu_busy_us_per_step']:.1f} µs/step, idle {t['gpu_idle_us_per_step']:.1f}; "
              f"longest idle stretches (µs): "
              + ", ".join(f"{g['us']:.0f}" for g in t["longest_idle"][:4]))
        for g in t["longest_idle"][:2]:
            print(f"  {g['us']:.0f} µs after {g['after'][:40]!r}: host "
                  + ", ".join(f"{name} {us:.0f}" for name, us in list(g["host_us"].items())[:4]))
    for where, error in report["errors"].items():
        print(f"failed: {where}: {error}")
    report["fixed_work_10Mx100"] = fixed_work_10m()
    print("10Mx100 fixed work: " + ", ".join(f"{k} {v:.3f}"
                                             for k, v in report["fixed_work_10Mx100"].items()))
    bench.write_results(out, report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
