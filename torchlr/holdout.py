"""The held-out rows: validation loss and R² after each epoch, and early stopping on them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from torchlr.preprocess import r2_score
from torchlr.scratch import linreg
from torchlr.summed_loss import mean_and_coarse, refined


@dataclass
class Holdout:
    """Validation rows, already scaled and on the training device."""

    features: torch.Tensor  # (n_val, d)
    labels: torch.Tensor  # (n_val, 1)
    loss_scale: float = 1.0  # what its loss is reported multiplied by (a scaled target's)

    @torch.no_grad()
    def metrics(self, w: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        """Mean squared_loss (of the target as the model sees it) and R² (one host read)."""
        y_hat = linreg(self.features, w, b)
        mean, coarse = mean_and_coarse(y_hat, self.labels, b, self.loss_scale)
        values = torch.stack([mean, coarse, r2_score(y_hat, self.labels)]).cpu()
        # A close fit's float32 residuals hold few digits: summed again from float64 then.
        loss = refined(values[0], values[1], self.features, self.labels, w, b)
        return float(loss), float(values[2])


class EarlyStopping:
    """Stops after `patience` epochs without a lower validation loss; keeps the best params."""

    def __init__(self, patience: int, val_losses: list[float],
                 best: Optional[dict[str, Any]] = None) -> None:
        self.patience = patience
        self.best = best  # {"epoch", "val_loss", "w", "b"} of the lowest validation loss
        self.val_losses = val_losses  # shared with the fit's history: resumed runs carry it

    def update(self, epoch: int, w: torch.Tensor, b: torch.Tensor) -> bool:
        """Record the epoch just ended (loss val_losses[-1]); True when it is time to stop."""
        loss = self.val_losses[-1]
        best = self.best
        # The first epoch is the best so far even if its loss is NaN, but any finite loss
        # after it beats a non-finite one.
        if best is None or (math.isfinite(loss) and (loss < best["val_loss"]
                                                     or not math.isfinite(best["val_loss"]))):
            self.best = {"epoch": epoch, "val_loss": loss,
                         "w": w.detach().to("cpu", copy=True), "b": b.detach().to("cpu", copy=True)}
        return self.should_stop(epoch)

    def should_stop(self, epoch: int) -> bool:
        """True when `patience` epochs up to `epoch` brought no better validation loss."""
        return (self.patience > 0 and self.best is not None
                and epoch - self.best["epoch"] >= self.patience)
