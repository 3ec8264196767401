"""The squared loss's gradient derived by hand, and SGD steps that use it instead of autograd.

For a batch of B rows with residuals r = X w + b - y, shape (B, 1):
  the summed squared_loss, sum(r^2) / 2, has gradient X^T r for w and sum(r) for b;
  nn.MSELoss, sum(r^2) / B, has gradient 2 r^T X / B for nn.Linear's weight (1, d) and
  2 sum(r) / B for its bias.
These are the gradients autograd computes, in a handful of fused kernels and without
recording a graph: the step is several times faster when a step is mostly overhead (small
batches, and on a GPU, a CUDA graph with fewer kernels). The results agree with autograd's
to float precision, not to the bit: the same sums are rounded in another order.
"""

from __future__ import annotations

import torch
from torch import nn

GRADIENTS = ("autograd", "analytic")


@torch.no_grad()
def sgd_step(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
             lr: float) -> torch.Tensor:
    """scratch.sgd on the batch's summed squared_loss, gradient by hand; returns sum(r^2), 0-d.

    w (d, 1) and b (1,) are updated in place, as sgd updates them: by lr / B times
    the gradient of the summed loss, where B is this batch's own length.
    """
    r = torch.addmm(b, X, w).sub_(y.reshape(len(X), 1))  # (B, 1), before the update
    scale = lr / len(X)
    # w -= lr / B * X^T r, the gradient whole first, as sgd's w.grad is. Not w.addmm_(X.T,
    # r, alpha=-scale): BLAS adds a long batch's product into w a block of rows at a time,
    # rounding w once per block, which put w up to 14 ulps off the exact update (0.45
    # this way), more than a small step itself, and scratch's fits drifted from concise's.
    w.sub_(torch.mm(X.T, r), alpha=scale)
    b.sub_(r.sum(0), alpha=scale)  # b -= lr / B * sum(r)
    flat = r.view(-1)
    return torch.dot(flat, flat)


@torch.no_grad()
def set_mse_grads(module: nn.Linear, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Set module's weight.grad and bias.grad to nn.MSELoss's on (X, y); return sum(r^2), 0-d.

    What backward() on MSELoss leaves in .grad, for an optimizer's step() to use.
    """
    r = module(X).sub_(y.reshape(len(X), 1))  # (B, 1)
    g = r * (2 / len(X))  # dMSE / dy_hat
    module.weight.grad = g.T @ X  # (1, d): nn.Linear's layout
    module.bias.grad = g.sum(0)  # (1,)
    flat = r.view(-1)
    return torch.dot(flat, flat)


def batch_means(raw: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Steps' sums of (y_hat - y)^2, stacked, as each batch's mean squared_loss (with its 1/2)."""
    return raw / (2 * lengths)
