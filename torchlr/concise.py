"""The same model with nn.Linear, a loss and torch.optim.SGD scaled to take the scratch step."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from torchlr.scratch import init_params


class LinearRegression(nn.Module):
    """y_hat = X w + b as one nn.Linear(num_inputs, 1), initialized like the chapter."""

    def __init__(
        self,
        num_inputs: int,
        sigma: float = 0.01,
        *,
        generator: Optional[torch.Generator] = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        # skip_init: nn.Linear's own init would draw from torch's global RNG.
        # skip_init would leave the weights on the meta device if given device=None.
        self.linear = nn.utils.skip_init(nn.Linear, num_inputs, 1,
                                         device=device if device is not None else "cpu")
        w, b = init_params(num_inputs, sigma, generator=generator, device=device)
        with torch.no_grad():
            self.linear.weight.copy_(w.T)  # (1, d)
            self.linear.bias.copy_(b)  # (1,)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, 1)."""
        return self.linear(X)

    @property
    def w(self) -> torch.Tensor:
        """The weights as the chapter holds them: a (d, 1) view of linear.weight."""
        return self.linear.weight.T

    @property
    def b(self) -> torch.Tensor:
        """The bias, shape (1,)."""
        return self.linear.bias


def half_mse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of the chapter's squared_loss: nn.MSELoss halved, since MSELoss has no 1/2."""
    return nn.functional.mse_loss(y_hat, y.reshape(y_hat.shape)) / 2


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.SGD:
    """Plain SGD: on the batch mean of squared_loss its step equals scratch.sgd's."""
    return torch.optim.SGD(model.parameters(), lr=lr)
