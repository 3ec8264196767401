"""What fit() does around its loop for real data: split, scaling, resume, validation, saves."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from torchlr.checkpoint import (
    check_overwritable,
    check_resumable,
    load_checkpoint,
    restore,
    restore_params,
    run_state,
    save_checkpoint,
)
from torchlr.holdout import EarlyStopping, Holdout
from torchlr.interrupts import held
from torchlr.preprocess import Scaling, train_val_split


@dataclass
class History:
    """What a fit records as it goes; a checkpoint keeps all of it, so a resumed fit has it too."""

    w: list[torch.Tensor]  # each (d,): w at the start and after each epoch
    b: list[torch.Tensor]  # each 0-d
    losses: list[float] = field(default_factory=list)  # per epoch: the chapter's number
    train_losses: list[torch.Tensor] = field(default_factory=list)  # host reads' minibatch means
    epoch_seconds: list[float] = field(default_factory=list)

    def minibatch_losses(self) -> torch.Tensor:
        """Every minibatch's mean loss so far, as one 1-D tensor."""
        return torch.cat(self.train_losses) if self.train_losses else torch.empty(0)

    def state(self, val_losses: list[float], val_r2: list[float]) -> dict[str, Any]:
        """As a checkpoint stores it: lists and tensors."""
        return {"losses": list(self.losses), "val_losses": list(val_losses),
                "val_r2": list(val_r2), "w": torch.stack(self.w), "b": torch.stack(self.b),
                "train_losses": self.minibatch_losses(),
                "epoch_seconds": list(self.epoch_seconds),
                # Losses in the target's own units (with standardize_target too); checkpoints
                # without this mark kept the standardized target's.
                "loss_units": "target"}

    def restore(self, saved: dict[str, Any]) -> None:
        """Take back what state() stored; a checkpoint older than train_losses lacks them."""
        self.losses[:] = saved["losses"]
        self.w[:] = list(saved["w"])
        self.b[:] = list(saved["b"])
        train = saved.get("train_losses")
        self.train_losses[:] = [train] if isinstance(train, torch.Tensor) and len(train) else []
        self.epoch_seconds[:] = list(saved.get("epoch_seconds", []))


# Rows from the start, the end and evenly between that a fingerprint's "sampled" digest reads.
SAMPLED_ROWS = 256
# Rows hashed at a time for the "full" digest: a bounded copy when X is not contiguous.
HASH_ROWS = 1 << 14


def _digest(*tensors: torch.Tensor, signed_zeros: bool = False) -> str:
    """SHA-256 of the tensors' float32 bytes, in order, read HASH_ROWS rows at a time.

    -0.0 is hashed as 0.0 (the two zeros train alike), unless signed_zeros: the bytes as
    they are, as checkpoints written before that rule hashed them.
    """
    h = hashlib.sha256()
    for t in tensors:
        for start in range(0, len(t), HASH_ROWS):
            chunk = t[start:start + HASH_ROWS].detach().to("cpu", torch.float32)
            if not signed_zeros:
                chunk = chunk + 0.0  # -0.0 + 0.0 is 0.0; every other value keeps its bits
            h.update(chunk.contiguous().numpy())  # the buffer itself: no copy
    return h.hexdigest()


def sampled_rows(n: int) -> torch.Tensor:
    """The row numbers a sampled digest reads: the first, the last and evenly between."""
    k = min(n, SAMPLED_ROWS)
    between = torch.arange(k) * (n - 1) // max(k - 1, 1)  # integers: exact at any n
    return torch.cat([torch.arange(k), between, torch.arange(n - k, n)]).unique()


@torch.no_grad()
def sampled_digest(X: Any, y: Optional[torch.Tensor] = None, *,
                   signed_zeros: bool = False) -> str:
    """SHA-256 of the float32 rows at sampled_rows(n) of X and y, or of a BlockStream X
    (y None) before its scaling: at most 3 * SAMPLED_ROWS rows read, whatever n."""
    index = sampled_rows(X.shape[0])
    if y is None:  # a BlockStream
        Xs, ys = X.rows(index, scaled=False)
    else:
        Xs, ys = X[index.to(X.device)], y[index.to(y.device)]
    return _digest(Xs, ys, signed_zeros=signed_zeros)


