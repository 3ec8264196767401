"""The same model as an nn.Linear, trained with nn.MSELoss and torch.optim.SGD."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from torchlr.scratch import init_params


class LinearRegression(nn.Linear):
    """y_hat = X w + b: an nn.Linear(num_inputs, 1) that starts where the scratch model does."""

    sigma: Optional[float] = None  # set by __init__; None while nn.Linear.__init__ runs

    def __init__(
        self,
        num_inputs: int,
        sigma: float = 0.01,
        *,
        generator: Optional[torch.Generator] = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(num_inputs, 1, device=device)  # parameters left uninitialized
        self.sigma = sigma
        self._draw(generator)

    def reset_parameters(self) -> None:
        """Draw w ~ N(0, sigma^2) and b = 0 again, from a fresh generator."""
        # nn.Linear.__init__ calls this too; its own init would draw from torch's global RNG.
        if self.sigma is not None:
            self._draw(None)

    def _draw(self, generator: Optional[torch.Generator]) -> None:
        w, b = init_params(self.in_features, self.sigma, generator=generator,
                           device=self.weight.device)
        with torch.no_grad():
            self.weight.copy_(w.T)  # (1, d): nn.Linear's layout
            self.bias.copy_(b)  # (1,)

    @property
    def w(self) -> torch.Tensor:
        """The weights as the chapter holds them: a (d, 1) view of weight."""
        return self.weight.T

    @property
    def b(self) -> torch.Tensor:
        """The bias, shape (1,)."""
        return self.bias


def mse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """nn.MSELoss: the batch mean of (y_hat - y)^2, twice the mean of scratch.squared_loss."""
    if y.shape != y_hat.shape:  # (n,) against (n, 1) would broadcast to (n, n)
        y = y.reshape(y_hat.shape)
    return nn.functional.mse_loss(y_hat, y)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.SGD:
    """Plain SGD that, on `mse`, takes exactly the step scratch.sgd takes at learning rate lr.

    MSELoss has no 1/2, so its gradient is twice the chapter's; SGD runs at lr / 2. Scaling
    by 2 is exact in binary floating point, so the update is the same to the last bit, and
    the step needs no extra op to halve the loss.
    """
    params = list(model.parameters())
    # On the CPU, foreach=False skips the per-step check for the multi-tensor kernels,
    # which torch.optim uses only for CUDA parameters anyway.
    foreach = False if all(p.device.type == "cpu" for p in params) else None
    return torch.optim.SGD(params, lr=lr / 2, foreach=foreach)
