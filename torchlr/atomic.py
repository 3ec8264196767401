"""Files written whole or not at all: a temporary file beside the target, then a rename."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import IO, Any


def _create_beside(path: str) -> tuple[int, str]:
    """A new, empty temporary file in path's folder, with the mode path should end up with."""
    folder, name = os.path.split(os.path.abspath(path))
    while True:
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(6)}-{name}")
        try:
            # 0o666 less the umask, as for any new file (mkstemp's 0600 would hide the result
            # from the user's group); the kernel applies the umask, so nothing reads it.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    if os.path.isfile(path) and hasattr(os, "fchmod"):  # rewriting: keep the file's own mode
        os.fchmod(fd, os.stat(path).st_mode & 0o7777)
    return fd, tmp


def write_atomic(path: str | os.PathLike[str], fill: Callable[[IO[Any]], None], *,
                 text: bool = False) -> None:
    """Call fill(f) on a temporary file in path's folder, then rename it to path.

    Readers see the old file or the new one, never half of one; on any error the temporary
    file is removed. An OSError from making, syncing or renaming the file names path.
    """
    path = os.fspath(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd, tmp = _create_beside(path)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"newline": ""} if text else {})) as f:
            fill(f)  # its own errors (a bad row, a broken pipe) pass through as they are
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError) \
                and exc.filename in (tmp, path):
            raise _naming(exc, path) from None
        raise


def _naming(exc: OSError, path: str) -> OSError:
    message = f"Cannot write {path}: {exc.strerror or exc}"
    return OSError(exc.errno, message) if exc.errno else OSError(message)
