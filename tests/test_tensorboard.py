"""TensorBoard runs, read back with TensorBoard's own reader and its own server."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import chapter_data, requires_cuda
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

import torchlr
from torchlr.cli import main
from torchlr.preprocess import train_val_split
from torchlr.scratch import linreg, squared_loss
from torchlr.tensorboard import new_run_dir
from torchlr.train import FitConfig

ROOT = Path(__file__).resolve().parents[1]
TRUE_W = (2.0, -3.4)
TRUE_B = 4.2
METRICS = ["loss/epoch", "loss/val", "r2/val", "error/w", "error/b"]
SCALARS = {"loss/train", "loss/epoch", "error/w", "error/b", "grad/norm", "lr",
           "perf/samples_per_sec"}


def read_run(run_dir: str) -> EventAccumulator:
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "histograms": 0,
                                                   "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def hparams_data(acc: EventAccumulator) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
            for tag, content in acc.PluginTagToContent("hparams").items()}


def config_text(acc: EventAccumulator) -> str:
    """The run's one config table, checked to be written once, before the first epoch."""
    (event,) = acc.Tensors("config/text_summary")
    assert event.step == 0
    return event.tensor_proto.string_val[0].decode()


def f32(values) -> list[float]:
    """What a TensorBoard scalar holds: the value rounded to float32."""
    return torch.tensor(values, dtype=torch.float64).float().tolist()


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_run_holds_every_tag_with_the_fit_history(tmp_path, impl):
    X, y = chapter_data()
    result = torchlr.fit(X, y, impl=impl, num_epochs=3, log_every=30, logdir=tmp_path,
                         true_w=torch.tensor(TRUE_W, dtype=torch.float64),
                         true_b=torch.tensor(TRUE_B, dtype=torch.float64))
    run_dir = Path(result.run_dir)
    assert run_dir.parent == tmp_path and os.listdir(tmp_path) == [run_dir.name]
    assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{impl}", run_dir.name)
    # The tensors are kept as plain floats.
    assert result.config.true_w == TRUE_W and result.config.true_b == TRUE_B
    acc = read_run(str(run_dir))
    assert set(acc.Tags()["scalars"]) == SCALARS

    # loss/train: one point per host read (30, 60, 90 and the epoch's tail at 100), the
    # mean of the minibatch losses read there.
    steps, values = scalars(acc, "loss/train")
    bounds = [0, 30, 60, 90, 100]
    assert steps == [e * 100 + s for e in range(3) for s in bounds[1:]]
    chunks = [result.train_losses[e * 100 + a:e * 100 + b].double().mean().item()
              for e in range(3) for a, b in zip(bounds, bounds[1:])]
    assert values == pytest.approx(f32(chunks), rel=1e-6)

    epochs = [1, 2, 3]
    steps, values = scalars(acc, "loss/epoch")
    assert steps == epochs and values == f32(result.losses)

    w_true = torch.tensor(TRUE_W, dtype=torch.float64)
    errors_w = [(w.double() - w_true).norm().item() for w in result.w_history[1:]]
    errors_b = [abs(b.item() - TRUE_B) for b in result.b_history[1:]]
    assert scalars(acc, "error/w") == (epochs, pytest.approx(f32(errors_w), rel=1e-5))
    assert scalars(acc, "error/b") == (epochs, pytest.approx(f32(errors_b), rel=1e-5))
    assert scalars(acc, "lr") == (epochs, f32([0.03] * 3))
    speeds = [1000 / s for s in result.epoch_seconds]
    assert scalars(acc, "perf/samples_per_sec") == (epochs, pytest.approx(f32(speeds), rel=1e-6))

    # grad/norm and grad/w against autograd on the epoch loss at the epoch's parameters.
    grad_norms, grads_w = [], []
    for w, b in zip(result.w_history[1:], result.b_history[1:]):
        w = w.reshape(-1, 1).clone().requires_grad_()
        b = b.reshape(1).clone().requires_grad_()
        squared_loss(linreg(X, w, b), y).mean().backward()
        grad_norms.append(torch.cat([w.grad.reshape(-1), b.grad]).norm().item())
        grads_w.append(w.grad.reshape(-1))
    assert scalars(acc, "grad/norm") == (epochs, pytest.approx(f32(grad_norms), rel=1e-3))

    for tag, history in (("params/w", list(result.w_history[1:])), ("grad/w", grads_w)):
        events = acc.Histograms(tag)
        assert [e.step for e in events] == epochs
        for event, values in zip(events, history):
            assert event.histogram_value.num == len(values)
            assert event.histogram_value.min == pytest.approx(values.min().item(), rel=1e-4)
            assert event.histogram_value.max == pytest.approx(values.max().item(), rel=1e-4)

    text = config_text(acc)
    for option in fields(FitConfig):
        assert f"| {option.name} |" in text
    assert f"| impl | `{impl}` |" in text and "| num_examples | `1000` |" in text

    (image,) = acc.Images("plot/fit")
    assert image.step == 3 and image.width > 100 and image.height > 100
    assert image.encoded_image_string.startswith(b"\x89PNG")
    assert image.encoded_image_string[25] == 2  # the IHDR's colour type: RGB, no alpha channel

    # The hyperparameters live in the run's own event file: no sibling or child run.
    assert [p.is_file() for p in run_dir.iterdir()] == [True]
    data = hparams_data(acc)
    assert set(data) == {"_hparams_/experiment", "_hparams_/session_start_info",
                         "_hparams_/session_end_info"}
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    assert {k: getattr(v, v.WhichOneof("kind")) for k, v in start.items()} == {
        "impl": impl, "lr": 0.03, "batch_size": 10, "num_epochs": 3, "seed": 0, "device": "cpu",
        "num_examples": 1000, "train_examples": 1000, "gradient": "autograd",
        "permutation": "randperm"}
    metrics = data["_hparams_/experiment"].experiment.metric_infos
    assert [m.name.tag for m in metrics] == METRICS
    end = data["_hparams_/session_end_info"].session_end_info
    assert end.status == api_pb2.Status.Value("STATUS_SUCCESS")


