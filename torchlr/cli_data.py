"""The command line's work with files: options, data and configs for train, and predict."""

from __future__ import annotations

import argparse
import csv
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import fields, replace
from typing import Any, Optional

import numpy as np
import torch

from torchlr.argnumbers import float_value
from torchlr.atomic import write_atomic
from torchlr.checkpoint import NonFinitePrediction, TrainedModel, load_checkpoint, load_model
from torchlr.io import feature_columns, load_columns, load_data, row_location
from torchlr.stream import BlockStream
from torchlr.train import FitConfig
from torchlr.validation import check_writable_file

SYNTHETIC_NAMES = (("x1", "x2"), "y")  # the chapter's columns, so its model can predict files
# FitConfig fields a resumed run takes from its checkpoint, never from the command line.
# One given with another value than the checkpoint's is refused, not silently ignored.
RUN_OPTIONS = {"impl": "impl", "lr": "lr", "batch_size": "batch_size", "seed": "seed",
               "val_fraction": "val_fraction", "standardize": "standardize",
               "standardize_target": "standardize_target", "early_stopping": "early_stopping",
               "permutation": "permutation"}


def add_train_options(train: argparse.ArgumentParser) -> None:
    """The train subcommand's options for files, preprocessing and checkpoints."""
    group = train.add_argument_group("your own data")
    group.add_argument("--data", metavar="FILE",
                       help="train on a table: .csv with a header, .npy, .npz or .pt")
    group.add_argument("--target", metavar="COLUMN",
                       help="the column to predict (default: the last column)")
    group.add_argument("--features", metavar="A,B,C",
                       help="comma-separated feature columns, read as a CSV row: quote a "
                            "name that holds a comma, as in '\"a,b\",c' (default: all but "
                            "the target)")
    group.add_argument("--stream", action="store_true",
                       help="train from a memory-mapped 2-D .npy in shuffled blocks, for data "
                            "larger than memory (columns are named x1, x2, ...)")
    group.add_argument("--standardize", action="store_true",
                       help="scale features by the training split's mean and std; weights "
                            "and predictions stay in original units")
    group.add_argument("--standardize-target", action="store_true",
                       help="scale the target the same way")
    group.add_argument("--val-fraction", type=float_value, default=0.0, metavar="F",
                       help="hold out this fraction of rows (seeded) and report validation "
                            "loss and R² per epoch")
    group.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                       help="stop after this many epochs without a lower validation loss and "
                            "keep the best epoch's parameters (needs --val-fraction; 0: off)")
    group.add_argument("--save", metavar="PATH",
                       help="write a checkpoint after each epoch (atomically)")
    group.add_argument("--resume", metavar="PATH",
                       help="continue a saved run up to --epochs; writes back to PATH "
                            "unless --save says otherwise")


def add_predict_command(sub: Any, formatter: Any) -> None:
    """The predict subcommand, its help drawn by formatter (one that shows defaults)."""
    predict = sub.add_parser(
        "predict", help="predict with a saved model", formatter_class=formatter,
        description="Predict with a checkpoint written by `torchlr train --save`. The file must "
                    "hold the model's feature columns, found by name in any order; its target "
                    "column may be there too, and other columns are not read. Writes CSV, one "
                    "row per input row: the model's feature columns in its order, the target "
                    "if the file has it, then `prediction` (`_prediction` if a column has that "
                    "name).")
    predict.add_argument("--model", required=True, metavar="PATH", help="a checkpoint")
    predict.add_argument("--data", required=True, metavar="FILE",
                         help=".csv with a header, .npy, .npz or .pt")
    predict.add_argument("--output", metavar="OUT.csv",
                         help="where to write (default, or -: stdout)")
    predict.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")


def _features_arg(args: argparse.Namespace) -> Optional[list[str]]:
    if args.features is None:
        return None
    # Read as a row of CSV: a name that holds a comma, which a CSV header may, is quoted
    # ('"a,b",c'), and the names are stripped as the header's are.
    try:
        (row,) = csv.reader([args.features], skipinitialspace=True, strict=True)
    except csv.Error as exc:  # csv's own words are about files ("universal-newline mode")
        if "expected after" not in str(exc):  # an open quote or a line break
            raise ValueError(f"--features is not one row of comma-separated names (a quote "
                             f"left open, or a line break): {args.features!r}") from None
        # Text after a closing quote ('"a,b" ,c'): read as a file's header reads it.
        (row,) = csv.reader([args.features], skipinitialspace=True)
    names = [name.strip() for name in row if name.strip()]
    if not names:
        raise ValueError(f"--features lists no column: {args.features!r}")
    return names


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same path once resolved, or two links to it."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_files_apart(written: dict[str, Optional[str]], read: dict[str, Optional[str]]) -> None:
    """Refuse, before any work, a file a command would write over another it writes or reads.

    written and read map each option to its path (None or '': not given). A checkpoint
    written back to the --resume it was read from is the one overlap meant: leave it out.
    """
    given = [(option, path, True) for option, path in written.items() if path] + \
            [(option, path, False) for option, path in read.items() if path]
    for i, (option, path, writes) in enumerate(given):
        for other, other_path, other_writes in given[i + 1:]:
            if (writes or other_writes) and same_file(path, other_path):
                raise ValueError(f"{option} {path} is the {other} file; not overwriting it")


