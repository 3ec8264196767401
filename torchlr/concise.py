"""The same model as an nn.Linear, trained with nn.MSELoss and torch.optim.SGD."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn
from torch.optim import optimizer as optim_base

from torchlr.devices import resolve_device
from torchlr.scratch import init_params
from torchlr.validation import check_positive_float, check_positive_int


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
        # Checked before nn.Linear sees it, whose own error is about empty()'s arguments.
        check_positive_int("num_inputs", num_inputs)
        device = resolve_device(device) if device is not None else None  # as fit checks it
        # Parameters left uninitialized; float32 whatever torch's default dtype.
        super().__init__(num_inputs, 1, device=device, dtype=torch.float32)
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
    """Plain SGD that, on `mse`, takes scratch.sgd's step at learning rate lr, to float precision.

    MSELoss has no 1/2, so its gradient is twice the chapter's; SGD runs at lr / 2. Scaling
    by 2 is exact in binary floating point, so the update is bit for bit SGD's at lr on half
    the MSE, and the step needs no extra op to halve the loss. scratch.sgd's update is the
    same in exact arithmetic, but rounds elsewhere: MSELoss's gradient divides each residual
    by the batch length before the sum over the batch, where scratch.sgd scales the summed
    gradient by lr / batch_size. The two agree to float precision, not to the bit.
    """
    lr = check_positive_float("lr", lr)  # named as given, not as SGD's halved rate
    params = list(model.parameters())
    # On the CPU, foreach=False skips the per-step check for the multi-tensor kernels,
    # which torch.optim uses only for CUDA parameters anyway.
    foreach = False if all(p.device.type == "cpu" for p in params) else None
    return torch.optim.SGD(params, lr=lr / 2, foreach=foreach)


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """optimizer.step(), without the profiler range around it when no profiler or hook is there.

    torch.optim wraps every optimizer's step() in a record_function range, which profilers
    show as "Optimizer.step#SGD.step", and in calls to the step hooks. With no profiler
    running the range is never seen, yet in torch 2.13 it costs some 25 µs a step on the
    CPU: about a quarter of a chapter-sized concise step. So when no profiler runs and no
    step hook is registered, this calls the update the wrapper wraps (SGD's own step(), its
    grad-mode guard included), which changes the parameters exactly as optimizer.step()
    does. Otherwise, or when torch no longer marks its wrapper so, it calls
    optimizer.step() itself.
    """
    update = _unwrapped_step(type(optimizer))
    if update is None or _observed(optimizer):
        optimizer.step()
    else:
        update(optimizer)


def _unwrapped_step(cls: type) -> Optional[Callable[..., Any]]:
    step = getattr(cls, "step", None)
    if not getattr(step, "hooked", False):  # the mark Optimizer puts on the step it wraps
        return None
    return getattr(step, "__wrapped__", None)  # set by the wrapper's functools.wraps


def _observed(optimizer: torch.optim.Optimizer) -> bool:
    """Whether anything would see optimizer.step()'s wrapper: a profiler, or a step hook."""
    profiling = getattr(torch.autograd, "_profiler_enabled", None)
    hooks = (getattr(optim_base, "_global_optimizer_pre_hooks", None),
             getattr(optim_base, "_global_optimizer_post_hooks", None),
             getattr(optimizer, "_optimizer_step_pre_hooks", None),
             getattr(optimizer, "_optimizer_step_post_hooks", None))
    # Anything torch no longer has counts as observed: the step then goes the public way.
    return profiling is None or profiling() or any(h is None or len(h) for h in hooks)
