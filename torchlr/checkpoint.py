"""Checkpoints: an atomic save of a run's full state, a checked load, and a ready model."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch

from torchlr.archive import check_archive
from torchlr.atomic import write_atomic
from torchlr.preprocess import Scaling
from torchlr.scratch import linreg
from torchlr.validation import (
    IMPLS,
    check_finite,
    check_writable_file,
    numbers_tensor,
    torch_load_failure,
)

FORMAT = "torchlr-checkpoint"
# 2: the concise optimizer runs at lr / 2 on MSELoss (version 1 ran at lr on MSELoss / 2).
# 3: with standardize_target the losses are in the target's own units (history["loss_units"]);
#    a torchlr that reads only versions 1 and 2 would take them for the standardized ones.
# 4: the config holds permutation; with "hashed", a torchlr that reads only up to version 3
#    would resume in randperm's order, another run than the one saved.
VERSION = 4
READS = (1, 2, 3, VERSION)
# FitConfig fields that define the run: a resumed run must keep them as they were.
RUN_FIELDS = ("impl", "lr", "batch_size", "seed", "drop_last", "val_fraction", "standardize",
              "standardize_target", "feature_names", "target_name", "permutation")
# The types of the config values a resume reads before its config is validated (None: unset).
CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "impl": (str,), "lr": (int, float), "batch_size": (int,), "seed": (int,),
    "drop_last": (bool,), "val_fraction": (int, float), "standardize": (bool,),
    "standardize_target": (bool,), "feature_names": (list, tuple, type(None)),
    "target_name": (str, type(None)), "permutation": (str,), "early_stopping": (int,)}
# RUN_FIELDS added after version 1, with the value every checkpoint written before had.
ADDED_FIELDS = {"permutation": "randperm"}
REQUIRED = {"format": str, "version": int, "impl": str, "epoch": int, "params": dict,
            "optimizer": dict, "generator": torch.Tensor, "scaling": dict, "config": dict,
            "history": dict, "num_examples": int}


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write state to path atomically: a temporary file in the same folder, then a rename."""
    try:
        write_atomic(path, lambda f: torch.save(state, f))
    except RuntimeError as exc:  # torch's zip writer reports a short write (a full disk) so
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"Cannot write {os.fspath(path)}: the write stopped short; is the disk "
                      f"or a quota full? ({first})") from None


def check_overwritable(path: str | os.PathLike[str]) -> None:
    """Refuse a save path that cannot be written, or that holds a file other than a torchlr
    checkpoint (the data, say): found before training, not after its first epoch."""
    path = check_writable_file("save", path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:  # nothing there to lose
        return
    try:
        load_checkpoint(path)
    except ValueError as exc:
        raise ValueError(f"save={path!r} holds a file torchlr cannot read as its checkpoint, "
                         f"so it is not overwritten ({exc})") from None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a torchlr checkpoint (weights_only: no code runs); ValueError if not one."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(os.fspath(path), bytes):
        # bytes reached zipfile as a file object ("'bytes' object has no attribute 'seek'")
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}: "
                        f"{path!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise ValueError(f"No such checkpoint file: {path}")
    check_archive(path, "torchlr checkpoint")
    try:
        with warnings.catch_warnings():  # a foreign file's pickle protocol, say
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code, a zip torch cannot read...
        raise ValueError(f"{path} is not a readable torchlr checkpoint "
                         f"({torch_load_failure(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a torchlr checkpoint (no {FORMAT!r} marker)")
    version = state.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READS:
        raise ValueError(f"{path} has checkpoint version {state.get('version')!r}; "
                         f"this torchlr reads versions 1 to {VERSION}")
    for key, kind in REQUIRED.items():
        if not isinstance(state.get(key), kind):
            raise ValueError(f"{path} is a damaged torchlr checkpoint: {key!r} is missing "
                             f"or not a {kind.__name__}")
    w, b = state["params"].get("w"), state["params"].get("b")
    if not (isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and w.dim() == 2
            and w.shape[1] == 1 and b.shape == (1,)):
        raise ValueError(f"{path} is a damaged torchlr checkpoint: bad parameters")
    if not (w.dtype == b.dtype == torch.float32 and torch.isfinite(w).all()
            and torch.isfinite(b).all()):  # a fit saves only after an epoch that stayed finite
        raise ValueError(f"{path} is a damaged torchlr checkpoint: parameters that are not "
                         f"finite float32 numbers")
    history, best = state["history"], state.get("best")
    if not (all(isinstance(history.get(k), list) for k in ("losses", "val_losses", "val_r2"))
            and all(isinstance(history.get(k), torch.Tensor) for k in ("w", "b"))):
        raise ValueError(f"{path} is a damaged torchlr checkpoint: bad history")
    # Written since the history kept every minibatch loss and epoch time; older files lack them.
    if not (isinstance(history.get("train_losses", torch.empty(0)), torch.Tensor)
            and isinstance(history.get("epoch_seconds", []), list)):
        raise ValueError(f"{path} is a damaged torchlr checkpoint: bad history")
    if best is not None and not (isinstance(best, dict) and isinstance(best.get("epoch"), int)
                                 and isinstance(best.get("w"), torch.Tensor)
                                 and isinstance(best.get("b"), torch.Tensor)):
        raise ValueError(f"{path} is a damaged torchlr checkpoint: bad best epoch")
    data = state.get("data")
    if isinstance(data, torch.Tensor):  # an interim format of sums: too loose to trust
        state["data"] = data = None
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("shape"), list)
                                 and isinstance(data.get("sampled"), str)):
        raise ValueError(f"{path} is a damaged torchlr checkpoint: bad data fingerprint")
    if state["version"] == 1:
        _upgrade_from_1(state)
    for name, value in ADDED_FIELDS.items():
        state["config"].setdefault(name, value)
    _check_fields(path, state)
    if history.get("loss_units") != "target":
        _losses_to_target_units(path, state)
    return state


