"""Learning-rate sweeps: one fit per learning rate, with diverged runs kept as results."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch

from torchlr.train import DivergenceError, FitConfig, FitResult, configured, fit
from torchlr.validation import check_positive_float


@dataclass(frozen=True, eq=False)  # holds a FitResult: hashable as an object
class SweepPoint:
    """The outcome of one learning rate: a FitResult, or the DivergenceError's message."""

    lr: float
    result: Optional[FitResult] = None  # None when the run diverged
    error: Optional[str] = None

    @property
    def diverged(self) -> bool:
        """Whether the run stopped on a non-finite loss."""
        return self.result is None

    @property
    def losses(self) -> list[float]:
        """The per-epoch losses; empty for a diverged run."""
        return [] if self.result is None else list(self.result.losses)

    @property
    def final_loss(self) -> float:
        """The last epoch's loss; inf for a diverged run (and NaN when no epoch ran)."""
        if self.result is None:
            return math.inf
        return self.result.losses[-1] if self.result.losses else math.nan


def _number(value: Any) -> Any:
    """A one-number tensor or array as its number (a bool stays a bool); else value."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.item()
    return value


def lr_sweep(
    features: Any,
    labels: Any,
    lrs: Sequence[float],
    config: Optional[FitConfig] = None,
    **overrides: Any,
) -> list[SweepPoint]:
    """Fit once per learning rate, same seed; a DivergenceError becomes a point, not a raise."""
    if isinstance(lrs, (str, bytes)) or not isinstance(lrs, Iterable):
        # A str is a sequence of characters, and one rate no sequence at all.
        raise TypeError(f"lrs must be a sequence of learning rates, got "
                        f"{type(lrs).__name__}: {lrs!r}")
    if "on_progress" in overrides:  # fit's argument, not a FitConfig field
        raise TypeError("lr_sweep takes no on_progress")
    # Each checked as fit checks its lr (float() took True for 1.0, and "0.03"); one-number
    # tensors and arrays, a tensor's or an array's items, count as their numbers.
    lrs = [check_positive_float(f"lrs[{i}]", _number(lr)) for i, lr in enumerate(lrs)]
    base = configured(config, overrides, "lr_sweep", ("config",))
    if base.save is not None or base.resume is not None:
        raise ValueError("lr_sweep takes no save or resume: every learning rate's run would "
                         "write or continue the same checkpoint")
    runs = [replace(base, lr=lr) for lr in lrs]
    for run in runs:  # every option is checked before the first fit starts
        run.validate()
    points = []
    for run in runs:
        try:
            points.append(SweepPoint(run.lr, result=fit(features, labels, run)))
        except DivergenceError as exc:
            points.append(SweepPoint(run.lr, error=str(exc)))
    return points
