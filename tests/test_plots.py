"""torchlr.plots: the figures hold exactly the data they were given, and pyplot stays empty."""

import io
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.image
import pytest
import torch

matplotlib.use("Agg")  # before pyplot: the suite runs headless
from matplotlib import pyplot as plt  # noqa: E402  (only to check that nothing registers)
from matplotlib.figure import Figure  # noqa: E402

import torchlr  # noqa: E402
from torchlr import cli, plots  # noqa: E402
from torchlr.sweep import SweepPoint, lr_sweep  # noqa: E402

TRUE_W = torch.tensor([2.0, -3.4])
TRUE_B = 4.2


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == []


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    return torchlr.synthetic_data(TRUE_W, TRUE_B, 200, generator=gen)


@pytest.fixture(scope="module")
def runs(data):
    X, y = data
    return [torchlr.fit(X, y, impl=impl, num_epochs=2, device="cpu") for impl in ("scratch",
                                                                                   "concise")]


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_scatter_holds_the_chosen_column_against_the_labels(data):
    X, y = data
    fig = plots.scatter(X, y)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    (points,) = ax.collections
    offsets = torch.as_tensor(points.get_offsets().data)
    torch.testing.assert_close(offsets[:, 0], X[:, 1].double())
    torch.testing.assert_close(offsets[:, 1], y[:, 0].double())
    assert ax.get_xlabel() == "features[:, 1]" and ax.get_ylabel() == "labels"
    assert len(ax.lines) == 0
    assert png_bytes(fig).startswith(b"\x89PNG")


def test_scatter_column_counts_from_either_end(data):
    X, y = data
    (points,) = plots.scatter(X, y, column=-2).axes[0].collections
    torch.testing.assert_close(torch.as_tensor(points.get_offsets().data)[:, 0], X[:, 0].double())
    for bad in (2, -3):
        with pytest.raises(ValueError, match=rf"column must be in \[-2, 2\), got {bad}"):
            plots.scatter(X, y, column=bad)


def test_scatter_line_has_the_weight_as_slope_and_passes_through_the_mean_prediction(data):
    X, y = data
    w, b = torch.tensor([1.5, -2.0]), 0.7
    fig = plots.scatter(X, y, column=0, w=w, b=b)
    (line,) = fig.axes[0].lines
    xs, ys = (torch.as_tensor(v, dtype=torch.float64) for v in line.get_data())
    slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
    assert float(slope) == pytest.approx(1.5)
    assert float(xs[0]) == pytest.approx(float(X[:, 0].min()))
    assert float(xs[1]) == pytest.approx(float(X[:, 0].max()))
    # The mean prediction over the data lies on the line at the mean of the column.
    mean_prediction = float((X.double() @ w.double() + b).mean())
    at_mean = ys[0] + slope * (float(X[:, 0].double().mean()) - xs[0])
    assert float(at_mean) == pytest.approx(mean_prediction, abs=1e-6)


def test_scatter_refuses_a_half_given_or_misshaped_fit(data):
    X, y = data
    with pytest.raises(ValueError, match="needs b"):
        plots.scatter(X, y, w=[1.0, 2.0])
    with pytest.raises(ValueError, match="w has 3 entries but features has 2"):
        plots.scatter(X, y, w=[1.0, 2.0, 3.0], b=0.0)


def test_loss_curves_draws_one_line_per_run_with_its_epoch_losses(runs):
    fig = plots.loss_curves(runs)
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["scratch", "concise"]
    for line, run in zip(ax.lines, runs):
        assert list(line.get_xdata()) == [1, 2]
        assert list(line.get_ydata()) == pytest.approx(run.losses)
    assert ax.get_yscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "loss")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["scratch", "concise"]


def test_loss_curves_takes_a_mapping_of_plain_losses_and_a_reference():
    fig = plots.loss_curves({"a": [4.0, 2.0, 1.0], "b": [3.0]}, reference=0.5, log_scale=False)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["a", "b", "closed form"]
    assert list(ax.lines[0].get_ydata()) == [4.0, 2.0, 1.0]
    assert list(ax.lines[1].get_xdata()) == [1]
    assert list(ax.lines[2].get_ydata()) == [0.5, 0.5]
    assert ax.get_yscale() == "linear"


