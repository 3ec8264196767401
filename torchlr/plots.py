"""Figures for data, losses, parameters and learning-rate sweeps, built without pyplot.

Each function returns a new `matplotlib.figure.Figure` made with the object API, so it
renders headless (Agg) and leaves no figure in pyplot's registry. Save one with
`fig.savefig(path)`; in a notebook, make it the cell's last expression or `display` it:
it shows as a PNG, with or without `%matplotlib inline`.
"""

from __future__ import annotations

import io
import math
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from torchlr.atomic import write_atomic
from torchlr.sweep import SweepPoint
from torchlr.train import FitResult
from torchlr.validation import check_finite_number, unwritable_file

Runs = Union[Sequence[FitResult], Mapping[str, Union[FitResult, Sequence[float]]]]
Vector = Union[torch.Tensor, Sequence[float]]


class NotebookFigure(Figure):
    """A Figure that Jupyter displays as a PNG even when pyplot was never imported."""

    def _repr_png_(self) -> bytes:
        # IPython calls this when no figure formatter is registered (no %matplotlib inline).
        buffer = io.BytesIO()
        self.savefig(buffer, format="png")
        return buffer.getvalue()


def _cpu(values: Any) -> torch.Tensor:
    return torch.as_tensor(values).detach().cpu().double()


def _labelled(runs: Runs) -> list[tuple[str, Any]]:
    """(label, FitResult or losses) pairs; FitResults without a label are named by impl."""
    if isinstance(runs, Mapping):
        return [(str(label), run) for label, run in runs.items()]
    runs = [runs] if isinstance(runs, FitResult) else list(runs)  # a generator: read once
    for run in runs:
        if not isinstance(run, FitResult):  # a list of losses, say: which run is it?
            raise TypeError(f"runs must be FitResults, or a mapping of labels to FitResults "
                            f"or losses (such as {{'lr 0.1': result.losses}}), got "
                            f"{type(run).__name__}: {run!r}")
    with_device = _devices_differ(runs)
    return [(f"{run.impl} ({run.device})" if with_device else run.impl, run) for run in runs]


def _style(i: int) -> dict[str, Any]:
    """Colour, line style and marker of the i-th run: runs that coincide stay visible."""
    return {"color": f"C{i}", "linestyle": ("-", "--", ":", "-.")[i % 4],
            "marker": ("o", "s", "^", "D")[i % 4], "fillstyle": "full" if i == 0 else "none"}


def _devices_differ(runs: Sequence[FitResult]) -> bool:
    return len({run.device for run in runs}) > 1


def scatter(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    column: Optional[int] = None,
    w: Optional[Vector] = None,
    b: Optional[float] = None,
    figsize: tuple[float, float] = (5.0, 3.5),
) -> Figure:
    """The chapter's scatter plot of features[:, column] against labels, with an optional fit.

    column defaults to 1, the chapter's choice, or 0 when there is one feature. Given w and
    b, the fitted line is the model's prediction along that feature with the other features
    held at their mean: y = w[column] x + b + sum_k!=column w[k] mean(x_k).
    """
    X = _cpu(features)
    if X.dim() != 2:
        raise ValueError(f"features must be 2-D (n_samples, n_features), got shape "
                         f"{tuple(X.shape)}")
    column = min(1, X.shape[1] - 1) if column is None else column
    if isinstance(column, bool):
        raise TypeError(f"column must be an int, got bool: {column!r}")
    try:
        column = operator.index(column)  # np.argmax's int64 and a 0-d int tensor too
    except TypeError:
        raise TypeError(f"column must be an int, got {type(column).__name__}: {column!r}") \
            from None
    if not -X.shape[1] <= column < X.shape[1]:
        raise ValueError(f"column must be in [-{X.shape[1]}, {X.shape[1]}), got {column!r}")
    y = _cpu(labels).reshape(-1)
    if len(y) != len(X):
        raise ValueError(f"labels has {len(y)} values but features has {len(X)} rows")
    x = X[:, column]
    fig = NotebookFigure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    ax.scatter(x.numpy(), y.numpy(), s=1, label="data")
    if w is not None:
        if b is None:
            raise ValueError("scatter() needs b together with w to draw the fitted line")
        w_vec = _cpu(w).reshape(-1)
        # A number or a one-number tensor (the chapter's b, requires_grad and all).
        b = check_finite_number("b", b.detach() if isinstance(b, torch.Tensor) else b)
        if len(w_vec) != X.shape[1]:
            raise ValueError(
                f"w has {len(w_vec)} entries but features has {X.shape[1]} columns"
            )
        others = float(X.mean(0) @ w_vec - X[:, column].mean() * w_vec[column])
        xs = torch.stack([x.min(), x.max()])
        ax.plot(xs.numpy(), (w_vec[column] * xs + b + others).numpy(), color="C1",
                label="fitted")
        ax.legend()
    ax.set_xlabel(f"features[:, {column}]")
    ax.set_ylabel("labels")
    return fig