def test_scaled_run_reports_errors_and_w_in_original_units(tmp_path):
    # Columns far from mean 0 and std 1, so scaled and original parameters differ a lot.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 2, generator=g) * torch.tensor([5.0, 0.1]) + torch.tensor([100.0, -3.0])
    y = X @ torch.tensor(TRUE_W) + TRUE_B + 0.01 * torch.randn(2000, generator=g)
    result = torchlr.fit(X, y, standardize=True, standardize_target=True, logdir=tmp_path,
                         true_w=TRUE_W, true_b=TRUE_B)
    acc = read_run(result.run_dir)
    w_true = torch.tensor(TRUE_W, dtype=torch.float64)
    errors_w = [(w.double() - w_true).norm().item() for w in result.w_history[1:]]
    errors_b = [abs(b.item() - TRUE_B) for b in result.b_history[1:]]
    assert scalars(acc, "error/w")[1] == pytest.approx(f32(errors_w), rel=1e-5)
    assert scalars(acc, "error/b")[1] == pytest.approx(f32(errors_b), rel=1e-4)
    assert errors_w[-1] < 0.05  # the fit found the truth: the scaled w is some 30 away
    for event, w in zip(acc.Histograms("params/w"), result.w_history[1:]):
        assert event.histogram_value.max == pytest.approx(w.max().item(), rel=1e-5)


def test_runs_of_every_kind_declare_the_same_hparams_metrics(tmp_path):
    # TensorBoard's HParams dashboard takes the metric list of one run (the first it finds)
    # for the whole folder: a validation run's list hid the chapter run's error/w and error/b.
    X, y = chapter_data(num_examples=200)
    torchlr.fit(X, y, num_epochs=1, logdir=tmp_path, true_w=TRUE_W, true_b=TRUE_B)
    torchlr.fit(X, y, num_epochs=1, logdir=tmp_path, val_fraction=0.2)
    for run in os.listdir(tmp_path):
        acc = read_run(str(tmp_path / run))
        metrics = hparams_data(acc)["_hparams_/experiment"].experiment.metric_infos
        assert [m.name.tag for m in metrics] == METRICS


