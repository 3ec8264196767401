"""Loading tables from CSV, .npy, .npz and .pt files into float32 tensors with column names."""

from __future__ import annotations

import array
import csv
import itertools
import math
import os
import reprlib
import unicodedata
import warnings
import zipfile
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from torchlr.archive import check_archive, looks_zipped
from torchlr.validation import is_real_dtype, torch_load_failure, unreadable

FORMATS = (".csv", ".npy", ".npz", ".pt")
MISSING = {"", "na", "n/a", "nan", "null", "none"}  # cells read as a missing value, any case
# Loading needs the float32 table and about one more copy of it (split, scaling).
COPIES_NEEDED = 2


@dataclass(eq=False)  # tensor fields: see FitResult
class Dataset:
    """Features and target read from a file, with the names of their columns."""

    features: torch.Tensor  # (n, d) float32
    target: Optional[torch.Tensor]  # (n, 1) float32, None when no target was asked for
    feature_names: list[str]
    target_name: Optional[str]
    path: str


# What to do about a file too large for memory, when training on it.
TRAIN_FROM_DISK = "train from disk with --stream (a 2-D .npy file)"


def load_data(
    path: str | os.PathLike[str],
    target: Optional[str] = None,
    features: Optional[Sequence[str]] = None,
) -> Dataset:
    """Read a CSV/.npy/.npz/.pt table; target defaults to the last column, features to the rest."""
    path = os.fspath(path)
    target, features = column_arguments(target, features)
    named = [*([] if features is None else features),
             *([] if target is None else [target])]
    chosen = features is None  # every column but the target, the user naming none
    features, target = choose_columns(path, column_names(path, named), target, features)
    values = load_columns(path, [*features, target],  # (n, d + 1)
                          text_hint=features if chosen else ())
    y = values[:, -1:]
    if is_constant(y):
        raise constant_target(path, target, y)
    return Dataset(values[:, :-1], y, features, target, path)


def is_constant(y: torch.Tensor) -> bool:
    """Whether every value of y (at least one) is the same."""
    return bool((y == y.reshape(-1)[0]).all())


def constant_target(path: str, target: str, y: torch.Tensor) -> ValueError:
    """The error for a target column with one value throughout (a one-row file included)."""
    return ValueError(f"Target column {target!r} in {path} is constant "
                      f"(every value is {float(y.reshape(-1)[0])!r}); there is nothing to fit")


def lookalikes(unknown: Sequence[str], names: Sequence[str], *, given: bool = True) -> str:
    """A hint naming the file's columns that unknown names were likely meant as: equal but
    for case, spaces around them, or Unicode normalization; '' if none is. given: the
    unknown names are the user's (else a model's, which the file's columns must match)."""
    def key(name: str) -> str:
        return unicodedata.normalize("NFKC", name).strip().casefold()

    hints = []
    for name in unknown:
        for other in names:
            if key(other) == key(name):
                # Names that differ only in normalization (an é composed, or e + accent)
                # print alike: their escapes show how.
                alike = unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", name)
                theirs, ours = (ascii(other), ascii(name)) if alike else (repr(other), repr(name))
                normal = ", the same text in another Unicode normalization" if alike else ""
                hints.append(f"{theirs} for {ours}{normal}" if given
                             else f"{theirs} where the model has {ours}{normal}")
                break
    if not hints:
        return ""
    return (f" (did you mean {'; '.join(hints)}?)" if given
            else f" (the file has {'; '.join(hints)}: rename the file's column)")


def column_arguments(target: Any, features: Any) -> tuple[Optional[str], Optional[list[str]]]:
    """target and features as a caller gave them, checked to be column names (str) and
    features read once (a generator is used up by one pass)."""
    if target is not None and not isinstance(target, str):
        raise TypeError(f"target must be a column name (a str), got {type(target).__name__}: "
                        f"{target!r}")
    if isinstance(features, str):  # list("x1") would be the columns 'x' and '1'
        raise TypeError(f"features must be a sequence of column names, got the str "
                        f"{features!r}; use {features.split(',')!r}")
    if features is None:
        return target, None
    if not isinstance(features, Iterable):
        raise TypeError(f"features must be a sequence of column names, got "
                        f"{type(features).__name__}: {features!r}")
    features = list(features)
    for name in features:
        if not isinstance(name, str):
            raise TypeError(f"features must be column names (str), got "
                            f"{type(name).__name__}: {name!r}")
    return target, features


