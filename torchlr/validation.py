"""Input checks run before training, with scikit-learn-style messages that name the value."""

from __future__ import annotations

import math
import numbers
import os
import re
import reprlib
import tempfile
import warnings
from typing import Any, Optional

import numpy as np
import torch

from torchlr.atomic import writes_in_place

IMPLS = ("scratch", "concise")
INT64_MAX = 2**63 - 1  # torch holds sizes and counts as int64


def is_real_dtype(dtype: np.dtype) -> bool:
    """Whether a numpy dtype holds real numbers: not complex, and not timedelta64 (numpy
    counts it an integer), datetime64 or bool."""
    return (np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)
            and dtype.kind not in "mM")


def as_float_tensor(name: str, value: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert a tensor or numpy array of real numbers to float32 (or dtype); refuse anything
    else."""
    if isinstance(value, np.ndarray):
        if np.ma.is_masked(value):  # its hidden values are not data: as_tensor would read them
            raise ValueError(f"{name} is a masked array with {int(np.ma.count_masked(value))} "
                             f"masked value(s); fill them (.filled()) or drop their rows")
        if not is_real_dtype(value.dtype):
            raise TypeError(f"{name} must hold real numbers, got numpy dtype {value.dtype}")
        if value.dtype.itemsize > 8:  # long double: torch has no such type
            value = value.astype(np.float64)
        elif not value.dtype.isnative:  # big-endian data (FITS, network order): torch refuses it
            value = value.astype(value.dtype.newbyteorder("="))
        with warnings.catch_warnings():
            # A read-only array (np.load with mmap_mode="r"): torch warns that writing to the
            # tensor is undefined. Nothing here writes to its input.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            # ascontiguousarray makes a 0-d array 1-d: a number given as labels became one row.
            value = torch.from_numpy(value if value.flags.c_contiguous
                                     else np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}"
        )
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    reason = unreadable(value)
    if reason:
        raise TypeError(f"{name} is {reason}")
    # Integer and float64 inputs are converted on purpose: both implementations train in float32.
    return value.detach().to(dtype)


def unreadable(value: torch.Tensor) -> str:
    """Why a tensor's values cannot be read as a dense float32 array, or '' if they can."""
    if value.layout != torch.strided:
        return (f"a sparse tensor (layout {value.layout}), not a dense one; convert it with "
                f".to_dense()")
    if value.is_quantized:
        return f"quantized (dtype {value.dtype}); convert it with .dequantize()"
    if value.is_meta:
        return "on the 'meta' device, which holds no values"
    if value.is_nested:
        return "a nested tensor, not a table whose rows are one length"
    try:  # bits8, int4, uint3...: no conversion to float32 exists
        with warnings.catch_warnings():  # complex's "discards the imaginary part": refused
            warnings.simplefilter("ignore")  # below, and the warning was printed before it
            torch.zeros(1, dtype=value.dtype).to(torch.float32)
    except (RuntimeError, NotImplementedError):
        return f"of dtype {value.dtype}, which does not hold numbers torch converts to float32"
    return ""


def torch_load_failure(exc: Exception) -> str:
    """torch.load's error in one line: the type, and the first line of its text without
    colour codes, or in place of its advice to lift the weights_only guard, what that means."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch.load's bold and colour
    first = text.splitlines()[0] if text else ""
    if first.startswith("Weights only load failed"):
        first = ("it holds Python objects other than tensors and plain values, which are "
                 "not loaded: loading them could run code")
    # The type says what went wrong where the text alone ("101") does not.
    return f"{type(exc).__name__}{': ' + first if first else ''}"


def check_data(features: Any, labels: Any,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float32 (or dtype) features (n, d) and labels (n, 1) from tensors, arrays or
    (nested) sequences of numbers, or raise naming what is wrong."""
    X = numbers_tensor("features", features, dtype)
    y = numbers_tensor("labels", labels, dtype)
    if X.dim() != 2:
        raise ValueError(
            f"features must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}"
        )
    if y.dim() == 2 and y.shape[1] == 1:
        pass
    elif y.dim() == 1:
        y = y.reshape(-1, 1)
    else:
        raise ValueError(f"labels must have shape (n,) or (n, 1), got shape {tuple(y.shape)}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            "Found input variables with inconsistent numbers of samples: "
            f"features has {X.shape[0]}, labels has {y.shape[0]}"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"features is empty: shape {tuple(X.shape)}; need n >= 1 and d >= 1")
    check_finite("features", X, features)
    check_finite("labels", y, labels)
    # Rows in one piece, in order: a column-major table (a pandas DataFrame's .values, a
    # transposed tensor) made every gathered row a strided read (a fit 3.7x slower), and
    # BLAS rounded its loss by that layout (the 5th digit of a printed loss changed).
    return X.contiguous(), y.contiguous()


def check_finite(name: str, values: torch.Tensor, given: Any) -> None:
    """Refuse NaN or inf in values, the float32 (or float64) tensor made of the caller's
    given; a value finite in given but not in values is named as beyond float32."""
    # One read and no (n, d) mask when all is well: NaN or inf makes the sum non-finite.
    # A finite data set whose sum overflows falls through to the exact checks below.
    if bool(torch.isfinite(values.sum())):
        return
    if torch.isnan(values).any():
        raise ValueError(f"{name} contains NaN ({int(torch.isnan(values).sum())} value(s))")
    if torch.isinf(values).any():
        count = int(torch.isinf(values).sum())
        if not _holds_inf(given):  # finite, but not as float32
            raise ValueError(f"{name} holds {count} value(s) beyond the range of float32 "
                             f"(about ±3.4e38), which arithmetic in float32 cannot hold")
        raise ValueError(f"{name} contains inf ({count} value(s))")


def _holds_inf(given: Any) -> bool:
    """Whether the caller's own array, tensor or sequence holds an inf, before any
    conversion."""
    if isinstance(given, torch.Tensor):
        return bool(torch.isinf(given).any())
    # numpy's own test: torch refuses big-endian and long-double arrays, which it reads;
    # a (nested) sequence of numbers was read by numbers_tensor through numpy too.
    return bool(np.isinf(np.asarray(given)).any())


def numbers_tensor(name: str, value: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """as_float_tensor, taking numbers and (nested) sequences of numbers too."""
    if not isinstance(value, (torch.Tensor, np.ndarray)):
        try:
            array = np.asarray(value)  # its dtype says what the items are: bools stay bool
        except (TypeError, ValueError, RuntimeError):  # ragged, or tensors that need grad
            array = None
        if array is None or array.dtype == object or array.dtype.kind in "USV":
            # reprlib: a million-row list's whole repr made a message of 100 MB.
            raise TypeError(f"{name} must be a tensor, array or sequence of numbers, got "
                            f"{type(value).__name__}{_not_numbers(value, array)}: "
                            f"{reprlib.repr(value)}")
        value = array
    return as_float_tensor(name, value, dtype)


def _not_numbers(value: Any, array: Optional[np.ndarray]) -> str:
    """What in a sequence numpy read as no array of numbers: ' holding X', or ''."""
    if array is None:
        items = value if isinstance(value, (list, tuple)) else []
        if any(isinstance(item, torch.Tensor) for item in items):
            return " holding tensors (join them with torch.stack)"
        if len({len(row) if hasattr(row, "__len__") else -1 for row in items}) > 1:
            return " whose rows differ in length"
        return ""
    if array.dtype.kind in "USV":
        return f" holding text (numpy dtype {array.dtype})"
    if array.ndim == 0:  # no sequence at all (None, an object): it holds nothing
        return ""
    for item in array.flat:  # dtype object: the first item that is no int or float
        if not isinstance(item, (int, float, np.number)):
            return f" holding {type(item).__name__} {reprlib.repr(item)}"
    return " holding integers beyond 64 bits" if array.size else ""  # what is left


def parameter_values(name: str, value: Any, size: int,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return a weight or bias (a tensor, array, sequence or number of size values) as a
    flat float32 (or dtype) tensor, or raise naming it."""
    given = numbers_tensor(name, value, dtype)
    if given.numel() != size:
        raise ValueError(f"{name} must hold {size} value(s), got shape {tuple(given.shape)}")
    if not bool(torch.isfinite(given).all()):  # a loss or error of them would be nan or inf
        within = " within float32's range (about ±3.4e38)" if dtype == torch.float32 else ""
        raise ValueError(f"{name} must hold finite numbers{within}, got "
                         f"{numbers_tensor(name, value, torch.float64).reshape(-1).tolist()}")
    return given.reshape(-1)


def check_positive_int(name: str, value: Any) -> int:
    """Return value as an int if it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}: {value!r}")
    if not 1 <= value <= INT64_MAX:
        raise ValueError(f"{name} must be a positive int of at most 2**63 - 1, got {value!r}")
    return int(value)


def check_nonnegative_int(name: str, value: Any) -> int:
    """Return value as an int if it is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__}: {value!r}")
    if not 0 <= value <= INT64_MAX:
        raise ValueError(f"{name} must be an int in [0, 2**63 - 1], got {value!r}")
    return int(value)


def check_positive_float(name: str, value: Any) -> float:
    """Return value as a float if it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a positive finite number, got {type(value).__name__}: {value!r}"
        )
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def check_finite_number(name: str, value: Any, *, minimum: float = -math.inf) -> float:
    """Return value as a float if it is a finite real number >= minimum (a one-element tensor
    or array counts as its number)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = as_float_tensor(name, value, torch.float64)  # refuses bool, complex, ...
        if value.numel() != 1:
            raise ValueError(f"{name} must be one number, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    if not (math.isfinite(value) and value >= minimum):
        bound = "" if minimum == -math.inf else f" and >= {minimum:g}"
        raise ValueError(f"{name} must be finite{bound}, got {value!r}")
    return float(value)


def check_generator(generator: Any) -> None:
    """Refuse a generator that is not a torch.Generator (or None)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}: {generator!r}")


