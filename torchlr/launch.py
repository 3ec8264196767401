"""The entry point of the `torchlr` command and `python -m torchlr`: torchlr.cli, once imported.

Importing torchlr.cli imports torch, which takes about a second; a Ctrl-C in that second
interrupted the import, before torchlr.cli's handler existed, and printed a page of
traceback. This module imports no torch (nor does `import torchlr`): it starts first and
ends such a Ctrl-C as torchlr.cli ends one later on, with the line `torchlr: interrupted`
and exit status 130. A SIGTERM then ends it as torchlr.cli's handler does later, with
`torchlr: terminated` and 143 (it was the system's silent end).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any, NoReturn, Optional

from torchlr.interrupts import Terminated
from torchlr.terminal import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    forget_escaped_interrupts,
    ignore_signals,
    in_torchrun,
    rank_tag,
    say,
)


def console() -> None:
    """Import torchlr.cli and run its console(); a Ctrl-C or SIGTERM during the import ends
    in one line.

    Not every Ctrl-C raised inside the import reaches this function: torch's C code clears
    the error that numpy's import raised (and goes on without numpy), and one raised in a
    weakref callback is only printed ("Exception ignored in ..."). Each signal is therefore
    noted as well as raised, and one noted ends the command once the import is over.
    """
    came: list[int] = []

    def note_and_raise(signum: int, frame: Optional[FrameType]) -> None:
        if came:  # pressed again, or `timeout -s INT`'s second signal: now
            _exit_at_once(came[0])
        came.append(signum)
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    def note_unraisable(args: Any) -> None:
        if issubclass(args.exc_type, KeyboardInterrupt):  # already noted by note_and_raise
            came.append(signal.SIGTERM if issubclass(args.exc_type, Terminated)
                        else signal.SIGINT)
        else:
            unraisablehook(args)

    # The handlers torchlr.cli replaces after: Python's for Ctrl-C (a SIGINT ignored, in a
    # job a script started with `&`, stays so) and the default for SIGTERM, which it leaves
    # to the system under torchrun (torchrun stops its workers with it).
    watched = {signal.SIGINT: signal.default_int_handler}
    if not in_torchrun():
        watched[signal.SIGTERM] = signal.SIG_DFL
    watched = {signum: handler for signum, handler in watched.items()
               if signal.getsignal(signum) is handler}
    unraisablehook = sys.unraisablehook
    try:
        try:
            for signum in watched:
                signal.signal(signum, note_and_raise)
            sys.unraisablehook = note_unraisable
            from torchlr import cli
        finally:
            sys.unraisablehook = unraisablehook
            if not came:  # else note_and_raise stays, for a second signal
                for signum, handler in watched.items():
                    signal.signal(signum, handler)
    except BaseException as exc:
        if not (came or isinstance(exc, KeyboardInterrupt)):
            raise  # the import failed by itself: its traceback says why
        # Whatever the error, a half-done import after a signal is its doing.
        _interrupted(came[0] if came else signal.SIGINT)
    if came:
        _interrupted(came[0])
    cli.console()


_said: list[bool] = []


def _say_interrupted(signum: int = signal.SIGINT) -> None:
    """The line torchlr.cli says, said as it does, and only once."""
    if not _said:
        _said.append(True)
        what = "terminated" if signum == signal.SIGTERM else "interrupted"
        say(f"torchlr: {rank_tag()}{what}")


def _status(signum: int) -> int:
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


def _interrupted(signum: int) -> NoReturn:
    """Say so and exit with 130 (143 for SIGTERM).

    A second signal on the way out (a Ctrl-C pressed twice; `timeout -s INT` sends one to
    the process and one to its group) is ignored, as after any run of the command: with
    Python's handler it raised KeyboardInterrupt in the interpreter's shutdown, printed,
    and later in the shutdown, where Python has put the system's handler back, it killed
    the process.
    """
    ignore_signals()
    _say_interrupted(signum)
    forget_escaped_interrupts()  # the status is this one, not a death by SIGINT
    raise SystemExit(_status(signum))


def _exit_at_once(signum: int) -> NoReturn:
    """A second signal while torch is still being imported: end now, the import unfinished
    (it may be what hangs)."""
    _say_interrupted(signum)
    os._exit(_status(signum))  # nothing lost: stderr is flushed, stdout has nothing yet


if __name__ == "__main__":
    console()