def choose_columns(path: str, names: Sequence[str], target: Optional[str],
                   features: Optional[Sequence[str]]) -> tuple[list[str], str]:
    """The feature and target columns of a table with these names: target defaults to the
    last column, features to the rest, both as column_arguments returns them. Raises naming
    what is unknown, repeated or missing."""
    target = names[-1] if target is None else target
    # One column whose name holds ';' or a tab: a file of other separators, read as one.
    one_column = ("; its header reads as one column: torchlr reads comma-separated values "
                  "(save the file with commas)"
                  if len(names) == 1 and (";" in names[0] or "\t" in names[0]) else "")
    if target not in names:
        raise ValueError(f"Unknown target column {target!r} in {path}; "
                         f"{_its_columns(names)}{one_column}"
                         f"{lookalikes([target], names)}")
    if features is None:
        features = [name for name in names if name != target]
    else:
        unknown = [name for name in features if name not in names]
        if unknown:
            raise ValueError(f"Unknown feature column(s) {', '.join(map(repr, unknown))} in "
                             f"{path}; {_its_columns(names)}"
                             f"{one_column}{lookalikes(unknown, names)}")
        if target in features:
            raise ValueError(f"Column {target!r} is both the target and a feature")
        if len(set(features)) != len(features):
            raise ValueError(f"Feature columns repeat: {', '.join(map(repr, features))}")
    if not features:
        raise ValueError(f"{path} has no feature column besides the target {target!r}"
                         f"{one_column}")
    return features, target


def _its_columns(names: Sequence[str]) -> str:
    return f"its columns are: {', '.join(map(repr, names))}"


def feature_columns(path: str | os.PathLike[str], feature_names: Sequence[str],
                    target_name: Optional[str] = None) -> list[str]:
    """The columns to read for a model: its features, then its target if the file has it.

    Other columns are left alone, as train leaves those --features does not name: a model
    of some of a file's columns predicts on that file, ids and notes beside them."""
    path = os.fspath(path)
    names = column_names(path, [*feature_names, *([target_name] if target_name else [])],
                         model=True)
    missing = [name for name in feature_names if name not in names]
    if missing:
        raise ValueError(f"The columns of {path} do not match the model's features "
                         f"({', '.join(map(repr, feature_names))}): missing "
                         f"{', '.join(map(repr, missing))}"
                         f"{lookalikes(missing, names, given=False) or '; ' + _its_columns(names)}")
    return [*feature_names, *([target_name] if target_name in names else [])]


def _check_path(path: str) -> str:
    if not os.path.exists(path):
        raise ValueError(f"No such file: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"Not a file: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"Unsupported file type {suffix or '(none)'!r} for {path}; "
                         f"use one of {', '.join(FORMATS)}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty")
    return suffix


def column_names(path: str | os.PathLike[str], known: Collection[str] = (), *,
                 model: bool = False) -> list[str]:
    """The names of a file's columns, read cheaply (the header, or the arrays' shapes).

    known: columns the caller will name; a CSV file's first row of numbers alone is taken
    as its header only if it holds one of them (or is pandas' 0,1,2...). model: known are a
    trained model's columns, which the caller cannot name otherwise."""
    path = os.fspath(path)
    suffix = _check_path(path)
    if suffix == ".csv":
        return _csv_header(path, known, model)[0]
    if suffix == ".npy":  # the header alone: the data may be larger than memory
        shape = npy_header(path)[0]
        if len(shape) == 2 and shape[1] == 0:
            raise ValueError(f"{path} is empty: it holds no columns (shape {shape})")
        if len(shape) == 2:
            return [f"x{j + 1}" for j in range(shape[1])]
    return [name for name, _ in _array_columns(path, suffix)]


