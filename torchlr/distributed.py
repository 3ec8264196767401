"""Data-parallel training over torch.distributed: process groups, sharded batches, reductions.

Every rank holds the same parameters and draws the same batch order from the seed. Each
global batch of `batch_size` rows is cut into contiguous slices, one per rank (the first
`len % world_size` ranks get one row more, so a short last batch may leave a rank with none).
Gradients are summed across ranks and divided by the global batch length, so an N-process run
takes the single-process steps up to float rounding.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, NoReturn, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from torchlr import analytic
from torchlr.data import batch_order
from torchlr.devices import resolve_device
from torchlr.scratch import linreg, sgd, squared_loss
from torchlr.stream import BlockStream, block_order
from torchlr.summed_loss import loss_sum
from torchlr.terminal import TORCHRUN_VARS, in_torchrun  # noqa: F401 (in_torchrun: part of this API)
from torchlr.validation import check_data

BACKENDS = ("gloo", "nccl")
# Long enough for ranks that start minutes apart on different machines, short enough that a
# rank stuck on a dead peer gives up instead of hanging the job.
DEFAULT_TIMEOUT = 300.0
MIN_TIMEOUT, MAX_TIMEOUT = 0.001, 7 * 24 * 3600.0
LOOPBACK = "127.0.0.1"


class WorkerError(RuntimeError):
    """A worker process started by `launch` failed."""


def default_backend(device: torch.device | str) -> str:
    """The collective backend for a device: NCCL for CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def is_distributed() -> bool:
    """True inside an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 outside one."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the default group; 1 outside one."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the one process that prints and writes files (rank 0, or the only process)."""
    return rank() == 0


def setup(device: str | torch.device = "auto", *, backend: Optional[str] = None,
          timeout: float = DEFAULT_TIMEOUT, store: Optional[dist.Store] = None) -> torch.device:
    """Join the process group described by torchrun's env vars; return this rank's device.

    Without `store` the ranks meet at MASTER_ADDR:MASTER_PORT (torchrun sets both).
    """
    if not in_torchrun():
        missing = [name for name in TORCHRUN_VARS if name not in os.environ]
        raise ValueError(
            f"Cannot join a process group: environment variables {missing} are not set; "
            "start the processes with torchrun or torchlr.distributed.launch."
        )
    _check_timeout(timeout)
    local_rank = int(os.environ["LOCAL_RANK"])
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if str(device).strip().lower() in ("auto", "cuda"):
            # One GPU per process on each machine: local rank k takes cuda:k.
            resolved = resolve_device(f"cuda:{local_rank}")
        torch.cuda.set_device(resolved)
    backend = default_backend(resolved) if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}.")
    if backend == "nccl" and resolved.type != "cuda":
        raise ValueError(f"backend='nccl' needs a CUDA device, got device={device!r}")
    if not is_distributed():
        wait = timedelta(seconds=timeout)
        if store is None:
            dist.init_process_group(backend, init_method="env://", timeout=wait)
        else:
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]), timeout=wait)
    return resolved


def teardown() -> None:
    """Leave the process group, if this process is in one."""
    if is_distributed():
        dist.destroy_process_group()


