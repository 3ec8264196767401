"""The torchlr command line: the only module that prints."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, TextIO

import torch

from torchlr import __version__, distributed
from torchlr.analytic import GRADIENTS
from torchlr.argnumbers import float_value, read_negative_numbers
from torchlr.cli_data import (
    add_predict_command,
    add_train_options,
    describe_weights,
    predict_rows,
    training_inputs,
    write_lines,
)
from torchlr.data import PERMUTATIONS, synthetic_data
from torchlr.interrupts import Terminated, raise_interrupt, signal_again, unbroken
from torchlr.io import check_fits_in_memory
from torchlr.terminal import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    forget_escaped_interrupts,
    ignore_signals,
    in_torchrun,
    rank_tag,
    say,
)
from torchlr.train import DivergenceError, FitConfig, FitResult, Progress, fit, keeping_saved
from torchlr.validation import IMPLS, ONE_WORD, check_seed

# The chapter's ground truth.
TRUE_W = (2.0, -3.4)
TRUE_B = 4.2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of usage plus error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        read_negative_numbers(self)

    def error(self, message: str) -> None:  # type: ignore[override]
        # "torchlr: error:" as every other error says, not a subcommand's "torchlr train:".
        self.exit(EXIT_USAGE, f"{self.prog.split()[0]}: error: {message}\n")


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except an unset option's None or False, which say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    """The parser for `torchlr` and its subcommands."""
    parser = _Parser(
        prog="torchlr",
        description="Linear regression by minibatch SGD, from scratch and with nn.Linear.",
    )
    parser.add_argument("--version", action="version", version=f"torchlr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="train on the chapter's synthetic data, or on a table with --data",
        description=(
            "Train linear regression by minibatch SGD and print the loss per epoch. By "
            "default on the chapter's synthetic data y = X w + b + noise with w = [2, -3.4] "
            "and b = 4.2: with no options it reproduces the chapter (1000 examples, batch "
            "size 10, learning rate 0.03, 3 epochs). With --data, on your own table."
        ),
        formatter_class=_DefaultsHelp,
    )
    defaults = FitConfig()
    train.add_argument("--impl", choices=(*IMPLS, "both"), default="scratch",
                       help="scratch: raw tensors, autograd and a hand-written sgd; "
                            "concise: nn.Linear and torch.optim.SGD; both: run each in turn")
    train.add_argument("--epochs", type=int, default=defaults.num_epochs,
                       help="passes over the training set")
    train.add_argument("--lr", type=float_value, default=defaults.lr, help="learning rate")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help="examples per minibatch; a short last batch is kept")
    train.add_argument("--num-examples", type=int, default=1000,
                       help="rows of the chapter's synthetic data, validation rows included")
    train.add_argument("--log-every", type=int, default=defaults.log_every, metavar="STEPS",
                       help="steps between reads of the minibatch losses: TensorBoard's "
                            "loss/train points and the progress bar's redraws (0: once an "
                            "epoch); no result depends on it")
    train.add_argument("--seed", type=int, default=defaults.seed,
                       help="seeds the data, the initial parameters and the batch order")
    train.add_argument("--device", default=defaults.device,
                       help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N or mps")
    train.add_argument("--cuda-graphs", action="store_true",
                       help="on CUDA, replay the full batches' steps from captured CUDA "
                            "graphs, up to 16 steps a launch: faster for small batches, "
                            "the same results to float precision")
    train.add_argument("--gradient", choices=GRADIENTS, default=None,
                       help=f"autograd: backward() on the loss, as the chapter does "
                            f"(default: {defaults.gradient}, or a resumed run's own); "
                            f"analytic: the same gradient derived by hand (X^T r), about 2-5 "
                            f"times faster per step for small batches (the most for "
                            f"scratch), equal to float precision; not under torchrun")
    train.add_argument("--permutation", choices=PERMUTATIONS, default=None,
                       help=f"how each epoch's order is drawn (default: "
                            f"{defaults.permutation}, or a resumed run's own): randperm, "
                            f"torch.randperm on the seeded CPU generator, a uniformly random "
                            f"order each epoch as the chapter's shuffle is; hashed: the rows "
                            f"sorted by a seeded hash, computed on the GPU for large data "
                            f"(another order, the same on every device; faster at millions "
                            f"of rows on a GPU)")
    train.add_argument("--quiet", action="store_true",
                       help="no per-epoch lines and no progress bar: the results alone (the "
                            "final errors, or the weights with --data), with the lines that "
                            "name what was kept (saved PATH, early stopping's epoch) and, "
                            "with --impl both, each block's name")
    train.add_argument("--logdir", default="runs",
                       help="TensorBoard log root: each run writes one folder under it "
                            "(with --resume: the checkpoint's)")
    train.add_argument("--no-tensorboard", action="store_true",
                       help="write no TensorBoard run")
    train.add_argument("--run-name", default=None,
                       help="suffix for the run folder <YYYYmmdd-HHMMSS>-<impl>-<run-name> "
                            "(with --resume: the checkpoint's)")
    train.add_argument("--plot", metavar="FILE.png",
                       help="save the loss curves (every run of --impl both on one figure)")
    add_train_options(train)
    add_predict_command(sub, _DefaultsHelp)
    train.add_argument("--backend", choices=distributed.BACKENDS, default=None,
                       help="collective backend under torchrun (default: nccl on CUDA, "
                            "else gloo)")
    train.add_argument("--dist-timeout", type=_seconds, default=distributed.DEFAULT_TIMEOUT,
                       metavar="SECONDS",
                       help="seconds a process waits on the others under torchrun before "
                            "giving up")
    return parser


def _seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, "
                                         f"got {text!r}")
    why = distributed.timeout_out_of_range(value)
    if why:
        raise argparse.ArgumentTypeError(why)
    return value


class _ProgressBar:
    """A one-line bar redrawn in place; used only when stdout is a terminal."""

    def __init__(self, stream: TextIO, label: str, width: int = 30) -> None:
        self.stream, self.label, self.width = stream, label, width
        self.drawn = False  # a bar is on the line, for an error message to clear first

    def __call__(self, p: Progress) -> None:
        done = (p.epoch - 1) * p.steps_per_epoch + p.step
        total = p.num_epochs * p.steps_per_epoch
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] epoch {p.epoch}/{p.num_epochs} "
                          f"step {p.step}/{p.steps_per_epoch}")
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        self.stream.write("\r\033[K")
        self.stream.flush()
        self.drawn = False


@dataclass
class _Printer:
    """Prints the chapter's epoch lines as they come, with an optional progress bar."""

    out: TextIO
    quiet: bool
    bar: Optional[_ProgressBar]

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar(p)
        if p.epoch_loss is not None:
            if self.bar is not None:
                self.bar.clear()
            val = ("" if p.val_loss is None
                   else f", val loss {_loss_text(p.val_loss)}, val R2 {_r2_text(p.val_r2)}")
            print(f"epoch {p.epoch}, loss {_loss_text(p.epoch_loss)}{val}", file=self.out,
                  flush=True)


