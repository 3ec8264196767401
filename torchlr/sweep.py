"""Learning-rate sweeps: one fit per learning rate, with diverged runs kept as results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

from torchlr.train import DivergenceError, FitConfig, FitResult, fit


@dataclass(frozen=True)
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


def lr_sweep(
    features: Any,
    labels: Any,
    lrs: Sequence[float],
    config: Optional[FitConfig] = None,
    /,
    **overrides: Any,
) -> list[SweepPoint]:
    """Fit once per learning rate, same seed; a DivergenceError becomes a point, not a raise."""
    base = replace(config or FitConfig(), **overrides)
    if base.save is not None or base.resume is not None:
        raise ValueError("lr_sweep takes no save or resume: every learning rate's run would "
                         "write or continue the same checkpoint")
    runs = [replace(base, lr=float(lr)) for lr in lrs]
    for run in runs:  # every option is checked before the first fit starts
        run.validate()
    points = []
    for run in runs:
        try:
            points.append(SweepPoint(run.lr, result=fit(features, labels, run)))
        except DivergenceError as exc:
            points.append(SweepPoint(run.lr, error=str(exc)))
    return points