def test_a_validation_run_counts_all_its_rows_and_its_training_rows(tmp_path):
    # num_examples was the training rows alone: 800 for a run of --num-examples 1000.
    X, y = chapter_data(num_examples=1000)
    result = torchlr.fit(X, y, num_epochs=1, logdir=tmp_path, val_fraction=0.2)
    acc = read_run(result.run_dir)
    start = hparams_data(acc)["_hparams_/session_start_info"].session_start_info.hparams
    assert start["num_examples"].number_value == 1000
    assert start["train_examples"].number_value == 800
    text = config_text(acc)
    assert "| num_examples | `1000` |" in text and "| train_examples | `800` |" in text


def test_scaled_target_losses_are_logged_in_the_targets_units(tmp_path):
    # With standardize_target the model trains on y / std(y); loss/epoch, loss/val and
    # loss/train were in those units, 1 / std(y)² of the target's own.
    X, y = chapter_data(num_examples=500)
    y = 50.0 * y + 300.0
    result = torchlr.fit(X, y, num_epochs=2, standardize=True, standardize_target=True,
                         val_fraction=0.2, logdir=tmp_path, log_every=10)
    acc = read_run(result.run_dir)
    train, val = train_val_split(len(X), 0.2, 0)
    on_train = torchlr.evaluate(X[train], y[train], result.w, result.b)
    on_val = torchlr.evaluate(X[val], y[val], result.w, result.b)
    assert scalars(acc, "loss/epoch")[1][-1] == pytest.approx(float(on_train), rel=1e-3)
    assert scalars(acc, "loss/val")[1][-1] == pytest.approx(float(on_val), rel=1e-3)
    # The minibatch losses of the last interval are of the last epoch's size, not 1/2500 of it.
    assert 0.2 < scalars(acc, "loss/train")[1][-1] / float(on_train) < 5
    # And TensorBoard's float32 holds the very numbers the fit returns (and the CLI prints):
    # scaled back in float64, they were 4e-8 apart, a last printed digit apart.
    assert scalars(acc, "loss/epoch")[1] == result.losses
    assert scalars(acc, "loss/val")[1] == result.val_losses


def test_the_fit_image_is_at_the_last_epoch_that_ran(tmp_path):
    X, y = chapter_data(num_examples=300)
    result = torchlr.fit(X, y, num_epochs=30, lr=0.3, val_fraction=0.2, early_stopping=1,
                         logdir=tmp_path)
    assert len(result.losses) < 30  # stopped early
    (image,) = read_run(result.run_dir).Images("plot/fit")
    assert image.step == len(result.losses)


def test_the_fit_image_keeps_at_most_figure_points(monkeypatch):
    from torchlr import tensorboard

    kept, columns = [], []
    monkeypatch.setattr("torchlr.plots.scatter", lambda X, y, **kw: kept.append(len(X))
                        or columns.append(kw["column"]) or plt_figure())
    X, y = chapter_data(num_examples=2 * tensorboard.FIGURE_POINTS - 1)
    tensorboard.fit_figure(X, y, torch.zeros(2), 0.0)
    assert kept == [tensorboard.FIGURE_POINTS]  # a stride of 1 kept all 3999
    for n in (10, tensorboard.FIGURE_POINTS):  # up to FIGURE_POINTS rows, every one is drawn
        tensorboard.fit_figure(*chapter_data(num_examples=n), torch.zeros(2), 0.0)
    assert kept[1:] == [10, tensorboard.FIGURE_POINTS]
    # The chapter's figure: the second feature against the labels (the only one, if one).
    for d in (1, 3):
        tensorboard.fit_figure(torch.randn(5, d), torch.randn(5, 1), torch.zeros(d), 0.0)
    assert columns == [1, 1, 1, 0, 1]