def test_loss_curves_minibatch_draws_every_step_at_fractional_epochs(runs):
    fig = plots.loss_curves(runs[:1], minibatch=True)
    steps, epochs = fig.axes[0].lines
    assert steps.get_label() == "scratch (minibatch)"
    torch.testing.assert_close(torch.as_tensor(steps.get_ydata()),
                               runs[0].train_losses.double())
    n = len(runs[0].train_losses)
    assert steps.get_xdata()[-1] == pytest.approx(2.0)
    assert steps.get_xdata()[0] == pytest.approx(2.0 / n)
    assert list(epochs.get_ydata()) == pytest.approx(runs[0].losses)


def test_loss_curves_adds_the_validation_curve_of_a_held_out_run(data):
    X, y = data
    run = torchlr.fit(X, y, num_epochs=2, val_fraction=0.25, device="cpu")
    assert len(run.val_losses) == 2
    train, val = plots.loss_curves([run]).axes[0].lines
    assert list(train.get_ydata()) == pytest.approx(run.losses)
    assert val.get_label() == "scratch (validation)"
    assert list(val.get_xdata()) == [1, 2]
    assert list(val.get_ydata()) == pytest.approx(run.val_losses)


def test_loss_curves_names_the_device_when_runs_differ_in_it(runs):
    moved = [runs[0], type(runs[1])(**{**vars(runs[1]), "device": "cuda:0"})]
    labels = [line.get_label() for line in plots.loss_curves(moved).axes[0].lines]
    assert labels == ["scratch (cpu)", "concise (cuda:0)"]


def test_trajectories_plot_each_parameter_history_with_reference_lines(runs):
    w_exact, b_exact = torch.tensor([1.9, -3.3], dtype=torch.float64), 4.1
    fig = plots.trajectories(runs, true_w=TRUE_W, true_b=TRUE_B, exact=(w_exact, b_exact))
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["w[0]", "w[1]", "b"]
    truth = [2.0, -3.4, 4.2]
    exact = [1.9, -3.3, 4.1]
    for j, ax in enumerate(axes):
        run_lines = ax.lines[:2]
        for line, run in zip(run_lines, runs):
            history = run.w_history[:, j] if j < 2 else run.b_history
            assert list(line.get_xdata()) == [0, 1, 2]
            torch.testing.assert_close(torch.as_tensor(line.get_ydata()), history.double())
        truth_line, exact_line = ax.lines[2:]
        assert truth_line.get_ydata()[0] == pytest.approx(truth[j])
        assert exact_line.get_ydata()[0] == pytest.approx(exact[j])
        assert len(ax.lines) == 4


def test_trajectories_needs_fit_results_and_matching_references(runs):
    with pytest.raises(TypeError, match="FitResults"):
        plots.trajectories({"a": [1.0, 2.0]})
    with pytest.raises(ValueError, match="reference w has 3 entries, the runs have 2"):
        plots.trajectories(runs, true_w=[1.0, 2.0, 3.0])
    fig = plots.trajectories(runs[0])
    assert [len(ax.lines) for ax in fig.axes] == [1, 1, 1]


def test_lr_sweep_plot_marks_diverged_runs_on_log_axes(data):
    X, y = data
    points = lr_sweep(X, y, [0.003, 0.1, 50.0], num_epochs=1, device="cpu")  # losses ~9, ~5e-5
    assert [p.diverged for p in points] == [False, False, True]
    fig = plots.lr_sweep(points)
    ax = fig.axes[0]
    finite, crosses = ax.lines
    assert list(finite.get_xdata()) == [0.003, 0.1]
    assert list(finite.get_ydata()) == pytest.approx([p.final_loss for p in points[:2]])
    assert list(crosses.get_xdata()) == [50.0]
    assert crosses.get_label() == "diverged" and crosses.get_marker() == "x"
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("learning rate", "final loss")
    # Every finite point is inside the view, below the row of crosses at 97 % height.
    low, high = ax.get_ylim()
    for p in points[:2]:
        assert low < p.final_loss < high
        height = ax.transLimits.transform(ax.transScale.transform((p.lr, p.final_loss)))[1]
        assert 0 < height < 0.9
    assert png_bytes(fig).startswith(b"\x89PNG")


