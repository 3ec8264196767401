"""Threads on the CPU: torch's thread count during a fit, and a second Python thread."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Optional, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def spare_core(device: torch.device) -> bool:
    """Whether a second thread can run beside this one: the CPU, with two cores or more."""
    if device.type != "cpu":
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) > 1


def alternate(fn: Callable[[T], R], items: Sequence[T], name: str = "torchlr-worker") -> list[R]:
    """[fn(x) for x in items], with every other item done on a second thread."""
    # torch ops run without the GIL, so the two halves run at once on two cores.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as pool:
        theirs = [pool.submit(fn, x) for x in items[1::2]]
        try:
            mine = [fn(x) for x in items[0::2]]
        except BaseException:
            for future in theirs:
                future.cancel()
            raise
        results: list[Any] = [None] * len(items)
        results[0::2] = mine
        results[1::2] = [future.result() for future in theirs]
    return results


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
