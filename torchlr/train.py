"""fit(): one training loop that drives either implementation, with the chapter's numbers."""

from __future__ import annotations

import copy
import difflib
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Optional

import torch

from torchlr import analytic, distributed, graphs, threads
from torchlr.checkpoint import predict, prediction_features
from torchlr.concise import LinearRegression, make_optimizer, mse, optimizer_step
from torchlr.data import PERMUTATIONS, OrdersAhead, batches_in_order, data_iter, orders_ahead
from torchlr.devices import resolve_device
from torchlr.interrupts import held
from torchlr.preprocess import Scaling
from torchlr.run import History, RunState, sampled_digest
from torchlr.scratch import init_params, linreg, sgd, squared_loss
from torchlr.stream import BlockStream
from torchlr.summed_loss import loss_mean, loss_sum, mean_and_coarse, refined
from torchlr.tensorboard import RunWriter, as_float_tuple, check_options
from torchlr.threads import CpuThreads
from torchlr.validation import (
    IMPLS,
    check_bool,
    check_choice,
    check_data,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_run_options,
    check_seed,
    parameter_values,
)

FLOAT32_MAX = torch.finfo(torch.float32).max
FLOAT32_TINY = torch.finfo(torch.float32).tiny
MAX_THREADS = 1024  # far beyond any CPU's cores; torch's OpenMP crashes at tens of thousands


class DivergenceError(FloatingPointError):
    """The loss became NaN or inf during training."""


@dataclass
class FitConfig:
    """Everything that defines a run. The defaults reproduce the chapter.

    Attributes (each also a keyword of fit and lr_sweep):
        impl: "scratch" (raw tensors, autograd, sgd) or "concise" (nn.Linear, optim.SGD).
        lr, batch_size, num_epochs: the step size, rows per minibatch, passes over the data.
        device: "auto" (CUDA if present, else the CPU), "cpu", "cuda", "cuda:N" or "mps".
        seed: seeds the initial parameters, every epoch's batch order and the
            validation split.
        drop_last: leave out the short last batch (kept, with its true mean, by default).
        log_every: steps between host reads of the minibatch losses (0: once per epoch).
        val_fraction: rows held out by a seeded split, scored after each epoch.
        standardize, standardize_target: scale features (and the target) by the training
            rows' mean and std; results stay in original units.
        early_stopping: epochs without a lower validation loss before stopping (0: off).
        save, resume: a checkpoint path written after each epoch; one to continue from.
        feature_names, target_name: column names, kept in checkpoints.
        logdir, run_name: write a TensorBoard run in a folder under logdir.
        true_w, true_b: the truth, for TensorBoard's error/w and error/b.
        threads: torch threads while fitting on the CPU (None: torch's own setting).
        worker_thread: gather the next rows on a second thread (same results to the bit).
        cuda_graphs: on CUDA, replay the steps as CUDA graphs.
        gradient: "autograd" (backward()) or "analytic" (the gradient written out).
        permutation: "randperm" (the chapter's order) or "hashed" (another, GPU-made order).
    The comments beside each field below say why.
    """

    impl: str = "scratch"  # "scratch" (raw tensors + sgd) or "concise" (nn.Linear + optim.SGD)
    lr: float = 0.03
    batch_size: int = 10
    num_epochs: int = 3
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps"
    seed: int = 0  # seeds the initial parameters and the batch order
    drop_last: bool = False  # keep the short last batch (with a true mean) unless set
    # Steps between host reads of the minibatch losses: the only syncs inside an epoch.
    # 0 reads once per epoch.
    log_every: int = 50
    # Real data: validation, scaling, early stopping, checkpoints (torchlr.run does the work).
    val_fraction: float = 0.0  # rows held out by a seeded split; val loss and R² per epoch
    standardize: bool = False  # scale features by training-split mean and std
    standardize_target: bool = False  # scale the target too; results stay in original units
    early_stopping: int = 0  # patience: epochs without a lower val loss; 0 = off
    save: Optional[str] = None  # checkpoint path, rewritten atomically after each epoch
    resume: Optional[str] = None  # checkpoint to continue from, up to num_epochs
    feature_names: Optional[tuple[str, ...]] = None  # column names, kept in checkpoints
    target_name: Optional[str] = None
    # TensorBoard: with a logdir the fit writes one run folder under it (torchlr.tensorboard).
    logdir: Optional[str] = None
    run_name: Optional[str] = None  # appended to the run folder's name
    true_w: Optional[tuple[float, ...]] = None  # the truth, for the error/w and error/b tags
    true_b: Optional[float] = None
    # torch threads while fitting on the CPU (restored after): steps are small ops, which a
    # second thread barely speeds up and, on a busy machine, slows down many times over.
    # None keeps torch's own setting.
    threads: Optional[int] = 1
    # On the CPU with two cores or more, a second thread gathers the next block of rows
    # while the steps run, and sums half of each epoch's loss over the data set. The
    # results are the same to the bit without it.
    worker_thread: bool = True
    # On CUDA: capture the full batches' steps as CUDA graphs, up to 16 steps a graph,
    # and replay them (torchlr.graphs). For small batches, where launching kernels costs
    # more than running them. The results are the same to float precision; not supported
    # with a stream or a process group.
    cuda_graphs: bool = False
    # "autograd" (the chapter: backward() on the loss) or "analytic": the same gradient
    # derived by hand (torchlr.analytic), a few fused kernels with no graph recorded. Several
    # times faster per step when steps are small; agrees with autograd to float precision.
    # Not supported in a process group.
    gradient: str = "autograd"
    # How each epoch's order is drawn (torchlr.data.PERMUTATIONS). "randperm" (the chapter's
    # way): torch.randperm on the seeded CPU generator, copied to the device. "hashed": the
    # row numbers sorted by a seeded hash, computed on a GPU where the data is large: another
    # order, the same on every device, without a CPU permutation and copy per epoch (most of
    # a 10M-row GPU epoch otherwise). Not with a stream, which draws its own block order.
    permutation: str = "randperm"

    def __post_init__(self) -> None:
        self.true_w = as_float_tuple(self.true_w)  # a tensor or list is kept as plain floats
        # And true_b as a tensor of one number, as torch.tensor(4.2) holds it; a bool tensor,
        # or one of several numbers, is left for validate() to refuse.
        if hasattr(self.true_b, "dtype") and "bool" not in str(self.true_b.dtype):
            values = as_float_tuple(self.true_b)
            if isinstance(values, tuple) and len(values) == 1:
                self.true_b = values[0]

    def validate(self) -> None:
        """Raise ValueError or TypeError naming the first bad option.

        Numbers of other types (numpy's int64 or float64, say) become plain int and float,
        and paths str: a checkpoint keeps the config, and holds plain values only.
        """
        check_choice("impl", self.impl, IMPLS)
        check_choice("gradient", self.gradient, analytic.GRADIENTS)
        check_choice("permutation", self.permutation, PERMUTATIONS)
        self.lr = check_positive_float("lr", self.lr)
        if self.lr > FLOAT32_MAX:  # the step lr / batch_size is a float32 scalar
            raise ValueError(f"lr must be at most float32's largest value, about 3.4e38, "
                             f"got {self.lr!r}")
        if self.lr < FLOAT32_TINY:  # 5e-324 is positive, and 0 once the step is float32
            raise ValueError(f"lr must be at least float32's smallest normal value, about "
                             f"1.2e-38, got {self.lr!r}")
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        self.num_epochs = check_nonnegative_int("num_epochs", self.num_epochs)
        self.log_every = check_nonnegative_int("log_every", self.log_every)
        if self.threads is not None:
            self.threads = check_positive_int("threads", self.threads)
            if self.threads > MAX_THREADS:  # torch's OpenMP crashes with tens of thousands
                raise ValueError(f"threads must be at most {MAX_THREADS}, got {self.threads}")
        self.seed = check_seed(self.seed)
        for name in ("drop_last", "worker_thread", "cuda_graphs"):
            check_bool(name, getattr(self, name))
        check_options(self)
        check_run_options(self)
        for name in ("save", "resume", "logdir"):
            if getattr(self, name) is not None:
                setattr(self, name, os.fspath(getattr(self, name)))
        if self.resume == "":  # "No such checkpoint file: " would not say what is wrong
            raise ValueError("resume must be a checkpoint's path, got ''")
        self.val_fraction = float(self.val_fraction)
        self.early_stopping = int(self.early_stopping)
        if self.true_b is not None:
            self.true_b = float(self.true_b)
        if self.feature_names is not None:
            self.feature_names = tuple(self.feature_names)


