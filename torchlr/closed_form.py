"""The exact least-squares solution, the ground truth that SGD should approach."""

from __future__ import annotations

import torch


def least_squares(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Minimize sum (X w + b - y)^2 exactly in float64; return w of shape (d,) and b.

    When several (w, b) minimize it (collinear columns, fewer rows than columns), this
    returns the one whose weights on standardized columns have the smallest norm.
    """
    X = torch.as_tensor(features).detach().cpu().double()
    y = torch.as_tensor(labels).detach().cpu().double().reshape(-1, 1)
    # Solved on centred and scaled columns: the intercept then drops out, and a column
    # far from 0 (a timestamp, 1.7e9 + seconds) or on a tiny scale is not cut off as
    # numerically rank-deficient, as it is beside the ones column of [X, 1].
    x_mean, y_mean = X.mean(0), y.mean()
    centred = X - x_mean  # (n, d)
    scale = centred.abs().amax(0)
    # A column constant to within rounding of its own size counts as constant: scaled up,
    # its rounding noise would take a huge weight (and b cancel it) when rows are few.
    constant = scale <= 1e-10 * x_mean.abs()
    centred[:, constant] = 0.0
    scale[constant | (scale == 0)] = 1.0  # all zeros once centred: weight 0
    v = torch.linalg.lstsq(centred / scale, y - y_mean, driver="gelsd").solution  # (d, 1)
    w = v[:, 0] / scale
    return w, float(y_mean - x_mean @ w)
