"""What the `torchlr` command says on the terminal and the status it exits with.

torchlr.launch, which must import no torch, and torchlr.cli, which does, say their lines the
same way: this module imports neither torch nor anything of torchlr's that does.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from typing import Optional

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as for a command the pipe's reader stopped

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
HANDLED = (signal.SIGINT, signal.SIGTERM)  # the signals the command ends on with a line


def in_torchrun(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when torchrun (or an equivalent launcher) set RANK, WORLD_SIZE and LOCAL_RANK."""
    env = os.environ if environ is None else environ
    return all(name in env for name in TORCHRUN_VARS)


def rank_tag() -> str:
    """'[rank N] ' under torchrun, where every rank that fails says so: one rank's line must
    show which it is; '' in a single process."""
    return f"[rank {os.environ['RANK']}] " if in_torchrun() else ""


def say(line: str) -> None:
    """Print one line on stderr in a single write, then flush.

    Under torchrun every rank that fails prints its line to the same terminal, unbuffered
    (python -u): print() writes the text and its newline apart, and two ranks' lines came
    out joined on one line, the second's newline after both.
    """
    if sys.stderr is None:  # closed (`2>&-`): nowhere to say it; the exit status still does
        return
    # One line whatever it quotes: a file name with a line break in it is shown escaped.
    line = line.replace("\r", "\\r").replace("\n", "\\n")
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def ignore_signals() -> None:
    """Ignore Ctrl-C and SIGTERM from here on: for the interpreter's shutdown, once the
    command has said how it ended. The process then ends with the status it chose.

    Python's shutdown resets every signal that has a handler written in Python to the
    system's default, early on, and torch's shutdown takes about a second more: a Ctrl-C
    50 ms after the last line killed the process (status 130, or 143 for SIGTERM, after a
    run that had done all, or a second Ctrl-C after an interrupted one), and one within the
    first millisecond raised in Python and printed a traceback. An ignored signal is left
    ignored. A shutdown that hangs is still stopped by SIGKILL.
    """
    for signum in HANDLED:
        if callable(signal.getsignal(signum)):  # not one left to the system (torchrun's)
            signal.signal(signum, signal.SIG_IGN)


def forget_escaped_interrupts() -> None:
    """Clear CPython's note that a KeyboardInterrupt escaped code run from a string.

    CPython notes each KeyboardInterrupt that leaves an exec() of a string (dataclasses
    and torch's imports run many), and at the end of `python -m` it kills the process with
    SIGINT while the note stands, however the program handled the exception: a Ctrl-C that
    landed in one, which the command caught, said and ended with status 130, then died by
    SIGINT (-2 to a parent process; 3 times in 40 Ctrl-Cs while torch was imported). Each
    exec() of a string clears the note first: an empty one clears it and runs nothing.
    """
    exec("")