def _format_vector(values: torch.Tensor) -> str:
    return "[" + " ".join(f"{float(v):.6g}" for v in values.reshape(-1)) + "]"


def _report(result: FitResult, true_w: torch.Tensor, out: TextIO) -> None:
    print(f"Error in estimating w {_format_vector(true_w - result.w)}", file=out)
    print(f"Error in estimating b {_true_b() - result.b:.6g}", file=out)


def _true_b() -> float:
    # The b that drew the data: synthetic_data adds it to float32 values, so it is 4.2
    # rounded to float32 (4.19999981), as true_w's -3.4 is.
    return float(torch.tensor(TRUE_B, dtype=torch.float32))


def _os_error_text(exc: OSError) -> str:
    """An OSError's message and path without Python's "[Errno N]" prefix."""
    if not exc.strerror:
        return str(exc)
    return exc.strerror + (f": {exc.filename!r}" if exc.filename is not None else "")


def _r2_text(r2: Optional[float]) -> str:
    """R² as the chapter prints numbers; 'undefined' where the validation targets are all one
    value (one row, say): 1 - SS_res / SS_tot has SS_tot = 0 there."""
    if r2 is None or math.isnan(r2):
        return "undefined"
    # "-0.000000" for -1e-7 would hide a value's size behind its sign: as a tiny loss is.
    if 0 < abs(r2) < 5e-7:
        return f"{r2:.2e}"
    # A diverging fit's R² of -3.47e28 printed 29 digits, of which 7 at most are known.
    return _loss_text(r2) if abs(r2) >= 1 else f"{r2:f}"