def check_given_paths(args: argparse.Namespace) -> None:
    """Refuse an empty --data, --model or --logdir by name: "No such file: " says nothing."""
    for name, kind in (("data", "file"), ("model", "checkpoint file"), ("logdir", "folder")):
        if getattr(args, name, None) == "" and not (name == "logdir" and args.no_tensorboard):
            raise ValueError(f"--{name} must be a {kind} path, got ''")


def check_train_files(args: argparse.Namespace) -> None:
    """The files train writes (the checkpoint, the plot) apart from each other and its data."""
    # A resumed run writes its checkpoint back to --resume, without --save or with --save at
    # the same file: that is meant.
    back = not args.save or (args.resume and same_file(args.save, args.resume))
    checkpoint = ("--save", args.save) if args.save else ("--resume", args.resume)
    check_files_apart({checkpoint[0]: checkpoint[1], "--plot": args.plot},
                      {"--data": args.data, **({} if back else {"--resume": args.resume})})


def training_inputs(args: argparse.Namespace, defaults: FitConfig, synthetic: Any,
                    truth: tuple[Any, float]) -> tuple[Any, Any, list[FitConfig]]:
    """(features, labels, configs) for train; synthetic(seed, n) gives the chapter's data,
    truth its (w, b)."""
    if args.data is not None and "num_examples" in args.given:
        raise ValueError("--num-examples sizes the chapter's synthetic data; with --data the "
                         "file's rows are used")
    check_given_paths(args)
    check_train_files(args)
    impls = ("scratch", "concise") if args.impl == "both" else (args.impl,)
    if args.impl == "both" and (args.save is not None or args.resume is not None):
        raise ValueError("--save and --resume need one implementation: "
                         "--impl scratch or --impl concise")
    options = dict(lr=args.lr, batch_size=args.batch_size, num_epochs=args.epochs,
                   device=args.device, cuda_graphs=args.cuda_graphs, seed=args.seed,
                   log_every=args.log_every,
                   val_fraction=args.val_fraction,
                   standardize=args.standardize, standardize_target=args.standardize_target,
                   early_stopping=args.early_stopping, save=args.save, resume=args.resume)
    if args.no_tensorboard:  # options for a run that is not written: a mistaken flag, said
        named = [f"--{o.replace('_', '-')}" for o in ("logdir", "run_name") if o in args.given]
        if named:
            raise ValueError(f"{' and '.join(named)} name{'s' * (len(named) == 1)} the "
                             f"TensorBoard run, which --no-tensorboard does not write")
    logging = dict(logdir=None if args.no_tensorboard else args.logdir, run_name=args.run_name)
    # Stripped as the header's names are (and --features'), or ' y' could name no column.
    target = None if args.target is None else args.target.strip()
    features = _features_arg(args)
    data_seed = args.seed  # --seed draws the chapter's data too
    num_examples = args.num_examples
    if args.resume == "":  # "No such checkpoint file: " would not say what is wrong
        raise ValueError("--resume must be a checkpoint's path, got ''")
    if args.resume is not None:
        state = load_checkpoint(args.resume)
        saved = state["config"]
        for name, option in RUN_OPTIONS.items():
            given = getattr(args, option)
            # args.given (set by main) holds the options written on the line: one written with
            # its default value is still an option given.
            if option in args.given and given != saved[name] \
                    and not (name == "impl" and given == "both"):
                flag = f"--{option.replace('_', '-')}"
                if isinstance(given, bool):  # a switch: given means on
                    raise ValueError(f"{flag} was not given to the checkpoint's run; a resumed "
                                     f"run keeps its options")
                raise ValueError(f"{flag} {given} differs from the checkpoint's "
                                 f"{saved[name]!r}; a resumed run keeps its options")
        known = {f.name for f in fields(FitConfig)}
        base = FitConfig(**{k: v for k, v in saved.items() if k in known})
        data_seed = base.seed  # the data the checkpoint trained on, whether or not --seed is given
        # and its size (all rows, validation included), where the checkpoint records it.
        saved_rows = (state.get("data") or {}).get("shape", [None])[0]
        if saved_rows is not None and args.data is None:
            if "num_examples" in args.given and args.num_examples != saved_rows:
                raise ValueError(f"--num-examples {args.num_examples} differs from the "
                                 f"checkpoint's {saved_rows}; a resumed run keeps its data")
            num_examples = saved_rows
        # Where the run logged: a resume's epochs join its folder of runs (and its name)
        # unless the line names others. A checkpoint of no run (--no-tensorboard, or the
        # library's fit without a logdir) resumes into the default, as every train does.
        if not args.no_tensorboard and saved.get("logdir") is not None:
            for option in ("logdir", "run_name"):
                if option not in args.given:
                    logging[option] = saved.get(option)
        # A stream read in blocks sets the batch order: resumed from memory, it would differ.
        if (state.get("data") or {}).get("block_rows") is not None and args.data is not None:
            args.stream = True
        impls = (base.impl,)
        options = dict(num_epochs=args.epochs, device=args.device, resume=args.resume,
                       save=args.resume if args.save is None else args.save,
                       cuda_graphs=args.cuda_graphs)
        if "log_every" in args.given:  # how often it reads, not what it computes
            options["log_every"] = args.log_every
        defaults = replace(base, feature_names=None, target_name=None)
        # The chapter's columns are restored only with --data: x1,x2 of a .npy file are real
        # columns, and without a file the run resumes on the synthetic data it drew.
        if base.feature_names is not None and (
                args.data is not None
                or (tuple(base.feature_names), base.target_name) != SYNTHETIC_NAMES):
            # Columns given again must be the run's: checked here, before other columns can
            # make another error (a new target that is one of the saved features, say).
            if target is not None and target != base.target_name:
                raise ValueError(f"--target {target} differs from the checkpoint's "
                                 f"{base.target_name!r}; a resumed run keeps its columns")
            if features is not None and tuple(features) != tuple(base.feature_names):
                # The saved names quoted, as --target's: an unquoted lr=5 read as a flag.
                raise ValueError(f"--features {','.join(features)} differs from the "
                                 f"checkpoint's {','.join(base.feature_names)!r}; a resumed "
                                 f"run keeps its columns")
            target = base.target_name if target is None else target
            features = list(base.feature_names) if features is None else features
            if args.data is None:
                raise ValueError(f"{args.resume} was trained on a file: pass it again with "
                                 f"--data")
    if args.data is None:
        given = [flag for flag, value in (("--stream", args.stream), ("--target", target),
                                          ("--features", features)) if value]
        if given:  # only those on the line: naming the others confused
            raise ValueError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} "
                             f"--data FILE")
        X, y = synthetic(data_seed, num_examples)
        names: tuple[tuple[str, ...], Optional[str]] = SYNTHETIC_NAMES
        logging.update(true_w=truth[0], true_b=truth[1])
    elif args.stream:
        X = BlockStream(args.data, target, features)
        X.check_target_varies()  # as load_data, in memory
        y = None
        names = (tuple(X.feature_names), X.target_name)
    else:
        data = load_data(args.data, target, features)
        X, y = data.features, data.target
        names = (tuple(data.feature_names), data.target_name)
    for name in ("gradient", "permutation"):  # else the default, or a resumed run's own
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    configs = [replace(defaults, impl=impl, feature_names=names[0], target_name=names[1],
                       **options, **logging) for impl in impls]
    return X, y, configs


