"""How many torch threads a fit on the CPU uses, restored when the fit ends."""

from __future__ import annotations

from types import TracebackType
from typing import Optional

import torch


class CpuThreads:
    """A context for one fit: limit() sets torch's CPU thread count, exit puts it back.

    A minibatch step's tensors are small (at batch 1024 x 100 features, 400 KB), so an op
    split across threads gains little on an idle machine, and on a busy one each split op
    waits for a thread the OS has parked: on a shared 2-core machine a 1Mx100 epoch took
    ~6x longer with 2 threads than with 1.
    """

    def __init__(self) -> None:
        self._saved: Optional[int] = None

    def limit(self, threads: Optional[int], device: torch.device) -> None:
        """Use `threads` torch threads for the rest of the fit when it runs on the CPU."""
        if threads is None or device.type != "cpu" or threads == torch.get_num_threads():
            return
        self._saved = torch.get_num_threads()
        torch.set_num_threads(threads)

    def __enter__(self) -> CpuThreads:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._saved is not None:
            torch.set_num_threads(self._saved)
            self._saved = None
