"""Ctrl-C (and SIGTERM) held back while a file is being written, so that it lands after, not
inside; and never lost where Python could only print it."""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import Any, Optional

HELD = (signal.SIGINT, signal.SIGTERM)
_unbroken = 0  # how many unbroken() blocks the main thread is in


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler so that a run ends as on Ctrl-C."""


def signal_again(previous: Callable[[Any], None], unraisable: Any) -> None:
    """sys.unraisablehook while the CLI's main() runs: a Ctrl-C or SIGTERM whose exception
    Python could not pass on is sent again; other errors go to previous, the hook before.

    A signal that lands while the garbage collector runs a weakref callback (or a __del__)
    raises its KeyboardInterrupt there, where Python only prints it ("Exception ignored
    in ...") and goes on: a run interrupted after its last epoch line ran on to its end and
    exited 0. Sent again, the signal's handler raises in the code the collector interrupted,
    and the run ends as on any other Ctrl-C: its line, what it kept, status 130 (143).
    One that lands in the collector again comes back here.
    """
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        _send_again(signal.SIGTERM if issubclass(unraisable.exc_type, Terminated)
                    else signal.SIGINT)
    else:
        previous(unraisable)


def _send_again(signum: int) -> None:
    """Send signum to the main thread from another: sent from here, inside signal_again,
    the handler would raise at once, in the hook, and be lost again. To the main thread
    itself, where a wait (a sleep, a read) ends on it at once."""
    _thread.start_new_thread(signal.pthread_kill, (threading.main_thread().ident, signum))


def raise_interrupt(signum: int, frame: Optional[FrameType]) -> None:
    """The CLI's handler of Ctrl-C and SIGTERM: KeyboardInterrupt, as Python's own handler
    raises, or Terminated for SIGTERM, so that a run ends as on Ctrl-C; except inside
    signal_again.

    A Ctrl-C and a SIGTERM that come together (`timeout`, a job manager) can both be due in
    one collection: the first raises in the collector's callback, and the second's handler
    then runs as signal_again starts, where its exception too could only be printed
    ("Exception ignored in sys.unraisablehook") and the run went on to status 0. There it is
    sent again instead, as the first is.
    """
    caller = sys._getframe(1)  # where Python ran this handler (held() calls it from its end)
    while caller is not None:
        if caller.f_code is signal_again.__code__:
            _send_again(signum)
            return
        caller = caller.f_back
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


@contextmanager
def held() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM held back, then act on the first that came.

    A KeyboardInterrupt raised inside TensorBoard's writer, after its queue took a lock and
    before it let go, left the lock taken: closing the run then waited forever, and its end
    was never written. A second signal of a kind acts at once, as it would have: a write
    that hangs (a stalled network file system) can still be stopped. Only handlers written
    in Python are held back (Python's own or the CLI's for Ctrl-C, the CLI's for SIGTERM),
    and only in the main thread, where Python runs them.
    """
    if threading.current_thread() is not threading.main_thread() or any(
            getattr(signal.getsignal(signum), "holding", False) for signum in HELD):
        yield  # another thread, or inside an outer held(), which holds them already
        return
    came: list[tuple[int, Optional[FrameType]]] = []
    replaced: dict[int, Any] = {}

    def note(signum: int, frame: Optional[FrameType]) -> None:
        # Pressed again: the user means it (but not inside unbroken()).
        if not _unbroken and any(seen == signum for seen, _ in came):
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


@contextmanager
def unbroken() -> Iterator[None]:
    """Run the block as held() does, but hold back a signal pressed again too.

    For an import of a compiled module, matplotlib's: a Ctrl-C raised while one initializes
    leaves it half made, Python names the failure an ImportError, and its shutdown then
    crashed on what was left ("Fatal Python error", killed by SIGABRT; a second Ctrl-C while
    a fit's figure was drawn, 2-4 times in 100). Such a block takes a moment and cannot hang.
    """
    global _unbroken
    with held():
        if threading.current_thread() is not threading.main_thread():
            yield  # held() holds nothing there: signals are the main thread's
            return
        _unbroken += 1
        try:
            yield
        finally:
            _unbroken -= 1