def test_lr_sweep_plot_takes_a_mapping_with_none_nan_and_inf_as_diverged():
    fig = plots.lr_sweep({0.1: 1e-3, 1.0: None, 2.0: float("nan"), 3.0: float("inf")})
    finite, crosses = fig.axes[0].lines
    assert list(finite.get_xdata()) == [0.1]
    assert list(crosses.get_xdata()) == [1.0, 2.0, 3.0]
    only_bad = plots.lr_sweep([SweepPoint(1.0, error="diverged")])
    assert [line.get_label() for line in only_bad.axes[0].lines] == ["diverged"]


def test_lr_sweep_plot_draws_no_cross_for_a_run_without_epochs(data):
    # Its final loss is NaN, yet it did not diverge: it was drawn as a "diverged" cross.
    X, y = data
    points = lr_sweep(X, y, [0.03, 50.0], num_epochs=0, device="cpu")
    assert [p.diverged for p in points] == [False, False]
    assert len(plots.lr_sweep(points).axes[0].lines) == 0
    mixed = lr_sweep(X, y, [0.03, 50.0], num_epochs=1, device="cpu") + points
    finite, crosses = plots.lr_sweep(mixed).axes[0].lines
    assert list(finite.get_xdata()) == [0.03] and list(crosses.get_xdata()) == [50.0]


def test_check_image_path_refuses_unknown_formats_and_unwritable_paths(tmp_path):
    assert plots.check_image_path(tmp_path / "a.png") == tmp_path / "a.png"
    # Folders that can be made are made when the figure is saved, as for a checkpoint.
    assert plots.check_image_path(tmp_path / "new" / "a.png") == tmp_path / "new" / "a.png"
    with pytest.raises(ValueError, match="unknown image format 'txt'"):
        plots.check_image_path(tmp_path / "a.txt")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="file' is a file, not a folder"):
        plots.check_image_path(tmp_path / "file" / "a.png")
    read_only = tmp_path / "old.png"
    read_only.write_bytes(b"kept")
    read_only.chmod(0o444)  # refused even for root, whom os.access lets write anything
    with pytest.raises(ValueError, match="old.png': the file is read-only"):
        plots.check_image_path(read_only)


