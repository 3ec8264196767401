"""Ctrl-C (and SIGTERM) held back while a file is being written: it lands after, not inside."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Optional

HELD = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler so that a run ends as on Ctrl-C."""


def raise_terminated(signum: int, frame: Optional[FrameType]) -> None:
    """A SIGTERM handler that raises Terminated."""
    raise Terminated


@contextmanager
def held() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM held back, then act on the first that came.

    A KeyboardInterrupt raised inside TensorBoard's writer, after its queue took a lock and
    before it let go, left the lock taken: closing the run then waited forever, and its end
    was never written. Only handlers written in Python are held back (Python's own for
    Ctrl-C, the CLI's for SIGTERM), and only in the main thread, where Python runs them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[tuple[int, Optional[FrameType]]] = []
    replaced: dict[int, Any] = {}

    def note(signum: int, frame: Optional[FrameType]) -> None:
        came.append((signum, frame))

    for signum in HELD:
        handler = signal.getsignal(signum)
        if callable(handler):
            replaced[signum] = handler
            signal.signal(signum, note)
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
        if came:
            signum, frame = came[0]
            replaced[signum](signum, frame)  # raises as it would have, now that it is safe