@pytest.mark.parametrize("standardize", [False, True])
def test_the_fit_image_draws_the_fitted_line_in_the_units_of_its_data(tmp_path, monkeypatch,
                                                                      standardize):
    # With standardize the figure shows the data as the model saw it, so its line must be the
    # model's own scaled parameters; without, the result's w and b over the data given.
    import numpy as np

    from torchlr import tensorboard

    drawn = []
    monkeypatch.setattr(tensorboard, "fit_figure", lambda *args: drawn.append(args)
                        or np.zeros((8, 8, 3), np.uint8))
    X, y = chapter_data(num_examples=200)
    result = torchlr.fit(X, y, standardize=standardize, logdir=tmp_path)
    (features, _, w, b), = drawn
    if standardize:
        assert not torch.equal(result.scaled_w, result.w)
        assert torch.equal(w, result.scaled_w) and b == result.scaled_b
        torch.testing.assert_close(features, result.scaling.features(X))
    else:
        assert torch.equal(w, result.w) and b == result.b
        assert torch.equal(features, X)


def plt_figure():
    from matplotlib.figure import Figure

    return Figure()


def test_runs_started_in_the_same_second_get_distinct_folders(tmp_path):
    now = time.mktime((2026, 3, 1, 9, 5, 7, 0, 0, -1))
    made = [new_run_dir(tmp_path, "scratch", now=now) for _ in range(3)]
    made.append(new_run_dir(tmp_path, "scratch", "demo", now=now))
    assert [Path(p).name for p in made] == [
        "20260301-090507-scratch", "20260301-090507-scratch-2", "20260301-090507-scratch-3",
        "20260301-090507-scratch-demo",
    ]
    assert all(Path(p).is_dir() for p in made)


def test_two_fits_in_a_row_write_two_runs(tmp_path):
    X, y = chapter_data(num_examples=200)
    first = torchlr.fit(X, y, num_epochs=1, logdir=tmp_path, run_name="a")
    second = torchlr.fit(X, y, num_epochs=1, logdir=tmp_path, run_name="a")
    assert first.run_dir != second.run_dir
    assert sorted(os.listdir(tmp_path)) == sorted(
        [Path(first.run_dir).name, Path(second.run_dir).name])
    assert re.fullmatch(r"\d{8}-\d{6}-scratch-a(-2)?", Path(second.run_dir).name)


def test_a_refused_resume_leaves_no_run(tmp_path):
    X, y = chapter_data(num_examples=200)
    path = tmp_path / "run.pt"
    torchlr.fit(X, y, num_epochs=2, save=str(path))
    logdir = tmp_path / "runs"
    with pytest.raises(ValueError, match="ask for at least 2"):
        torchlr.fit(X, y, num_epochs=1, resume=str(path), logdir=logdir)
    with pytest.raises(ValueError, match="not the data it trained on"):
        torchlr.fit(X.flip(0), y.flip(0), num_epochs=3, resume=str(path), logdir=logdir)
    assert not logdir.exists()


def test_a_resume_with_no_epoch_left_starts_no_run(tmp_path, capsys):
    X, y = chapter_data(num_examples=200)
    path = tmp_path / "run.pt"
    saved = torchlr.fit(X, y, num_epochs=2, save=str(path))
    logdir = tmp_path / "runs"
    again = torchlr.fit(X, y, num_epochs=2, resume=str(path), logdir=logdir)
    assert again.run_dir is None and not logdir.exists()
    assert again.losses == saved.losses and torch.equal(again.w, saved.w)  # the saved run's
    cli_path = str(tmp_path / "cli.pt")
    assert main(["train", "--epochs", "2", "--save", cli_path, "--logdir", str(tmp_path / "a"),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "--epochs", "2", "--resume", cli_path, "--logdir", str(logdir)]) == 0
    assert "TensorBoard run" not in capsys.readouterr().err and not logdir.exists()
    # One epoch left: a run of that epoch.
    more = torchlr.fit(X, y, num_epochs=3, resume=str(path), logdir=logdir)
    assert more.run_dir is not None and os.listdir(logdir) == [os.path.basename(more.run_dir)]


