"""TensorBoard runs: one folder per fit, written as the fit goes and closed however it ends."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import numpy as np
import torch

from torchlr.atomic import cannot_write
from torchlr.interrupts import held, unbroken
from torchlr.preprocess import Scaling
from torchlr.scratch import linreg
from torchlr.validation import check_writable_folder

if TYPE_CHECKING:
    from torchlr.train import FitConfig, FitResult

# Metrics the HParams dashboard shows for each run: the last value of these scalar tags.
LOSS_TAG = "loss/epoch"
ERROR_TAGS = ("error/w", "error/b")
# A folder name is at most 255 bytes on common file systems; the run folder's adds about 30
# (`20261127-150954-concise-` and a `-2` for a second run in the same second).
RUN_NAME_MAX_BYTES = 200
FIGURE_POINTS = 2000  # at most this many points in the scatter, so huge data sets stay cheap
T = TypeVar("T")


def new_run_dir(logdir: str | os.PathLike[str], impl: str, suffix: Optional[str] = None,
                *, now: Optional[float] = None) -> str:
    """Create and return a fresh folder `<logdir>/<YYYYmmdd-HHMMSS>-<impl>[-suffix]`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = os.path.join(os.fspath(logdir), f"{stamp}-{impl}" + (f"-{suffix}" if suffix else ""))
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    k = 1
    while True:
        path = base if k == 1 else f"{base}-{k}"
        try:
            os.mkdir(path)  # atomic: a run started in the same second, even elsewhere, gets -2
            return path
        except FileExistsError:
            k += 1


def as_float_tuple(value: Any) -> Any:
    """A tensor, array or sequence of numbers as a tuple of floats; anything else unchanged."""
    if value is None or isinstance(value, (str, bytes)):
        return value
    try:
        flat = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        return value  # validate() names it
    return tuple(float(v) for v in flat)


def check_options(config: FitConfig) -> None:
    """Raise TypeError or ValueError naming the first bad TensorBoard option of a FitConfig."""
    if config.logdir is not None and not isinstance(config.logdir, (str, os.PathLike)):
        raise TypeError(f"logdir must be a path or None, got {type(config.logdir).__name__}: "
                        f"{config.logdir!r}")
    if config.logdir is not None and not os.fspath(config.logdir):
        raise ValueError("logdir must be a folder path or None, got ''")
    if config.logdir is not None:
        check_writable_folder("logdir", config.logdir)
    name = config.run_name
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"run_name must be a str or None, got {type(name).__name__}: "
                            f"{name!r}")
        if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
            raise ValueError(f"run_name must be a non-empty folder name without '/' or NUL, "
                             f"got {name!r}")
        if len(os.fsencode(name)) > RUN_NAME_MAX_BYTES:
            raise ValueError(f"run_name must be at most {RUN_NAME_MAX_BYTES} bytes, got "
                             f"{len(os.fsencode(name))}: the run folder's name, which adds "
                             f"the date and the implementation, must fit a file system's 255")
    true_w = config.true_w
    if true_w is not None and not (
        isinstance(true_w, tuple) and true_w and all(math.isfinite(v) for v in true_w)
    ):
        raise ValueError(f"true_w must be a non-empty sequence of finite numbers or None, "
                         f"got {true_w!r}")
    true_b = config.true_b
    if true_b is not None and (isinstance(true_b, bool) or not isinstance(true_b, numbers.Real)):
        raise TypeError(f"true_b must be a finite number or None, got "
                        f"{type(true_b).__name__}: {true_b!r}")
    if true_b is not None and not math.isfinite(true_b):
        raise ValueError(f"true_b must be a finite number or None, got {true_b!r}")


@contextmanager
def _writing(run: RunWriter) -> Iterator[None]:
    """Ctrl-C held back until the block is done (torchlr.interrupts), and a failure to write
    (a full disk) named with the run folder."""
    with held():
        try:
            yield
        except OSError as exc:
            if run.run_dir is None:  # making the folder: the error names it already
                raise
            raise cannot_write(f"the TensorBoard run {run.run_dir}", exc) from None


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """A RunWriter method that writes, run _writing; with no run open, as it is."""
    @functools.wraps(method)
    def guarded(self: RunWriter, *args: Any, **kwargs: Any) -> T:
        if self._writer is None:  # nothing to write: no signal handlers swapped (11 µs)
            return method(self, *args, **kwargs)
        with _writing(self):
            return method(self, *args, **kwargs)
    return guarded


