"""Ctrl-C (and SIGTERM) held back while a file is being written: it lands after, not inside."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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
    was never written. A second signal of a kind acts at once, as it would have: a write
    that hangs (a stalled network file system) can still be stopped. Only handlers written
    in Python are held back (Python's own for Ctrl-C, the CLI's for SIGTERM), and only in
    the main thread, where Python runs them.
    """
    if threading.current_thread() is not threading.main_thread() or any(
            getattr(signal.getsignal(signum), "holding", False) for signum in HELD):
        yield  # another thread, or inside an outer held(), which holds them already
        return
    came: list[tuple[int, Optional[FrameType]]] = []
    replaced: dict[int, Any] = {}

    def note(signum: int, frame: Optional[FrameType]) -> None:
        if any(seen == signum for seen, _ in came):  # pressed again: the user means it
            came.clear()
            signal.signal(signum, replaced[signum])
            replaced[signum](signum, frame)
        came.append((signum, frame))

    note.holding = True  # type: ignore[attr-defined]
    try:
        with ExitStack() as restore:
            # Each handler is put back by a callback of its own, registered before it is
            # replaced: a signal between two of these steps cannot leave `note` installed.
            for signum in HELD:
                handler = signal.getsignal(signum)
                if callable(handler):
                    replaced[signum] = handler
                    restore.callback(signal.signal, signum, handler)
                    signal.signal(signum, note)
            yield
    finally:
        if came:  # also when the block raised: the user's interrupt is not dropped
            signum, frame = came[0]
            replaced[signum](signum, frame)  # raises as it would have, now that it is safe
