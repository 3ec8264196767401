"""What fit() does around its loop for real data: split, scaling, resume, validation, saves."""

from __future__ import annotations

from typing import Any, Optional

import torch

from torchlr.checkpoint import (
    check_resumable,
    load_checkpoint,
    restore,
    restore_params,
    run_state,
    save_checkpoint,
)
from torchlr.holdout import EarlyStopping, Holdout
from torchlr.preprocess import Scaling, train_val_split


class RunState:
    """One fit's data preparation and its per-epoch bookkeeping beyond the training loss."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, config: Any) -> None:
        """Split off the validation rows, then scale with statistics of the training rows only."""
        self.config = config
        if config.feature_names is not None and len(config.feature_names) != X.shape[1]:
            raise ValueError(f"feature_names has {len(config.feature_names)} names for "
                             f"{X.shape[1]} feature columns")
        self.val: Optional[Holdout] = None
        if config.val_fraction > 0:
            train, val = train_val_split(len(X), config.val_fraction, config.seed)
            X_val, y_val = X[val], y[val]
            X, y = X[train], y[train]
        if config.standardize or config.standardize_target:
            self.scaling = Scaling.fit(X, y, target=config.standardize_target,
                                       features=config.standardize)
        else:
            self.scaling = Scaling.identity(X.shape[1])
        self.X, self.y = self.scaling.features(X), self.scaling.target(y)  # what the model sees
        if config.val_fraction > 0:
            self.val = Holdout(self.scaling.features(X_val), self.scaling.target(y_val))
        self.num_examples = len(self.X)
        self.val_losses: list[float] = []
        self.val_r2: list[float] = []
        self.stopper = EarlyStopping(config.early_stopping, self.val_losses) \
            if self.val is not None else None
        self.checkpoint: Optional[dict[str, Any]] = None  # the last one saved or resumed

    @classmethod
    def streaming(cls, stream: Any, config: Any) -> RunState:
        """Bookkeeping for data read from disk: no split; scaling from one pass over the file."""
        if config.val_fraction:
            raise ValueError(f"val_fraction={config.val_fraction!r} is not supported when "
                             f"streaming from disk; hold out rows in a separate file instead")
        run = cls.__new__(cls)
        run.config, run.val, run.stopper, run.checkpoint = config, None, None, None
        stream.scaling = None  # this fit's own, not one a previous fit left on the stream
        if config.standardize or config.standardize_target:
            stream.scaling = stream.fit_scaling(features=config.standardize,
                                                target=config.standardize_target)
        run.scaling = stream.scaling or Scaling.identity(stream.shape[1])
        run.num_examples, run.X, run.y = stream.shape[0], None, None
        run.val_losses, run.val_r2 = [], []
        return run

    def to(self, device: torch.device) -> None:
        """Move the validation rows once, like the training rows."""
        if self.val is not None:
            self.val = Holdout(self.val.features.to(device), self.val.labels.to(device))

    def resume(self, model: Any, generator: torch.Generator, losses: list[float],
               w_history: list[torch.Tensor], b_history: list[torch.Tensor]) -> int:
        """Restore the saved state if config.resume is set; return the first epoch to train."""
        path = self.config.resume
        if path is None:
            return 1
        state = load_checkpoint(path)
        check_resumable(path, state, self.config, self.num_examples)
        saved = Scaling.from_state(state["scaling"])
        if not (torch.equal(saved.x_mean, self.scaling.x_mean)
                and torch.equal(saved.x_scale, self.scaling.x_scale)
                and saved.y_mean == self.scaling.y_mean and saved.y_scale == self.scaling.y_scale):
            raise ValueError(f"Cannot resume {path}: the data's statistics differ from the "
                             f"checkpoint's, so this is not the data it trained on")
        restore(state, model, generator)
        history = state["history"]
        losses[:] = history["losses"]
        self.val_losses[:] = history["val_losses"]
        self.val_r2[:] = history["val_r2"]
        w_history[:] = list(history["w"])
        b_history[:] = list(history["b"])
        self.checkpoint = state
        if self.stopper is not None:
            self.stopper.best = state["best"]
            if self.stopper.should_stop(state["epoch"]):
                return self.config.num_epochs + 1  # the uninterrupted run stopped here too
        return state["epoch"] + 1

    def end_epoch(self, epoch: int, model: Any, generator: torch.Generator,
                  losses: list[float], w_history: list[torch.Tensor],
                  b_history: list[torch.Tensor]) -> tuple[Optional[float], Optional[float], bool]:
        """Validate, save a checkpoint; return (val loss, val R², whether to stop early)."""
        val_loss = val_r2 = None
        stop = False
        w, b = model.params()
        if self.val is not None:
            val_loss, val_r2 = self.val.metrics(w, b)
            self.val_losses.append(val_loss)
            self.val_r2.append(val_r2)
            stop = self.stopper.update(epoch, w, b)
        if self.config.save is not None:
            self.checkpoint = run_state(
                model=model, generator=generator, epoch=epoch, config=self.config,
                scaling=self.scaling, num_examples=self.num_examples,
                history={"losses": list(losses), "val_losses": list(self.val_losses),
                         "val_r2": list(self.val_r2), "w": torch.stack(w_history),
                         "b": torch.stack(b_history)},
                best=self.stopper.best if self.stopper is not None else None)
            save_checkpoint(self.config.save, self.checkpoint)
        return val_loss, val_r2, stop

    def finish(self, model: Any) -> Optional[int]:
        """With early stopping, put the best epoch's parameters back; return that epoch."""
        if self.stopper is None or self.config.early_stopping == 0 or self.stopper.best is None:
            return None
        # The checkpoint keeps the last epoch's parameters (to resume) and the best ones
        # under "best", which load_model() predicts with.
        restore_params(model, {"w": self.stopper.best["w"], "b": self.stopper.best["b"]})
        return self.stopper.best["epoch"]

    def result_fields(self, model: Any, w_history: list[torch.Tensor],
                      b_history: list[torch.Tensor]) -> dict[str, Any]:
        """FitResult's w, b and histories in the original units, plus the new fields."""
        w, b = model.params()
        scaled_w = w.detach().to("cpu", copy=True).reshape(-1)
        scaled_b = float(b.detach().cpu().reshape(()))
        if self.scaling.is_identity:
            w_hist, b_hist = torch.stack(w_history), torch.stack(b_history)
            w_orig, b_orig = scaled_w.clone(), scaled_b
        else:
            pairs = [self.scaling.original_params(wi, bi) for wi, bi in zip(w_history, b_history)]
            w_hist = torch.stack([p[0] for p in pairs])
            b_hist = torch.tensor([p[1] for p in pairs], dtype=torch.float32)
            w_orig, b_orig = self.scaling.original_params(w, b)
        return {"w": w_orig, "b": b_orig, "w_history": w_hist, "b_history": b_hist,
                "val_losses": self.val_losses, "val_r2": self.val_r2,
                "scaling": self.scaling, "scaled_w": scaled_w, "scaled_b": scaled_b}