def _loss_text(value: float) -> str:
    """A loss as the chapter prints it (6 decimals), but with no more digits than it holds."""
    if value == 0 or not math.isfinite(value):
        return f"{value:f}"
    if abs(value) >= 1:  # seven digits first: 9.9999996 is 10.00000, not 10.000000
        value = float(f"{value:.7g}")
    if abs(value) < 1e-5:
        # "0.000000" would say nothing of a loss of 8e-9 (a target known to float precision).
        # Three significant digits: the loss holds them even so far below the target's
        # square, where float32's predictions would not (torchlr.summed_loss sums it in
        # float64 there), and the float32 parameters' last bits move the digits after them.
        return f"{value:.2e}"
    if abs(value) >= 1e7:
        return f"{value:.6e}"
    # Seven significant digits at most, about what float32 holds: 153.300753 would show the
    # binary value's noise. So six decimals below 10, as the chapter's losses, fewer above.
    return f"{value:.{min(6, 6 - math.floor(math.log10(abs(value))))}f}"


def _train(args: argparse.Namespace, out: TextIO) -> int:
    true_w = torch.tensor(TRUE_W)

    def synthetic(seed: int, num_examples: int) -> tuple[torch.Tensor, torch.Tensor]:
        data_gen = torch.Generator().manual_seed(check_seed(seed))
        # X, y and the noise as float32, with room for the fit's copies: refused in one line,
        # not by the allocator's traceback.
        check_fits_in_memory(f"--num-examples {num_examples}",
                             2 * num_examples * (len(TRUE_W) + 2) * 4,
                             advice="ask for fewer examples")
        return synthetic_data(true_w, TRUE_B, num_examples, generator=data_gen)

    # The chapter's data by default; --data, --stream and --resume in torchlr.cli_data.
    # The w that drew the data is float32 (synthetic_data casts it): TensorBoard's error/w
    # is measured from the same values as the printed error, -3.4 as float32 included.
    truth = (tuple(true_w.tolist()), _true_b())
    group = distributed.current()  # under torchrun: this process's place in the group
    # A rank that refuses its data or options here must say so: the others would otherwise
    # wait in fit's first collective for a rank that has left (a broken connection, or the
    # timeout). Every rank makes this one collective, failed or not (told_to_group).
    told: AbstractContextManager[None] = nullcontext()
    if group is not None:
        told = distributed.told_to_group(group, torch.device(args.device))
    with told:
        features, labels, configs = training_inputs(args, FitConfig(), synthetic, truth)
        for config in configs:  # every run's options are checked before any run starts
            config.validate()
        if args.plot is not None:  # "" too: refused by check_image_path, not ignored
            with unbroken():  # matplotlib, imported only when a plot is asked for
                from torchlr import plots

            plots.check_image_path(args.plot)
            if all(config.num_epochs == 0 for config in configs):
                # No epoch, no curve: the file would be an empty pair of axes.
                raise ValueError("--plot draws one point per epoch; with --epochs 0 there is "
                                 "nothing to draw")
    if group is not None:  # --impl both on one rank only: its second fit would train alone
        group.check_same({"runs": len(configs)}, torch.device(args.device))
    results = []
    for config in configs:
        if len(configs) > 1:  # with --quiet too: two blocks of results need their names
            print(f"== {config.impl} ==", file=out)
        bar = _ProgressBar(out, config.impl) if out.isatty() and not args.quiet else None
        try:
            result = fit(features, labels, config, on_progress=_Printer(out, args.quiet, bar))
        except BaseException:
            if bar is not None and bar.drawn:
                bar.clear()  # the error's line must not start after a half-drawn bar
            raise
        results.append(result)
        with keeping_saved(result):  # a Ctrl-C or a full stdout: the run itself is kept
            _tell_result(result, config, args, true_w, out)
    if args.plot is not None:
        with keeping_saved(results[-1]):
            plots.save_figure(plots.loss_curves(results), args.plot)
        if not args.quiet:
            say(f"Saved the loss curves to {args.plot}")
    return 0


def _tell_result(result: FitResult, config: FitConfig, args: argparse.Namespace,
                 true_w: torch.Tensor, out: TextIO) -> None:
    """A finished fit's lines: its errors or weights, early stopping, the checkpoint."""
    if args.data is None:
        _report(result, true_w, out)
    else:
        for line in describe_weights(result.w, result.b, config.feature_names):
            print(line, file=out)
    if result.run_dir is not None and not args.quiet:
        # On stderr, so stdout stays the chapter's lines.
        say(f"TensorBoard run: {result.run_dir}")
    if result.best_epoch is not None:
        ran = len(result.losses)
        how = (f"stopped after epoch {ran}" if ran < config.num_epochs
               else f"ran all {ran} epochs")
        kept_loss = _loss_text(result.val_losses[result.best_epoch - 1])
        print(f"early stopping: {how}; kept epoch {result.best_epoch} (lowest validation "
              f"loss, {kept_loss})", file=out)
    if result.saved_to is not None:  # not when no epoch ran (--epochs 0, say)
        print(f"saved {result.saved_to}", file=out)


