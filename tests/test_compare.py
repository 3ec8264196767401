"""torchlr.compare: the per-epoch gap, the summary table and the timer."""

import dataclasses
import time

import pytest
import torch

import torchlr
from torchlr import compare
from torchlr.train import evaluate

TRUE_W = torch.tensor([2.0, -3.4])
TRUE_B = 4.2


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(1)
    return torchlr.synthetic_data(TRUE_W, TRUE_B, 300, generator=gen)


@pytest.fixture(scope="module")
def runs(data):
    X, y = data
    return {impl: torchlr.fit(X, y, impl=impl, num_epochs=2, device="cpu")
            for impl in ("scratch", "concise")}


def test_gap_between_the_implementations_is_float_noise_at_every_epoch(runs):
    gap = compare.max_abs_difference(runs["scratch"], runs["concise"])
    assert gap.shape == (3,) and gap.dtype == torch.float64
    assert gap[0] == 0  # same seed: the same initial parameters
    assert float(gap.max()) < 1e-5


def test_gap_finds_the_epoch_and_parameter_that_differ(runs):
    a = runs["scratch"]
    w_hist, b_hist = a.w_history.clone(), a.b_history.clone()
    w_hist[1, 1] += 0.5
    b_hist[2] -= 0.25
    b = dataclasses.replace(a, w_history=w_hist, b_history=b_hist)
    gap = compare.max_abs_difference(a, b)
    assert gap.tolist() == pytest.approx([0.0, 0.5, 0.25])
    short = dataclasses.replace(a, w_history=w_hist[:2], b_history=b_hist[:2])
    with pytest.raises(ValueError, match="different histories"):
        compare.max_abs_difference(a, short)


def test_mean_loss_is_the_chapter_loss(data, runs):
    X, y = data
    run = runs["scratch"]
    expected = float(evaluate(X, y, run.w.reshape(-1, 1), torch.tensor([run.b])))
    assert compare.mean_loss(X, y, run.w, run.b) == pytest.approx(expected, rel=1e-5)
    # All three go through squared_loss: the chapter's formula in float64 is the reference.
    r = X.double() @ run.w.double() + run.b - y.double().reshape(-1)
    assert compare.mean_loss(X, y, run.w, run.b) == pytest.approx(float((r**2 / 2).mean()),
                                                                  rel=1e-4)
    assert compare.mean_loss(X, y, run.w, run.b) == pytest.approx(run.losses[-1], rel=1e-5)


def test_summary_rows_against_direct_computation(data, runs):
    X, y = data
    (w_exact, b_exact), seconds = compare.timed(torchlr.least_squares, X, y)
    rows = compare.summary(X, y, runs, true_w=TRUE_W, true_b=TRUE_B, exact=(w_exact, b_exact),
                           exact_seconds=seconds)
    assert [r["run"] for r in rows] == ["scratch", "concise", "closed form"]
    X64, y64 = X.double(), y.double().reshape(-1)

    def chapter_loss(w, b):  # mean (X w + b - y)^2 / 2, in float64 with raw ops
        return float(((X64 @ torch.as_tensor(w).double() + b - y64) ** 2 / 2).mean())

    for row, run in zip(rows, runs.values()):
        assert row["device"] == "cpu"
        # The run's own final parameters: the loss it printed last, not the truth's or the
        # closed form's (after two epochs on 300 rows these differ by far more than 1e-5).
        assert row["loss"] == pytest.approx(chapter_loss(run.w, run.b), rel=1e-12, abs=0)
        assert row["loss"] == pytest.approx(run.losses[-1], rel=1e-5, abs=0)
        assert row["max |w - w_true|"] == pytest.approx(float((run.w - TRUE_W).abs().max()),
                                                        rel=1e-6)
        assert row["|b - b_true|"] == pytest.approx(abs(run.b - TRUE_B), rel=1e-6)
        assert row["max |w - w_exact|"] == pytest.approx(
            float((run.w.double() - w_exact).abs().max()), rel=1e-12, abs=0)
        # A distance: the run's b lies on either side of the closed form's.
        assert row["|b - b_exact|"] == pytest.approx(abs(run.b - b_exact), rel=1e-12, abs=0)
        assert row["|b - b_exact|"] > 0
        assert row["seconds"] == sum(run.epoch_seconds)
    closed = rows[-1]
    assert closed["loss"] == pytest.approx(chapter_loss(w_exact, b_exact), rel=1e-12, abs=0)
    assert closed["max |w - w_exact|"] == 0 and closed["|b - b_exact|"] == 0
    assert closed["seconds"] == seconds
    # The closed form minimizes the loss: no SGD run can beat it.
    assert closed["loss"] <= min(r["loss"] for r in rows[:2])
    without = compare.summary(X, y, runs, true_w=TRUE_W, true_b=TRUE_B)
    assert len(without) == 2 and "max |w - w_exact|" not in without[0]


def test_markdown_table_layout():
    text = compare.markdown_table([{"run": "a", "loss": 1.23456e-5, "seconds": None},
                                   {"run": "b", "loss": 2.0, "seconds": 0.5}])
    assert text.splitlines() == [
        "| run | loss | seconds |",
        "|---|---|---|",
        "| a | 1.235e-05 | - |",
        "| b | 2 | 0.5 |",
    ]
    assert compare.markdown_table([]) == ""
    escaped = compare.markdown_table([{"|w|": "a|b"}])
    assert escaped.splitlines() == ["| \\|w\\| |", "|---|", "| a\\|b |"]


def test_timed_returns_the_value_and_the_elapsed_time():
    value, seconds = compare.timed(lambda x, *, y: (time.sleep(0.02), x + y)[1], 1, y=2)
    assert value == 3
    assert 0.02 <= seconds < 5


def test_markdown_table_rounds_numpy_floats_and_keeps_rows_on_one_line():
    np = pytest.importorskip("numpy")
    table = compare.markdown_table([{"a": np.float32(1.23456789), "b": "two\nlines"}])
    assert table.splitlines()[-1] == "| 1.235 | two lines |"
