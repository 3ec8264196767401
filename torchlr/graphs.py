"""CUDA graphs: an epoch's full batches replayed a chunk of steps at a time.

At the chapter's size a step is a dozen tiny kernels, and launching them from Python costs
far more than running them. Captured once, a whole chunk of steps (their batches' gather,
forwards, backwards and updates) is one launch. A graph replays the same kernels on the
same addresses, so everything the steps touch stays put: the data set, the epoch's order
(copied into a fixed buffer each epoch), a batch counter on the device, and the buffer
each step writes its loss into. The short last batch, whose shape differs, runs as usual.

Measured on an H100 (benchmarks/graph_steps.py), the GPU itself, not the launch, was the
bound of a one-step graph: about 2 µs per kernel. A chunk looks up and gathers all its
batches in one go, and writes all its losses and the counter once, so each step keeps
only the model's own kernels, and the host pays one launch per chunk.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import torch

from torchlr.data import batch_order, gather_labels

# Eager steps, on the capture stream, before the capture: lazily created state (cuBLAS
# handles and workspaces, the autograd engine's streams) must exist before a capture
# starts. They are real steps of the first epoch, so the run's numbers do not change.
WARMUP_STEPS = 3
# A chunk holds at most MAX_CHUNK batches and MAX_CHUNK_BYTES of gathered features. At
# 10 steps a chunk the host already took 0.4 µs a step to queue it on an H100, against
# the GPU's 14-16: longer chunks would gain little. The bytes bound the chunk's gather
# buffer at large batches (10Mx100 at batch 8192: 3.3 MB a batch).
MAX_CHUNK, MAX_CHUNK_BYTES = 16, 64 << 20


def chunk_length(full: int, batch_bytes: int) -> int:
    """How many full batches a captured chunk holds; 1 means a graph per step.

    A divisor of the epoch's full batches when one is at least half the cap, so that
    every epoch is whole chunks, with no one-step graphs left over to warm up and capture.
    """
    cap = min(MAX_CHUNK, full, MAX_CHUNK_BYTES // max(batch_bytes, 1))
    if cap < 2:
        return 1
    best = max(k for k in range(1, cap + 1) if full % k == 0)
    return best if 2 * best >= cap else cap


def capturable(device: torch.device) -> bool:
    """Whether steps on device can be captured as a CUDA graph."""
    return device.type == "cuda"


def check_device(device: torch.device, streaming: bool, distributed: bool) -> None:
    """Refuse cuda_graphs where there is no graph to capture, naming what to change."""
    if not capturable(device):
        raise ValueError(f"cuda_graphs=True needs a CUDA device, got device {str(device)!r}; "
                         f"pass device='cuda' or leave cuda_graphs off")
    if streaming:
        raise ValueError("cuda_graphs=True is not supported when streaming from disk")
    if distributed:
        raise ValueError("cuda_graphs=True is not supported in a process group")


def side_stream(device: torch.device) -> Any:
    """A stream of its own for the warm-ups and the capture."""
    return torch.cuda.Stream(device)


def warm_up(fn: Callable[[], None], stream: Any) -> None:
    """Run fn on stream, ordered after the work already queued and before what follows."""
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        fn()
    current.wait_stream(stream)


def capture(fn: Callable[[], None], stream: Any) -> Callable[[], None]:
    """Record fn's kernels on stream as a CUDA graph, without running them; return its replay."""
    graph = torch.cuda.CUDAGraph()
    # No garbage collection while capturing: one may free an earlier fit's graph, and CUDA
    # refuses to destroy a graph while a stream captures, which ends the capture in an error
    # (seen on an H200, torch 2.11, whose torch.cuda.graph no longer collects beforehand).
    collecting = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph, stream=stream):
            fn()
    except RuntimeError as err:
        raise RuntimeError(f"cuda_graphs: capturing the training step failed ({err}); "
                           f"train without cuda_graphs") from err
    finally:
        if collecting:
            gc.enable()
    return graph.replay  # the bound method keeps the graph, and its memory, alive


class _Captured:
    """fn run eagerly `warmups` times on the capture stream, then captured and replayed."""

    def __init__(self, fn: Callable[[], None], stream: Any, warmups: int,
                 params: Sequence[torch.Tensor]) -> None:
        # fn is a GraphedSteps method: held weakly, so the steps and their graphs form no
        # reference cycle, and go (the graphs' GPU memory with them) when the fit drops them.
        self._fn = weakref.WeakMethod(fn)  # type: ignore[arg-type]
        self.stream, self.warmups, self.params = stream, warmups, params
        self.warmed = 0
        self.replay: Optional[Callable[[], None]] = None

    @property
    def fn(self) -> Callable[[], None]:
        """The step function this graph holds."""
        fn = self._fn()
        assert fn is not None, "the GraphedSteps of this graph is gone"
        return fn

    def __call__(self) -> None:
        if self.replay is not None:
            self.replay()
        elif self.warmed < self.warmups:
            warm_up(self.fn, self.stream)
            self.warmed += 1
        else:
            for p in self.params:
                # So the captured backward allocates its gradients from the graph's memory.
                p.grad = None
            self.replay = capture(self.fn, self.stream)
            self.replay()  # the capture recorded fn's steps without running them