def _predict(args: argparse.Namespace, out: TextIO) -> int:
    _, lines = predict_rows(args)  # every check runs before anything is written
    if args.output is None:
        out.writelines(lines)
    else:
        write_lines(args.output, lines)
    return 0


def _train_data_parallel(args: argparse.Namespace, out: TextIO) -> int:
    """_train on every process torchrun started; only rank 0 prints."""
    device = distributed.setup(args.device, backend=args.backend, timeout=args.dist_timeout)
    try:
        args.device = str(device)  # this rank's own GPU under CUDA
        if distributed.is_main():
            return _train(args, out)
        args.plot = None  # rank 0 alone prints and writes files
        with open(os.devnull, "w") as devnull:
            return _train(args, devnull)
    finally:
        distributed.teardown()


# Library names the command line spells otherwise; every other option's dest is its name.
_LIBRARY_NAMES = {"num_epochs": "epochs"}
# What the processes of a group compare beyond their options (train.group_agreement), in
# words a command-line user can act on; the options themselves become their flags.
_AGREEMENT_TERMS = {
    "samples": "the number of training rows (--data, --val-fraction, --num-examples)",
    "features": "the number of feature columns (--data, --features)",
    "feature_names": "the feature columns (--features)",
    "target_name": "the target column (--target)",
    "data_values": "the values of the data (--data, --seed, --num-examples)",
    "stream": "--stream",
    "first_epoch": "the epoch --resume continues from",
    "runs": "the number of fits (--impl both makes two)",
}
# Command-line dests that are also plain words of data messages ("features contains NaN"):
# never rewritten.
_DATA_WORDS = {"data", "target", "features", "model", "output", "stream", "plot", "command"}


def in_cli_terms(message: str, parser: argparse.ArgumentParser,
                 keep: Iterable[Optional[str]] = ()) -> str:
    """A library error in the words of the command line: `num_epochs=5` -> `--epochs 5`.

    The library names its arguments (`batch_size must be ...`, `cuda_graphs=True needs ...`);
    a CLI user knows only the flags. Rewritten: a name followed by `=` (into the flag and
    its value; a switch's `=True` into the flag alone), a name that opens the message
    before "must", and one after "set " or "leave ". Names elsewhere may be the user's
    column names or paths, and stay as they are; so do the texts in keep (the paths and
    names given on the command line) that hold a `=`, which alone the rewriting would
    change: a file named lr=5.csv.
    """
    kept = sorted({text for text in keep if isinstance(text, str) and "=" in text}, key=len,
                  reverse=True)
    for i, text in enumerate(kept):  # set aside as \0i\0, which no name or value matches
        # Whole only: a run named lr=100 must not hide the lr=100.0 of a library message.
        message = re.sub(rf"(?<![\w.=/-]){re.escape(text)}(?![\w.])", f"\0{i}\0", message)
    message = _rewritten(message, parser)
    for i, text in enumerate(kept):
        message = message.replace(f"\0{i}\0", text)
    return message


def _rewritten(message: str, parser: argparse.ArgumentParser) -> str:
    flags: dict[str, tuple[str, bool]] = {}  # library name -> (flag, takes no value)
    for command in parser._subparsers._group_actions[0].choices.values():  # type: ignore
        for action in command._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if longs and action.dest not in _DATA_WORDS | {"help"}:
                flags[action.dest] = (longs[0], action.nargs == 0)
    for library, dest in _LIBRARY_NAMES.items():
        flags[library] = flags[dest]
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))
    # Where a name or a value ends: not inside a path or a longer word (lr=0.1.pt).
    after = r"(?![\w/-]|\.\w)"

    def assigned(match: re.Match[str]) -> str:
        flag, switch = flags[match[2]]
        constant, word, quoted, number = match[3], match[4], match[5], match[6]
        if constant is not None and switch:
            return match[1] + (flag if constant == "True" else f"no {flag}")
        return match[1] + f"{flag} {next(v for v in (constant, word, quoted, number) if v)}"

    # name=value as the library writes it (f"{name}={value!r}"): after the start, a space or
    # "(", and with a value that ends there. A quoted one-word value loses its quotes:
    # device='cuda' -> --device cuda.
    # A path holding a ' is repr'd in double quotes: "it's/".
    value = (rf"(?:(True|False|None){after}|'({ONE_WORD})'(?![\w'])|('[^']*'|\"[^\"]*\")(?!\w)|"
             rf"([-+]?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|inf|nan)){after})")
    message = re.sub(rf"(^|[ (])({names})={value}", assigned, message)
    message = re.sub(rf"^({names}) must ", lambda m: f"{flags[m[1]][0]} must ", message)
    # The processes of a group list what they disagree on: ['seed', 'first_epoch'].
    message = re.sub(r"disagree on \[([^\]]*)\]", lambda m: "disagree on [" + re.sub(
        r"'(\w+)'", lambda n: _AGREEMENT_TERMS.get(n[1]) or flags.get(n[1], (n[0],))[0],
        m[1]) + "]", message)
    return re.sub(rf"\b(set|leave) ({names}){after}", lambda m: f"{m[1]} {flags[m[2]][0]}",
                  message)