def _check_fields(path: str, state: dict[str, Any]) -> None:
    """Check the values a resume or a prediction reads: a well-formed archive holding a
    damaged or hand-edited state was a traceback, or a run resumed at epoch -4.

    Their types only, not FitConfig.validate(): that would look at the saved run's folders
    on this machine (its logdir), and apply rules newer than the torchlr that saved it. A
    resumed run's config is validated as any run's is, before it starts.
    """
    def damaged(what: str) -> ValueError:
        return ValueError(f"{path} is a damaged torchlr checkpoint: {what}")

    config, history, epoch = state["config"], state["history"], state["epoch"]
    if state["impl"] not in IMPLS:
        raise damaged(f"it names an unknown implementation {state['impl']!r}")
    if config.get("impl") != state["impl"]:
        raise damaged(f"its implementation {state['impl']!r} is not its config's "
                      f"{config.get('impl')!r}")
    missing = [name for name in RUN_FIELDS if name not in config]
    if missing:
        raise damaged(f"its config lacks {missing[0]!r}")
    for name, kinds in CONFIG_TYPES.items():
        if name not in config:  # early_stopping, of a run without it (RUN_FIELDS are there)
            continue
        value = config[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise damaged(f"its config's {name} is {value!r}")
    names = config["feature_names"]
    if names is not None and not all(isinstance(n, str) for n in names):
        raise damaged(f"its config's feature_names is {names!r}")
    if isinstance(epoch, bool) or epoch < 0 or len(history["losses"]) != epoch:
        raise damaged(f"its epoch {epoch!r} is not the {len(history['losses'])} epochs its "
                      f"history holds")
    scaling, d = state["scaling"], state["params"]["w"].shape[0]
    if not (all(isinstance(scaling.get(k), torch.Tensor) and scaling[k].shape == (d,)
                and bool(torch.isfinite(scaling[k]).all()) for k in ("x_mean", "x_scale"))
            and all(_real(scaling.get(k)) for k in ("y_mean", "y_scale"))
            and bool((scaling["x_scale"] > 0).all()) and scaling["y_scale"] > 0):
        raise damaged("bad scaling")
    best = state.get("best")
    if config.get("early_stopping") and epoch and best is None:
        raise damaged("its run stops early, and it holds no best epoch")
    if best is not None and not (isinstance(best.get("val_loss"), float)
                                 and best["w"].shape == (d, 1) and best["b"].shape == (1,)):
        raise damaged("bad best epoch")
    data = state.get("data")
    if data is not None and not (len(data["shape"]) == 2
                                 and all(isinstance(v, int) and not isinstance(v, bool)
                                         and v >= 0 for v in data["shape"])
                                 and isinstance(data.get("full"), (str, type(None)))):
        raise damaged("bad data fingerprint")


def _real(value: Any) -> bool:
    """A finite int or float, not a bool: what a checkpoint stores for a number."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _losses_to_target_units(path: str, state: dict[str, Any]) -> None:
    """Checkpoints written before losses were reported in the target's own units kept, with
    standardize_target, those of the standardized target: times y_scale², as fit reports."""
    y_scale = state["scaling"].get("y_scale", 1.0)
    if isinstance(y_scale, bool) or not isinstance(y_scale, (int, float)):
        raise ValueError(f"{path} is a damaged torchlr checkpoint: bad scaling")
    history, best, scale = state["history"], state.get("best"), float(y_scale) ** 2
    if scale != 1.0:
        history["losses"] = [v * scale for v in history["losses"]]
        history["val_losses"] = [v * scale for v in history["val_losses"]]
        if isinstance(history.get("train_losses"), torch.Tensor):
            history["train_losses"] = history["train_losses"] * scale
        if best is not None and "val_loss" in best:
            best["val_loss"] = best["val_loss"] * scale
    history["loss_units"] = "target"


def _upgrade_from_1(state: dict[str, Any]) -> None:
    """Version 1's concise optimizer ran at lr on the halved loss; now it runs at lr / 2."""
    if state["impl"] == "concise":
        for group in state["optimizer"].get("param_groups", []):
            group["lr"] = group["lr"] / 2
    state["version"] = VERSION


def run_state(*, model: Any, generator: torch.Generator, epoch: int, config: Any,
              scaling: Scaling, num_examples: int, history: dict[str, Any],
              best: Optional[dict[str, Any]],
              data: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Everything needed to resume or to predict, as tensors, primitives, lists and dicts."""
    w, b = model.params()
    optimizer = getattr(model, "optimizer", None)
    # Paths as str and tuples as lists: what torch.load(weights_only=True) reads back.
    config_dict = {k: (list(v) if isinstance(v, tuple)
                       else os.fspath(v) if isinstance(v, os.PathLike) else v)
                   for k, v in vars(config).items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "impl": config.impl,
        "epoch": epoch,
        "params": {"w": w.detach().to("cpu", copy=True), "b": b.detach().to("cpu", copy=True)},
        "optimizer": optimizer.state_dict() if optimizer is not None else {"lr": config.lr},
        "generator": generator.get_state(),  # the batch order of every later epoch
        "scaling": scaling.state(),
        "feature_names": list(config.feature_names) if config.feature_names else None,
        "target_name": config.target_name,
        "config": config_dict,
        "history": history,
        "best": best,
        "num_examples": num_examples,
        "data": data,  # torchlr.run.fingerprint of the training data
    }


_COLUMN_FIELDS = {"feature_names": "feature columns", "target_name": "target column"}


def check_resumable(path: str, state: dict[str, Any], config: Any, num_examples: int) -> None:
    """Refuse to resume a checkpoint under a config or data that would change the run."""
    saved = state["config"]
    diffs = []
    for name in RUN_FIELDS:
        now = getattr(config, name)
        now = list(now) if isinstance(now, tuple) else now
        if saved.get(name) != now:
            # Columns in words both the library's and the command line's users read as theirs.
            label = _COLUMN_FIELDS.get(name)
            diffs.append(f"{label} {saved.get(name)!r} in the checkpoint, {now!r} now" if label
                         else f"{name}={saved.get(name)!r} in the checkpoint, {now!r} now")
    if diffs:
        raise ValueError(f"Cannot resume {path}: " + "; ".join(diffs))
    if state["num_examples"] != num_examples:
        split = " training rows (after the validation split)" if config.val_fraction else " rows"
        raise ValueError(f"Cannot resume {path}: it trained on {state['num_examples']}{split}, "
                         f"this data gives {num_examples}")
    if state["epoch"] > config.num_epochs:
        raise ValueError(f"Cannot resume {path} at epoch {state['epoch']} up to "
                         f"num_epochs={config.num_epochs}; ask for at least {state['epoch']}")


@torch.no_grad()
def restore_params(model: Any, params: dict[str, torch.Tensor]) -> None:
    """Copy saved w (d, 1) and b (1,) into the model's own parameters, in place."""
    w, b = model.params()
    if w.shape != params["w"].shape:
        raise ValueError(f"The checkpoint has {params['w'].shape[0]} features, "
                         f"the data has {w.shape[0]}")
    w.copy_(params["w"])
    b.copy_(params["b"])


def restore(state: dict[str, Any], model: Any, generator: torch.Generator) -> None:
    """Put parameters, optimizer state and RNG state back as they were at the saved epoch."""
    restore_params(model, state["params"])
    optimizer = getattr(model, "optimizer", None)
    try:
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(f"The checkpoint's optimizer or RNG state is damaged: {exc}") from None


@dataclass
class TrainedModel:
    """A model loaded from a checkpoint: predicts in the original units of the target."""

    impl: str
    model: Any  # torchlr.train.ScratchModel or ConciseModel, parameters loaded
    scaling: Scaling
    feature_names: Optional[list[str]]
    target_name: Optional[str]
    epoch: int
    config: dict[str, Any]

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Predictions (n, 1) float32 for features (n, d) in original units."""
        w, b = self.model.params()
        return predict(prediction_features(features).to(w.device), w, b, self.scaling)


class NonFinitePrediction(ValueError):
    """A prediction that overflowed float32 from finite features; .row is its row."""

    def __init__(self, row: int, value: float) -> None:
        self.row, self.value = row, value
        super().__init__(self.at(f"features row {row}"))

    def at(self, place: str) -> str:
        """The message, with place naming the row (a file's line, say)."""
        return (f"{place}: the prediction is {self.value}, not a finite number: the row's "
                f"values are too large for float32 arithmetic with this model")


def prediction_features(features: Any) -> torch.Tensor:
    """Features for predict as float32, refused if they hold NaN, inf, or values beyond
    float32 (which would become inf and be predicted as such, without a word)."""
    X = numbers_tensor("features", features)  # float64, ints, numpy, lists: as float32
    check_finite("features", X, features)
    return X.contiguous()  # as fit's check_data: a prediction whatever the table's layout


@torch.no_grad()
def predict(features: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
            scaling: Scaling) -> torch.Tensor:
    """The model's (n, 1) predictions in original units: scale X, apply w and b, unscale y;
    raise NonFinitePrediction for a row whose prediction overflows float32."""
    if features.dim() != 2 or features.shape[1] != w.shape[0]:
        raise ValueError(f"features must have shape (n, {w.shape[0]}), the columns the model "
                         f"was trained on; got shape {tuple(features.shape)}")
    # On the features' device: a FitResult keeps w on the CPU whatever device X is on. And
    # in one layout, strides (1, 1): concise's weight.T has (1, d), and BLAS rounded a
    # one-row product with it 1 ulp off the FitResult's own (d, 1) copy.
    w, b = w.to(features.device).reshape(-1).reshape(-1, 1), b.to(features.device)
    predictions = scaling.unscale_target(linreg(scaling.features(features), w, b))  # (n, 1)
    if not bool(torch.isfinite(predictions.sum())):  # one read when all is well
        bad = (~torch.isfinite(predictions[:, 0])).nonzero()
        if len(bad):  # else a finite column whose sum alone overflowed
            row = int(bad[0, 0])
            raise NonFinitePrediction(row, float(predictions[row, 0]))
    return predictions


def load_model(path: str | os.PathLike[str], device: str = "cpu") -> TrainedModel:
    """Load a checkpoint into a ready model of its implementation (scratch or concise)."""
    from torchlr.devices import resolve_device
    from torchlr.train import MODELS  # here: train imports this module

    state = load_checkpoint(path)  # its implementation is checked to be one of MODELS
    dev = resolve_device(device)
    num_inputs = state["params"]["w"].shape[0]
    lr = float(state["config"].get("lr", 0.03))
    model = MODELS[state["impl"]](num_inputs, lr, torch.Generator(), dev)
    restore(state, model, torch.Generator())  # parameters and optimizer state, checked
    best = state.get("best")
    if state["config"].get("early_stopping") and isinstance(best, dict):
        restore_params(model, best)  # what fit() returned: the best epoch's parameters
    return TrainedModel(state["impl"], model, Scaling.from_state(state["scaling"]),
                        state["feature_names"], state["target_name"], state["epoch"],
                        state["config"])
