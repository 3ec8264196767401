"""The exact least-squares solution, the ground truth that SGD should approach."""

from __future__ import annotations

import torch


def least_squares(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Minimize sum (X w + b - y)^2 exactly in float64; return w of shape (d,) and b."""
    X = torch.as_tensor(features).detach().cpu().double()
    y = torch.as_tensor(labels).detach().cpu().double().reshape(-1, 1)
    A = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)  # (n, d + 1)
    solution = torch.linalg.lstsq(A, y, driver="gelsd").solution  # (d + 1, 1)
    return solution[:-1, 0], float(solution[-1, 0])
