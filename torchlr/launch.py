"""The entry point of the `torchlr` command and `python -m torchlr`: torchlr.cli, once imported.

Importing torchlr.cli imports torch, which takes about a second; a Ctrl-C in that second
interrupted the import, before torchlr.cli's handler existed, and printed a page of
traceback. This module imports no torch (nor does `import torchlr`): it starts first and
ends such a Ctrl-C as torchlr.cli ends one later on, with the line `torchlr: interrupted`
and exit status 130.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any, NoReturn, Optional

from torchlr.terminal import EXIT_INTERRUPTED, rank_tag, say


def console() -> None:
    """Import torchlr.cli and run its console(); a Ctrl-C during the import ends in one line.

    Not every Ctrl-C raised inside the import reaches this function: torch's C code clears
    the error that numpy's import raised (and goes on without numpy), and one raised in a
    weakref callback is only printed ("Exception ignored in ..."). Each signal is therefore
    noted as well as raised, and one noted ends the command once the import is over.
    """
    came: list[int] = []

    def note_and_raise(signum: int, frame: Optional[FrameType]) -> None:
        if came:  # pressed again, or `timeout -s INT`'s second signal: now
            _exit_at_once(signum, frame)
        came.append(signum)
        raise KeyboardInterrupt

    def note_unraisable(args: Any) -> None:
        if issubclass(args.exc_type, KeyboardInterrupt):
            came.append(signal.SIGINT)  # already noted where this handler raised it
        else:
            unraisablehook(args)

    # Python's handler only: a SIGINT that is ignored (a job started with nohup) stays so.
    watch = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    unraisablehook = sys.unraisablehook
    try:
        try:
            if watch:
                signal.signal(signal.SIGINT, note_and_raise)
            sys.unraisablehook = note_unraisable
            from torchlr import cli
        finally:
            sys.unraisablehook = unraisablehook
            if watch and not came:  # else note_and_raise stays, for a second Ctrl-C
                signal.signal(signal.SIGINT, signal.default_int_handler)
    except BaseException as exc:
        if not (came or isinstance(exc, KeyboardInterrupt)):
            raise  # the import failed by itself: its traceback says why
        _interrupted()  # whatever the error, a half-done import after a Ctrl-C is its doing
    if came:
        _interrupted()
    cli.console()


_said: list[bool] = []


def _say_interrupted() -> None:
    """The line torchlr.cli says, said as it does, and only once."""
    if not _said:
        _said.append(True)
        say(f"torchlr: {rank_tag()}interrupted")


def _interrupted() -> NoReturn:
    """Say so and exit with 130.

    A second SIGINT on the way out (a Ctrl-C pressed twice; `timeout -s INT` sends one to
    the process and one to its group) ends the process at once, with no more said: with
    Python's handler it raised KeyboardInterrupt in the interpreter's shutdown, printed.
    """
    if callable(signal.getsignal(signal.SIGINT)):  # Python's handler, or note_and_raise
        signal.signal(signal.SIGINT, _exit_at_once)
    _say_interrupted()
    raise SystemExit(EXIT_INTERRUPTED)


def _exit_at_once(signum: int, frame: Optional[FrameType]) -> NoReturn:
    _say_interrupted()
    os._exit(EXIT_INTERRUPTED)  # nothing lost: stderr is flushed, stdout has nothing yet


if __name__ == "__main__":
    console()
