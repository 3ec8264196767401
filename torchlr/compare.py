"""Side-by-side numbers for runs of the two implementations and the closed form."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, TypeVar, Union

import numpy as np
import torch

from torchlr.scratch import linreg, squared_loss
from torchlr.train import FitResult
from torchlr.validation import check_data, check_finite_number, parameter_values

T = TypeVar("T")
Vector = Union[torch.Tensor, Sequence[float]]


def timed(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> tuple[T, float]:
    """Call fn(*args, **kwargs); return its value and the wall time in seconds."""
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def max_abs_difference(a: FitResult, b: FitResult) -> torch.Tensor:
    """The largest |a - b| over all parameters (w and b), at the start and after each epoch."""
    if a.w_history.shape != b.w_history.shape:
        raise ValueError(
            "The runs have different histories: "
            f"{tuple(a.w_history.shape)} and {tuple(b.w_history.shape)}"
        )
    gap_w = (a.w_history.double() - b.w_history.double()).abs().amax(dim=1)  # (epochs + 1,)
    gap_b = (a.b_history.double() - b.b_history.double()).abs()  # (epochs + 1,)
    return torch.maximum(gap_w, gap_b)


@torch.no_grad()
def mean_loss(features: torch.Tensor, labels: torch.Tensor, w: Vector, b: float) -> float:
    """The chapter's loss, mean squared_loss, of parameters (w, b) on a data set, in float64.

    Checked as evaluate checks them: features (n, d), labels n values, w d numbers, b one.
    """
    X, y = check_data(features, labels, dtype=torch.float64)
    w_col = parameter_values("w", w, X.shape[1], torch.float64).cpu().reshape(-1, 1)
    b_one = parameter_values("b", b, 1, torch.float64).cpu()
    return float(squared_loss(linreg(X.cpu(), w_col, b_one), y.cpu()).mean())


def summary(
    features: torch.Tensor,
    labels: torch.Tensor,
    runs: Mapping[str, FitResult],
    *,
    true_w: Vector,
    true_b: float,
    exact: Optional[tuple[Vector, float]] = None,
    exact_seconds: Optional[float] = None,
) -> list[dict[str, Any]]:
    """One row per run (and one for the closed form): final loss, errors and wall time.

    A run's time is the sum of its epoch times; errors are max |w - w_true| and |b - b_true|.
    features (n, d) and labels are checked as fit checks them; true_w and exact's w must
    hold d values (one would be broadcast over every weight), true_b and exact's b one.
    """
    X, y = check_data(features, labels)
    d = X.shape[1]
    w_true = parameter_values("true_w", true_w, d, torch.float64)
    true_b = check_finite_number("true_b", true_b)
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must map names to FitResults, got {type(runs).__name__}")
    for name, run in runs.items():
        if not isinstance(run, FitResult):
            raise TypeError(f"runs[{name!r}] must be a FitResult, got {type(run).__name__}")
        if run.w.numel() != d:
            raise ValueError(f"runs[{name!r}] has {run.w.numel()} weights for {d} feature "
                             f"columns")
    rows = []
    entries: list[tuple[str, str, torch.Tensor, float, Optional[float]]] = [
        (name, run.device, run.w.double(), run.b, sum(run.epoch_seconds))
        for name, run in runs.items()
    ]
    if exact is not None:
        if not (isinstance(exact, (tuple, list)) and len(exact) == 2):
            raise TypeError(f"exact must be a pair (w, b), as least_squares returns, got "
                            f"{type(exact).__name__}")
        w_exact = parameter_values("exact w", exact[0], d, torch.float64)
        b_exact = check_finite_number("exact b", exact[1])
        entries.append(("closed form", "cpu", w_exact, b_exact, exact_seconds))
    for name, device, w, b, seconds in entries:
        row = {
            "run": name,
            "device": device,
            "loss": mean_loss(X, y, w, b),
            "max |w - w_true|": float((w - w_true).abs().max()),
            "|b - b_true|": abs(b - true_b),
        }
        if exact is not None:
            row["max |w - w_exact|"] = float((w - w_exact).abs().max())
            row["|b - b_exact|"] = abs(b - b_exact)
        row["seconds"] = seconds
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render rows of equal keys as a Markdown table; floats in 4 significant digits."""
    # A literal | would end a cell early: escape it (the column names use |w - w_true|).
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, (float, np.floating)):
            return f"{value:.4g}"
        # A newline would end the row early.
        return " ".join(str(value).replace("|", "\\|").splitlines())

    lines = ["| " + " | ".join(cell(k) for k in keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)