def load_columns(path: str | os.PathLike[str], names: Sequence[str],
                 missing_ok: Sequence[str] = (), *,
                 too_large: str = TRAIN_FROM_DISK, text_hint: Sequence[str] = ()) -> torch.Tensor:
    """The named columns of a file as one float32 tensor (n, len(names)), fully checked.

    In a CSV file, a missing cell (empty, NA, ...) of a column in missing_ok reads as NaN
    instead of being refused: predict echoes a target that is known for some rows only.
    Text in the first row of a column in text_hint (features chosen by default) is refused
    with the advice to name the feature columns.
    """
    path = os.fspath(path)
    suffix = _check_path(path)
    check_fits_in_memory(path, estimate_bytes(path, len(names)), too_large)
    if suffix == ".csv":
        return _read_csv(path, names, missing_ok, text_hint)
    columns = dict(_array_columns(path, suffix))
    return _numeric_columns(path, [(name, columns[name]) for name in names])


def available_memory() -> Optional[int]:
    """Bytes of memory the system can still give, or None where it cannot be told."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_bytes(path: str, num_columns: int) -> int:
    """About how many bytes loading num_columns of the file as float32 takes."""
    suffix = os.path.splitext(path)[1].lower()
    size = os.path.getsize(path)
    if suffix == ".csv":
        with open(path, "rb") as f:
            sample = f.read(1 << 16)
        lines = max(sample.count(b"\n"), 1)
        rows = size * lines // max(len(sample), 1)  # rows, from the sample's bytes per line
        # Parsed into float64 (8 bytes a cell), then cast to float32 (4).
        return rows * num_columns * 12
    if suffix == ".npy":
        shape = npy_header(path)[0]
        rows = shape[0] if shape else 1
        return rows * num_columns * 4 * COPIES_NEEDED
    if suffix == ".npz":
        with zipfile.ZipFile(path) as z:
            return sum(info.file_size for info in z.infolist()) * COPIES_NEEDED
    return size * COPIES_NEEDED


def check_fits_in_memory(what: str, needed: int, advice: str = TRAIN_FROM_DISK) -> None:
    """Refuse data (a file, or what is asked for) that would not fit in the memory free now."""
    free = available_memory()
    if free is not None and needed > free:
        raise ValueError(
            f"{what} needs about {needed / 2**30:.1f} GiB to load but only "
            f"{free / 2**30:.1f} GiB of memory is available; {advice}"
        )


# --- CSV ---------------------------------------------------------------------------------


def _open_csv(path: str):  # noqa: ANN202
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ValueError(f"Cannot read {path}: {exc.strerror}") from None


def _is_blank(row: list[str]) -> bool:
    """Whether a parsed line is blank: nothing but whitespace, and no separator.

    A line with separators (",," or " , ") is a row whose cells are all empty: missing
    values, refused or kept as any missing cell is. Skipping it would drop a row unseen, and
    predict's output would no longer line up with its input. (In a one-column file a
    missing value must be written as NA: an empty line there cannot be told from a blank.)
    """
    return len(row) <= 1 and not "".join(row).strip()


def _runs_on(path: str, line: int) -> ValueError:
    """The error for a row that the csv module read on past the end of its line."""
    return ValueError(f"{path}, line {line}: a quoted field runs on past the end of its line "
                      f"(a quote never closed?)")


def _ends_in_quote(path: str) -> bool:
    """Whether the file ends inside a quoted field: a quote never closed. Read again, strictly
    (csv's lenient reader takes the rest of the file into the field), on this doubt only."""
    with _open_csv(path) as f:
        try:
            for _ in csv.reader(f, strict=True):
                pass
        except csv.Error as exc:
            return "unexpected end of data" in str(exc)
    return False


def _unreadable_csv(path: str, exc: Exception, reader: Any, line: int) -> ValueError:
    """The error for what stopped the csv reader, which has read rows up to line `line`."""
    if isinstance(exc, UnicodeDecodeError):
        return _not_utf8(path, exc)
    if reader.line_num > line + 1:  # the field limit, met by a quote that swallows the file
        return _runs_on(path, line + 1)
    return ValueError(f"{path}, line {reader.line_num}: not readable as CSV ({exc})")


def _not_utf8(path: str, exc: UnicodeDecodeError) -> ValueError:
    """The error for a file that is not UTF-8, naming the line of its first such byte.

    The decoder reads the file in chunks, so the reader's line is not where the byte is:
    the file is read again (on this error only) with each such byte kept as a surrogate.
    """
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        for line, text in enumerate(f, start=1):
            try:
                text.encode("utf-8")  # fails on the first surrogate: the first byte not UTF-8
            except UnicodeEncodeError as bad:
                byte = ord(text[bad.start]) - 0xDC00
                return ValueError(f"{path}, line {line}: byte 0x{byte:02x} is not UTF-8 text; "
                                  f"torchlr reads CSV files as UTF-8 (save the file as UTF-8)")
    return ValueError(f"{path} is not a readable CSV file: {exc}")


def _csv_header(path: str, known: Optional[Collection[str]],
                model: bool = False) -> tuple[list[str], int]:
    """The header's names and its line number (1 unless blank lines come first).

    known: the columns the caller will name (the user's target and features, a model's),
    which tell a header of numbers from a first row of data; None for a header already
    accepted."""
    with _open_csv(path) as f:
        reader = csv.reader(f)
        line = 0
        try:
            for line, row in enumerate(reader, start=1):
                if reader.line_num != line:  # a name cannot hold a line break either
                    raise _runs_on(path, line)
                if not _is_blank(row):
                    names = [cell.strip() for cell in row]
                    break
            else:
                raise ValueError(f"{path} is empty: no header row")
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _unreadable_csv(path, exc, reader, line) from None
    for i, name in enumerate(names, start=1):
        if not name:
            raise ValueError(f"{path}, line {line}: column {i} of the header has no name")
    if known is not None and _is_data_row(names, known):
        # A file without a header: read as one, its first row would name the columns and
        # be lost from the data without a word.
        such_as = ", ".join(map(repr, known)) if known else "such as x1,x2,y"
        # A model's own columns would have been taken: naming others is train's way out.
        alternative = "" if model else ("; if that row is the header, name one of its "
                                        "columns as the target or a feature")
        raise ValueError(f"{path}, line {line}: the first row holds only numbers "
                         f"({reprlib.repr(','.join(names))}), not the names of the columns; "
                         f"add a header row that names them ({such_as}){alternative}")
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{path}, line {line}: the header repeats column {name!r}")
        seen.add(name)
    return names, line


def _is_data_row(names: Sequence[str], known: Collection[str]) -> bool:
    """Whether a CSV file's first row is data rather than a header: numbers alone (NaN and
    inf too), not pandas' 0,1,2... for a frame's unnamed columns, and none of them a column
    the caller names. Numbers do name columns (years, wavelengths, a model trained on such
    a file), but a first row of data must not silently become names."""
    if not all(_is_float(name) for name in names):
        return False
    if names == [str(i) for i in range(len(names))]:
        return False
    return not any(name in known for name in names)


def _csv_rows(path: str, header_line: int) -> Iterator[tuple[int, list[str]]]:
    """Each data row of a CSV file with its line number: past the header, blanks skipped.

    Rows of empty cells after the last row that holds anything are not rows: spreadsheets
    export a table's unused rows as ",,,". Before it they are rows of missing values.
    """
    empty: list[tuple[int, list[str]]] = []  # rows of empty cells, until a row with values
    with _open_csv(path) as f:
        reader = csv.reader(f)
        line = 0
        try:
            for line, row in _numbered(reader, path):
                if line <= header_line or _is_blank(row):
                    continue
                if not "".join(row).strip():
                    empty.append((line, row))
                    continue
                if empty:
                    yield from empty
                    empty.clear()
                yield line, row
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _unreadable_csv(path, exc, reader, line) from None


def _numbered(reader: Any, path: str) -> Iterator[tuple[int, list[str]]]:
    """Each row of a csv reader with the line it starts on.

    A quoted field may hold line breaks (a note over two lines), and one never closed takes
    in the rest of the file: a row that ran over line breaks is held until another row
    follows it, which shows its quote closed; at the end of the file it is checked.
    """
    end = 0  # the line the last row ended on
    held: Optional[tuple[int, list[str]]] = None
    for row in reader:
        line, end = end + 1, reader.line_num
        if held is not None:  # rare: its quote is closed
            yield held
            held = None
        if end != line:
            held = (line, row)
        else:
            yield line, row
    if held is not None:
        if _ends_in_quote(path):
            raise _runs_on(path, held[0])
        yield held


def _read_csv(path: str, wanted: Sequence[str], missing_ok: Sequence[str] = (),
              text_hint: Sequence[str] = ()) -> torch.Tensor:
    names, header_line = _csv_header(path, wanted)
    index = [names.index(name) for name in wanted]
    optional = [name in missing_ok for name in wanted]
    values = array.array("d")  # flat, compact: 8 bytes a cell while reading
    lines = array.array("q")  # each row's line in the file, to name one float32 cannot hold
    rows = 0
    for line, row in _csv_rows(path, header_line):
        if len(row) != len(names):
            raise ValueError(f"{path}, line {line}: expected {len(names)} fields as in the "
                             f"header, found {len(row)}")
        try:
            parsed = [float(row[i]) for i in index]
        except ValueError:
            parsed = []
        text = "".join(row)
        if "_" in text or not text.isascii():  # maybe a cell only float() reads: look closer
            parsed = []
        if len(parsed) != len(index) or not all(map(math.isfinite, parsed)):
            parsed = _parse_cells(path, line, row, index, names, optional,
                                  text_hint if rows == 0 else ())
        values.extend(parsed)
        lines.append(line)
        rows += 1
    if rows == 0:
        raise ValueError(f"{path} has a header but no data rows")
    table = np.frombuffer(values, dtype=np.float64).reshape(rows, len(index))
    with np.errstate(over="ignore"):  # a finite float64 beyond float32's range becomes inf
        single = table.astype(np.float32)
    bad = np.argwhere(~np.isfinite(single) & ~(np.isnan(table) & np.array(optional)))
    if len(bad):
        row, col = bad[0]
        raise ValueError(f"{path}, line {lines[row]}, column {names[index[col]]!r}: "
                         f"{beyond_float32(float(table[row, col]))}")
    return torch.from_numpy(single)


def row_location(path: str | os.PathLike[str], row: int) -> str:
    """Where data row `row` (from 0) of a file is, as the loading errors name it: the line of
    a CSV file (blank lines and the header counted), the row (from 1) of an array file."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() == ".csv":
        found = itertools.islice(_csv_rows(path, _csv_header(path, None)[1]), row, None)
        return f"{path}, line {next(found)[0]}"
    return f"{path}, row {row + 1}"


def _csv_float(text: str) -> float:
    """float(text) for a CSV cell: a ValueError for Python's 1_000 and other scripts' digits
    too, which float() takes but a CSV number never holds (and other tools read as text)."""
    if "_" in text or not text.isascii():
        raise ValueError(text)
    return float(text)


def _is_float(text: str) -> bool:
    """Whether a cell is a number as torchlr reads one, NaN and inf included."""
    try:
        _csv_float(text)
    except ValueError:
        return False
    return True


def beyond_float32(value: float) -> str:
    return f"{value!r} is beyond the range of float32 (about ±3.4e38)"


def _parse_cells(path: str, line: int, row: list[str], index: list[int], names: list[str],
                 optional: list[bool], text_hint: Sequence[str] = ()) -> list[float]:
    """The row's values, NaN for a missing cell of an optional column; raises for the first
    other cell that is missing, not a number, or not finite. Text in a column of text_hint
    is likely a column of text (an id, a name): the error says how to leave it out."""
    parsed = []
    for i, may_miss in zip(index, optional):
        cell = row[i].strip()
        where = f"{path}, line {line}, column {names[i]!r}"
        if cell.lower() in MISSING:
            if not may_miss:
                raise ValueError(f"{where}: missing value {row[i]!r}")
            parsed.append(math.nan)
            continue
        try:
            value = _csv_float(cell)
        except ValueError:
            hint = ("; if the column holds text (an id, a name), leave it out by naming the "
                    "feature columns (features, or --features on the command line)"
                    if names[i] in text_hint else "")
            raise ValueError(f"{where}: {row[i]!r} is not a number{hint}") from None
        if math.isinf(value) and cell.lstrip("+-").lower() not in ("inf", "infinity"):
            # 1e400: a finite number as written, past float64 as read, and so float32's.
            raise ValueError(f"{where}: {beyond_float32(cell)}")
        if not math.isfinite(value):
            raise ValueError(f"{where}: {row[i]!r} is not a finite number")
        parsed.append(value)
    return parsed


# --- arrays ------------------------------------------------------------------------------


def npy_header(path: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """A .npy file's (shape, fortran_order, dtype, data offset), read without its data."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _read_npy_header(f)
            return shape, fortran, dtype, f.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a valid .npy file: {exc}") from None


def _read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy data in the open binary file f."""
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    return read(f)


def dtype_problem(dtype: np.dtype) -> str:
    """Why an array of this numpy dtype is no table of numbers ('' if it may be): fields
    or Python objects, which a check of its length or a read of its values cannot take."""
    if dtype.names:  # a record array
        return (f"a structured array (fields {', '.join(map(repr, dtype.names))}), not a "
                f"table of numbers; save each field as a column of an .npz")
    if dtype.hasobject:  # pickled: its length is not its shape's, and reading it runs code
        return ("an array of Python objects (dtype object), not of numbers: it is not read, "
                "since loading it could run code")
    return ""


def check_npy_length(path: str, shape: tuple[int, ...], dtype: np.dtype, offset: int,
                     length: int) -> None:
    """Refuse a .npy file of length bytes that holds less than its header promises."""
    needed = offset + math.prod(shape) * dtype.itemsize
    if length < needed:  # cut short: a copy or a download that stopped
        raise ValueError(f"{path} is truncated: its header promises {needed} bytes, the file "
                         f"has {length}")


def _load_arrays(path: str, suffix: str) -> list[tuple[str, Any]]:
    """The file's arrays, each named: a bare array is called x, a pair (X, y) is x and y."""
    if suffix == ".npy":  # numpy said "mmap length is greater than file size"
        shape, _, dtype, offset = npy_header(path)
        problem = dtype_problem(dtype)
        if problem:
            raise ValueError(f"{path}: array 'x' is {problem}")
        check_npy_length(path, shape, dtype, offset, os.path.getsize(path))
    if suffix == ".npz":
        return _npz_arrays(path)
    try:
        if suffix == ".npy":
            return [("x", np.load(path, mmap_mode="r", allow_pickle=False))]
    except Exception as exc:  # numpy raises many types for a bad file
        raise ValueError(f"{path} is not a valid {suffix} data file: {exc}") from None
    if looks_zipped(path):  # not a legacy (pre-zip) torch.save file, which has no CRC-32s
        check_archive(path, ".pt data file")
    try:
        with warnings.catch_warnings():  # a foreign file's pickle protocol, say
            warnings.simplefilter("ignore")
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        why = ("not the zip archive torch.save writes" if not zipfile.is_zipfile(path)
               else torch_load_failure(exc))
        raise ValueError(f"{path} is not a valid .pt data file: {why}") from None
    if isinstance(content, (torch.Tensor, np.ndarray)):
        return [("x", content)]
    if isinstance(content, (tuple, list)) and len(content) == 2:
        y = content[1]
        if getattr(y, "ndim", 0) == 2 and y.shape[1] == 1:  # (n, 1), as synthetic_data gives
            y = y[:, 0]  # one column named y, not y1
        return [("x", content[0]), ("y", y)]
    if isinstance(content, dict) and content and all(isinstance(k, str) for k in content):
        return list(content.items())
    raise ValueError(f"{path} holds a {type(content).__name__}; expected a tensor, a pair "
                     f"(X, y) or a dict of named tensors")


def _npz_arrays(path: str) -> list[tuple[str, Any]]:
    """An .npz file's arrays, each named by its key; each dtype is checked before any is
    read (numpy's "Object arrays cannot be loaded when allow_pickle=False" named none)."""
    if not zipfile.is_zipfile(path):  # numpy would try it as a pickle, and advise allow_pickle
        raise ValueError(f"{path} is not a valid .npz data file: not a zip archive of .npy "
                         f"arrays, as numpy.savez writes")
    try:
        with np.load(path, allow_pickle=False) as z:
            members = set(z.zip.namelist())

            def problem(key: str) -> str:
                with z.zip.open(key if key in members else f"{key}.npy") as f:
                    return dtype_problem(_read_npy_header(f)[2])

            bad = next(((key, why) for key in z.files if (why := problem(key))), None)
            if bad is None:
                return [(key, z[key]) for key in z.files]
    except Exception as exc:  # numpy raises many types for a bad file
        raise ValueError(f"{path} is not a valid .npz data file: {exc}") from None
    raise ValueError(f"{path}: array {bad[0]!r} is {bad[1]}")


def _array_columns(path: str, suffix: str) -> list[tuple[str, Any]]:
    """(name, 1-D column) pairs: a 1-D array is one column, a 2-D array K gives K1, K2, ..."""
    columns: list[tuple[str, Any]] = []
    source: dict[str, str] = {}  # column name -> the array it came from
    for key, value in _load_arrays(path, suffix):
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array")
        # numpy arrays' dtypes were checked as they were read (_load_arrays)
        reason = unreadable(value) if isinstance(value, torch.Tensor) else ""
        if reason:
            raise ValueError(f"{path}: array {key!r} is {reason}")
        if value.ndim == 1:
            named = [(key, value)]
        elif value.ndim == 2:
            named = [(f"{key}{j + 1}", value[:, j]) for j in range(value.shape[1])]
        else:
            raise ValueError(f"{path}: array {key!r} has shape {tuple(value.shape)}; "
                             f"expected 1-D columns or a 2-D table")
        for name, _ in named:
            # An array X1 beside a 2-D X: one of the two columns X1 would be lost silently.
            if name in source:
                raise ValueError(f"{path}: the arrays repeat column {name!r}: both "
                                 f"{source[name]!r} and {key!r} give it (a 2-D array K gives "
                                 f"columns K1, K2, ...); rename one of them")
            source[name] = key
        columns.extend(named)
    if not columns:
        raise ValueError(f"{path} is empty: it holds no columns")
    lengths = {name: len(col) for name, col in columns}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{path}: columns differ in length: "
                         + ", ".join(f"{k!r} has {v}" for k, v in lengths.items()))
    if next(iter(lengths.values())) == 0:
        raise ValueError(f"{path} has columns but no rows")
    return columns


def _numeric_columns(path: str, columns: list[tuple[str, Any]]) -> torch.Tensor:
    out = []
    for name, col in columns:
        dtype = col.dtype
        real = (is_real_dtype(dtype) if isinstance(col, np.ndarray)
                else not (dtype == torch.bool or col.is_complex()))
        if not real or dtype == np.bool_:
            raise ValueError(f"{path}, column {name!r}: dtype {dtype} does not hold real numbers")
        with np.errstate(over="ignore"):  # checked below: a value float32 cannot hold
            t = torch.from_numpy(np.array(col, dtype=np.float32)) \
                if isinstance(col, np.ndarray) else col
        t = t.to(torch.float32)
        bad = (~torch.isfinite(t)).nonzero()
        if len(bad):
            row = int(bad[0, 0])
            given = float(col[row])  # as stored, before the cast
            what = ("missing value (NaN)" if math.isnan(given) else beyond_float32(given)
                    if math.isfinite(given) else "not a finite number")
            raise ValueError(f"{path}, row {row + 1}, column {name!r}: {what}")
        out.append(t)
    return torch.stack(out, dim=1)