def check_seed(seed: Any) -> int:
    """Return seed if it is an int that torch.Generator.manual_seed takes."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be in [-2**63, 2**64), got {seed!r}")
    return int(seed)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return value if it is one of choices."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {', '.join(map(repr, choices))}; "
                        f"got {type(value).__name__}: {value!r}")
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return value if it is a bool (not merely truthy, such as 1 or "yes")."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_writable_file(name: str, path: Any) -> str:
    """Refuse, before any work, a file path that cannot be written: found now, not after
    training. Folders that do not exist yet are fine if they can be made."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{name} must be a file path, got ''")
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise ValueError(f"{_given(name, path)} is a folder; give a file path")
    why = unwritable_file(path)
    if why:
        raise ValueError(f"{_given(name, path)} cannot be written: {why}")
    return path


# What a path or value may hold and still be shown bare, as one word of a command line.
ONE_WORD = r"[\w:.+/-]+"


def _given(name: str, path: str) -> str:
    """save='m.pt' as the library names an argument; a flag (--output) as the command line
    reads, `--output m.csv`, quoted only where the path is not one word, as the CLI's
    rewriting of the library's messages gives `--save m.pt`."""
    if not name.startswith("--"):
        return f"{name}={path!r}"
    one_word = re.fullmatch(ONE_WORD, path)
    return f"{name} {path if one_word else repr(path)}"