def _given_options(argv: Optional[list[str]]) -> set[str]:
    """The dests of the options written on the command line, defaults aside."""
    # Parsed again with every default suppressed: only what was given lands in the result.
    parser = build_parser()
    for command in parser._subparsers._group_actions[0].choices.values():  # type: ignore
        for action in command._actions:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.given = _given_options(argv)
    writes_stdout = args.command == "train" or getattr(args, "output", None) is None
    if sys.stdout is None and writes_stdout:  # closed (`>&-`): nowhere to print the results
        say("torchlr: error: standard output is closed")
        return EXIT_USAGE
    try:
        if args.command == "train":
            if in_torchrun():
                return _train_data_parallel(args, _Stdout(sys.stdout))
            unused = sorted({"backend", "dist_timeout"} & args.given)
            if unused:
                names = " and ".join("--" + u.replace("_", "-") for u in unused)
                raise ValueError(f"{names} {'apply' if len(unused) > 1 else 'applies'} only "
                                 f"under torchrun")
            return _train(args, _Stdout(sys.stdout))
        if args.command == "predict":
            return _predict(args, _Stdout(sys.stdout))
    except BrokenPipeError:
        # The reader went away (`torchlr predict ... | head`): nothing to say, and stdout
        # must not be flushed again at exit.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout with no file descriptor: nothing to flush
            pass
        return EXIT_BROKEN_PIPE
    except (ValueError, TypeError, DivergenceError, OSError) as exc:  # OSError: unwritable paths
        where = getattr(exc, "run_dir", None)  # set when a TensorBoard run was started
        # An OSError's text is the system's, about a path: left as it is, less "[Errno 28]".
        text = (_os_error_text(exc) if isinstance(exc, OSError)
                else in_cli_terms(str(exc), build_parser(), keep=_users_words(args)))
        # What the run kept, as an interrupted run's line says: the checkpoint of its last
        # good epoch (a divergence, a full disk under --logdir) and its TensorBoard run.
        saved = getattr(exc, "saved_to", None)
        kept = ([f"{saved} holds epoch {exc.saved_epoch}"] if saved else []) + (  # type: ignore
            [f"TensorBoard run: {where}"] if where and where not in text else [])
        say(f"torchlr: error: {rank_tag()}{text}"
            + (f" ({'; '.join(kept)})" if kept else ""))
        return EXIT_USAGE
    except RuntimeError as exc:
        if (interrupt := _wrapped_interrupt(exc)) is not None:  # said as any Ctrl-C is
            return _interrupted(exc, interrupt)
        if not (in_torchrun() and distributed.from_collective(exc)):
            raise  # a bug, a sparse tensor, CUDA out of memory...: its traceback says where
        # A collective failed: a peer died, stalled past --dist-timeout or broke off. gloo and
        # NCCL raise RuntimeError (torch.distributed.DistError is one), its first line the
        # cause and the rest the C++ call stack: the one line a failed rank prints.
        lines = str(exc).strip().splitlines()
        # Less gloo's "[.../gloo/transport/tcp/pair.cc:534] " source location.
        cause = re.sub(r"^\[[^\]\s]+:\d+\]\s*", "", lines[0]) if lines else ""
        say(f"torchlr: error: {rank_tag()}the process group failed: "
            f"{cause or type(exc).__name__}{_kept(exc)}")
        return EXIT_USAGE
    except Exception as exc:  # only a Ctrl-C that Python wrapped is handled here
        if (interrupt := _wrapped_interrupt(exc)) is None:
            raise  # a bug: its traceback says where
        return _interrupted(exc, interrupt)  # an import a Ctrl-C broke (ImportError)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        return _interrupted(exc, exc)
    return EXIT_USAGE


