"""Files written whole or not at all: a temporary file beside the target, then a rename."""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable
from typing import IO, Any

# Names of an open file descriptor: written into, never replaced (see writes_in_place).
DESCRIPTOR_PATH = re.compile(r"/dev/(stdout|stderr|fd/\d+)|/proc/(self|thread-self|\d+)/fd/\d+")
# The same names, when they are this process's own: group "fd" is the descriptor's number.
OWN_DESCRIPTOR = re.compile(r"/dev/(?:fd/(?P<fd>\d+)|(?P<std>stdout|stderr))"
                            r"|/proc/(?P<proc>self|thread-self|\d+)/fd/(?P<pfd>\d+)")
# Errors of writing to a file (a full disk, a quota): named with the target when raised.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


def write_atomic(path: str | os.PathLike[str], fill: Callable[[IO[Any]], None], *,
                 text: bool = False) -> None:
    """Call fill(f) on a temporary file in path's folder, then rename it to path.

    Readers see the old file or the new one, never half of one; on any error the temporary
    file is removed, and an OSError of the file system names path. A symlink is written
    through (its target is replaced); a target that is not a regular file (a FIFO) or that
    names an open descriptor (/dev/stdout) is written into (see writes_in_place).
    """
    given = os.fspath(path)
    options: dict[str, Any] = {"newline": ""} if text else {}
    if writes_in_place(given):
        try:
            _write_in_place(given, fill, text, options)
        except OSError as exc:  # /dev/full, a full disk under a FIFO's reader...
            if exc.errno in WRITE_ERRORS:
                raise cannot_write(given, exc) from None
            raise
        return
    mode = "w" if text else "wb"
    path = os.path.realpath(given)
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = _create_beside(path)
        with os.fdopen(fd, mode, **options) as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and (exc.filename is not None or exc.errno in WRITE_ERRORS):
            raise cannot_write(path, exc) from None
        raise


def cannot_write(what: str, exc: OSError) -> OSError:
    """exc, a failure to write (a full disk, a quota), as an OSError naming what was written."""
    message = f"Cannot write {what}: {exc.strerror or exc}"
    return OSError(exc.errno, message) if exc.errno else OSError(message)


def writes_in_place(path: str) -> bool:
    """Whether write_atomic writes into path itself rather than renaming a file over it.

    So it does for what cannot be renamed over (a FIFO, a terminal, /dev/null) and for the
    names of open descriptors: /dev/stdout (or /dev/fd/N, /proc/self/fd/N) leads to whatever
    the shell connected, a pipe or the file of a `>> log` redirection, which must be written
    into, not replaced. A regular file elsewhere under /dev (/dev/shm) is replaced as usual.
    """
    if DESCRIPTOR_PATH.fullmatch(os.path.abspath(path)):
        return True
    return os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode)


def _write_in_place(given: str, fill: Callable[[IO[Any]], None], text: bool,
                    options: dict[str, Any]) -> None:
    fd = own_descriptor(given)
    if fd is not None:
        # Through the open descriptor itself, at its offset: a new open of a file that the
        # shell redirected with `>` would get an offset of its own, and whatever the shell
        # wrote next would overwrite what is written here.
        _flush_std(fd)
        with os.fdopen(os.dup(fd), "w" if text else "wb", **options) as f:
            fill(f)
        return
    # Appending: what the shell's redirection set up (`>` emptied the file, `>>` keeps it)
    # decides, and a pipe or terminal takes it either way.
    with open(given, "a" if text else "ab", **options) as f:
        fill(f)


def own_descriptor(path: str) -> int | None:
    """The number of the open descriptor of this process that path names (/dev/stdout is 1,
    /dev/fd/N and /proc/self/fd/N are N), or None: another name, or the descriptor is closed."""
    match = OWN_DESCRIPTOR.fullmatch(os.path.abspath(path))
    if match is None or match["proc"] not in (None, "self", "thread-self", str(os.getpid())):
        return None
    fd = {"stdout": 1, "stderr": 2}[match["std"]] if match["std"] else int(
        match["fd"] or match["pfd"])
    try:
        os.fstat(fd)
    except OSError:
        return None  # closed: opening the name fails with its own error
    return fd


def _flush_std(fd: int) -> None:
    """Write out what Python still buffers for descriptor fd, so that it comes first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and stream.fileno() == fd:
                stream.flush()
        except (AttributeError, OSError, ValueError):
            pass  # replaced by an object with no descriptor (a test's capture), or closed


def _create_beside(path: str) -> tuple[int, str]:
    """A new, empty temporary file in path's folder, with the mode path should end up with."""
    folder = os.path.dirname(path)
    while True:
        # A short name of its own: the target's name may already be near the length limit.
        tmp = os.path.join(folder, f".{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 less the umask, as for any new file (mkstemp's 0600 would hide the result
            # from the user's group); the kernel applies the umask, so nothing reads it.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    try:
        if os.path.isfile(path) and hasattr(os, "fchmod"):  # rewriting: keep the file's mode
            os.fchmod(fd, os.stat(path).st_mode & 0o7777)
    except OSError:
        pass  # a file system without modes, or the target gone meanwhile: the new file's mode
    return fd, tmp