def unwritable_file(path: str) -> str:
    """Why a file path (not a folder) cannot be written, or '' if it can."""
    if writes_in_place(path) and os.path.exists(path):
        # /dev/stdout, a FIFO: written in place, its folder does not matter.
        return "" if os.access(path, os.W_OK) else "no permission"
    if os.path.isfile(path) and (not os.access(path, os.W_OK)
                                 or not os.stat(path).st_mode & 0o222):
        # Renaming a new file over it needs only the folder's permission: the user's own
        # protection would be passed over, where `>` or torch.save would be refused. For
        # root os.access says yes to any file: one that no one may write is refused too.
        return "the file is read-only"
    return _cannot_make(os.path.dirname(os.path.abspath(path)))


def check_writable_folder(name: str, path: Any) -> str:
    """Refuse, before any work, a folder that cannot take new files or be made."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name}={path!r} is a file, not a folder")
    why = _cannot_make(os.path.abspath(path))
    if why:
        raise ValueError(f"{name}={path!r} cannot be written: {why}")
    return path


def _cannot_make(folder: str) -> str:
    """Why nothing can be made in folder, or the nearest folder above it that exists, or ''."""
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"{folder!r} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"no permission in {folder!r}"
    why = cannot_create_in(folder)
    return f"{folder!r}: {why}" if why else ""


def cannot_create_in(folder: str) -> str:
    """Why no new file can be made in an existing folder, or ''. os.access says yes to root
    everywhere, /proc and read-only mounts included: a file is tried and removed at once."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return ""
    except OSError as exc:
        return f"no file can be made there ({exc.strerror or exc})"


def check_run_options(config: Any) -> None:
    """Check FitConfig's options for real data: split, scaling, early stopping, checkpoints."""
    if isinstance(config.val_fraction, bool) or not isinstance(config.val_fraction,
                                                                numbers.Real):
        raise TypeError(f"val_fraction must be a number in [0, 1), got {config.val_fraction!r}")
    if not 0 <= config.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {config.val_fraction!r}")
    for name in ("standardize", "standardize_target"):
        check_bool(name, getattr(config, name))
    check_nonnegative_int("early_stopping", config.early_stopping)
    if config.early_stopping and not config.val_fraction:
        raise ValueError(f"early_stopping={config.early_stopping} needs a validation split: "
                         f"set val_fraction > 0 (not offered when streaming from disk)")
    for name in ("save", "resume"):
        value = getattr(config, name)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path or None, got {value!r}")
    if config.target_name is not None and not isinstance(config.target_name, str):
        raise TypeError(f"target_name must be a str or None, got {config.target_name!r}")
    names = config.feature_names
    if names is not None and not (isinstance(names, (tuple, list))
                                  and all(isinstance(n, str) for n in names)):
        raise TypeError(f"feature_names must be a tuple of str or None, got {names!r}")
    if names is not None and len(set(names)) != len(names):
        # A checkpoint finds its columns by name: a repeated one would feed one column twice.
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"feature_names must not repeat a name, got {repeated[0]!r} "
                         f"{names.count(repeated[0])} times in {tuple(names)!r}")