@torch.no_grad()
def fingerprint(X: Any, y: Optional[torch.Tensor] = None, *,
                signed_zeros: bool = False) -> dict[str, Any]:
    """What identifies a fit's training data (before scaling), kept in its checkpoints.

    A dict of the shape, a SHA-256 of the float32 rows at sampled_rows(n) and, for data in
    memory, of all rows ("full"; None for a stream, which is not read whole for it). Exact:
    a changed value or row order changes it, whatever threads or device summed what.
    """
    n, d = X.shape
    # The batch order depends on the blocks a stream is read in, unless it has only one
    # or they are single rows (then it is the order of the same rows in memory).
    block_rows = None
    if y is None:  # a BlockStream
        full = None
        # One-row blocks shuffle as the rows in memory do: randperm(1) draws nothing.
        block_rows = X.block_rows if 1 < X.block_rows < n else None
    else:
        full = _digest(X, y, signed_zeros=signed_zeros)
    # "zeros": how -0.0 was hashed; checkpoints without the mark hashed it as it is.
    return {"shape": [n, d], "sampled": sampled_digest(X, y, signed_zeros=signed_zeros),
            "full": full, "zeros": "signed" if signed_zeros else "unsigned",
            "block_rows": block_rows}


def same_data(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether two fingerprints are of the same data: all rows where both hashed all."""
    if saved["shape"] != now["shape"]:
        return False
    if saved.get("full") and now.get("full"):
        return saved["full"] == now["full"]
    return saved["sampled"] == now["sampled"]  # a stream on one side: its sampled rows


def _check_feature_names(config: Any, num_features: int) -> None:
    """A checkpoint keeps the names, and predict selects columns by them: one per column."""
    if config.feature_names is not None and len(config.feature_names) != num_features:
        raise ValueError(f"feature_names has {len(config.feature_names)} names for "
                         f"{num_features} feature columns")


class RunState:
    """One fit's data preparation and its per-epoch bookkeeping beyond the training loss."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, config: Any) -> None:
        """Split off the validation rows, then scale with statistics of the training rows only."""
        self.config = config
        if config.save is not None:
            check_overwritable(config.save)
        _check_feature_names(config, X.shape[1])
        self.val: Optional[Holdout] = None
        # Of all rows, validation rows included, before scaling (whose statistics may round
        # differently with other threads).
        self._fingerprint = fingerprint(X, y) if config.save or config.resume else None
        X_all, y_all = X, y  # for an older checkpoint's fingerprint, if one is resumed
        if config.val_fraction > 0:
            train, val = train_val_split(len(X), config.val_fraction, config.seed)
            X_val, y_val = X[val], y[val]
            X, y = X[train], y[train]
        saved_scaling = self._load_resume(len(X), lambda: fingerprint(X_all, y_all,
                                                                      signed_zeros=True))
        if saved_scaling is not None:  # the same data: its statistics, to the bit
            self.scaling = saved_scaling
        elif config.standardize or config.standardize_target:
            self.scaling = Scaling.fit(X, y, target=config.standardize_target,
                                       features=config.standardize)
        else:
            self.scaling = Scaling.identity(X.shape[1])
        self.X, self.y = self.scaling.features(X), self.scaling.target(y)  # what the model sees
        if config.val_fraction > 0:
            self.val = Holdout(self.scaling.features(X_val), self.scaling.target(y_val),
                               self.scaling.loss_scale)
        self.num_examples = len(self.X)
        self.val_losses: list[float] = []
        self.val_r2: list[float] = []
        self.stopper = EarlyStopping(config.early_stopping, self.val_losses) \
            if self.val is not None else None
        self.checkpoint: Optional[dict[str, Any]] = None  # the last one saved or resumed
        self.saved_to: Optional[str] = None  # set once this fit has written a checkpoint
        self.saved_epoch: Optional[int] = None  # the epoch that checkpoint holds

    @classmethod
    def streaming(cls, stream: Any, config: Any) -> RunState:
        """Bookkeeping for data read from disk: no split; scaling from one pass over the file."""
        if config.val_fraction:
            raise ValueError(f"val_fraction={config.val_fraction!r} is not supported when "
                             f"streaming from disk; hold out rows in a separate file instead")
        run = cls.__new__(cls)
        run.config, run.val, run.stopper, run.checkpoint = config, None, None, None
        if config.save is not None:
            check_overwritable(config.save)
        _check_feature_names(config, stream.shape[1])
        run._fingerprint = fingerprint(stream) if config.save or config.resume else None
        saved_scaling = run._load_resume(stream.shape[0],
                                         lambda: fingerprint(stream, signed_zeros=True))
        stream.scaling = None  # this fit's own, not one a previous fit left on the stream
        if saved_scaling is not None:  # the same file: no pass over it for the statistics
            stream.scaling = None if saved_scaling.is_identity else saved_scaling
        elif config.standardize or config.standardize_target:
            stream.scaling = stream.fit_scaling(features=config.standardize,
                                                target=config.standardize_target)
        run.scaling = stream.scaling or Scaling.identity(stream.shape[1])
        run.num_examples, run.X, run.y = stream.shape[0], None, None
        run.val_losses, run.val_r2 = [], []
        run.saved_to, run.saved_epoch = None, None
        return run

    def _load_resume(self, num_examples: int,
                     signed: Callable[[], dict[str, Any]]) -> Optional[Scaling]:
        """With config.resume: load and check the checkpoint before anything is scaled.

        Returns its scaling when its data fingerprint matches this data's (so the resumed
        run scales exactly as it did), None when it has none (an older checkpoint: resume()
        then compares the statistics) or when nothing is resumed.
        """
        self._resume_state: Optional[dict[str, Any]] = None
        path = self.config.resume
        if path is None:
            return None
        state = load_checkpoint(path)
        check_resumable(path, state, self.config, num_examples)
        self._resume_state = state
        saved_data = state.get("data")
        if saved_data is None:
            return None
        now = self._fingerprint
        if saved_data.get("zeros") != "unsigned" and not same_data(saved_data, now):
            now = signed()  # an older checkpoint hashed -0.0 as it is: this data that way
        if not same_data(saved_data, now):
            raise ValueError(f"Cannot resume {path}: its data had other values or another row "
                             f"order than this data, so this is not the data it trained on")
        if "block_rows" in saved_data and saved_data["block_rows"] != now["block_rows"]:
            def read(rows: Optional[int]) -> str:
                return "whole (or in one block)" if rows is None else f"in blocks of {rows} rows"
            raise ValueError(f"Cannot resume {path}: it read its data "
                             f"{read(saved_data['block_rows'])}, this run "
                             f"{read(now['block_rows'])}: the batch order would differ")
        return Scaling.from_state(state["scaling"])

    def to(self, device: torch.device) -> None:
        """Move the validation rows once, like the training rows."""
        if self.val is not None:
            self.val = replace(self.val, features=self.val.features.to(device),
                               labels=self.val.labels.to(device))

    def resume(self, model: Any, generator: torch.Generator, history: History) -> int:
        """Restore the saved state if config.resume is set; return the first epoch to train."""
        path, state = self.config.resume, self._resume_state
        if path is None or state is None:
            return 1
        saved = Scaling.from_state(state["scaling"])
        if state.get("data") is None and not (  # no fingerprint: the statistics must agree
                torch.equal(saved.x_mean, self.scaling.x_mean)
                and torch.equal(saved.x_scale, self.scaling.x_scale)
                and saved.y_mean == self.scaling.y_mean and saved.y_scale == self.scaling.y_scale):
            raise ValueError(f"Cannot resume {path}: the data's statistics differ from the "
                             f"checkpoint's, so this is not the data it trained on")
        restore(state, model, generator)
        history.restore(state["history"])
        self.val_losses[:] = state["history"]["val_losses"]
        self.val_r2[:] = state["history"]["val_r2"]
        self.checkpoint = state
        if self.stopper is not None:
            self.stopper.best = state["best"]
            if self.stopper.should_stop(state["epoch"]):
                return self.config.num_epochs + 1  # the uninterrupted run stopped here too
        return state["epoch"] + 1

    def validate(self, epoch: int, model: Any,
                 overflow: Callable[[float], Exception]) -> tuple[Optional[float], Optional[float],
                                                                  bool]:
        """After an epoch: (val loss, val R², whether to stop early); Nones without a split.

        A loss beyond float32 as trained on (before it is put in the target's units, which
        for a target of huge units may overflow where the training's did not) raises
        overflow(loss)."""
        if self.val is None:
            return None, None, False
        w, b = model.params()
        val_loss, val_r2 = self.val.metrics(w, b)
        if not math.isfinite(val_loss):
            raise overflow(val_loss)
        val_loss = self.scaling.reported_loss(val_loss)  # in the target's units, as training's
        self.val_losses.append(val_loss)
        self.val_r2.append(val_r2)
        return val_loss, val_r2, self.stopper.update(epoch, w, b)

    def save(self, epoch: int, model: Any, generator: torch.Generator,
             history: History) -> None:
        """Write the checkpoint of the run so far, when the config names one."""
        if self.config.save is not None:
            self.checkpoint = run_state(
                model=model, generator=generator, epoch=epoch, config=self.config,
                scaling=self.scaling, num_examples=self.num_examples,
                history=history.state(self.val_losses, self.val_r2),
                best=self.stopper.best if self.stopper is not None else None,
                data=self._fingerprint)
            # Ctrl-C once the file is written and recorded: not inside torch.save, and not
            # between the write and the record of it, which the interrupt's line reports.
            with held():
                save_checkpoint(self.config.save, self.checkpoint)
                self.saved_to = os.fspath(self.config.save)
                self.saved_epoch = epoch

    def finish(self, model: Any) -> Optional[int]:
        """With early stopping, put the best epoch's parameters back; return that epoch."""
        if self.stopper is None or self.config.early_stopping == 0 or self.stopper.best is None:
            return None
        # The checkpoint keeps the last epoch's parameters (to resume) and the best ones
        # under "best", which load_model() predicts with.
        restore_params(model, {"w": self.stopper.best["w"], "b": self.stopper.best["b"]})
        return self.stopper.best["epoch"]

    def result_fields(self, model: Any, history: History) -> dict[str, Any]:
        """FitResult's w, b and histories in the original units, plus the new fields."""
        w, b = model.params()
        scaled_w = w.detach().to("cpu", copy=True).reshape(-1)
        scaled_b = float(b.detach().cpu().reshape(()))
        if self.scaling.is_identity:
            w_hist, b_hist = torch.stack(history.w), torch.stack(history.b)
            w_orig, b_orig = scaled_w.clone(), scaled_b
        else:
            pairs = [self.scaling.original_params(wi, bi) for wi, bi in zip(history.w, history.b)]
            w_hist = torch.stack([p[0] for p in pairs])
            b_hist = torch.tensor([p[1] for p in pairs], dtype=torch.float32)
            w_orig, b_orig = self.scaling.original_params(w, b)
        return {"w": w_orig, "b": b_orig, "w_history": w_hist, "b_history": b_hist,
                "val_losses": self.val_losses, "val_r2": self.val_r2, "saved_to": self.saved_to,
                "scaling": self.scaling, "scaled_w": scaled_w, "scaled_b": scaled_b}