def describe_weights(w: torch.Tensor, b: float, names: Optional[Iterable[str]]) -> list[str]:
    """Lines naming each learned weight, in the data's original units."""
    names = list(names) if names is not None else [f"x{j + 1}" for j in range(len(w))]
    width = max(len(name) for name in names)
    return [f"w[{name}]{' ' * (width - len(name))} = {float(v):.9g}"
            for name, v in zip(names, w)] + [f"b{' ' * (width + 2)} = {b:.9g}"]


def _cell(value: np.float32) -> str:
    if np.isnan(value):
        return ""  # a target the input left empty
    return str(value)  # numpy's shortest text that reads back as the same float32


def predict_rows(args: argparse.Namespace) -> tuple[TrainedModel, Iterator[str]]:
    """Load the model and data (every check done first); return the CSV lines to write."""
    check_given_paths(args)
    if args.output == "-":  # the usual name for standard output
        args.output = None
    if args.output is not None:
        check_writable_file("--output", args.output)
        check_files_apart({"--output": args.output}, {"--data": args.data,
                                                      "--model": args.model})
    model = load_model(args.model, device=args.device)
    if model.feature_names is None:
        raise ValueError(f"{args.model} has no feature names; it cannot match columns")
    # The target, when the file has it, is echoed so predictions sit next to the truth.
    wanted = feature_columns(args.data, model.feature_names, model.target_name)
    # A target cell may be empty (unknown yet): echoed empty.
    values = load_columns(args.data, wanted, missing_ok=[model.target_name],  # (n, k) float32
                          too_large="predict on it in parts, each a file of some of its rows")
    d = len(model.feature_names)
    try:
        predictions = model.predict(values[:, :d]).cpu()  # (n, 1)
    except NonFinitePrediction as exc:  # named by its place in the file
        raise ValueError(exc.at(row_location(args.data, exc.row))) from None
    column = "prediction"
    while column in wanted:  # a feature named prediction: the header keeps distinct names
        column = "_" + column
    header = io.StringIO()
    csv.writer(header, lineterminator="\n").writerow([*wanted, column])  # quotes "a,b"

    def lines() -> Iterator[str]:
        yield header.getvalue()
        table = np.concatenate([values.numpy(), predictions.numpy()], axis=1)
        for row in table:
            yield ",".join(_cell(v) for v in row) + "\n"

    return model, lines()


def write_lines(path: str, lines: Iterable[str]) -> None:
    """Write text lines to path atomically: no half-written output, even on an error."""
    write_atomic(path, lambda f: f.writelines(lines), text=True)
