"""What the `torchlr` command says on the terminal and the status it exits with.

torchlr.launch, which must import no torch, and torchlr.cli, which does, say their lines the
same way: this module imports neither torch nor anything of torchlr's that does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Optional

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as for a command the pipe's reader stopped

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


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
