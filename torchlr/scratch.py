"""The chapter's pieces on raw tensors: parameters, model, loss and the SGD step."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Optional

import torch

from torchlr.data import fresh_generator
from torchlr.devices import resolve_device
from torchlr.validation import check_finite_number, check_generator, check_positive_int


def init_params(
    num_inputs: int,
    sigma: float = 0.01,
    *,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return w ~ N(0, sigma^2) of shape (d, 1) and b = 0 of shape (1,), both requiring grad."""
    num_inputs = check_positive_int("num_inputs", num_inputs)
    sigma = check_finite_number("sigma", sigma, minimum=0)
    check_generator(generator)
    # Checked as fit checks it: "auto" resolved, a device that is not there named.
    device = resolve_device(device) if device is not None else None
    gen = generator if generator is not None else fresh_generator()
    # Drawn on the generator's device and then moved, so every device starts from the same w.
    # float32 whatever torch's default dtype, like the data.
    w = sigma * torch.randn(num_inputs, 1, generator=gen, device=gen.device, dtype=torch.float32)
    w = w.to(device).requires_grad_()
    b = torch.zeros(1, device=device, dtype=torch.float32, requires_grad=True)
    return w, b


def linreg(X: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The linear model X w + b: (n, d) @ (d, 1) + (1,) -> (n, 1)."""
    return torch.addmm(b, X, w)


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example squared loss (y_hat - y)^2 / 2, with y reshaped to y_hat's shape."""
    # Without the reshape, (n, 1) - (n,) broadcasts to an (n, n) matrix.
    return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2


@torch.no_grad()
def sgd(params: Iterable[torch.Tensor], lr: float, batch_size: int) -> None:
    """Minibatch SGD on a summed loss: each gradient is divided by batch_size.

    The gradients it used are cleared (set to None), so the next backward() starts afresh.
    """
    params = _checked(params, lr, batch_size)  # a clear error, before anything moves
    for param in params:
        # param -= lr * param.grad / batch_size as one in-place kernel instead of three;
        # in place, so param stays the leaf that autograd tracks.
        param.sub_(param.grad, alpha=lr / batch_size)
        param.grad = None


def _checked(params: Iterable[torch.Tensor], lr: float, batch_size: int) -> list[torch.Tensor]:
    """params as a list (a generator, model.parameters(), is read once), or an error naming
    what sgd cannot step with. Python numbers only: a tensor's comparison would sync the
    host with the GPU every step."""
    # The fit's own call, every step: a float rate, an int batch and a list, checked in
    # 0.1-0.3 µs (the general checks below take about 1.5, 1.3% of a chapter-sized step).
    if not (type(lr) is float and 0.0 < lr < math.inf and type(batch_size) is int
            and batch_size > 0 and type(params) is list):
        params = _checked_slowly(params, lr, batch_size)
    for param in params:
        if param.grad is None:  # sgd twice in a row, or no backward() before it
            raise RuntimeError(
                f"A parameter of shape {tuple(param.shape)} has no gradient: call "
                f"backward() on the loss before sgd (each sgd clears the gradients it used)")
    return params


def _checked_slowly(params: Iterable[torch.Tensor], lr: Any,
                    batch_size: Any) -> list[torch.Tensor]:
    for name, value in (("lr", lr), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    if isinstance(batch_size, numbers.Real) and not batch_size > 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    if isinstance(lr, numbers.Real) and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be positive and finite, got {lr!r}")
    if isinstance(params, torch.Tensor):  # iterating one would step its rows, views of it
        raise TypeError("params must be a sequence of tensors, such as [w, b]; got one tensor: "
                        "pass [w]")
    return list(params)