@dataclass(frozen=True)
class Progress:
    """Where a fit stands, passed to on_progress at each host read and at each epoch's end."""

    epoch: int  # 1-based
    num_epochs: int
    step: int  # steps done in this epoch
    steps_per_epoch: int
    epoch_loss: Optional[float] = None  # set once the epoch is over
    val_loss: Optional[float] = None  # with a validation split, set once the epoch is over
    val_r2: Optional[float] = None


# eq=False: a dataclass == compares tensor fields with ==, which raises for more than one
# element; two results compare as objects, and field by field with torch.equal.
@dataclass(eq=False)
class FitResult:
    """The trained parameters and the history of a fit.

    w (d,) float32 and b, in the data's original units (with early stopping, the kept
    epoch's); losses, val_losses and val_r2 per epoch, in the target's units; train_losses
    each minibatch's mean loss; w_history (num_epochs + 1, d) and b_history, at the start
    and after each epoch; scaling, scaled_w and scaled_b, what the model holds (the identity
    scaling and w, b themselves without standardize); predict(X) for new rows.
    """

    w: torch.Tensor  # (d,) on the CPU
    b: float
    losses: list[float]  # per epoch: mean squared_loss over the whole training set
    config: FitConfig
    device: str
    train_losses: torch.Tensor  # (num_epochs * steps_per_epoch,): each minibatch's mean loss
    w_history: torch.Tensor  # (num_epochs + 1, d): w at the start and after each epoch
    b_history: torch.Tensor  # (num_epochs + 1,)
    epoch_seconds: list[float] = field(default_factory=list)
    run_dir: Optional[str] = None
    val_losses: list[float] = field(default_factory=list)  # per epoch, with val_fraction > 0
    val_r2: list[float] = field(default_factory=list)
    best_epoch: Optional[int] = None  # the epoch early stopping restored
    scaling: Optional[Scaling] = None  # w, b above are already in original units
    scaled_w: Optional[torch.Tensor] = None  # (d,) what the model learned on scaled data
    scaled_b: Optional[float] = None
    saved_to: Optional[str] = None  # the checkpoint this fit wrote (config.save), if it wrote one

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Predictions (n, 1) in original units, computed exactly as a loaded checkpoint does."""
        X = prediction_features(features)
        scaling = self.scaling or Scaling.identity(X.shape[1])
        w = self.w if self.scaled_w is None else self.scaled_w
        b = self.b if self.scaled_b is None else self.scaled_b
        return predict(X, w.reshape(-1, 1), torch.tensor([b], dtype=torch.float32), scaling)

    def __repr__(self) -> str:
        # The dataclass's repr printed every tensor and the whole config: 5 kB for 50 columns.
        w = ", ".join(f"{v:.6g}" for v in self.w[:6].tolist())
        more = f", ... ({len(self.w)} in all)" if len(self.w) > 6 else ""
        # The loss of the epoch whose w and b these are: early stopping's kept one.
        kept = self.best_epoch if self.best_epoch is not None else len(self.losses)
        loss = f"{self.losses[kept - 1]:.6g}" if self.losses else None
        best = f", best_epoch={self.best_epoch}" if self.best_epoch is not None else ""
        where = f", run_dir={self.run_dir!r}" if self.run_dir is not None else ""
        return (f"FitResult(impl={self.impl!r}, device={self.device!r}, "
                f"epochs={len(self.losses)}{best}, loss={loss}, w=[{w}{more}], "
                f"b={self.b:.6g}{where})")

    @property
    def impl(self) -> str:
        """The implementation that produced this result."""
        return self.config.impl


def backward_seed(device: torch.device) -> Optional[torch.Tensor]:
    """The 1 that backward() on a 0-d float32 loss starts from, made once for every step off
    the CPU; None (backward()'s own) on the CPU.

    A plain loss.backward() makes a new tensor of ones each time: on a GPU, a fill kernel
    of the 15 in a chapter-sized scratch step, and a node of each captured CUDA graph.
    The same value passed in leaves every gradient, and so every update, as it was. On the
    CPU the fill costs nothing to speak of, while a gradient passed in has torch check its
    shape with its symbolic-shape tools, whose first use imports sympy: 0.3-0.45 s, once in
    a process, that a CLI run's first epoch paid (about 0.3 s against 0.011 s).
    """
    if device.type == "cpu":
        return None
    return torch.ones((), dtype=torch.float32, device=device)


class ScratchModel:
    """The chapter's training step: autograd on the summed squared_loss, then sgd."""

    def __init__(self, num_inputs: int, lr: float, generator: torch.Generator,
                 device: torch.device) -> None:
        self.w, self.b = init_params(num_inputs, generator=generator, device=device)
        self.lr = lr
        self.seed = backward_seed(device)

    def step(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One update on the batch (X, y); returns its summed loss, 0-d, not synced."""
        total = squared_loss(linreg(X, self.w, self.b), y).sum()
        total.backward(self.seed)  # total.backward(), less a GPU kernel: see backward_seed
        # The actual batch length, so a short last batch gets a true mean.
        sgd([self.w, self.b], self.lr, X.shape[0])
        return total.detach()

    def leaves(self) -> list[torch.Tensor]:
        """The tensors the step updates."""
        return [self.w, self.b]

    @staticmethod
    def batch_means(raw: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """step()'s returns, stacked, as each batch's mean squared_loss: sums over lengths."""
        # Divided once per host read instead of once per step: one op fewer in the step.
        return raw / lengths

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """w (d, 1) and b (1,)."""
        return self.w, self.b


class ConciseModel:
    """The same step through nn.Linear, nn.MSELoss and torch.optim.SGD."""

    def __init__(self, num_inputs: int, lr: float, generator: torch.Generator,
                 device: torch.device) -> None:
        self.module = LinearRegression(num_inputs, generator=generator, device=device)
        self.optimizer = make_optimizer(self.module, lr)  # at lr / 2: mse has no 1/2
        self._params = list(self.module.parameters())
        self.seed = backward_seed(device)

    def step(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One update on the batch (X, y); returns its MSELoss, 0-d, not synced."""
        loss = mse(self.module(X), y)
        # What optimizer.zero_grad() does, without its profiler scope and dynamo guard
        # (measured here: about 10 µs a step, some 8% of a chapter-sized step).
        for p in self._params:
            p.grad = None
        loss.backward(self.seed)  # loss.backward(), less a GPU kernel: see backward_seed
        optimizer_step(self.optimizer)  # optimizer.step(), less an unseen profiler range
        return loss.detach()

    def leaves(self) -> list[torch.Tensor]:
        """The tensors the step updates: the module's parameters."""
        return self._params

    @staticmethod
    def batch_means(raw: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """step()'s returns, stacked, as each batch's mean squared_loss: MSELoss halved."""
        return raw / 2

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """w (d, 1) and b (1,), detached views of the module's parameters: they follow its
        updates and hold no autograd graph."""
        # Not module.w: weight.T made through autograd keeps weight's AccumulateGrad node
        # alive while the fit holds w, and that node keeps the stream it was made on. A CUDA
        # graph's backward, captured on a side stream, then has to wait on the default
        # stream, and the capture fails (seen on an H100, torch 2.11).
        return self.module.weight.detach().T, self.module.bias.detach()


class AnalyticScratchModel(ScratchModel):
    """ScratchModel's sgd update with the gradient derived by hand: no autograd graph."""

    def step(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One update on the batch (X, y); returns its summed (y_hat - y)^2, 0-d, not synced."""
        return analytic.sgd_step(X, y, self.w, self.b, self.lr)

    batch_means = staticmethod(analytic.batch_means)


class AnalyticConciseModel(ConciseModel):
    """ConciseModel's optimizer.step() on MSELoss's gradient derived by hand, not backward()."""

    def step(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One update on the batch (X, y); returns its summed (y_hat - y)^2, 0-d, not synced."""
        total = analytic.set_mse_grads(self.module, X, y)
        optimizer_step(self.optimizer)
        return total

    batch_means = staticmethod(analytic.batch_means)


MODELS: dict[str, Callable[..., Any]] = {"scratch": ScratchModel, "concise": ConciseModel}
# The same implementations with gradient="analytic".
ANALYTIC_MODELS: dict[str, Callable[..., Any]] = {"scratch": AnalyticScratchModel,
                                                  "concise": AnalyticConciseModel}


# Rows per piece of a whole-data loss on the CPU. Each piece's float64 sum is the same
# whichever thread makes it, and the sums are added in order, so the loss does not depend
# on the threads; two threads read X about twice as fast as one (1Mx100: 32 ms, not 63).
EVAL_ROWS = 1 << 16


@torch.no_grad()
def evaluate(features: Any, labels: Any, w: Any, b: Any, *,
             worker_thread: bool = False) -> torch.Tensor:
    """Mean squared_loss of parameters (w, b) over a data set, as fit computes it (0-d).

    features (n, d) and labels (n,) or (n, 1) are checked and converted to float32 as fit
    does them, so a result's own data gives its last epoch loss; w holds d numbers, (d, 1)
    or (d,), and b one (a FitResult's w and b do). On the CPU, over EVAL_ROWS rows, it adds
    float64 sums of EVAL_ROWS-row pieces; with worker_thread=True and two cores or more, a
    second thread sums every other piece.
    """
    if isinstance(features, BlockStream):
        raise TypeError("evaluate reads a table in memory; for a BlockStream, call its own "
                        "evaluate(w, b)")
    X, y = check_data(features, labels)
    check_bool("worker_thread", worker_thread)
    w = parameter_values("w", w, X.shape[1])
    b = parameter_values("b", b, 1)
    return mean_loss(X, y, w, b, worker_thread=worker_thread)


@torch.no_grad()
def mean_loss(features: torch.Tensor, labels: torch.Tensor, w: Any, b: Any, *,
              worker_thread: bool = False, loss_scale: float = 1.0) -> torch.Tensor:
    """evaluate() without its checks, for the fit's own float32 tensors and parameters
    (loss_scale: what the loss is reported multiplied by; torchlr.summed_loss.too_coarse)."""
    # Views or no-ops for the (d, 1), (1,) and (n, 1) the fit passes.
    w = torch.as_tensor(w, dtype=features.dtype, device=features.device).reshape(-1, 1)
    b = torch.as_tensor(b, dtype=features.dtype, device=features.device).reshape(1)
    labels = labels.reshape(-1, 1)
    n = len(features)
    if features.device.type != "cpu" or n <= EVAL_ROWS:
        return loss_mean(features, labels, w, b, loss_scale)

    @torch.no_grad()  # grad mode is per thread: the worker's is on by default
    def piece(start: int) -> torch.Tensor:
        return loss_sum(features[start:start + EVAL_ROWS], labels[start:start + EVAL_ROWS], w, b,
                        loss_scale)

    starts = range(0, n, EVAL_ROWS)
    if worker_thread and threads.spare_core(features.device):
        sums = threads.alternate(piece, starts, name="torchlr-loss")
    else:
        sums = [piece(start) for start in starts]
    return (torch.stack(sums).sum() / n).to(features.dtype)


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool) -> int:
    """How many minibatches one epoch has."""
    return num_examples // batch_size if drop_last else math.ceil(num_examples / batch_size)


def _read(step_losses: list[torch.Tensor]) -> torch.Tensor:
    """Stack the pending minibatch losses, copy them to the host and start a new interval."""
    chunk = torch.stack(step_losses).cpu()  # stack makes a new tensor: nothing reuses it
    step_losses.clear()
    return chunk


def batch_lengths(num_examples: int, batch_size: int, steps: int) -> torch.Tensor:
    """Each minibatch's length in one epoch, as floats: all batch_size but maybe the last."""
    # float32 whatever the default dtype: a bfloat16 257 is 256, a float16 70000 is refused.
    lengths = torch.full((steps,), float(batch_size), dtype=torch.float32)
    lengths[-1] = min(batch_size, num_examples - (steps - 1) * batch_size)
    return lengths


def _snapshot(param: torch.Tensor, *shape: int) -> torch.Tensor:
    # copy=True: on the CPU, .cpu() would return a view that the next step overwrites.
    return param.detach().to("cpu", copy=True).reshape(shape)


def first_nonfinite(values: torch.Tensor) -> Optional[int]:
    """Index of the first NaN or inf in a 1-D tensor, or None when all are finite."""
    # One reduction in the common case: a NaN or inf anywhere makes the sum non-finite
    # (a finite sum that overflows only sends us on to the exact search).
    if math.isfinite(float(values.sum())):
        return None
    bad = (~torch.isfinite(values)).nonzero()
    return int(bad[0, 0]) if len(bad) else None


# Beyond this size a value's square is beyond float32 (3.4e38): the squared loss, or the
# gradient x * (y_hat - y), overflows at any learning rate.
SQUARE_LIMIT = math.sqrt(FLOAT32_MAX)


def _largest_value(X: torch.Tensor, y: torch.Tensor) -> tuple[float, str]:
    """The largest |value| of the training data as it trains (scaled), and where: on the
    divergence path only, so it costs a fit nothing."""
    # aminmax, not abs().max(): no copy of the data set (4 GB at 10Mx100).
    x_max, y_max = (max(-float(low), float(high)) for low, high in map(torch.aminmax, (X, y)))
    return (y_max, "target") if y_max >= x_max else (x_max, "feature")


def _unscaled_features(X: torch.Tensor) -> bool:
    """Whether the features' scale, more than the rate, explains a divergence: on the
    divergence path only, so it costs a fit nothing.

    The mean of |x|² + 1 over the rows is the trace of the loss's Hessian (per row), a
    bound on its largest eigenvalue, which SGD's rate must stay below about 2 over. Columns
    of mean 0 and std 1 make it d + 1; ten times that (values in the tens or hundreds, or
    far from 0 for their spread) is what standardizing brings down.
    """
    n, d = X.shape
    # float32's norm: an overflow (inf) is data far beyond unit scale, and says so.
    trace = float(torch.linalg.vector_norm(X)) ** 2 / n + 1
    return trace > 10 * (d + 1)


def _check_finite(values: torch.Tensor, epoch: int, first_step: int, lr: float,
                  largest: Optional[Callable[[], tuple[float, str]]] = None,
                  unscaled: Optional[Callable[[], bool]] = None) -> None:
    i = first_nonfinite(values)
    if i is not None:
        raise _divergence("minibatch loss", float(values[i]), epoch, first_step + i, lr,
                          largest, unscaled)


def _divergence(what: str, loss: float, epoch: int, step: int, lr: float,
                largest: Optional[Callable[[], tuple[float, str]]],
                unscaled: Optional[Callable[[], bool]] = None) -> DivergenceError:
    """The error for a minibatch or epoch loss that is NaN or inf: an outlier whose square
    no rate can hold is named, else the rate is blamed, and beside it the features' scale
    where that is large (unscaled, for data in memory as trained on)."""
    value, where = largest() if largest is not None else (0.0, "")
    outlier = (f"the data hold a {where} value of {value:.3g} (as trained on), whose square "
               f"is beyond float32's range; remove it or scale the data")
    if what == "minibatch loss" and epoch == 1 and step == 1:
        # The first loss is taken before any update: no learning rate can be the cause.
        held = outlier if value >= SQUARE_LIMIT else \
            "the data's values are too large for float32's squares; scale them"
        return DivergenceError(f"The first minibatch loss is already {loss}, before any "
                               f"update: {held} (standardize=True, standardize_target=True).")
    if value >= SQUARE_LIMIT:  # an outlier met later in the epoch: no rate helps there either
        return DivergenceError(f"The {what} became {loss} at epoch {epoch}, step {step}: "
                               f"{outlier} (standardize=True, standardize_target=True).")
    # A stream is not searched (a pass over the file): the outlier case is named as a maybe.
    unsearched = (f", or, if the data hold a value of {SQUARE_LIMIT:.3g} or more (whose square "
                  f"is beyond float32's range), remove it or scale the data"
                  if largest is None else "")
    rescale = (", or standardize the features, whose scale makes small rates necessary "
               "(standardize=True)" if unscaled is not None and unscaled() else "")
    return DivergenceError(f"Training diverged: the {what} became {loss} at epoch {epoch}, "
                           f"step {step} (lr={lr}); try a smaller learning rate{rescale}"
                           f"{unsearched}.")


def _held_out_overflow(epoch: int, val_loss: float, *, held_out: Any) -> DivergenceError:
    """The error for a validation loss beyond float32 while training's stayed finite: the
    held-out rows, never trained on, were never searched by the training's checks."""
    value, where = _largest_value(held_out.features, held_out.labels)
    if value >= SQUARE_LIMIT:
        cause = (f"the held-out rows hold a {where} value of {value:.3g} (as trained on), "
                 f"whose square is beyond float32's range")
    else:
        cause = (f"the model's predictions for the held-out rows are beyond float32's range "
                 f"(their largest {where} value is {value:.3g}, as trained on)")
    return DivergenceError(
        f"The validation loss became {val_loss} at epoch {epoch}: {cause}; remove such rows "
        f"or scale the data (standardize=True, standardize_target=True).")


def _epoch_batches(config: FitConfig, X: Any, y: Any, stream: Optional[BlockStream],
                   group: Any, generator: torch.Generator, device: torch.device,
                   graphed: Optional[graphs.GraphedSteps], ahead: Optional[OrdersAhead],
                   last_epoch: bool) -> Any:
    """One epoch's minibatches: from tensors, from a stream, or this rank's slices of them."""
    # X and y in memory, not in a group, on a GPU: the order drawn while the last epoch trained.
    order = None if ahead is None else ahead.take(device, then_draw=not last_epoch)
    if graphed is not None:  # what graphed.step takes: mostly batch numbers
        return graphed.batches(generator, order)
    if order is not None:
        return batches_in_order(config.batch_size, X, y, order, config.drop_last,
                                reuse_buffer=True, prefetch=config.worker_thread)
    if group is not None:  # X is the data set or the stream
        return group.batches(config.batch_size, X, y, generator=generator,
                             drop_last=config.drop_last, device=device,
                             permutation=config.permutation)
    if stream is not None:
        return stream.batches(config.batch_size, generator, config.drop_last, device)
    # Each batch is done with (backward run, loss detached) before the next is drawn.
    return data_iter(config.batch_size, X, y, generator=generator, drop_last=config.drop_last,
                     reuse_buffer=True, prefetch=config.worker_thread,
                     permutation=config.permutation)


def _epoch_end(X: Any, y: Any, w: torch.Tensor, b: torch.Tensor,
               stream: Optional[BlockStream], group: Any, worker_thread: bool,
               last_read: Callable[[], None],
               loss_scale: float) -> tuple[float, torch.Tensor, torch.Tensor]:
    """After last_read() (the epoch's last host read of minibatch losses, which raises on a
    non-finite one): the chapter's number, the mean squared_loss over the whole training
    set, and copies of w (d,) and b (0-d) on the host."""
    if group is not None or stream is not None:
        last_read()
        # In a group each rank sums the loss over its share of the rows.
        loss = (group.mean_loss(X, y, w, b, loss_scale) if group is not None
                else stream.evaluate(w, b, loss_scale=loss_scale))
        return float(loss), _snapshot(w, -1), _snapshot(b)
    # Queued before the host read's sync, and brought over with w and b in one copy: on a
    # GPU the loss's kernels run behind the last steps, and the host waits once, not thrice.
    # With them whether float32's predictions are too coarse for the loss
    # (torchlr.summed_loss), acted on by the host. On the CPU mean_loss sees to that itself.
    w, b = w.detach(), b.detach()
    with torch.no_grad():
        if _refined_by_mean_loss(X.device):
            queued = [mean_loss(X, y, w, b, worker_thread=worker_thread, loss_scale=loss_scale)]
        else:
            queued = list(mean_and_coarse(linreg(X, w, b), y, b, loss_scale))
    last_read()
    # A new tensor, on the CPU too: the next epoch's steps must not change these copies.
    values = torch.cat([*(v.reshape(1) for v in queued), w.reshape(-1), b.reshape(-1)]).cpu()
    k = len(queued)
    loss = values[0] if k == 1 else refined(values[0], values[1], X, y, w, b)
    return float(loss), values[k:-1], values[-1]


def _refined_by_mean_loss(device: torch.device) -> bool:
    """Whether _epoch_end leaves the coarse-loss check to mean_loss (on the CPU, where a
    host read costs nothing), rather than bringing its flag over with its one copy."""
    return device.type == "cpu"


def group_agreement(config: FitConfig, n: int, d: int, first_epoch: int,
                    stream: Optional[BlockStream], data_digest: str) -> dict[str, float]:
    """What the ranks of a process group must agree on, as numbers for check_same.

    Whatever sets the number, the order or the size of the collectives each rank makes:
    one that differs would leave the ranks mixing steps of different runs, failing or
    hanging. And whatever changes the model they train together without touching the
    collectives: the scaling, the columns, the data's values. Texts and digests become
    numbers with distributed.exact_number. n is the number of training rows (validation
    rows aside), d of feature columns; data_digest is run.sampled_digest of the rows given.
    """
    return {
        "samples": n, "features": d,
        "feature_names": distributed.exact_number(repr(config.feature_names)),
        "target_name": distributed.exact_number(repr(config.target_name)),
        "data_values": distributed.exact_number(data_digest),
        # A stream's epoch loss is reduced as float64, a tensor's as float32; its blocks set
        # its batch order. 0 for tensors, else the rows per block (at least 1).
        "stream": 0 if stream is None else stream.block_rows,
        # Exactly: as a float64, seeds 2**53 and 2**53 + 1 passed for the same number.
        "seed": distributed.exact_number(repr(config.seed)), "lr": config.lr,
        "batch_size": config.batch_size,
        "num_epochs": config.num_epochs, "resume": config.resume is not None,
        "first_epoch": first_epoch, "impl": IMPLS.index(config.impl),
        "drop_last": config.drop_last, "log_every": config.log_every,
        "standardize": config.standardize, "standardize_target": config.standardize_target,
        # The split sets the rows trained on; early stopping, the epoch the ranks stop at.
        "val_fraction": config.val_fraction, "early_stopping": config.early_stopping,
        "permutation": PERMUTATIONS.index(config.permutation),  # sets the batch order
    }


def fit(
    features: Any,
    labels: Any,
    config: Optional[FitConfig] = None,
    *,
    on_progress: Optional[Callable[[Progress], None]] = None,
    **overrides: Any,
) -> FitResult:
    """Train linear regression by minibatch SGD; return a FitResult.

    features: an (n, d) table (tensor, NumPy array or nested sequence, read as float32), or
    a BlockStream of a .npy file with labels None. labels: the n targets, (n,) or (n, 1).
    config: a FitConfig; keywords override its fields (lr=0.1, impl="concise", ...).
    on_progress: called with a Progress at each host read and at each epoch's end.

    Bad data or options raise TypeError or ValueError before anything trains; a loss that
    stops being finite raises DivergenceError. An exception that leaves a fit carries its
    TensorBoard folder as .run_dir and, once a checkpoint was written, .saved_to and
    .saved_epoch.
    """
    if on_progress is not None and not callable(on_progress):  # found now, not after epoch 1
        raise TypeError(f"on_progress must be a callable or None, got "
                        f"{type(on_progress).__name__}: {on_progress!r}")
    config = configured(config, overrides, "fit", ("config", "on_progress"))
    if isinstance(features, BlockStream) and labels is not None:
        raise ValueError("labels must be None when features is a BlockStream, which holds "
                         "its own target column")
    # _fit's bookkeeping, once it has one: whatever escapes from then on to the return below
    # (a Ctrl-C in the last epoch's loop, in early stopping's restore, while the run's
    # figure is drawn or its files are closed) names the checkpoint written so far.
    states: list[RunState] = []
    try:
        # The run is flushed and closed however the fit ends; an escaping error gets .run_dir.
        # Trains under a caller's no_grad() or inference_mode() too: the steps need autograd.
        with RunWriter() as run, CpuThreads() as cpu_threads, torch.inference_mode(False), \
                torch.enable_grad():
            result = _fit(features, labels, config, on_progress, run, cpu_threads, states)
            run.finish(result)  # the fit's figure: a second or so, matplotlib's import first
        return replace(result, run_dir=run.run_dir)
    except BaseException as exc:
        if states:
            _mark_saved(exc, states[0].saved_to, states[0].saved_epoch)
        raise


def configured(config: Optional[FitConfig], overrides: dict[str, Any], caller: str,
               parameters: tuple[str, ...] = ()) -> FitConfig:
    """config (FitConfig() if None) with overrides, one keyword per field; a config that is
    no FitConfig, or an unknown keyword, is refused naming caller's options (parameters:
    its own keywords besides the fields, offered as close matches too)."""
    if config is not None and not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig or None, got {type(config).__name__}")
    options = [f.name for f in fields(FitConfig)]
    unknown = sorted(set(overrides) - set(options))
    if unknown:  # not "FitConfig.__init__() got an unexpected keyword argument"
        near = [f"{match[0]} for {name!r}" for name in unknown
                if (match := difflib.get_close_matches(name, [*options, *parameters], 1))]
        raise TypeError(f"{caller}() got unknown option(s) {', '.join(map(repr, unknown))}"
                        f"{' (did you mean ' + ', '.join(near) + '?)' if near else ''}; its "
                        f"options are FitConfig's fields: {', '.join(options)}")
    return replace(config or FitConfig(), **overrides)


@contextmanager
def keeping_saved(result: FitResult) -> Iterator[None]:
    """Mark an exception raised in the block, after a fit returned, with the checkpoint that
    fit wrote (its last epoch), as an error inside the fit is marked: the CLI's line names
    it."""
    try:
        yield
    except BaseException as exc:
        _mark_saved(exc, result.saved_to, len(result.losses), result.run_dir)
        raise


def _mark_saved(exc: BaseException, saved_to: Optional[str], epoch: Optional[int],
                run_dir: Optional[str] = None) -> None:
    """Give exc the checkpoint (and its epoch) a fit wrote, and its TensorBoard run, unless
    it has them already; nothing when no checkpoint was written."""
    if saved_to is not None and getattr(exc, "saved_to", None) is None:
        exc.saved_to, exc.saved_epoch = saved_to, epoch  # type: ignore[attr-defined]
        if run_dir is not None and getattr(exc, "run_dir", None) is None:
            exc.run_dir = run_dir  # type: ignore[attr-defined]


def _fit(
    features: Any,
    labels: Any,
    config: FitConfig,
    on_progress: Optional[Callable[[Progress], None]],
    run: RunWriter,
    cpu_threads: CpuThreads,
    states: list[RunState],
) -> FitResult:
    config.validate()
    group = distributed.current()  # None outside an initialized process group
    if group is not None and group.rank != 0:  # rank 0 alone writes TensorBoard and checkpoints
        config = replace(config, save=None, logdir=None)
    # The fit scales its own shallow copy (the same open file): the caller's stream keeps
    # returning the rows as they are on disk.
    stream = copy.copy(features) if isinstance(features, BlockStream) else None
    device = resolve_device(config.device)
    if group is not None:
        # Rank 0 may still be writing the checkpoint the others are about to read. Every rank
        # meets here, resuming or not, so a rank that does not resume leaves none waiting: it
        # is refused with the others at check_same below.
        group.barrier(device)
    # Each rank prepares on its own (data, scaling, model, checkpoint); a failure on one is
    # told to the others at the end, rather than left for them to wait on (told_to_group).
    with distributed.told_to_group(group, device):
        if group is not None and config.gradient != "autograd":  # told: one rank may ask it
            # The data-parallel steps all-reduce the gradients that backward() leaves.
            raise ValueError(f"gradient={config.gradient!r} is not supported in a process "
                             f"group; use gradient='autograd'")
        data_digest = None  # in a group: of the rows as given, before the split and scaling
        if stream is None:
            X, y = check_data(features, labels)
            if group is not None:
                data_digest = sampled_digest(X, y)
            state = RunState(X, y, config)  # the split and scaling, before anything trains
            states.append(state)
            X, y = state.X, state.y
        else:
            if group is not None:
                data_digest = sampled_digest(stream)
            state = RunState.streaming(stream, config)  # scales the stream if asked
            states.append(state)
            X = y = stream
        if config.cuda_graphs:
            graphs.check_device(device, stream is not None, group is not None)
        if stream is not None and config.permutation != "randperm":
            raise ValueError(f"permutation={config.permutation!r} is not supported when "
                             f"streaming from disk, where the blocks set the order; use "
                             f"permutation='randperm'")
        cpu_threads.limit(config.threads, device)
        n, d = state.num_examples, stream.shape[1] if stream is not None else X.shape[1]
        if config.true_w is not None and len(config.true_w) != d:  # with a logdir or not
            raise ValueError(f"true_w has {len(config.true_w)} values but features has "
                             f"{d} columns")
        steps = steps_per_epoch(n, config.batch_size, config.drop_last)
        if steps == 0:
            raise ValueError(
                f"batch_size={config.batch_size} with drop_last=True leaves no batch "
                f"for {n} samples"
            )
        # Moved once: every batch is then gathered on the device.
        if stream is None:
            X, y = X.to(device), y.to(device)
        state.to(device)
        generator = torch.Generator().manual_seed(config.seed)  # init, then each epoch's order
        models = ANALYTIC_MODELS if config.gradient == "analytic" else MODELS
        model = models[config.impl](d, config.lr, generator, device)
        w, b = model.params()
        constant = state.scaling.constant
        if constant is not None and bool(constant.any()):
            # A standardized column that does not vary is all zeros: no gradient moves its
            # weight, which kept its random start, and in original units b took that weight
            # times the column's value (31.1 for 4.2 beside a column of 1234.567). It starts
            # at 0, what least squares gives it: no effect. Drawn first, so nothing else moves.
            with torch.no_grad():
                w[constant.to(w.device)] = 0
        history = History(w=[_snapshot(w, -1)], b=[_snapshot(b)])
        first_epoch = state.resume(model, generator, history)
    if group is not None:
        assert data_digest is not None
        group.check_same(group_agreement(config, n, d, first_epoch, stream, data_digest),
                         device)
    read = _read if group is None else group.read  # in a group, summed over the ranks first
    lengths = batch_lengths(n, config.batch_size, steps)

    # This interval's minibatch losses, 0-d tensors left on the device: appending costs no
    # kernel, and one stack per host read gathers them.
    step_losses: list[torch.Tensor] = []
    read_every = config.log_every or steps
    # After the resume's checks: a refused checkpoint leaves no TensorBoard run behind, and
    # a resume with no epoch left to train (or one that had stopped early) starts none.
    if first_epoch <= config.num_epochs:
        run.open(config, X, y, device, steps, state.scaling,
                 0 if state.val is None else len(state.val.labels))
    # In a group each rank steps on its slice of every batch; the model itself is unchanged.
    stepper = model if group is None else group.wrap(model, device)
    step, batch_means = stepper.step, stepper.batch_means
    graphed = None
    if config.cuda_graphs:
        graphed = graphs.GraphedSteps(model.step, model.leaves(), X, y, config.batch_size,
                                      config.drop_last, config.permutation)
        step = graphed.step

    # Data in memory can be searched for an oversized value when the loss overflows.
    largest = partial(_largest_value, X, y) if stream is None else None
    unscaled = partial(_unscaled_features, X) if stream is None else None

    def host_read(epoch: int, done: int, stop: Optional[int]) -> None:
        """The host sync: the losses of steps done..stop, logged, checked and kept."""
        chunk = batch_means(read(step_losses), lengths[done:stop])
        # Reported in the target's units; standardize_target trains on y / y_scale, whose
        # squared losses are smaller by y_scale².
        scale = state.scaling.loss_scale
        reported = chunk * scale if scale != 1.0 else chunk
        run.train_losses(epoch, done, reported)
        _check_finite(chunk, epoch, done + 1, config.lr, largest, unscaled)
        history.train_losses.append(reported)

    # Data in memory on a GPU: each epoch's order drawn while the epoch before it trains.
    ahead = (orders_ahead(n, generator, device, config.permutation)
             if stream is None and group is None else None)
    try:
        for epoch in range(first_epoch, config.num_epochs + 1):
            start = time.perf_counter()
            done = 0
            # Closed on the way out, so a gather thread ends with the epoch that raised.
            with closing(_epoch_batches(config, X, y, stream, group, generator, device,
                                        graphed, ahead, epoch == config.num_epochs)) as batches:
                for i, batch in enumerate(batches):
                    step_losses.append(step(*batch))  # (X, y), or (X, y, global length) in a group
                    if (i + 1) % read_every == 0 and i + 1 < steps:  # once per log interval
                        host_read(epoch, done, i + 1)
                        done = i + 1
                        if on_progress is not None:
                            on_progress(Progress(epoch, config.num_epochs, done, steps))
            w, b = model.params()
            loss, w_now, b_now = _epoch_end(X, y, w, b, stream, group, config.worker_thread,
                                            partial(host_read, epoch, done, None),
                                            state.scaling.loss_scale)
            if not math.isfinite(loss):
                raise _divergence("epoch loss", loss, epoch, steps, config.lr, largest,
                                  unscaled)
            loss = state.scaling.reported_loss(loss)  # in the target's units (see host_read)
            history.epoch_seconds.append(time.perf_counter() - start)
            history.losses.append(loss)
            history.w.append(w_now)
            history.b.append(b_now)
            val_loss, val_r2, stop = state.validate(
                epoch, model, partial(_held_out_overflow, epoch, held_out=state.val))
            # Logged, then saved, then told, with Ctrl-C and SIGTERM held back in between: a
            # checkpoint never holds an epoch TensorBoard lacks (its resumed run would start
            # after it), nor TensorBoard one the checkpoint lacks (the resume would log it
            # again). Both are short (grad/norm's pass over the data at most); a second press
            # acts at once.
            with held():
                run.epoch(epoch, loss, w, b, history.epoch_seconds[-1], val_loss, val_r2)
                state.save(epoch, model, generator, history)
            if on_progress is not None:
                on_progress(Progress(epoch, config.num_epochs, steps, steps, loss, val_loss,
                                     val_r2))
            if stop:
                break
    finally:
        if ahead is not None:
            ahead.close()

    best_epoch = state.finish(model)
    return FitResult(
        **state.result_fields(model, history),  # w, b, histories in original units
        best_epoch=best_epoch,
        losses=history.losses,
        config=config,
        device=str(device),
        train_losses=history.minibatch_losses(),
        epoch_seconds=history.epoch_seconds,
    )
