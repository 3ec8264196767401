"""CUDA graphs: an epoch's full batches replayed from one captured step.

At the chapter's size a step is a dozen tiny kernels, and launching them from Python costs
far more than running them. Captured once, the whole step (the batch's gather, forward,
backward and update) is one launch. A graph replays the same kernels on the same
addresses, so everything the step touches stays put: the data set, the epoch's order
(copied into a fixed buffer each epoch), a step counter on the device, and the buffer
each step writes its loss into. The short last batch, whose shape differs, runs as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import torch

from torchlr.data import batch_order

# Eager steps, on the capture stream, before the capture: lazily created state (cuBLAS
# handles and workspaces, the autograd engine's streams) must exist before a capture
# starts. They are real steps of the first epoch, so the run's numbers do not change.
WARMUP_STEPS = 3


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
    try:
        with torch.cuda.graph(graph, stream=stream):
            fn()
    except RuntimeError as err:
        raise RuntimeError(f"cuda_graphs: capturing the training step failed ({err}); "
                           f"train without cuda_graphs") from err
    return graph.replay  # the bound method keeps the graph, and its memory, alive


class GraphedSteps:
    """An epoch of model steps: each full batch one graph replay, the short last batch eager.

    batches(generator) draws the epoch's order and yields what step() takes: (i,) for the
    i-th full batch, gathered inside the graph, and (X, y) for a short last batch. Where
    nothing can be captured the same device-side step runs eagerly, every step: that is how
    it runs on the CPU, where the tests check it against the usual loop.
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 params: Sequence[torch.Tensor], features: torch.Tensor, labels: torch.Tensor,
                 batch_size: int, drop_last: bool) -> None:
        self.model_step = step
        self.params = list(params)  # the leaves the step updates
        self.X, self.y = features, labels
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
        self.replay: Optional[Callable[[], None]] = None
        self.warmed = 0  # eager steps run before the capture

    def batches(self, generator: torch.Generator) -> Iterator[tuple[Any, ...]]:
        """One epoch: (i,) for each full batch, then (X, y) for a short last batch."""
        order = batch_order(len(self.X), generator=generator)  # on the CPU: as every fit draws it
        cut = len(self.order)
        # Queued behind the last epoch's steps, which read the old order until they finish.
        self.order.copy_(order[:cut])
        self.counter.zero_()
        for i in range(self.full):
            yield (i,)
        if self.tail:
            idx = order[cut:].to(self.X.device)
            yield self.X.index_select(0, idx), self.y.index_select(0, idx)

    def step(self, *batch: Any) -> torch.Tensor:
        """One step: the model's own on a short last batch (X, y), else full batch (i,)."""
        if len(batch) == 2:
            return self.model_step(*batch)
        (i,) = batch
        if self.replay is not None:
            self.replay()
        elif not self.graphable:
            self._device_step()
        elif self.warmed < WARMUP_STEPS:
            warm_up(self._device_step, self.stream)
            self.warmed += 1
        else:
            for p in self.params:
                # So the captured backward allocates its gradients from the graph's memory.
                p.grad = None
            self.replay = capture(self._device_step, self.stream)
            self.replay()  # the capture recorded this batch's step without running it
        return self.losses[i]

    def _device_step(self) -> None:
        """The step the graph holds: gather batch `counter`, step on it, keep its loss."""
        rows = self.batch_rows.index_select(0, self.counter).view(-1)  # (batch_size,)
        X, y = self.X.index_select(0, rows), self.y.index_select(0, rows)
        self.losses.index_copy_(0, self.counter, self.model_step(X, y).reshape(1))
        self.counter.add_(1)
