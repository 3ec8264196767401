"""Full-batch solvers on any differentiable loss: gradient descent, the Hessian, a Newton step.

The exercises use these for models other than the chapter's (Ohm's and Planck's laws) and
for second derivatives. Each takes `loss_fn`, a function of no arguments that computes a
0-d loss from the leaf tensors in `params`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch

from torchlr.scratch import sgd
from torchlr.train import DivergenceError, first_nonfinite

LossFn = Callable[[], torch.Tensor]


def gradient_descent(
    loss_fn: LossFn, params: Sequence[torch.Tensor], lr: float, steps: int
) -> list[float]:
    """Take `steps` steps p -= lr * grad in place; return the loss before each step and after.

    Raises DivergenceError naming the first step whose loss is NaN or inf.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps!r}")
    losses = []
    for p in params:
        p.grad = None  # a caller's earlier backward() must not add to the first step
    for _ in range(steps):
        loss = loss_fn()
        loss.backward()
        for p in params:  # a parameter the loss does not use: gradient 0, as hessian() has it
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        sgd(params, lr, 1)  # the chapter's step on an unsummed loss: divisor 1
        losses.append(loss.detach())
    with torch.no_grad():
        losses.append(loss_fn().detach())
    history = torch.stack(losses).double().cpu()  # the one host read
    step = first_nonfinite(history)
    if step is not None:
        raise DivergenceError(
            f"Gradient descent diverged: the loss became {float(history[step])} at step "
            f"{step} of {steps} (lr={lr}); try a smaller learning rate or rescale the problem."
        )
    return history.tolist()


def hessian(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The Hessian of loss_fn over all params flattened and concatenated: (p, p).

    Autograd differentiates its own backward pass only when asked: create_graph=True
    records the gradient's graph, so each gradient entry can be differentiated again.
    """
    params = list(params)
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True, allow_unused=True)
    g = _flat(grads, params)  # (p,), still attached to the graph
    rows = []
    for i in range(len(g)):
        if not g[i].requires_grad:  # this gradient entry is constant: its row is zero
            rows.append(torch.zeros_like(g).detach())
            continue
        second = torch.autograd.grad(g[i], params, retain_graph=True, allow_unused=True)
        rows.append(_flat(second, params))
    return torch.stack(rows).detach()


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate gradients into one vector; None (a parameter not used) counts as zeros."""
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params)])


def newton_step(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Move params in place by -H^-1 g, exact for a quadratic loss; return the step taken (p,)."""
    params = list(params)
    H = hessian(loss_fn, params)
    g = _flat(torch.autograd.grad(loss_fn(), params, allow_unused=True), params)
    step = -torch.linalg.solve(H, g)
    with torch.no_grad():
        offset = 0
        for p in params:
            p += step[offset:offset + p.numel()].reshape(p.shape)
            offset += p.numel()
    return step
