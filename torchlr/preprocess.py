"""Preprocessing before a fit: a seeded train/validation split and standardization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch


def _float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def train_val_split(num_examples: int, val_fraction: float,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (train, val), drawn from their own generator so the fit's draws are unchanged."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    num_val = round(num_examples * val_fraction)
    if val_fraction > 0 and not 1 <= num_val < num_examples:
        raise ValueError(f"val_fraction={val_fraction} of {num_examples} samples leaves "
                         f"{num_val} for validation and {num_examples - num_val} for training; "
                         f"each needs at least 1")
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    # Sorted, so the training rows keep the file's order and the batch order alone shuffles.
    return order[num_val:].sort().values, order[:num_val].sort().values


@dataclass(eq=False)  # tensor fields: compared with torch.equal where it matters
class Scaling:
    """Per-column x -> (x - mean) / scale, and the same for the target; identity by default."""

    x_mean: torch.Tensor  # (d,) float32
    x_scale: torch.Tensor  # (d,) float32, never 0
    y_mean: float = 0.0  # float32 values, as Python floats
    y_scale: float = 1.0
    # (d,) bool: the standardized columns that did not vary in the rows the statistics came
    # from (scaled to all zeros), else None. Not saved: only a fresh start uses it.
    constant: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        # The model's float32 target is shifted and scaled by these in float32, which rounds
        # them: kept in float64, they gave the printed b (original_params) and the reported
        # losses another shift and scale than the model trained on, 1e-6 of b for a target
        # near -5.7e7, and a rebuilt model another loss. Rounded here, all use the same.
        # (A scale that float32 holds only as 0 leaves the target unscaled.)
        self.y_mean = _float32(self.y_mean)
        self.y_scale = _float32(self.y_scale) or 1.0

    @classmethod
    def identity(cls, num_features: int) -> Scaling:
        """No scaling at all."""
        return cls(torch.zeros(num_features, dtype=torch.float32),
                   torch.ones(num_features, dtype=torch.float32))

    @classmethod
    def fit(cls, X: torch.Tensor, y: torch.Tensor, *, target: bool,
            features: bool = True) -> Scaling:
        """Statistics of the given (training) rows, for the features and/or the target."""
        # float64: float32 means over millions of rows lose digits.
        X64, y64 = X.double(), y.double()
        return cls.from_moments(X64.mean(0), X64.std(0, correction=0), float(y64.mean()),
                                float(y64.std(correction=0)), features=features, target=target)

    @classmethod
    def from_moments(cls, x_mean: torch.Tensor, x_std: torch.Tensor, y_mean: float,
                     y_std: float, *, features: bool, target: bool) -> Scaling:
        """Scaling from means and standard deviations; an unscaled part stays the identity."""
        constant = None
        if features:
            # A constant column is only shifted.
            constant = (x_std == 0).cpu()
            x_std = torch.where(x_std > 0, x_std, torch.ones_like(x_std))
        else:
            x_mean, x_std = torch.zeros_like(x_mean), torch.ones_like(x_std)
        if not target:
            y_mean, y_std = 0.0, 1.0
        if target and y_std**2 > torch.finfo(torch.float32).max:
            # Losses are reported in the target's units, y_std² times the scaled ones, as
            # float32 numbers: each would be inf while the model trained fine.
            raise ValueError(f"the target's standard deviation {y_std:.3g} is too large to "
                             f"report its squared losses in float32 (they pass about 3.4e38); "
                             f"remove an outlier that causes it, or rescale the target")
        # w in original units is y_std * w_scaled / x_std: where that ratio passes float32's
        # range, a fit's w and every prediction made from it would be inf.
        ratio = (y_std if y_std > 0 else 1.0) / x_std.double()
        if bool((ratio > torch.finfo(torch.float32).max).any()):
            j = int(ratio.argmax())
            raise ValueError(
                f"feature column {j + 1} varies so much less than the target (std "
                f"{float(x_std[j]):.3g} against {y_std:.3g}) that its weight in original units "
                f"would pass float32's largest value (about 3.4e38); rescale the data")
        # Kept on the CPU, as a checkpoint holds them, whatever device the data was on:
        # original_params mixes them with CPU copies of w; features() moves them to X's device.
        return cls(x_mean.float().cpu(), x_std.float().cpu(), y_mean,
                   y_std if y_std > 0 else 1.0, constant)

    @property
    def loss_scale(self) -> float:
        """Squared losses of the scaled target times this are the target's own (y_scale²)."""
        return self.y_scale ** 2

    def reported_loss(self, loss: float) -> float:
        """A whole-set loss of the scaled target in the target's units, rounded to float32:
        the number TensorBoard stores (its scalars are float32), the CLI prints and FitResult
        holds alike."""
        return _float32(loss * self.loss_scale)

    @property
    def is_identity(self) -> bool:
        """True when nothing is scaled."""
        return (self.y_mean == 0.0 and self.y_scale == 1.0 and not self.x_mean.any()
                and bool((self.x_scale == 1).all()))

    def features(self, X: torch.Tensor) -> torch.Tensor:
        """Scale features (n, d) as the model sees them."""
        if self.is_identity:
            return X
        return (X - self.x_mean.to(X.device)) / self.x_scale.to(X.device)

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """Scale the target (n, 1) as the model sees it."""
        if self.y_mean == 0.0 and self.y_scale == 1.0:
            return y
        return (y - self.y_mean) / self.y_scale

    def unscale_target(self, y_scaled: torch.Tensor) -> torch.Tensor:
        """Predictions in the original units of the target."""
        if self.y_mean == 0.0 and self.y_scale == 1.0:
            return y_scaled
        return y_scaled * self.y_scale + self.y_mean

    def original_params(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The model's (w, b) in original units: y = x @ w_orig + b_orig; w_orig float32 (d,),
        b_orig a float rounded to float32, as w_orig is and as an unscaled fit's b is."""
        # y = s_y (sum_j w_j (x_j - m_j) / s_j + b) + m_y
        w64 = w.detach().cpu().double().reshape(-1)
        b64 = float(b.detach().cpu().double().reshape(()))
        w_orig = self.y_scale * w64 / self.x_scale.double()
        b_orig = self.y_scale * (b64 - float((w64 * self.x_mean.double()
                                              / self.x_scale.double()).sum())) + self.y_mean
        return w_orig.float(), _float32(b_orig)

    def state(self) -> dict[str, Any]:
        """Tensors and floats only, as a checkpoint stores them."""
        return {"x_mean": self.x_mean.cpu(), "x_scale": self.x_scale.cpu(),
                "y_mean": self.y_mean, "y_scale": self.y_scale}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Scaling:
        """The inverse of state()."""
        return cls(state["x_mean"].float(), state["x_scale"].float(),
                   float(state["y_mean"]), float(state["y_scale"]))


@torch.no_grad()
def r2_score(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination 1 - SS_res / SS_tot (0-d tensor, not synced).

    NaN when y is constant (one row, say) or empty: SS_tot is 0 and R² is undefined.
    """
    y = y.reshape(y_hat.shape)
    if y.numel() == 0:  # amax has nothing to reduce
        return torch.full((), torch.nan, dtype=torch.result_type(y_hat, y), device=y.device)
    # Both over a power of two near the largest |y|, which rounds no value and leaves the
    # ratio as it is: unscaled, float32's sums of squares overflowed for targets near 5e18
    # (which fit takes) and vanished for ones near 1e-23, and an R² of 0.99 read 1.0.
    top = y.abs().amax()
    scale = torch.where(top > 0, torch.exp2(torch.floor(torch.log2(top))), 1.0)
    y, y_hat = y / scale, y_hat / scale
    ss_res = ((y - y_hat) ** 2).sum()
    # float32's mean of equal values is not always that value (50 times 0.1 is not): the
    # deviations then sum to n·δ², a tiny SS_tot that made R² -1e14, not undefined. The
    # corrected two-pass sum takes that n·δ² back out; equal values are caught exactly.
    deviations = y - y.mean()
    ss_tot = (deviations ** 2).sum() - deviations.sum() ** 2 / y.numel()
    defined = (ss_tot > 0) & (y.amax() > y.amin())
    return torch.where(defined, 1 - ss_res / ss_tot, torch.nan)