def test_an_error_while_a_run_opens_is_the_error_raised(tmp_path, monkeypatch):
    # Between the SummaryWriter and hparams() there is no session-end summary yet: closing
    # the run then raised AttributeError in place of the error itself.
    import torch.utils.tensorboard.summary as summary

    def broken(*args, **kwargs):
        raise RuntimeError("hparams broke")

    monkeypatch.setattr(summary, "hparams", broken)
    X, y = chapter_data(num_examples=100)
    with pytest.raises(RuntimeError, match="hparams broke") as info:
        torchlr.fit(X, y, num_epochs=1, logdir=tmp_path)
    # What was written is kept: the config table TensorBoard shows.
    assert "config/text_summary" in read_run(info.value.run_dir).Tags()["tensors"]


def test_divergence_closes_the_run_and_says_where_it_is(tmp_path):
    X, y = chapter_data(num_examples=200)
    with pytest.raises(torchlr.DivergenceError) as info:
        torchlr.fit(X, y, lr=100.0, log_every=5, logdir=tmp_path)
    run_dir = info.value.run_dir
    assert os.listdir(tmp_path) == [Path(run_dir).name]
    acc = read_run(run_dir)
    steps, values = scalars(acc, "loss/train")
    assert steps == list(range(5, 5 * len(steps) + 1, 5))
    assert not math.isfinite(values[-1]) and all(math.isfinite(v) for v in values[:-1])
    assert "loss/epoch" not in acc.Tags()["scalars"]
    end = hparams_data(acc)["_hparams_/session_end_info"].session_end_info
    assert end.status == api_pb2.Status.Value("STATUS_FAILURE")


def test_interrupt_in_the_first_epoch_keeps_loss_train(tmp_path):
    X, y = chapter_data()

    on_disk = []

    def interrupt(progress):
        # Still inside the fit, the writer open: the point must already be on disk.
        (run_dir,) = tmp_path.iterdir()
        on_disk.append(scalars(read_run(str(run_dir)), "loss/train"))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        torchlr.fit(X, y, log_every=20, logdir=tmp_path, on_progress=interrupt)
    acc = read_run(info.value.run_dir)
    assert scalars(acc, "loss/train")[0] == [20]
    assert on_disk == [scalars(acc, "loss/train")]
    assert "loss/epoch" not in acc.Tags()["scalars"]


def test_every_minibatch_loss_is_a_point_with_log_every_1(tmp_path):
    # Chunks of one loss each: none may be dropped, and each lands at its own step.
    X, y = chapter_data(num_examples=35)  # 4 steps an epoch, the last of 5 rows
    result = torchlr.fit(X, y, num_epochs=2, log_every=1, logdir=tmp_path)
    steps, values = scalars(read_run(result.run_dir), "loss/train")
    assert steps == list(range(1, 9))
    assert values == pytest.approx(result.train_losses.tolist(), rel=1e-6)


def test_samples_per_sec_counts_only_the_rows_trained_with_drop_last(tmp_path):
    # 95 rows in batches of 10 with drop_last: 9 steps of 10 rows each epoch, so 90 samples;
    # the 5 rows of the dropped tail are never trained on and must not count.
    X, y = chapter_data(num_examples=95)
    result = torchlr.fit(X, y, num_epochs=3, batch_size=10, drop_last=True, logdir=tmp_path,
                         device="cpu")
    assert result.train_losses.shape == (27,)
    speeds = [90 / s for s in result.epoch_seconds]
    steps, values = scalars(read_run(result.run_dir), "perf/samples_per_sec")
    assert steps == [1, 2, 3]
    assert values == pytest.approx(f32(speeds), rel=1e-6)  # 95 rows would be 5.6% more