class GraphedSteps:
    """An epoch of model steps: full batches replayed a chunk of steps per graph launch, the
    short last batch eager.

    batches(generator) draws the epoch's order and yields what step() takes: (i,) for the
    i-th full batch, gathered inside the graph, and (X, y) for a short last batch. A chunk
    of `chunk` steps starts at each batch number that is a multiple of `chunk` and has a
    whole chunk left in the epoch; the other full batches are one-step graphs. The first
    chunk (and the first WARMUP_STEPS single steps) run eagerly, as warm-ups. Where nothing
    can be captured the same device-side step runs eagerly, one batch at a time: that is
    how it runs on the CPU, where the tests check it against the usual loop.
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 params: Sequence[torch.Tensor], features: torch.Tensor, labels: torch.Tensor,
                 batch_size: int, drop_last: bool, permutation: str = "randperm") -> None:
        self.model_step = step
        self.permutation = permutation  # how batches() draws each epoch's order
        self.params = list(params)  # the leaves the step updates
        self.X, self.y = features, labels
        self.batch_size = batch_size
        n = len(features)
        self.full = n // batch_size  # full batches per epoch
        self.tail = 0 if drop_last else n % batch_size  # rows of the short last batch
        device = features.device
        # The fixed addresses the graph reads and writes.
        self.order = torch.empty(self.full * batch_size, dtype=torch.long, device=device)
        self.batch_rows = self.order.view(self.full, batch_size)  # row i: batch i's rows
        self.counter = torch.zeros(1, dtype=torch.long, device=device)  # the batch to do next
        self.losses = torch.empty(self.full, dtype=features.dtype, device=device)
        self.graphable = capturable(device)
        self.stream = side_stream(device) if self.graphable else None
        row_bytes = features[0].numel() * features.element_size() if n else 0
        self.chunk = chunk_length(self.full, batch_size * row_bytes) if self.graphable else 1
        self.offsets = torch.arange(self.chunk, device=device)  # a chunk's batches from counter
        self.one = _Captured(self._device_step, self.stream, WARMUP_STEPS, self.params)
        self.many = _Captured(self._device_chunk, self.stream, -(-WARMUP_STEPS // self.chunk),
                              self.params)
        self.queued = 0  # this epoch's full batches whose steps are queued

    def batches(self, generator: torch.Generator,
                order: Optional[torch.Tensor] = None) -> Iterator[tuple[Any, ...]]:
        """One epoch: (i,) for each full batch, then (X, y) for a short last batch; in the
        order given (drawn already, on the data's device), else one drawn from generator."""
        if order is None:
            order = batch_order(len(self.X), generator=generator, permutation=self.permutation,
                                device=self.X.device)  # as every fit draws it
        cut = len(self.order)
        # Queued behind the last epoch's steps, which read the old order until they finish.
        self.order.copy_(order[:cut])
        self.counter.zero_()
        self.queued = 0
        for i in range(self.full):
            yield (i,)
        if self.tail:
            idx = order[cut:]
            yield self.X.index_select(0, idx), self.y.index_select(0, idx)

    def step(self, *batch: Any) -> torch.Tensor:
        """One step: the model's own on a short last batch (X, y), else full batch (i,),
        whose loss may already be queued by the chunk that holds it."""
        if len(batch) == 2:
            return self.model_step(*batch)
        (i,) = batch
        if i >= self.queued:
            if not self.graphable:
                self._device_step()
                self.queued = i + 1
            elif self.chunk > 1 and i % self.chunk == 0 and i + self.chunk <= self.full:
                self.many()
                self.queued = i + self.chunk
            else:
                self.one()
                self.queued = i + 1
        return self.losses[i]

    def _gather(self, batches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of the numbered batches, in order, in one gather each of X and y."""
        rows = self.batch_rows.index_select(0, batches).view(-1)  # (len(batches) * batch_size,)
        return self.X.index_select(0, rows), gather_labels(self.y, rows)

    def _device_step(self) -> None:
        """The step the one-step graph holds: gather batch `counter`, step, keep its loss."""
        X, y = self._gather(self.counter)
        self.losses.index_copy_(0, self.counter, self.model_step(X, y).reshape(1))
        self.counter.add_(1)

    def _device_chunk(self) -> None:
        """The steps a chunk holds: batches counter.. counter + chunk - 1, gathered at once."""
        batches = self.counter + self.offsets  # (chunk,)
        X, y = self._gather(batches)
        B = self.batch_size
        # Each step's batch is a view of the chunk's gather: the same rows, in order.
        losses = [self.model_step(X[j * B:(j + 1) * B], y[j * B:(j + 1) * B]).reshape(1)
                  for j in range(self.chunk)]
        self.losses.index_copy_(0, batches, torch.cat(losses))
        self.counter.add_(self.chunk)