def loss_curves(
    runs: Runs,
    *,
    minibatch: bool = False,
    reference: Optional[float] = None,
    log_scale: bool = True,
    figsize: tuple[float, float] = (5.0, 3.5),
) -> Figure:
    """Per-epoch training loss of several runs on one axes (FitResults or label -> losses).

    A FitResult with validation losses (val_fraction > 0) also gets its validation curve.
    minibatch=True also draws each FitResult's minibatch losses, placed at fractional
    epochs. reference draws a horizontal line, e.g. the loss of the closed-form solution.
    """
    fig = NotebookFigure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    for i, (label, run) in enumerate(_labelled(runs)):
        color = f"C{i}"
        losses = run.losses if isinstance(run, FitResult) else list(run)
        if minibatch and isinstance(run, FitResult) and len(run.train_losses):
            steps = len(run.train_losses)
            x = torch.arange(1, steps + 1, dtype=torch.float64) * len(losses) / steps
            ax.plot(x.numpy(), _cpu(run.train_losses).numpy(), color=color, alpha=0.3,
                    linewidth=0.8, label=f"{label} (minibatch)")
        epochs = list(range(1, len(losses) + 1))
        ax.plot(epochs, [float(v) for v in losses], label=label, **_style(i))
        val_losses = getattr(run, "val_losses", None)
        if val_losses:  # a FitResult trained with val_fraction > 0
            ax.plot(list(range(1, len(val_losses) + 1)), [float(v) for v in val_losses],
                    color=color, linestyle=":", marker="x", label=f"{label} (validation)")
    if reference is not None:
        ax.axhline(check_finite_number("reference", reference), color="black", linestyle=":",
                   label="closed form")
    if log_scale:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if ax.get_legend_handles_labels()[1]:  # none for no runs: matplotlib would warn
        ax.legend()
    return fig


def trajectories(
    runs: Runs,
    *,
    true_w: Optional[Vector] = None,
    true_b: Optional[float] = None,
    exact: Optional[tuple[Vector, float]] = None,
    figsize: Optional[tuple[float, float]] = None,
) -> Figure:
    """Each parameter (w_1..w_d, then b) per epoch for several FitResults, one axes each.

    true_w/true_b draw the generating parameters as dashed lines; exact=(w, b), e.g. from
    least_squares, draws the closed-form solution as dotted lines.
    """
    named = _labelled(runs)
    if not named or not all(isinstance(run, FitResult) for _, run in named):
        raise TypeError("trajectories() needs one or more FitResults")
    d = named[0][1].w_history.shape[1]
    names = [f"w[{j}]" for j in range(d)] + ["b"]
    truth = _reference(true_w, true_b, d)
    closed = _reference(*exact, d) if exact is not None else [None] * (d + 1)
    fig = NotebookFigure(figsize=figsize or (3.2 * (d + 1), 3.0), layout="constrained")
    axes = fig.subplots(1, d + 1, squeeze=False)[0]
    for j, ax in enumerate(axes):
        for i, (label, run) in enumerate(named):
            history = torch.cat([_cpu(run.w_history), _cpu(run.b_history).reshape(-1, 1)], 1)
            ax.plot(range(len(history)), history[:, j].numpy(), label=label, **_style(i))
        if truth[j] is not None:
            ax.axhline(truth[j], color="gray", linestyle="--", label="truth")
        if closed[j] is not None:
            ax.axhline(closed[j], color="black", linestyle=":", label="closed form")
        ax.set_title(names[j])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("value")
    axes[0].legend()
    return fig