def test_without_logdir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    X, y = chapter_data(num_examples=100)
    assert torchlr.fit(X, y, num_epochs=1, true_w=TRUE_W, true_b=TRUE_B).run_dir is None
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("options, message", [
    ({"run_name": "a/b"}, "run_name must be a non-empty folder name without '/' or NUL, "
                          "got 'a/b'"),
    ({"run_name": "a\0b"}, "without '/' or NUL, got 'a\\x00b'"),
    ({"run_name": "é" * 101}, "run_name must be at most 200 bytes, got 202"),
    ({"run_name": 3}, "run_name must be a str or None, got int: 3"),
    ({"true_w": (1.0, 2.0, 3.0)}, "true_w has 3 values but features has 2 columns"),
    ({"true_w": (1.0, float("nan"))}, "true_w must be a non-empty sequence of finite numbers"),
    ({"true_b": "x"}, "true_b must be a finite number or None, got str: 'x'"),
    ({"true_b": float("inf")}, "true_b must be a finite number or None, got inf"),
    ({"true_b": torch.tensor([1.0, 2.0])}, "true_b must be a finite number or None, got Tensor"),
    ({"true_b": torch.tensor(True)}, "true_b must be a finite number or None, got Tensor"),
    ({"logdir": 5}, "logdir must be a path or None, got int: 5"),
])
def test_bad_options_are_refused_before_any_folder_exists(tmp_path, options, message):
    X, y = chapter_data(num_examples=100)
    options = {"logdir": tmp_path / "runs", **options}
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        torchlr.fit(X, y, **options)
    assert not (tmp_path / "runs").exists()


def test_a_logdir_that_cannot_be_made_is_refused_before_training(tmp_path):
    X, y = chapter_data(num_examples=100)
    (tmp_path / "a_file").write_text("keep")
    for logdir, message in [(tmp_path / "a_file", "is a file, not a folder"),
                            (tmp_path / "a_file" / "runs", "cannot be written: "
                             f"'{tmp_path / 'a_file'}' is a file, not a folder")]:
        epochs = []
        with pytest.raises(ValueError, match=re.escape(f"logdir='{logdir}' {message}")):
            torchlr.fit(X, y, logdir=logdir, on_progress=epochs.append)
        assert epochs == []
    assert torchlr.fit(X, y, num_epochs=1, logdir=tmp_path / "new" / "runs",
                       run_name="x" * 200).run_dir.endswith("x" * 200)


def test_cli_both_writes_two_sibling_runs_and_no_tensorboard_writes_none(tmp_path, capsys,
                                                                         monkeypatch):
    logdir = tmp_path / "runs"
    assert main(["train", "--impl", "both", "--logdir", str(logdir),
                 "--run-name", "cmp"]) == 0
    # Sorted by what follows the time stamp: the two runs may start in different seconds.
    names = sorted(os.listdir(logdir), key=lambda n: n[16:])
    assert [re.sub(r"^\d{8}-\d{6}-", "", n) for n in names] == ["concise-cmp", "scratch-cmp"]
    captured = capsys.readouterr()
    err = captured.err
    # The printed errors, per implementation: "Error in estimating w [a b]", then b's.
    lines = captured.out.splitlines()
    printed = {impl: [line for line in lines[lines.index(f"== {impl} =="):]
                      if line.startswith("Error in estimating")][:2]
               for impl in ("concise", "scratch")}
    for name in names:
        assert f"TensorBoard run: {logdir / name}" in err
        acc = read_run(str(logdir / name))
        assert set(acc.Tags()["scalars"]) == SCALARS  # the CLI gives the truth
        # error/w and error/b measure what the CLI prints, from the same truth.
        w_line, b_line = printed[name[16:].split("-")[0]]
        w_err = [float(v) for v in w_line.split("[")[1].rstrip("]").split()]
        assert scalars(acc, "error/w")[1][-1] == pytest.approx(math.hypot(*w_err), rel=1e-5)
        assert scalars(acc, "error/b")[1][-1] == pytest.approx(abs(float(b_line.split()[-1])),
                                                               rel=1e-5)
    concise, scratch = [scalars(read_run(str(logdir / n)), "loss/epoch")[1] for n in names]
    # Both train in float32 from the same start and agree in w and b to ~1e-6, so each
    # residual r differs by ~2e-6 (features of order 1) and a loss L = mean(r²/2) by at most
    # sqrt(2L) * 2e-6 (Cauchy-Schwarz): 1.4e-5 relative at L = 0.04, 2.4e-4 at L = 1.4e-4,
    # where an AVX-512 EPYC measured 1.4e-6 and 3.2e-5.
    assert len(concise) == len(scratch) > 0
    for a, b in zip(concise, scratch):
        assert a == pytest.approx(b, abs=2e-6 * math.sqrt(2 * b))

    (tmp_path / "none").mkdir()
    monkeypatch.chdir(tmp_path / "none")  # where the default --logdir runs would go
    assert main(["train", "--epochs", "1", "--no-tensorboard"]) == 0
    assert list((tmp_path / "none").iterdir()) == []
    assert "TensorBoard" not in capsys.readouterr().err


