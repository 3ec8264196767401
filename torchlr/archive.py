"""The zip archive torch.save writes, checked before torch.load reads it.

torch.load checks no CRC-32: a flipped bit in a stored tensor is read as it is. And its
reader obeys a zip entry's folder bit, which Python's zipfile ignores, taking such an
entry's tensor for uninitialised memory. Checkpoints and .pt data files both pass here.
"""

from __future__ import annotations

import errno
import zipfile

DOS_FOLDER = 0x10  # the folder bit of a zip entry's external attributes


def check_archive(path: str, kind: str) -> None:
    """Refuse a file that is not the zip archive torch.save writes, or one whose stored
    bytes fail their CRC-32 checksums or whose index is damaged; kind names the file in
    the messages ("torchlr checkpoint")."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every entry: the files read here are small
            # torch's reader takes an entry marked as a folder (the DOS attribute bit, which
            # zipfile ignores) for one without bytes, and its tensor for uninitialised memory:
            # a flipped bit there loaded w = [-2.9e29, 4.6e-41] past every checksum.
            folders = [info.filename for info in archive.infolist()
                       if info.external_attr & DOS_FOLDER or info.filename.endswith("/")]
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # a damaged offset: a seek before the file's start
            raise ValueError(f"{path} is a damaged {kind}: its archive cannot be "
                             f"read (an offset in it points outside the file)") from None
        # No permission, a failing disk: not a matter of its format.
        raise ValueError(f"Cannot read {path}: {exc.strerror or exc}") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError,
            ValueError) as exc:
        if not looks_zipped(path):
            raise ValueError(f"{path} is not a {kind}: not the zip archive "
                             f"torch.save writes") from None
        raise ValueError(f"{path} is a damaged {kind}: its archive cannot be "
                         f"read ({type(exc).__name__}: {exc})") from None
    if bad is not None:
        raise ValueError(f"{path} is a damaged {kind}: the bytes of its entry "
                         f"{bad!r} do not match their checksum")
    if folders:
        raise ValueError(f"{path} is a damaged {kind}: its entry {folders[0]!r} "
                         f"is marked as a folder (torch.save writes none)")


def looks_zipped(path: str) -> bool:
    """Whether the file ends as a zip archive does, damaged or not."""
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # found the archive's end, and could not read past it
        return True
