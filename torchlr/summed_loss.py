"""A data set's summed squared loss, in float64 where float32's predictions are too coarse."""

from __future__ import annotations

import torch

from torchlr.scratch import linreg, squared_loss

# A float32 prediction X w + b is rounded to about 1e-7 of its size (more where its terms
# cancel), so a residual y_hat - y far below the targets' size keeps few correct digits:
# on targets near 5 fitted to 1e-11, the float32 loss read 2.79e-11 where float64 arithmetic
# on the same float32 data and parameters gives 2.72e-11, and on a closer fit 7.9e-14 for
# 1.14e-13. Below this share of the targets' mean square (b² added, for targets far from 0
# whose offset b carries), the rows are summed again in float64. Noisy data stay well above
# it (the chapter's loss is 1.5e-6 of its targets' mean square), so they cost nothing more.
ROUNDING_SHARE = 1e-7
# Bytes of X's float64 copy per piece: small beside the data, and few pieces (few kernel
# launches on a GPU) for narrow data: 2 columns take a million rows a piece.
FLOAT64_BYTES = 1 << 24


@torch.no_grad()
def loss_sum(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
             b: torch.Tensor) -> torch.Tensor:
    """squared_loss of linreg(X, w, b) summed over the rows, as a float64 0-d tensor.

    Taken from float32 predictions, and again from float64 ones where the float32 sum is
    below ROUNDING_SHARE of the targets' squares: there it holds float32's rounding more
    than the model's error. X (n, d), y (n, 1) or (n,), w (d, 1) and b (1,), on one device.
    """
    total = squared_loss(linreg(X, w, b), y).sum(dtype=torch.float64)
    return float64_sum(X, y, w, b) if _too_coarse(total, y, b) else total


@torch.no_grad()
def loss_mean(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
              b: torch.Tensor) -> torch.Tensor:
    """squared_loss of linreg(X, w, b) averaged over the rows, as a float32 0-d tensor.

    The chapter's float32 mean, to the bit, as a loop over the same tensors takes it; from
    float64 predictions where it is below ROUNDING_SHARE of the targets' squares.
    """
    mean = squared_loss(linreg(X, w, b), y).mean()
    if not _too_coarse(mean * len(y), y, b):
        return mean
    return (float64_sum(X, y, w, b) / len(y)).to(mean.dtype)


def _too_coarse(total: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a float32-predicted loss sum holds float32's rounding more than the model's
    error (one host read); a NaN or inf sum is kept as it is."""
    scale = y.square().sum(dtype=torch.float64) + len(y) * b.double().square().sum()
    return bool(total < ROUNDING_SHARE * scale)


def float64_sum(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor) -> torch.Tensor:
    """loss_sum's float64 arithmetic, in pieces of FLOAT64_BYTES of float64 rows."""
    w64, b64 = w.double(), b.double()
    rows = max(1, FLOAT64_BYTES // (8 * X.shape[1]))
    pieces = [squared_loss(linreg(X[i:i + rows].double(), w64, b64), y[i:i + rows].double())
              .sum() for i in range(0, len(X), rows)]
    return torch.stack(pieces).sum()