def event_files(logdir: Path) -> list[Path]:
    return sorted(logdir.glob("*/events.out.tfevents.*"))


@pytest.mark.parametrize("signum, status, word", [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")])
def test_a_signal_mid_epoch_exits_with_one_line_and_readable_events(tmp_path, signum, status,
                                                                    word):
    # SIGTERM (a scheduler's or `kill`'s) ends the run as Ctrl-C does; it killed it outright,
    # with no line, the session never ended and a temporary file sometimes left behind.
    logdir = tmp_path / "runs"
    # 5 million examples: the first epoch lasts seconds, far longer than the wait below.
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchlr", "train", "--num-examples", "5000000",
         "--epochs", "2", "--logdir", str(logdir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell that starts the suite in the background ignores SIGINT for its children.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 45
        while True:
            files = event_files(logdir)
            if files and "loss/train" in read_run(str(files[0].parent)).Tags()["scalars"]:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no loss/train event in 45 s"
            time.sleep(0.1)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    run_dir = files[0].parent
    assert proc.returncode == status
    assert err == f"torchlr: {word}; the TensorBoard run so far is in {run_dir}\n"
    assert "Traceback" not in out
    acc = read_run(str(run_dir))
    steps, values = scalars(acc, "loss/train")
    assert steps == list(range(50, 50 * len(steps) + 1, 50)) and all(map(math.isfinite, values))
    assert "loss/epoch" not in acc.Tags()["scalars"]  # interrupted inside the first epoch
    end = hparams_data(acc)["_hparams_/session_end_info"].session_end_info
    assert end.status == api_pb2.Status.Value("STATUS_FAILURE")


def test_a_full_disk_under_the_event_file_is_one_line_naming_the_run(tmp_path):
    # Simulated with a file size limit (Python ignores SIGXFSZ: writes fail with EFBIG). The
    # writer thread printed its traceback, and the line named no file.
    resource = pytest.importorskip("resource")
    logdir = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "torchlr", "train", "--num-examples", "20000", "--epochs", "20",
         "--logdir", str(logdir)], cwd=ROOT, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000)))
    (run_dir,) = os.listdir(logdir)
    assert done.returncode == 2
    assert re.fullmatch(rf"torchlr: error: (\[Errno \d+\] )?Cannot write the TensorBoard run "
                        rf"{re.escape(str(logdir / run_dir))}: File too large\n", done.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    # TensorBoard refuses POSTs without these headers (its XSRF guard, then the JSON body).
    headers = {"X-XSRF-Protected": "1", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def test_tensorboard_server_serves_the_fit(tmp_path):
    X, y = chapter_data()
    result = torchlr.fit(X, y, num_epochs=3, logdir=tmp_path)
    run = Path(result.run_dir).name
    port = free_port()
    executable = Path(sys.executable).with_name("tensorboard")
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(executable), "--logdir", str(tmp_path), "--host", "127.0.0.1",
             "--port", str(port), "--reload_interval", "1", "--load_fast", "false"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    query = urllib.parse.urlencode({"run": run, "tag": "loss/epoch"})
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}"
    try:
        deadline = time.monotonic() + 45
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                points = get_json(url)
                if len(points) == 3:
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.25)
        assert get_json(f"http://127.0.0.1:{port}/data/runs") == [run]
        # The HParams dashboard's sessions are the runs themselves, with our tags as metrics.
        groups = get_json(f"http://127.0.0.1:{port}/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_FAILURE"],
            "colParams": [], "startIndex": 0, "sliceSize": 10})["sessionGroups"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert [step for _, step, _ in points] == [1, 2, 3]
    assert [value for _, _, value in points] == f32(result.losses)
    ((session,),) = [group["sessions"] for group in groups]
    assert session["name"] == run and session["status"] == "STATUS_SUCCESS"
    metrics = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
    assert metrics == {"loss/epoch": f32(result.losses)[-1]}
    assert groups[0]["hparams"]["impl"] == "scratch" and groups[0]["hparams"]["lr"] == 0.03


@pytest.mark.cuda
@requires_cuda
def test_a_cuda_run_matches_its_history(tmp_path):
    X, y = chapter_data()
    result = torchlr.fit(X, y, device="cuda", logdir=tmp_path, true_w=TRUE_W, true_b=TRUE_B)
    acc = read_run(result.run_dir)
    assert set(acc.Tags()["scalars"]) == SCALARS
    assert scalars(acc, "loss/epoch") == ([1, 2, 3], f32(result.losses))
    start = hparams_data(acc)["_hparams_/session_start_info"].session_start_info.hparams
    assert start["device"].string_value.startswith("cuda")


@pytest.mark.parametrize("bad", ["2,-3.4", [], [2.0, math.nan], b"ab"])
def test_true_w_must_be_finite_numbers(bad):
    # A string is not read as numbers (nor dropped): it is named.
    with pytest.raises(ValueError, match="true_w must be a non-empty sequence of finite"):
        torchlr.fit(*chapter_data(num_examples=20), num_epochs=1, true_w=bad, device="cpu")


def test_what_was_logged_is_on_disk_before_the_fit_goes_on(tmp_path, monkeypatch):
    # The event writer is a thread: without a flush after each write, a checkpoint could
    # hold an epoch whose loss/epoch was still queued, and a live TensorBoard (or a run
    # killed with SIGKILL) lag behind what was read. A slow disk shows it.
    from tensorboard.summary.writer import record_writer

    import torchlr.run

    real_write = record_writer.RecordWriter.write

    def slow_write(self, data):
        time.sleep(0.02)
        real_write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", slow_write)
    on_disk = {}  # what the run folder holds when the fit reaches each point

    def run_dir():
        (name,) = os.listdir(tmp_path / "tb")
        return str(tmp_path / "tb" / name)

    real_save = torchlr.run.save_checkpoint

    def save_and_look(path, state):
        acc = read_run(run_dir())
        on_disk[("saved", state["epoch"])] = [scalars(acc, t)[0] for t in
                                              ("loss/epoch", "loss/val", "r2/val")]
        real_save(path, state)

    def look(progress):
        if progress.epoch_loss is None:  # a host read inside the epoch
            on_disk[("read", progress.epoch, progress.step)] = scalars(read_run(run_dir()),
                                                                       "loss/train")[0]

    monkeypatch.setattr(torchlr.run, "save_checkpoint", save_and_look)
    X, y = chapter_data(num_examples=500)
    torchlr.fit(X, y, num_epochs=2, log_every=20, val_fraction=0.2, device="cpu",
                logdir=tmp_path / "tb", save=tmp_path / "c.pt", on_progress=look)
    assert on_disk[("saved", 1)] == [[1]] * 3 and on_disk[("saved", 2)] == [[1, 2]] * 3
    assert on_disk[("read", 1, 20)] == [20] and on_disk[("read", 2, 20)][-1] == 60


def test_run_folder_is_stamped_in_local_time(tmp_path, monkeypatch):
    from torchlr.tensorboard import new_run_dir
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    try:
        path = new_run_dir(tmp_path, "scratch", now=0.0)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert os.path.basename(path) == "19691231-190000-scratch"


def test_a_failure_to_close_the_run_does_not_hide_the_fits_own_error(tmp_path, monkeypatch):
    from torchlr import tensorboard

    def full_disk(self, success):
        self._writer = None
        raise OSError(28, "No space left on device")

    def stop(progress):
        raise RuntimeError("the fit's own error")

    monkeypatch.setattr(tensorboard.RunWriter, "_end", full_disk)
    X, y = chapter_data()
    with pytest.raises(RuntimeError, match="the fit's own error") as info:
        torchlr.fit(X, y, num_epochs=2, logdir=tmp_path, on_progress=stop, device="cpu")
    assert info.value.run_dir is not None