class RunWriter:
    """One fit's TensorBoard run; every method does nothing until open() is given a logdir.

    Use it as a context manager: on the way out, however the fit ends, it records how the
    session ended, flushes and closes the event file, and gives an escaping exception a
    `run_dir` attribute so the caller can say where the run is.
    """

    def __init__(self) -> None:
        self.run_dir: Optional[str] = None
        self._writer: Any = None  # a SummaryWriter once open
        # hparams()' session-end summary; None while open() has not got that far (an error
        # between the SummaryWriter and it must not turn into an AttributeError at close).
        self._session_end: Any = None

    def open(self, config: FitConfig, X: torch.Tensor, y: torch.Tensor, device: torch.device,
             steps: int, scaling: Optional[Scaling] = None, val_examples: int = 0) -> None:
        """Create the run folder and write the configuration and hyperparameters.

        X and y are the training rows as the model sees them (val_examples more were held
        out); scaling (if any) maps its parameters back to the original units that true_w
        and true_b are given in.
        """
        if config.logdir is None:
            return
        with _writing(self):
            self._open(config, X, y, device, steps, scaling, val_examples)

    def _open(self, config: FitConfig, X: torch.Tensor, y: torch.Tensor, device: torch.device,
              steps: int, scaling: Optional[Scaling], val_examples: int) -> None:
        n, d = X.shape
        # Imported here: `import torchlr` stays light, and only runs that log pay for it.
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.run_dir = new_run_dir(config.logdir, config.impl, config.run_name)
        self._writer = SummaryWriter(log_dir=self.run_dir)
        self._config, self._X, self._y, self._steps = config, X, y, steps
        self._scaling = None if scaling is None or scaling.is_identity else scaling
        self._samples = min(n, steps * config.batch_size)  # drop_last may skip a tail
        self._true_w = (None if config.true_w is None
                        else torch.tensor(config.true_w, dtype=torch.float64))

        # num_examples counts every row, as --num-examples does; train_examples those trained on.
        facts = {"num_examples": n + val_examples, "train_examples": n, "num_features": d,
                 "steps_per_epoch": steps,
                 "device (resolved)": str(device), "torch": torch.__version__}
        rows = [*dataclasses.asdict(config).items(), *facts.items()]
        table = "| option | value |\n|---|---|\n" + "\n".join(f"| {k} | `{v}` |" for k, v in rows)
        self._writer.add_text("config", table, 0)

        hparam_dict = {"impl": config.impl, "lr": config.lr, "batch_size": config.batch_size,
                       "num_epochs": config.num_epochs, "seed": config.seed,
                       "device": str(device), "num_examples": n + val_examples,
                       "train_examples": n, "gradient": config.gradient,
                       "permutation": config.permutation}
        # The same metrics in every run, whether it writes them or not: TensorBoard's HParams
        # dashboard takes the list of one run (the first it finds) for the whole log folder.
        metrics = [LOSS_TAG, "loss/val", "r2/val", *ERROR_TAGS]
        # Written into this run's own file, unlike SummaryWriter.add_hparams (a sibling run).
        experiment, session_start, self._session_end = hparams(
            hparam_dict, dict.fromkeys(metrics, 0.0)
        )
        self._writer.file_writer.add_summary(experiment)
        self._writer.file_writer.add_summary(session_start)
        self._writer.flush()

    @_guarded
    def train_losses(self, epoch: int, first_step: int, chunk: torch.Tensor) -> None:
        """Write one loss/train point: the mean of a host-read chunk of minibatch losses."""
        if self._writer is None or len(chunk) == 0:
            return
        step = (epoch - 1) * self._steps + first_step + len(chunk)  # the chunk's last step
        self._writer.add_scalar("loss/train", float(chunk.double().mean()), step)
        self._writer.flush()  # an interrupted run keeps everything read so far

    @_guarded
    @torch.no_grad()
    def epoch(self, epoch: int, loss: float, w: torch.Tensor, b: torch.Tensor,
              seconds: float, val_loss: Optional[float] = None,
              val_r2: Optional[float] = None) -> None:
        """Write the epoch's scalars (loss/val and r2/val too when the fit holds out rows)
        and the histograms of w and its full-batch gradient, in one write that a Ctrl-C
        does not split.

        w (d, 1) and b (1,) are the model's own; error/* and params/w are in original units.
        """
        if self._writer is None:
            return
        write = self._writer.add_scalar
        write(LOSS_TAG, loss, epoch)
        if val_loss is not None:
            write("loss/val", val_loss, epoch)
            write("r2/val", val_r2, epoch)
        grad_w = None
        if isinstance(self._X, torch.Tensor):  # not for data streamed from disk
            # Gradient of the epoch loss (mean squared_loss over the whole set): one extra pass.
            # In the units the model trains in, as its steps are (scaled when it standardizes).
            residual = linreg(self._X, w, b) - self._y  # (n, 1)
            grad_w = (self._X.T @ residual).reshape(-1) / len(self._X)  # (d,)
            grad_b = residual.mean().reshape(1)
            grad_w, grad_b = grad_w.double().cpu(), grad_b.double().cpu()
            write("grad/norm", float(torch.cat([grad_w, grad_b]).norm()), epoch)
        write("lr", self._config.lr, epoch)
        write("perf/samples_per_sec", self._samples / max(seconds, 1e-12), epoch)
        if self._scaling is None:
            w_host, b_host = w.detach().reshape(-1).double().cpu(), float(b)
        else:  # what FitResult.w_history and b_history hold
            w_orig, b_host = self._scaling.original_params(w, b)
            w_host = w_orig.double()
        if self._true_w is not None:
            write(ERROR_TAGS[0], float((w_host - self._true_w).norm()), epoch)
        if self._config.true_b is not None:
            write(ERROR_TAGS[1], abs(b_host - self._config.true_b), epoch)
        self._writer.add_histogram("params/w", w_host, epoch)
        if grad_w is not None:
            self._writer.add_histogram("grad/w", grad_w, epoch)
        self._writer.flush()

    @_guarded
    def finish(self, result: FitResult) -> None:
        """Write the scatter of the data with the fitted line."""
        if self._writer is None or not isinstance(self._X, torch.Tensor):
            return
        # The model's own (scaled) parameters: self._X is the data as the model saw it.
        w = result.w if result.scaled_w is None else result.scaled_w
        b = result.b if result.scaled_b is None else result.scaled_b
        image = fit_figure(self._X, self._y, w, b)
        # At the last epoch that ran: early stopping may end before num_epochs.
        self._writer.add_image("plot/fit", image, len(result.losses), dataformats="HWC")

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if self._writer is None:
            return
        if exc is not None:
            exc.run_dir = self.run_dir  # type: ignore[union-attr]
        try:
            self._end(success=exc is None)
        except (OSError, KeyboardInterrupt) as late:  # a full disk, or Ctrl-C while closing
            if exc is not None:
                return  # the fit's own error (or interrupt) is what the caller hears
            late.run_dir = self.run_dir  # type: ignore[attr-defined]
            raise

    @_guarded
    def _end(self, success: bool) -> None:
        """Record how the session ended, then flush and close the event file."""
        writer, self._writer = self._writer, None
        try:
            if self._session_end is not None:
                writer.file_writer.add_summary(_with_status(self._session_end, success))
        finally:
            writer.close()  # flushes


def _with_status(session_end: Any, success: bool) -> Any:
    """The session-end summary from hparams(), marked as a failure when the fit raised."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    value = session_end.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    data.session_end_info.status = api_pb2.Status.Value(
        "STATUS_SUCCESS" if success else "STATUS_FAILURE"
    )
    value.metadata.plugin_data.content = data.SerializeToString()
    return session_end


def fit_figure(features: torch.Tensor, labels: torch.Tensor, w: torch.Tensor,
               b: float) -> np.ndarray:
    """The chapter's scatter of features[:, 1] against labels with the fitted line, as RGB."""
    with unbroken():  # a compiled module's import: see unbroken
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        from torchlr.plots import scatter

    # Subsampled where the data lives: only FIGURE_POINTS rows ever reach the host.
    keep = torch.arange(0, len(features), max(1, -(-len(features) // FIGURE_POINTS)),
                        device=features.device)  # the stride rounded up: at most FIGURE_POINTS
    fig = scatter(features.index_select(0, keep), labels.index_select(0, keep),
                  column=min(1, features.shape[1] - 1), w=w, b=float(b))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8