def exit_now(code: int) -> NoReturn:
    """End this worker process at once, after flushing stdout and stderr.

    A worker that has left its process group is done; the interpreter's own shutdown can
    still abort it ("terminate called without an active exception", seen with gloo on
    torch 2.13 in about one run in ten), which turns a finished run into a failed job.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def shard_bounds(length: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous slice of `length` rows; sizes differ by at most one."""
    base, extra = divmod(length, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place; returns it. A no-op outside a process group."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class ScratchDataParallel:
    """The chapter's step on this rank's slice: summed gradients all-reduced, then sgd."""

    def __init__(self, model: Any) -> None:
        self.model = model  # a train.ScratchModel: w (d, 1), b (1,), lr
        self.batch_means = model.batch_means  # the ranks' sums are summed before it

    def step(self, X: torch.Tensor, y: torch.Tensor, batch_len: int) -> torch.Tensor:
        """One update; returns the summed loss over this rank's rows (0-d)."""
        w, b = self.model.w, self.model.b
        total = squared_loss(linreg(X, w, b), y).sum()
        total.backward()  # a rank with no rows gets zero gradients, not None
        grads = torch.cat([w.grad.reshape(-1), b.grad.reshape(-1)])  # (d + 1,): one collective
        all_reduce_sum(grads)
        w.grad.copy_(grads[:-1].reshape(w.shape))
        b.grad.copy_(grads[-1:])
        # The global batch length: the update is the mean over the whole global batch.
        sgd([w, b], self.model.lr, batch_len)
        return total.detach()


class ConciseDataParallel:
    """DistributedDataParallel around the nn.Module, its loss scaled to the global mean."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model  # a train.ConciseModel: module, optimizer (at lr / 2)
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(model.module, device_ids=ids)

    def step(self, X: torch.Tensor, y: torch.Tensor, batch_len: int) -> torch.Tensor:
        """One update; returns the summed squared error over this rank's rows (0-d)."""
        y_hat = self.ddp(X)  # (rows, 1), rows possibly 0
        # Summed, not averaged: the mean of an empty slice is NaN.
        local = nn.functional.mse_loss(y_hat, y.reshape(y_hat.shape), reduction="sum")
        # DDP divides the summed gradients by world_size; this factor turns that into the
        # gradient of MSELoss over the whole global batch, as in the one-process step.
        loss = local * (dist.get_world_size() / batch_len)
        self.model.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.model.optimizer.step()
        return local.detach()

    # The ranks' summed squared errors, like the analytic steps' sums of r^2.
    batch_means = staticmethod(analytic.batch_means)


def from_collective(exc: BaseException) -> bool:
    """Whether exc came out of torch.distributed: a collective whose peer died, stalled past
    the timeout or broke off (gloo raises a plain RuntimeError, so its type cannot say)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}torch{os.sep}distributed{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _check_timeout(timeout: Any) -> None:
    if isinstance(timeout, bool) or not (isinstance(timeout, (int, float)) and timeout > 0
                                         and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    why = timeout_out_of_range(timeout)
    if why:
        raise ValueError(f"timeout {why}")


def timeout_out_of_range(seconds: float) -> str:
    """Why a positive timeout cannot be used, or ''. The store counts whole milliseconds (1e-9
    was 0 ms: every wait failed at once), and its deadline, now plus the timeout in
    nanoseconds, overflows int64 from about 7.4e9 s (then a collective hung for good)."""
    if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:
        return (f"must be from {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g} seconds (a week), "
                f"got {seconds:g}")
    return ""


def exact_number(text: str) -> float:
    """A text as a number check_same compares exactly: the first 13 hex digits (52 bits) of
    its SHA-256, an integer that float64 holds without rounding (it has 53 bits)."""
    return float(int(hashlib.sha256(text.encode()).hexdigest()[:13], 16))


@contextmanager
def told_to_group(group: Optional[DataParallel], device: torch.device) -> Iterator[None]:
    """In a process group, tell every rank whether this rank's block of work failed.

    A rank that refuses its data or checkpoint alone would leave the others waiting in
    their next collective until the timeout: here each rank says, and all raise together.
    Outside a group it does nothing.
    """
    if group is None:
        yield
        return
    try:
        yield
    except Exception:  # a bad file or checkpoint, an unreadable path...
        group.all_succeeded(device, failed=True)
        raise  # this rank's own error
    group.all_succeeded(device, failed=False)


@dataclass(frozen=True)
class DataParallel:
    """This rank's place in the group, and what fit() does differently in it."""

    rank: int
    world_size: int

    def check_same(self, values: Mapping[str, float], device: torch.device) -> None:
        """Raise ValueError on every rank if the ranks disagree on any of `values`."""
        # On the training device: NCCL reduces only CUDA tensors.
        local = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        low, high = local.clone(), local.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        differ = [name for name, lo, hi in zip(values, low, high) if lo != hi]
        if differ:
            raise ValueError(
                f"The {self.world_size} processes disagree on {differ}: every rank must "
                "train with the same options on the same data."
            )

    def all_succeeded(self, device: torch.device, failed: bool) -> None:
        """Every rank says whether its preparation failed; if another's did, raise a
        ValueError that points to it (a failed rank raises its own error: told_to_group)."""
        flags = torch.zeros(self.world_size, dtype=torch.float64, device=device)
        flags[self.rank] = float(failed)
        dist.all_reduce(flags)
        failures = [rank for rank, flag in enumerate(flags.tolist()) if flag]
        if failures and not failed:
            raise ValueError(f"process {failures[0]} of the group refused the run (its own "
                             f"error says why); every process stops")

    def barrier(self, device: torch.device) -> None:
        """Wait until every rank is here (rank 0 may still be writing a checkpoint)."""
        if dist.get_backend() == "nccl":  # on the GPU this rank trains on
            index = device.index if device.index is not None else torch.cuda.current_device()
            dist.barrier(device_ids=[index])
        else:
            dist.barrier()

    def wrap(self, model: Any, device: torch.device) -> Any:
        """The data-parallel version of a ScratchModel or ConciseModel."""
        if hasattr(model, "module"):
            return ConciseDataParallel(model, device)
        return ScratchDataParallel(model)

    def batches(
        self,
        batch_size: int,
        features: Any,
        labels: Any,
        *,
        generator: torch.Generator,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        permutation: str = "randperm",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Yield (X, y, global batch length): this rank's slice of each global batch.

        `features` is a tensor (then `labels` too) or a BlockStream, read row by row.
        permutation is data_iter's, for a tensor (a stream's blocks set its order).
        """
        if isinstance(features, BlockStream):
            return self._stream_slices(features, batch_size, generator, drop_last, device)
        n = len(features)
        # The same draw as data_iter's, so every rank and a single process see one order.
        order = batch_order(n, generator=generator, device=features.device,
                            permutation=permutation)
        assert order is not None
        stop = n - n % batch_size if drop_last else n
        return self._slices(batch_size, features, labels, order, stop)

    def _slices(self, batch_size: int, features: torch.Tensor, labels: torch.Tensor,
                order: torch.Tensor, stop: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        for start in range(0, stop, batch_size):
            length = min(batch_size, stop - start)
            lo, hi = shard_bounds(length, self.rank, self.world_size)
            idx = order[start + lo:start + hi]
            yield features.index_select(0, idx), labels.index_select(0, idx), length

    def _mine(self, positions: torch.Tensor, batch_size: int, stop: int) -> torch.Tensor:
        """Which of these positions in the epoch's row sequence fall in this rank's slices."""
        k, j = positions // batch_size, positions % batch_size  # batch, place in the batch
        length = torch.clamp(stop - k * batch_size, max=batch_size)  # the last may be short
        base, extra = length // self.world_size, length % self.world_size
        lo = self.rank * base + torch.clamp(extra, max=self.rank)
        hi = lo + base + (self.rank < extra).long()
        return (j >= lo) & (j < hi) & (positions < stop)

    def _stream_slices(self, stream: BlockStream, batch_size: int, generator: torch.Generator,
                       drop_last: bool, device: torch.device | str | None,
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        # The epoch's row sequence is the stream's: blocks in a random order, rows permuted
        # within each, cut into global batches. Each rank reads only the rows of its slices.
        device = "cpu" if device is None else device
        n = stream.shape[0]
        stop = n - n % batch_size if drop_last else n
        num_batches = math.ceil(stop / batch_size)
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # rows read, not yet yielded
        pos = 0  # position of the next block's first row in the sequence
        k = 0  # the next global batch to yield
        # Every block is drawn, even past `stop`: the generator ends the epoch as in one process.
        for start, perm in block_order(n, stream.block_rows, generator):
            positions = torch.arange(pos, pos + len(perm))
            keep = self._mine(positions, batch_size, stop)
            if keep.any():
                X, y = stream.rows(start + perm[keep])
                pending.append((X.to(device), y.to(device)))
            pos += len(perm)
            while k < num_batches and min((k + 1) * batch_size, stop) <= pos:
                length = min(batch_size, stop - k * batch_size)
                lo, hi = shard_bounds(length, self.rank, self.world_size)
                X, y = _take(pending, hi - lo, stream.shape[1])
                yield X.to(device), y.to(device), length  # a no-op but for an empty slice
                k += 1

    def read(self, step_losses: list[torch.Tensor]) -> torch.Tensor:
        """Sum the ranks' shares of the pending minibatch losses, then bring them to the host."""
        chunk = torch.stack(step_losses)  # one collective for the whole interval
        step_losses.clear()
        return all_reduce_sum(chunk).cpu()

    @torch.no_grad()
    def mean_loss(self, features: Any, labels: Any, w: torch.Tensor, b: torch.Tensor,
                  loss_scale: float = 1.0) -> torch.Tensor:
        """Mean squared_loss over the whole data set, each rank summing its own rows (0-d)."""
        n = features.shape[0]
        lo, hi = shard_bounds(n, self.rank, self.world_size)
        if isinstance(features, BlockStream):
            return (all_reduce_sum(features.loss_sum(w, b, lo, hi, loss_scale)) / n).float()
        # float32 over the wire, as before loss_sum was float64 (a group_agreement's "stream").
        total = loss_sum(features[lo:hi], labels[lo:hi], w, b, loss_scale).float()
        return all_reduce_sum(total) / n


def _take(pending: list[tuple[torch.Tensor, torch.Tensor]], count: int,
          num_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove and return the first `count` rows of the pending (X, y) pieces."""
    Xs, ys = [], []
    while count > 0:
        X, y = pending[0]
        if len(X) > count:
            Xs.append(X[:count])
            ys.append(y[:count])
            pending[0] = (X[count:], y[count:])
            break
        Xs.append(X)
        ys.append(y)
        pending.pop(0)
        count -= len(X)
    if not Xs:  # no rows of this batch for this rank
        # float32 like the stream's rows, whatever the default dtype (fit allows float64).
        return (torch.empty(0, num_features, dtype=torch.float32),
                torch.empty(0, 1, dtype=torch.float32))
    return (Xs[0], ys[0]) if len(Xs) == 1 else (torch.cat(Xs), torch.cat(ys))


def current() -> Optional[DataParallel]:
    """This rank's DataParallel inside an initialized process group, else None."""
    if not is_distributed():
        return None
    return DataParallel(dist.get_rank(), dist.get_world_size())


def _worker(local_rank: int, fn: Callable[..., Any], args: tuple, world: int, port: int,
            device: str, backend: Optional[str], timeout: float, folder: str) -> None:
    os.environ.update(MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port), RANK=str(local_rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
    # Like torchrun's OMP_NUM_THREADS=1: N workers with a full thread pool each would
    # oversubscribe the cores, and a collective then waits on a descheduled peer.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        _mark(folder, local_rank, "joining the group")
        store = dist.TCPStore(LOOPBACK, port, world, is_master=False,
                              timeout=timedelta(seconds=timeout))
        setup(device, backend=backend, timeout=timeout, store=store)
        _mark(folder, local_rank, "running")
        result = fn(*args)
        if local_rank == 0:
            torch.save(result, os.path.join(folder, "result.pt"))
        _mark(folder, local_rank, "leaving the group")
    except BaseException as exc:
        # When one rank fails its peers fail too, on a broken connection; the time of each
        # error, written before this rank leaves the group, names the rank that failed first.
        _write(os.path.join(folder, f"error-{local_rank}.txt"),
               f"{time.time()!r}\n{type(exc).__name__}: {exc}")
        raise
    finally:
        teardown()
    _mark(folder, local_rank, "exiting after its work")
    exit_now(0)


def _write(path: str, text: str) -> None:
    # Whole or not at all: spawn may stop this process while it writes.
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _mark(folder: str, rank: int, stage: str) -> None:
    # Where a worker was: a process killed by a signal leaves no Python error to report.
    _write(os.path.join(folder, f"stage-{rank}.txt"), stage)


def _stage(folder: str, rank: int) -> str:
    path = os.path.join(folder, f"stage-{rank}.txt")
    if not os.path.exists(path):
        return "starting"
    with open(path) as f:
        return f.read()


def _first_failures(folder: str, world: int) -> list[str]:
    """One line per rank that recorded an error, earliest first."""
    found = []
    for r in range(world):
        path = os.path.join(folder, f"error-{r}.txt")
        if os.path.exists(path):
            with open(path) as f:
                stamp, _, message = f.read().partition("\n")
            first_line = message.strip().splitlines()[0] if message.strip() else "(no message)"
            found.append((float(stamp), f"rank {r}: {first_line}"))
    return [line for _, line in sorted(found)]


def launch(fn: Callable[..., Any], nprocs: int = 2, *, args: tuple = (), device: str = "auto",
           backend: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Run fn(*args) in `nprocs` local processes forming one group; return rank 0's result.

    The processes are started with torch.multiprocessing's spawn, so `fn` and `args` must be
    picklable (a function defined at the top level of a module). A worker that raises or is
    killed stops them all, and WorkerError names the rank that failed first.
    """
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs must be a positive int, got {nprocs!r}")
    _check_timeout(timeout)  # here, before the store takes it: its error named no argument
    with tempfile.TemporaryDirectory(prefix="torchlr-launch-") as folder:
        # Results and errors go through files, not a queue: a large result in a pipe would
        # block rank 0 before it exits.
        # The rendezvous store lives here, on a port the OS picks as it binds: no other
        # program can take the port between choosing it and listening on it.
        store = dist.TCPStore(LOOPBACK, 0, nprocs, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=timeout))
        context = mp.start_processes(
            _worker,
            args=(fn, args, nprocs, store.port, device, backend, timeout, folder),
            nprocs=nprocs,
            join=False,
            start_method="spawn",
        )
        try:
            while not context.join():
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            # A rank killed by a signal leaves no Python error; its peers' errors (a broken
            # connection) follow from it, so it is named first. SIGTERM is spawn's own stop.
            killed = [
                f"rank {r}: killed by {signal.Signals(-p.exitcode).name} while {_stage(folder, r)}"
                for r, p in enumerate(context.processes)
                if p.exitcode is not None and p.exitcode < 0 and -p.exitcode != signal.SIGTERM
            ]
            failures = killed + _first_failures(folder, nprocs) or [str(exc).strip()]
            raise WorkerError(
                f"{len(failures)} of {nprocs} worker(s) failed, first {failures[0]}"
                + "".join(f"\n  then {line}" for line in failures[1:])
            ) from exc
        except BaseException:  # Ctrl-C in a notebook: leave no worker behind
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
                process.join(timeout=10)
            raise
        return torch.load(os.path.join(folder, "result.pt"), weights_only=False)


def _fit_worker(features: torch.Tensor, labels: torch.Tensor, options: dict[str, Any]) -> Any:
    from torchlr.train import fit  # here, not at the top: train imports this module

    return fit(features, labels, **options)


def launch_fit(features: torch.Tensor, labels: torch.Tensor, nprocs: int = 2, *,
               backend: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
               **options: Any) -> Any:
    """torchlr.fit on `nprocs` local processes (options as fit's); returns rank 0's FitResult."""
    if isinstance(features, BlockStream):  # its memory map cannot be sent to a process
        raise TypeError("launch_fit takes tensors or arrays; to train on a BlockStream, call "
                        "launch(fn) with a top-level fn that opens the stream in each process")
    # Checked here, as fit would check them, before any process starts: a worker's error
    # came back a second or more later, wrapped in a WorkerError.
    from torchlr.train import configured  # train imports this module

    config = configured(options.get("config"),
                        {k: v for k, v in options.items() if k not in ("config", "on_progress")},
                        "launch_fit", ("config", "on_progress", "nprocs", "backend", "timeout"))
    config.validate()
    resolve_device(config.device)
    check_data(features, labels)
    return launch(_fit_worker, nprocs, args=(features, labels, options), device=config.device,
                  backend=backend, timeout=timeout)
