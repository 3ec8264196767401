import io
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, TRUE_B, TRUE_W, chapter_data

from torchlr import __version__, fit
from torchlr.cli import _ProgressBar, build_parser, main

EPOCH_LINE = re.compile(r"^epoch (\d+), loss (\d+\.\d{6})$")


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    # The CLI writes TensorBoard runs under ./runs by default: keep them out of the checkout.
    monkeypatch.chdir(tmp_path)


def test_default_run_prints_the_chapters_lines(capsys):
    assert main(["train", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [EPOCH_LINE.match(line).group(1) for line in lines[:3]] == ["1", "2", "3"]
    # The printed numbers are the fit's own, with the chapter's data, seed and options.
    X, y = chapter_data(seed=0)
    result = fit(X, y, device="cpu")
    assert [float(EPOCH_LINE.match(line).group(2)) for line in lines[:3]] == [
        round(loss, 6) for loss in result.losses
    ]
    assert lines[3].startswith("Error in estimating w [")
    assert lines[4].startswith("Error in estimating b ")
    w_error = [float(v) for v in lines[3].split("[")[1].rstrip("]").split()]
    torch.testing.assert_close(torch.tensor(w_error), TRUE_W - result.w, rtol=1e-5, atol=0)
    # The b that drew the data, 4.2 rounded to float32, as true_w's -3.4 is.
    true_b = float(torch.tensor(TRUE_B, dtype=torch.float32))
    assert float(lines[4].split()[-1]) == pytest.approx(true_b - result.b, rel=1e-5)
    assert len(lines) == 5


def test_both_runs_each_implementation(capsys):
    assert main(["train", "--impl", "both", "--device", "cpu", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "== scratch ==" in out and "== concise ==" in out
    losses = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(losses) == 4 and losses[:2] == losses[2:]  # agree to the printed digits


def test_options_reach_fit(capsys):
    args = ["train", "--device", "cpu", "--epochs", "1", "--lr", "0.1", "--batch-size", "7",
            "--num-examples", "50", "--seed", "4", "--impl", "concise"]
    assert main(args) == 0
    line = capsys.readouterr().out.splitlines()[0]
    g = torch.Generator().manual_seed(4)
    import torchlr

    X, y = torchlr.synthetic_data(TRUE_W, TRUE_B, 50, generator=g)
    result = fit(X, y, impl="concise", lr=0.1, batch_size=7, num_epochs=1, seed=4, device="cpu")
    assert line == f"epoch 1, loss {result.losses[0]:f}"


def test_quiet_prints_only_the_errors(capsys):
    assert main(["train", "--quiet", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error in estimating w")


def test_help_explains_each_option():
    commands = build_parser()._subparsers._group_actions[0].choices
    for name, command in commands.items():
        for action in command._actions:  # every option says what it does
            assert action.help and len(action.help) > 10, (name, action.option_strings)
    text = commands["train"].format_help()
    for option in ["--impl", "--epochs", "--lr", "--batch-size", "--num-examples", "--seed",
                   "--device", "--quiet"]:
        assert option in text
    assert "scratch" in text and "concise" in text and "cuda:N" in text


def test_python_dash_m_and_help_subprocess():
    proc = subprocess.run([sys.executable, "-m", "torchlr", "train", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--batch-size" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "torchlr", "train", "--epochs", "1",
                           "--device", "cpu", "--no-tensorboard"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and EPOCH_LINE.match(proc.stdout.splitlines()[0])
    assert "\r" not in proc.stdout  # no progress bar when stdout is not a terminal


def test_missing_command_exits_2(capsys):
    assert_exit = pytest.raises(SystemExit)
    with assert_exit as info:
        main([])
    assert info.value.code == 2


@pytest.mark.parametrize("argv", [["train", "--impl", "foo"], ["predict", "--data", "d.csv"],
                                  ["nosuch"]])
def test_a_bad_command_line_is_one_line_that_begins_as_every_error_does(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("torchlr: error: ")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal(monkeypatch):
    fake = _Tty()
    monkeypatch.setattr(sys, "stdout", fake)
    assert main(["train", "--device", "cpu", "--epochs", "2", "--num-examples", "2000"]) == 0
    text = fake.getvalue()
    assert "\r" in text and "epoch 1/2" in text and "[" in text
    # The epoch lines still stand on lines of their own.
    lines = [part.split("\r")[-1].replace("\033[K", "") for part in text.split("\n")]
    assert sum(bool(EPOCH_LINE.match(line)) for line in lines) == 2


def test_an_error_clears_the_progress_bar_first(monkeypatch, capsys):
    fake = _Tty()
    monkeypatch.setattr(sys, "stdout", fake)
    # Diverges mid-epoch, after the bar was drawn at a host read.
    assert main(["train", "--device", "cpu", "--lr", "2.5", "--no-tensorboard"]) == 2
    text = fake.getvalue()
    assert "step 50/100" in text and text.endswith("\r\033[K")  # the bar's line erased
    assert capsys.readouterr().err.startswith("torchlr: error: Training diverged")


def test_an_error_line_names_the_checkpoint_the_run_kept(tmp_path, capsys):
    # A run that diverges after epochs that were saved: its line said nothing of them.
    save = tmp_path / "c.pt"
    assert main(["train", "--device", "cpu", "--lr", "10", "--batch-size", "1000",
                 "--epochs", "100", "--save", str(save), "--no-tensorboard"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    kept = torch.load(save, weights_only=True)["epoch"]
    assert kept >= 1 and line.startswith("torchlr: error: Training diverged")
    assert line.endswith(f" ({save} holds epoch {kept})")
    assert f"epoch {kept + 1}, step 1" in line  # the epoch after the one it kept


def test_quiet_both_names_each_block(capsys):
    assert main(["train", "--quiet", "--impl", "both", "--device", "cpu",
                 "--no-tensorboard"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [lines[0], lines[3]] == ["== scratch ==", "== concise =="] and len(lines) == 6


def test_progress_bar_fills():
    from torchlr.train import Progress

    stream = io.StringIO()
    bar = _ProgressBar(stream, "scratch", width=10)
    bar(Progress(epoch=2, num_epochs=2, step=50, steps_per_epoch=100))
    assert "[#######---]" in stream.getvalue()
    bar(Progress(epoch=1, num_epochs=1, step=1, steps_per_epoch=1))  # a one-step fit, done
    assert stream.getvalue().endswith("[##########] epoch 1/1 step 1/1")


def test_console_exits_with_mains_status_and_leaves_torchrun_workers_at_once(monkeypatch):
    from torchlr import cli, distributed

    monkeypatch.setattr(cli, "main", lambda: 2)
    with pytest.raises(SystemExit) as exit_info:
        cli.console()
    assert exit_info.value.code == 2

    exits = []
    monkeypatch.setattr(distributed, "exit_now", exits.append)  # instead of os._exit
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):  # the stand-in returns, so console carries on
        cli.console()
    assert exits == [2]


@pytest.mark.parametrize("value, text", [
    (0.0, "0.000000"), (1e-5, "0.000010"), (9.99e-6, "9.99e-06"), (0.039271, "0.039271"),
    (2.701253e-11, "2.70e-11"), (-3e-7, "-3.00e-07"), (9.621980, "9.621980"),
    (153.300753, "153.3008"), (-153.300753, "-153.3008"), (255707.390625, "255707.4"),
    (999999.5, "999999.5"), (1e6, "1000000"), (2159870.4, "2159870"),
    (12345678.9, "1.234568e+07"), (math.inf, "inf"), (math.nan, "nan"),
    # Rounded to seven digits first: no eighth digit where a value rounds up a decade.
    (9.9999996, "10.00000"), (99.999996, "100.0000"), (9999999.6, "1.000000e+07"),
])
def test_loss_text_keeps_six_decimals_and_at_most_seven_digits(value, text):
    from torchlr.cli import _loss_text

    assert _loss_text(value) == text


@pytest.mark.parametrize("r2, text", [
    (0.99999996, "1.000000"), (0.5, "0.500000"), (0.0, "0.000000"), (-2.5, "-2.500000"),
    (-1e-7, "-1.00e-07"), (3e-9, "3.00e-09"), (-6e-7, "-0.000001"), (None, "undefined"),
    (math.nan, "undefined"), (1.0, "1.000000"),
    # A diverging fit's: no more digits than float32 holds (29 were printed).
    (-3.4748915134187028e28, "-3.474892e+28"), (-12345.678901, "-12345.68"),
])
def test_r2_text_shows_a_tiny_value_and_not_a_signed_zero_or_unknown_digits(r2, text):
    from torchlr.cli import _r2_text

    assert _r2_text(r2) == text


def test_help_shows_defaults_but_not_unset_ones():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    text = " ".join(text.split())  # argparse wraps lines
    assert "(default: 0.03)" in text and "(default: 10)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_version_names_the_package(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"torchlr {__version__}\n"


def test_dist_timeout_takes_positive_seconds(capsys):
    for good in ("2.5", "0.5"):  # under a second is short, not wrong
        args = build_parser().parse_args(["train", "--dist-timeout", good])
        assert args.dist_timeout == float(good)
    for bad in ("0", "-1", "nan", "inf", "abc"):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["train", "--dist-timeout", bad])
        assert info.value.code == 2
        assert f"must be a positive, finite number of seconds, got '{bad}'" in (
            capsys.readouterr().err)


@pytest.mark.parametrize("option", ["--lr", "--val-fraction"])
def test_a_float_option_names_the_number_that_overflowed(capsys, option):
    # float("1e400") is inf: the later check said "got inf", a value nobody typed.
    for typed in ("1e400", "-1e400"):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["train", option, typed])
        assert info.value.code == 2
        assert f"argument {option}: '{typed}' is beyond a float's range" in (
            capsys.readouterr().err)
    with pytest.raises(SystemExit):  # and one too small reads as 0.0, also not typed
        build_parser().parse_args(["train", option, "1e-400"])
    assert f"argument {option}: '1e-400' is too small for a float" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", option, "abc"])
    assert f"argument {option}: invalid float value: 'abc'" in capsys.readouterr().err
    # What float() reads is unchanged: inf typed as such is left to the fit's own check.
    for typed in ("inf", "-Infinity", "1e308", "-2.5e-3", "0e5", "0.0", "5e-324"):
        args = build_parser().parse_args(["train", option, typed])
        value = args.lr if option == "--lr" else args.val_fraction
        assert value == float(typed)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["train", "--epochs", "1", "--no-tensorboard"],
                                  ["predict", "--model", "m.pt", "--data", "d.csv"]])
def test_a_full_disk_under_stdout_is_named(tmp_path, argv):
    # `torchlr ... > file` on a full disk said only "No space left on device".
    fit(*chapter_data(num_examples=50), num_epochs=1, save=str(tmp_path / "m.pt"),
        feature_names=["x1", "x2"], target_name="y", device="cpu")
    (tmp_path / "d.csv").write_text("x1,x2\n" + "1,2\n" * 5000)  # more than a buffer's worth
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "torchlr", *argv], cwd=tmp_path,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == ("torchlr: error: cannot write to standard output: No space left "
                           "on device\n")


def test_the_readme_synopsis_names_every_option_there_is():
    # A new option left out of the README's synopsis is an option users never hear of.
    readme = (REPO_ROOT / "README.md").read_text()
    synopsis = readme.split("## Command line\n\n```\n", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"--[a-z][a-z-]*", synopsis))
    parser = build_parser()
    options = set()
    for command in parser._subparsers._group_actions[0].choices.values():
        for action in command._actions:
            options.update(o for o in action.option_strings if o.startswith("--"))
    assert named == options - {"--help"}


def test_log_every_sets_how_often_the_losses_are_read_and_nothing_else(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {}
    for every in ("10", "0"):
        logdir = tmp_path / every
        assert main(["train", "--log-every", every, "--logdir", str(logdir), "--device",
                     "cpu"]) == 0
        [run] = logdir.iterdir()
        acc = EventAccumulator(str(run))
        acc.Reload()
        runs[every] = (capsys.readouterr().out, [e.step for e in acc.Scalars("loss/train")])
    assert runs["10"][0] == runs["0"][0]  # the same printed numbers
    assert runs["10"][1] == list(range(10, 301, 10)) and runs["0"][1] == [100, 200, 300]
    assert main(["train", "--log-every", "-1"]) == 2
    assert "--log-every must be an int in [0, 2**63 - 1], got -1" in capsys.readouterr().err
