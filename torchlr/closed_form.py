"""The exact least-squares solution, the ground truth that SGD should approach."""

from __future__ import annotations

from typing import Any

import torch

from torchlr.validation import check_data


def least_squares(features: Any, labels: Any) -> tuple[torch.Tensor, float]:
    """Minimize sum (X w + b - y)^2 exactly in float64; return w, a float64 tensor of shape
    (d,) on the CPU, and b, a Python float.

    features (n, d) and labels (n,) or (n, 1) are tensors, arrays or lists, as fit takes them.
    When several (w, b) minimize it (collinear columns, fewer rows than columns), this
    returns the one whose weights on standardized columns have the smallest norm.
    """
    # NaN is refused here, since LAPACK would print about it.
    X, y = check_data(features, labels, dtype=torch.float64)
    X, y = X.cpu(), y.cpu()
    # Solved on centred and scaled columns: the intercept then drops out, and a column
    # far from 0 (a timestamp, 1.7e9 + seconds) or on a tiny scale is not cut off as
    # numerically rank-deficient, as it is beside the ones column of [X, 1].
    x_mean, y_mean = X.mean(0), y.mean()
    centred = X - x_mean  # (n, d)
    scale = centred.abs().amax(0)
    w = _solve(centred, scale, y - y_mean, scale == 0)  # all zeros once centred: weight 0
    # A column that varies only far below its own size may be rounding noise on a constant:
    # scaled up, noise takes a huge weight that b cancels, and X w + b then loses more to
    # rounding than the column explains (with few rows). Or it is signal (timestamps in
    # microseconds over a second). The smaller residual, rounding allowed for (_sse),
    # decides, column by column, the faintest first.
    drop = scale == 0
    faint = (scale > 0) & (scale <= 1e-10 * x_mean.abs())
    best = _sse(X, y, w, x_mean, y_mean)
    relative = scale / x_mean.abs()
    for j in sorted(faint.nonzero()[:, 0].tolist(), key=lambda j: float(relative[j])):
        trial = drop.clone()
        trial[j] = True
        without = _solve(centred, scale, y - y_mean, trial)
        sse = _sse(X, y, without, x_mean, y_mean)
        if sse <= best:
            drop, w, best = trial, without, sse
    return w, float(y_mean - x_mean @ w)


def _solve(centred: torch.Tensor, scale: torch.Tensor, target: torch.Tensor,
           drop: torch.Tensor) -> torch.Tensor:
    """The minimum-norm solution on the scaled columns, weight 0 on the dropped ones."""
    centred = centred.clone()
    centred[:, drop] = 0.0
    scale = torch.where(drop, torch.ones_like(scale), scale)
    v = torch.linalg.lstsq(centred / scale, target, driver="gelsd").solution  # (d, 1)
    return v[:, 0] / scale


def _sse(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, x_mean: torch.Tensor,
         y_mean: torch.Tensor) -> float:
    """Sum of squared residuals of (w, b), plus what rounding may add to them wherever they
    are computed: X w + b in float64 is off by about eps times the size of its terms, which
    is large when b cancels a large X w. Without that allowance the choice would follow the
    rounding of one summation order."""
    b = y_mean - x_mean @ w
    residual = X @ w + b - y[:, 0]
    rounding = torch.finfo(torch.float64).eps * (X.abs() @ w.abs() + b.abs())
    return float(residual.pow(2).sum() + rounding.pow(2).sum())