def _reference(w: Optional[Vector], b: Optional[float], d: int) -> list[Optional[float]]:
    values: list[Optional[float]] = [None] * (d + 1)
    if w is not None:
        w_vec = _cpu(w).reshape(-1)
        if len(w_vec) != d:
            raise ValueError(f"reference w has {len(w_vec)} entries, the runs have {d}")
        values[:d] = [float(v) for v in w_vec]
    if b is not None:
        values[d] = float(b)
    return values


def lr_sweep(
    sweep: Union[Sequence[SweepPoint], Mapping[float, Optional[float]]],
    *,
    figsize: tuple[float, float] = (5.0, 3.5),
) -> Figure:
    """Final loss against learning rate on log axes, from SweepPoints or lr -> final loss.

    Diverged runs (a SweepPoint without result, or a loss that is None, NaN or inf) are
    marked with red crosses along the top edge. A SweepPoint of a run without epochs
    (num_epochs=0) has no final loss and did not diverge: it is not drawn.
    """
    if isinstance(sweep, Mapping):
        pairs = [(float(lr), None if v is None else float(v)) for lr, v in sweep.items()]
    else:
        pairs = [(p.lr, None if p.diverged else p.final_loss) for p in sweep
                 if p.diverged or p.losses]
    ok = [(lr, v) for lr, v in pairs if v is not None and math.isfinite(v)]
    bad = [lr for lr, v in pairs if v is None or not math.isfinite(v)]
    fig = NotebookFigure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    ax.set_xscale("log")
    ax.set_yscale("log")
    if ok:
        values = [v for _, v in ok]
        ax.plot([lr for lr, _ in ok], values, marker="o", label="final loss")
        if bad:  # headroom on the log axis, so the crosses do not hide the highest point
            ax.set_ylim(min(values) / 3, max(values) * 30)
    if bad:
        # x in data units, y in axes units: the crosses sit on the top edge at any scale.
        ax.plot(bad, [0.97] * len(bad), linestyle="none", marker="x", color="red",
                markersize=9, transform=ax.get_xaxis_transform(), label="diverged")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final loss")
    if ok or bad:  # a sweep of runs without epochs has nothing to label
        ax.legend()
    return fig


def check_image_path(path: Union[str, Path]) -> Path:
    """Refuse, before any work, a path that is a folder, that cannot be written (folders
    missing are fine where they can be made, as for a checkpoint) or whose format is
    unknown."""
    if not str(path):
        raise ValueError("Cannot save a plot to '': give a file path such as loss.png")
    # A trailing slash means a folder (as for --save): Path would drop it and write a file.
    folder = str(path).endswith(("/", os.sep))
    path = Path(path)
    formats = Figure().canvas.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ValueError(
            f"Cannot save a plot to {str(path)!r}: unknown image format {suffix!r}; "
            f"expected one of {', '.join(sorted(formats))}"
        )
    if folder or path.is_dir():  # a folder named like an image: savefig failed at the end
        raise ValueError(f"Cannot save a plot to {str(path) + '/' * folder!r}: it is a folder; "
                         f"give a file path")
    why = unwritable_file(str(path))
    if why:
        raise ValueError(f"Cannot save a plot to {str(path)!r}: {why}")
    return path


def save_figure(figure: Figure, path: Union[str, Path]) -> None:
    """Write a figure to path atomically (no half-written image), making missing folders."""
    suffix = Path(path).suffix.lower().lstrip(".")
    write_atomic(path, lambda f: figure.savefig(f, format=suffix))