def test_a_folder_named_like_an_image_is_refused_before_training(tmp_path, capsys):
    folder = tmp_path / "loss.png"
    folder.mkdir()
    with pytest.raises(ValueError, match="loss.png': it is a folder; give a file path"):
        plots.check_image_path(folder)
    argv = ["train", "--epochs", "1", "--plot", str(folder), "--no-tensorboard"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""  # refused up front: no epoch ran
    assert err == f"torchlr: error: Cannot save a plot to {str(folder)!r}: it is a folder; " \
                  f"give a file path\n"


def test_a_plot_path_ending_in_a_slash_is_a_folder_as_for_save(tmp_path, capsys):
    # Path() drops the slash: d/x.png/ was written as the file d/x.png.
    path = f"{tmp_path}/d/x.png/"
    argv = ["train", "--epochs", "1", "--plot", path, "--no-tensorboard"]
    assert cli.main(argv) == 2
    assert capsys.readouterr() == ("", f"torchlr: error: Cannot save a plot to {path!r}: it is "
                                       f"a folder; give a file path\n")
    assert not (tmp_path / "d").exists()


def test_cli_plot_saves_both_runs_on_one_figure(tmp_path, monkeypatch, capsys):
    drawn = []
    real = plots.loss_curves

    def spy(results, **kwargs):
        drawn.append(results)
        fig = real(results, **kwargs)
        drawn.append(fig)
        return fig

    monkeypatch.setattr(plots, "loss_curves", spy)
    target = tmp_path / "loss.png"
    argv = ["train", "--impl", "both", "--epochs", "2", "--plot", str(target), "--no-tensorboard"]
    assert cli.main(argv) == 0
    assert target.read_bytes().startswith(b"\x89PNG")
    out, err = capsys.readouterr()
    assert err == f"Saved the loss curves to {target}\n"
    results, fig = drawn
    assert [r.impl for r in results] == ["scratch", "concise"]
    lines = fig.axes[0].lines
    assert [line.get_label() for line in lines] == ["scratch", "concise"]
    # The plotted numbers are the ones the command printed.
    printed = [float(line.split()[-1]) for line in out.splitlines()
               if line.startswith("epoch ")]
    plotted = [float(v) for line in lines for v in line.get_ydata()]
    assert plotted == pytest.approx(printed, abs=5e-7)  # printed with 6 decimals


def test_cli_plot_refuses_a_bad_path_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv = ["train", "--plot", str(tmp_path / "file" / "x.png"), "--logdir", str(tmp_path)]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("torchlr: error: Cannot save a plot to") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no run folder was made


def test_cli_plot_makes_its_folder_and_writes_a_whole_png(tmp_path, capsys):
    target = tmp_path / "new" / "deeper" / "loss.png"
    argv = ["train", "--epochs", "1", "--plot", str(target), "--no-tensorboard", "--quiet"]
    assert cli.main(argv) == 0
    height, width, _ = matplotlib.image.imread(str(target)).shape  # a whole, readable PNG
    assert height > 100 and width > 100
    assert sorted(p.name for p in target.parent.iterdir()) == ["loss.png"]  # no temporary left


def test_cli_plot_with_no_epoch_is_refused_before_training(tmp_path, capsys):
    # --epochs 0 wrote a figure of empty axes (ticks from -0.045 to 0.045) and said it saved
    # the loss curves.
    target = tmp_path / "x.png"
    argv = ["train", "--epochs", "0", "--plot", str(target), "--logdir", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("torchlr: error: --plot draws one point per epoch; with --epochs 0 there "
                   "is nothing to draw\n")
    assert list(tmp_path.iterdir()) == []


def test_readme_figures_script_draws_its_three_figures(tmp_path):
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "docs" / "make_figures.py"
    spec = importlib.util.spec_from_file_location("make_figures", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "a-file").write_text("")
    assert module.main([str(tmp_path / "a-file")]) == 2  # said on stderr, no traceback
    out = tmp_path / "figures" / "new"  # made when it is not there yet
    assert module.main([str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["lr_sweep.png", "scatter.png", "trajectories.png"]
    for name in written:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
        # The README shows the committed copies of these figures.
        assert (script.parent / name).is_file()


def test_figures_show_as_png_in_jupyter_without_pyplot(runs):
    for fig in (plots.loss_curves(runs), plots.trajectories(runs),
                plots.lr_sweep({0.1: 1.0}), plots.scatter(torch.ones(3, 2), torch.ones(3))):
        assert isinstance(fig, plots.NotebookFigure) and isinstance(fig, Figure)
        # What IPython shows for a cell's last value when no pyplot formatter is registered.
        png = fig._repr_png_()
        assert png.startswith(b"\x89PNG")
        assert png == png_bytes(fig)


def test_plots_never_import_pyplot():
    code = (
        "import sys, torch\n"
        "import torchlr\n"
        "from torchlr import plots\n"
        "X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 50,"
        " generator=torch.Generator().manual_seed(0))\n"
        "run = torchlr.fit(X, y, num_epochs=1, device='cpu')\n"
        "for fig in (plots.scatter(X, y, w=run.w, b=run.b), plots.loss_curves([run]),\n"
        "            plots.trajectories([run]), plots.lr_sweep({0.03: 1e-4, 9.0: None})):\n"
        "    fig._repr_png_()\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_scatter_picks_the_only_column_and_refuses_1d_features():
    X, y = torch.randn(30, 1), torch.randn(30)
    fig = plots.scatter(X, y)
    (collection,) = fig.axes[0].collections
    assert collection.get_offsets()[:, 0].tolist() == pytest.approx(X[:, 0].tolist())
    with pytest.raises(ValueError, match="2-D"):
        plots.scatter(X[:, 0], y)


def test_coinciding_runs_stay_visible_first_filled_then_hollow_markers():
    fig = plots.loss_curves({"a": [1.0, 0.5], "b": [1.0, 0.5], "c": [1.0, 0.5]})
    lines = fig.axes[0].get_lines()
    assert [line.get_fillstyle() for line in lines] == ["full", "none", "none"]
    assert [line.get_linestyle() for line in lines] == ["-", "--", ":"]
    assert [line.get_marker() for line in lines] == ["o", "s", "^"]