def _interrupted(exc: BaseException, signal_exc: KeyboardInterrupt) -> int:
    """Say that the run was stopped by signal_exc, and what it kept (marked on exc, which
    escaped the fit); return the status."""
    terminated = isinstance(signal_exc, Terminated)
    say(f"torchlr: {rank_tag()}{'terminated' if terminated else 'interrupted'}{_kept(exc)}")
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _wrapped_interrupt(exc: BaseException) -> Optional[KeyboardInterrupt]:
    """The Ctrl-C or SIGTERM that exc was raised from (its __cause__, at any depth), if any.

    Python wraps some exceptions in its own: one raised while a class is made, in a
    descriptor's __set_name__, in a RuntimeError (3.11), and one raised while a compiled
    module initializes in an ImportError ("initialization failed"). A Ctrl-C that landed
    there while matplotlib was imported printed that error's traceback and ended with
    status 1.
    """
    seen: set[int] = set()
    cause: Optional[BaseException] = exc
    while cause is not None and id(cause) not in seen:  # a chain can loop back
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__  # not __context__: a bug while a Ctrl-C was handled is a bug
    return None


def _kept(exc: BaseException) -> str:
    """What a run that stopped on exc kept, as the end of its line: the checkpoint and its
    epoch, the TensorBoard run ('' for neither)."""
    where, saved = getattr(exc, "run_dir", None), getattr(exc, "saved_to", None)
    return ((f"; {saved} holds epoch {exc.saved_epoch}" if saved else "")  # type: ignore
            + (f"; the TensorBoard run so far is in {where}" if where else ""))


class _Stdout:
    """sys.stdout for train and predict, whose write errors say whose they are: a full disk
    under `> file` said only "No space left on device"."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:  # isatty, fileno...: the stream's own
        return getattr(self._stream, name)

    def _named(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:  # the reader went away: main() says nothing of it
            raise
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write to standard output: {exc.strerror}") \
                from None

    def write(self, text: str) -> int:
        return self._named(self._stream.write, text)

    def writelines(self, lines: Iterable[str]) -> None:
        self._named(self._stream.writelines, lines)

    def flush(self) -> None:
        self._named(self._stream.flush)


def _users_words(args: argparse.Namespace) -> list[Optional[str]]:
    """The paths and names given on the command line, which messages quote as they are."""
    return [getattr(args, name, None) for name in ("data", "model", "output", "save",
                                                  "resume", "plot", "logdir", "run_name",
                                                  "target", "features")]


def _quiet_writer_thread(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook, less the traceback of TensorBoard's writer thread: the error
    that stopped it (a full disk) reaches the fit, and the CLI says it in one line."""
    if type(args.thread).__name__ != "_AsyncWriterThread":
        threading.__excepthook__(args)


def console() -> None:
    """The `torchlr` command and `python -m torchlr`: main(), then the right way out."""
    threading.excepthook = _quiet_writer_thread
    under_torchrun = in_torchrun()
    if not under_torchrun and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        # SIGTERM ends a run as Ctrl-C does: what was logged is closed and the line says
        # where. Not under torchrun, which stops its workers with it, even mid-collective;
        # and one the parent ignored stays ignored, as launch leaves it while torch loads.
        signal.signal(signal.SIGTERM, raise_interrupt)
    # Not a SIGINT the parent ignored (a job a script started with `&`): it stays so.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, raise_interrupt)
    code: Optional[int] = None
    unraisablehook = sys.unraisablehook
    sys.unraisablehook = partial(signal_again, unraisablehook)
    try:
        try:
            code = main()
        finally:  # however main ends: a usage error's SystemExit, a bug's traceback too
            ignore_signals()
            sys.unraisablehook = unraisablehook
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (Terminated) outside main's handling
        if code is None:  # in its parser, before its try, or in its return: said here
            terminated = isinstance(exc, Terminated)
            code = EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
            say(f"torchlr: {rank_tag()}{'terminated' if terminated else 'interrupted'}")
    forget_escaped_interrupts()  # the status is code, not a death by SIGINT
    if under_torchrun:
        distributed.exit_now(code)  # a process torchrun started skips the interpreter's shutdown
    raise SystemExit(code)


if __name__ == "__main__":
    console()
