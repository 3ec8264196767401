"""Training data larger than memory: a memory-mapped 2-D .npy read in shuffled blocks."""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch

from torchlr.io import (
    beyond_float32,
    check_npy_length,
    choose_columns,
    column_arguments,
    constant_target,
    dtype_problem,
    is_constant,
    npy_header,
)
from torchlr.preprocess import Scaling
from torchlr.run import sampled_rows
from torchlr.summed_loss import loss_sum
from torchlr.validation import check_positive_int, is_real_dtype, parameter_values

BLOCK_BYTES = 16 * 2**20  # rows read together: large enough for fast reads, small for RSS


def block_order(num_rows: int, block_rows: int,
                generator: torch.Generator) -> Iterator[tuple[int, torch.Tensor]]:
    """One epoch's order: (block start, its row offsets permuted), the blocks in random order."""
    num_blocks = math.ceil(num_rows / block_rows)
    for block in torch.randperm(num_blocks, generator=generator).tolist():
        start = block * block_rows
        length = min(block_rows, num_rows - start)
        # Drawn lazily, block by block: the generator's state after an epoch is still fixed.
        yield start, torch.randperm(length, generator=generator)


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    """What tells a file from its rewritten or replaced self: device, inode, size, mtime."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class BlockStream:
    """A 2-D .npy table on disk; features and target are columns named x1, x2, ... as in io."""

    def __init__(self, path: str | os.PathLike[str], target: Optional[str] = None,
                 features: Optional[Sequence[str]] = None, *,
                 block_rows: Optional[int] = None) -> None:
        self.path = os.fspath(path)
        if os.path.splitext(self.path)[1].lower() != ".npy":
            raise ValueError(f"--stream reads a 2-D .npy file; got {self.path}")
        if os.path.isdir(self.path):
            raise ValueError(f"{self.path} is a folder, not a .npy file")
        if not os.path.isfile(self.path):
            raise ValueError(f"No such file: {self.path}")
        shape, fortran, dtype, offset = npy_header(self.path)
        problem = dtype_problem(dtype)
        if problem:  # as in memory: "has shape (n,)" said nothing of a record array's fields
            raise ValueError(f"{self.path}: array 'x' is {problem}")
        if len(shape) != 2 or shape[0] == 0 or shape[1] < 2:
            raise ValueError(f"{self.path} has shape {shape}; streaming needs a 2-D table "
                             f"with rows and at least 2 columns")
        real = is_real_dtype(dtype)
        if fortran or not real:
            raise ValueError(f"{self.path}: streaming needs a C-ordered real array, "
                             f"got dtype {dtype}{' in Fortran order' if fortran else ''}")
        names = [f"x{j + 1}" for j in range(shape[1])]
        features, target = choose_columns(self.path, names,
                                          *column_arguments(target, features))
        self.feature_names, self.target_name = features, target
        # The columns read, features then target: a NaN in a column the run does not use is
        # no concern of it, as in memory.
        self._used = [names.index(n) for n in features] + [names.index(target)]
        self._all_used = self._used == list(range(shape[1]))
        self.shape = (shape[0], len(features))  # (n, d) as fit() sees it
        row_bytes = shape[1] * dtype.itemsize
        self.block_rows = check_positive_int("block_rows", block_rows) \
            if block_rows is not None else max(1, BLOCK_BYTES // row_bytes)
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._stat = _identity(os.fstat(f.fileno()))
        check_npy_length(self.path, shape, dtype, offset, len(self._map))
        self._array = np.ndarray(shape, dtype, buffer=self._map, offset=offset)
        self._offset, self._row_bytes = offset, row_bytes
        self.scaling: Optional[Scaling] = None  # applied to every block once set

    def fit_scaling(self, *, features: bool = True, target: bool = False) -> Scaling:
        """Standardization statistics from one pass over the file, block by block."""
        # Chan's pairwise update of count, mean and sum of squared deviations, in float64.
        count, mean, m2 = 0, None, None
        for X, y in self._blocks(scaled=False):
            block = torch.cat([X, y], 1).double()  # (k, d + 1)
            k, b_mean = len(block), block.mean(0)
            b_m2 = ((block - b_mean) ** 2).sum(0)
            if mean is None:
                count, mean, m2 = k, b_mean, b_m2
                continue
            delta, total = b_mean - mean, count + k
            mean = mean + delta * k / total
            m2 = m2 + b_m2 + delta**2 * count * k / total
            count = total
        std = (m2 / count).sqrt()
        return Scaling.from_moments(mean[:-1], std[:-1], float(mean[-1]), float(std[-1]),
                                    features=features, target=target)

    def check_target_varies(self) -> None:
        """Refuse a constant target (a one-row file among them), as load_data does in memory.

        A sample of rows settles it at once unless the sample's targets are all the same;
        only then is the file read through, block by block.
        """
        _, y = self.rows(sampled_rows(self.shape[0]), scaled=False)
        if not is_constant(y):
            return
        first = y[0, 0]
        for _, y in self._blocks(scaled=False):
            if not bool((y == first).all()):
                return
        raise constant_target(self.path, self.target_name, first)

    def check_unchanged(self) -> None:
        """Refuse to read on from a file that was rewritten, cut or replaced since it was
        opened: its rows would not be the ones the run began on."""
        try:
            now = _identity(os.stat(self.path))
        except OSError:
            now = None
        if now != self._stat:
            raise ValueError(f"{self.path} changed while it was being read (rewritten, cut "
                             f"short or replaced): train on a file that stays as it is")

    def _blocks(self, start: int = 0, stop: Optional[int] = None,
                scaled: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Rows [start, stop) (stop None: to the end) read in file order, block_rows at a time."""
        stop = self.shape[0] if stop is None else stop
        for first in range(start, stop, self.block_rows):
            yield self._block(first, min(first + self.block_rows, stop), scaled)

    def _block(self, start: int, stop: int,
               scaled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [start, stop) as float32 (X (k, d), y (k, 1)), then let their pages go."""
        self.check_unchanged()  # a file cut short would end the process at the read (SIGBUS)
        rows = self._array[start:stop]
        with np.errstate(over="ignore"):  # a value float32 cannot hold: refused in _columns
            table = np.array(self._used_columns(rows), dtype=np.float32)
        self._release(start, stop)
        return self._columns(torch.from_numpy(table), lambda i: start + i, scaled)

    def rows(self, index: torch.Tensor,
             scaled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows at `index` (int64, any order) as float32 X (k, d) and y (k, 1)."""
        self.check_unchanged()
        idx = index.numpy()
        order = np.argsort(idx, kind="stable")
        table = np.empty((len(idx), len(self._used)), dtype=np.float32)
        with np.errstate(over="ignore"):  # read in file order, placed in index order
            table[order] = self._used_columns(self._array[idx[order]])
        if len(idx):
            self._release(int(idx.min()), int(idx.max()) + 1)
        return self._columns(torch.from_numpy(table), lambda i: int(idx[i]), scaled)

    def _used_columns(self, rows: np.ndarray) -> np.ndarray:
        """The columns the run uses of rows read from the file (all of them: no copy)."""
        return rows if self._all_used else rows[:, self._used]

    def _columns(self, table: torch.Tensor, row_of: Callable[[int], int],
                 scaled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a float32 table of the used columns into (X, y), refusing NaN and inf;
        row_of(i): its file row."""
        if not torch.isfinite(table).all():
            i, j = (int(v) for v in (~torch.isfinite(table)).nonzero()[0])
            row, col = row_of(i), self._used[j]
            value = float(self._array[row, col])
            where = f"{self.path}, row {row + 1}, column 'x{col + 1}'"
            if math.isfinite(value):  # finite in the file, beyond float32 once converted
                raise ValueError(f"{where}: {beyond_float32(value)}")
            raise ValueError(f"{where}: the value is {value}")
        X, y = table[:, :-1], table[:, -1:]
        if scaled and self.scaling is not None:
            X, y = self.scaling.features(X), self.scaling.target(y)
        return X, y

    def _release(self, start: int, stop: int) -> None:
        # Mapped pages count toward RSS until dropped; the page cache still keeps them.
        if not hasattr(self._map, "madvise"):
            return
        first = self._offset + start * self._row_bytes
        last = self._offset + stop * self._row_bytes
        first -= first % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, first, min(last, len(self._map)) - first)

    def batches(self, batch_size: int, generator: torch.Generator, drop_last: bool = False,
                device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of minibatches: every row once, blocks and rows within them shuffled."""
        batch_size = check_positive_int("batch_size", batch_size)
        carry: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # a short tail awaiting rows
        for start, perm in block_order(self.shape[0], self.block_rows, generator):
            X, y = self._block(start, start + len(perm))
            X, y = X[perm].to(device), y[perm].to(device)  # one move per block
            if carry is not None:
                need = batch_size - len(carry[0])
                X_head, y_head = X[:need], y[:need]
                X, y = X[need:], y[need:]
                carry = (torch.cat([carry[0], X_head]), torch.cat([carry[1], y_head]))
                if len(carry[0]) < batch_size:
                    continue
                yield carry
                carry = None
            full = len(X) - len(X) % batch_size
            for i in range(0, full, batch_size):
                yield X[i:i + batch_size], y[i:i + batch_size]
            if full < len(X):
                carry = (X[full:], y[full:])
        if carry is not None and not drop_last:
            yield carry

    @torch.no_grad()
    def evaluate(self, w: Any, b: Any, *, loss_scale: float = 1.0) -> torch.Tensor:
        """Mean squared_loss over every row, read block by block in file order (0-d).

        w holds d numbers ((d, 1) or (d,)) and b one, as for torchlr.evaluate: a FitResult's
        w and b do. loss_scale: what the loss is reported multiplied by (a fit's scaling)."""
        w = parameter_values("w", w, self.shape[1]).reshape(-1, 1)
        b = parameter_values("b", b, 1).to(w.device)  # a float's tensor is made on the CPU
        return (self.loss_sum(w, b, loss_scale=loss_scale) / self.shape[0]).float()

    @torch.no_grad()
    def loss_sum(self, w: torch.Tensor, b: torch.Tensor, start: int = 0,
                 stop: Optional[int] = None, loss_scale: float = 1.0) -> torch.Tensor:
        """Summed squared_loss over rows [start, stop), block by block (0-d float64)."""
        total = torch.zeros((), dtype=torch.float64, device=w.device)
        for X, y in self._blocks(start, stop):
            X, y = X.to(w.device), y.to(w.device)
            total += loss_sum(X, y, w, b, loss_scale)
        return total
