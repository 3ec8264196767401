"""Whole-data losses of a close fit hold their digits: float64 where float32 would not."""

import numpy as np
import pytest
import torch
from conftest import requires_cuda

import torchlr
from torchlr import summed_loss, train
from torchlr.holdout import Holdout
from torchlr.preprocess import train_val_split
from torchlr.stream import BlockStream


def exact_mean(X, y, w, b):
    """The loss of float32 data and parameters in float64 arithmetic: the reference."""
    X, y = torch.as_tensor(X).double(), torch.as_tensor(y).double().reshape(-1, 1)
    w = torch.as_tensor(w).double().reshape(-1, 1)
    return float(((X @ w + float(b) - y) ** 2 / 2).mean())


@pytest.fixture
def close_fit():
    """Integer features and a noise-free target: SGD fits it to float32's last bits."""
    rng = np.random.default_rng(0)
    X = rng.integers(-3, 4, size=(200, 2)).astype(np.float32)
    y = (2 * X[:, 0] - 3 * X[:, 1] + 1).astype(np.float32)
    return X, y


@pytest.fixture(params=["cpu", "one copy"])
def epoch_end(request, monkeypatch):
    """The epoch loss as the CPU checks it (in mean_loss), and as a GPU does (its limit
    brought over with the loss, w and b in one copy), run here on the CPU's tensors."""
    if request.param == "one copy":
        monkeypatch.setattr(train, "_refined_by_mean_loss", lambda device: False)
    return request.param


@pytest.mark.parametrize("epochs", [9, 12, 30])
def test_a_close_fit_reports_its_loss_to_three_digits(close_fit, epochs, epoch_end):
    X, y = close_fit
    result = torchlr.fit(X, y, num_epochs=epochs, lr=0.05)
    exact = exact_mean(X, y, result.w, result.b)
    M = float(np.mean(y.astype(np.float64) ** 2)) + result.b ** 2  # targets near 5
    assert exact < 1e-9 * M  # far below float32's rounding of the predictions
    # The float32 sum read 2.79e-11 for 2.72e-11 (12 epochs) and 7.9e-14 for 1.14e-13 (30);
    # at 9 epochs, 2e-10 of the targets' mean square over 200 rows, 1.6e-3 off.
    float32_mean = float(((torch.tensor(X) @ result.w + result.b - torch.tensor(y)) ** 2 / 2)
                         .mean())
    assert abs(float32_mean - exact) > 1e-3 * exact  # the case float32 gets wrong
    for loss in (result.losses[-1], float(torchlr.evaluate(X, y, result.w, result.b))):
        assert loss == pytest.approx(exact, rel=1e-6, abs=0)


def test_pieces_and_streams_and_holdouts_take_the_float64_sum(close_fit, monkeypatch,
                                                               tmp_path):
    X, y = close_fit
    result = torchlr.fit(X, y, num_epochs=12, lr=0.05)
    w, b = result.w.reshape(-1, 1), torch.tensor([result.b])
    exact = exact_mean(X, y, w, b)
    Xt, yt = torch.tensor(X), torch.tensor(y).reshape(-1, 1)
    monkeypatch.setattr(train, "EVAL_ROWS", 64)  # the CPU's piecewise path, 4 pieces
    monkeypatch.setattr(summed_loss, "FLOAT64_BYTES", 7 * 2 * 8)  # float64 pieces of 7 rows
    assert float(train.mean_loss(Xt, yt, w, b)) == pytest.approx(exact, rel=1e-6, abs=0)
    assert float(train.mean_loss(Xt, yt, w, b, worker_thread=True)) == pytest.approx(
        exact, rel=1e-6, abs=0)
    np.save(tmp_path / "t.npy", np.c_[X, y])
    stream = BlockStream(tmp_path / "t.npy", block_rows=30)
    assert float(stream.evaluate(w, b)) == pytest.approx(exact, rel=1e-6, abs=0)
    val_loss, _ = Holdout(Xt, yt).metrics(w, b)
    assert val_loss == pytest.approx(exact, rel=1e-6, abs=0)


def test_noisy_data_never_pay_for_float64(monkeypatch, epoch_end):
    # The chapter's data: its loss is far above float32's rounding, so the float32 sum stands.
    def refused(*args):
        raise AssertionError("a noisy fit's loss was summed again in float64")

    g = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 1000, generator=g)
    monkeypatch.setattr(summed_loss, "float64_sum", refused)
    for scaled in (False, True):
        result = torchlr.fit(X, y, num_epochs=3, standardize=scaled, standardize_target=scaled,
                             val_fraction=0.2)
        assert result.losses[-1] < 1e-4 and result.val_losses[-1] < 1e-4
    # Nor many rows of a target far from 0 whose noise is small beside it: 0.1 on 1000, a
    # loss of 5e-9 of its mean square, where 100,000 rows average float32's rounding out
    # far below the printed digits (on 1,000 rows it would reach them: the next test).
    X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 100_000, generator=g)
    y_far = y.reshape(-1) + 1000 - 4.2 + 0.1 * torch.randn(len(y), generator=g)
    result = torchlr.fit(X, y_far, num_epochs=3, lr=0.1, standardize=True, batch_size=1000)
    assert 4e-3 < result.losses[-1] < 6e-3


def printed_error(loss, exact):
    """How far a loss is from the exact one, less float32's own rounding of it (twice: the
    mean, then its product with a scaled target's variance), in units of what the CLI
    prints of it: the last of six decimals, or 1e-7 of it from 10 up (seven digits)."""
    return max(0.0, abs(loss - exact) - 2 ** -23 * exact) / max(1e-6, 1e-7 * exact)


def assert_printed_digits_hold(rows, noise, scale_target, device="cpu"):
    """A fit on targets near 12,000 from columns near 1e4, whose training and validation
    losses must hold the digits the CLI prints of them."""
    g = torch.Generator().manual_seed(rows)
    area = torch.rand(rows, generator=g) * 2000 + 9000
    age = torch.rand(rows, generator=g) * 100 + 450
    X = torch.stack([area, age], 1)
    y = 0.3 * area - 2 * age + 1e4 + noise * torch.randn(rows, generator=g)
    result = torchlr.fit(X, y, standardize=True, standardize_target=scale_target, lr=0.1,
                         num_epochs=4, val_fraction=0.25, device=device)
    train, val = train_val_split(rows, 0.25, seed=0)
    assert_printed_digits(result.losses[-1], result, X[train], y[train])
    assert_printed_digits(result.val_losses[-1], result, X[val], y[val])


def assert_printed_digits(loss, result, X, y):
    """loss, reported by result for the rows (X, y), within half a printed unit of the
    reference: the model's own float32 parameters on the rows as it saw them (scaled), in
    float64 arithmetic, in the units reported."""
    scaling = result.scaling
    Xs, ys = scaling.features(X), scaling.target(y.reshape(-1, 1))
    exact = exact_mean(Xs, ys, result.scaled_w, result.scaled_b) * scaling.loss_scale
    assert printed_error(loss, exact) < 0.5, (loss, exact)


@pytest.mark.parametrize("rows, noise", [(400, 1.0), (2000, 1.0), (400, 10.0), (100, 0.1)])
@pytest.mark.parametrize("scale_target", [False, True])
def test_a_loss_holds_the_digits_it_is_printed_with(rows, noise, scale_target, epoch_end):
    # float32's predictions near 12,000 are rounded by about 1e-3, and the mean of a loss
    # near 0.5 over 2,000 rows missed by 1.2e-5 (0.507847 for 0.507835); a fit on the same
    # rows laid out by column printed yet another 5th digit.
    assert_printed_digits_hold(rows, noise, scale_target)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("scale_target", [False, True])
def test_a_loss_on_a_gpu_holds_the_digits_it_is_printed_with(scale_target):
    # There the flag comes over with the loss, w and b in _epoch_end's one copy, and the
    # holdout's with its loss and R².
    assert_printed_digits_hold(2000, 1.0, scale_target, device="cuda")


def test_whole_pieces_of_a_close_fit_take_the_float64_sum(close_fit, monkeypatch):
    # The limit is on the mean: a piece's sum is compared with its rows times it. Pieces of
    # 1000 rows (the CPU's are 65,536) sum to more than one row's limit.
    X, y = close_fit
    result = torchlr.fit(X, y, num_epochs=12, lr=0.05)
    w, b = result.w.reshape(-1, 1), torch.tensor([result.b])
    Xt, yt = torch.tensor(np.tile(X, (10, 1))), torch.tensor(np.tile(y, 10)).reshape(-1, 1)
    monkeypatch.setattr(train, "EVAL_ROWS", 1000)
    exact = exact_mean(Xt, yt, w, b)
    assert float(train.mean_loss(Xt, yt, w, b)) == pytest.approx(exact, rel=1e-6, abs=0)


def test_a_large_intercept_counts_in_the_limit():
    # X w near 1300 cancelled by b = -1300: the targets are small, the predictions' float32
    # rounding is not (about 6e-5 each), and that rounding is what the limit must see.
    g = torch.Generator().manual_seed(0)
    X = (1000 + torch.randn(500, 1, generator=g)).float()
    w, b = torch.tensor([[1.3]]), torch.tensor([-1300.0])
    y = (X.double() * 1.3 - 1300).float()
    exact = exact_mean(X, y, w, b)
    float32_mean = float(((X @ w + b - y) ** 2 / 2).mean())
    assert abs(float32_mean - exact) > 0.1 * exact  # the case float32 gets wrong
    assert float(summed_loss.loss_mean(X, y, w, b)) == pytest.approx(exact, rel=1e-6, abs=0)


def wide_target(rows=300):
    """Targets of std near 58,000 with noise 10: a scaled target's loss is 1e-8 of the
    scaled targets' mean square, where float32's rounding is far above a printed unit in
    the reported units (a loss near 50), and only loss_scale tells too_coarse so."""
    g = torch.Generator().manual_seed(rows)
    area = torch.rand(rows, generator=g) * 2000 + 9000
    age = torch.rand(rows, generator=g) * 100 + 450
    X = torch.stack([area, age], 1)
    y = 100 * area - 2 * age + 1e4 + 10 * torch.randn(rows, generator=g)
    return X, y


WIDE = dict(standardize=True, standardize_target=True, lr=0.1, num_epochs=3, device="cpu")


@pytest.mark.parametrize("pieces", [False, True])
def test_a_scaled_targets_train_and_val_losses_hold_their_printed_digits(pieces,
                                                                        monkeypatch):
    # Each path that sums a whole-data loss must pass the target's scale on to too_coarse.
    if pieces:  # the CPU's piecewise epoch loss (loss_sum), in 5 pieces
        monkeypatch.setattr(train, "EVAL_ROWS", 48)
    X, y = wide_target()
    result = torchlr.fit(X, y, val_fraction=0.25, **WIDE)
    train_rows, val_rows = train_val_split(len(X), 0.25, seed=0)
    assert_printed_digits(result.losses[-1], result, X[train_rows], y[train_rows])
    assert_printed_digits(result.val_losses[-1], result, X[val_rows], y[val_rows])


def wide_target_file(tmp_path):
    X, y = wide_target()
    np.save(tmp_path / "t.npy", torch.cat([X, y[:, None]], 1).numpy())
    return X, y, BlockStream(tmp_path / "t.npy", block_rows=64)


def test_a_streamed_scaled_targets_loss_holds_its_printed_digits(tmp_path):
    X, y, stream = wide_target_file(tmp_path)
    result = torchlr.fit(stream, None, **WIDE)
    assert_printed_digits(result.losses[-1], result, X, y)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_groups_scaled_target_loss_holds_its_printed_digits(single_process_group, streamed,
                                                              tmp_path):
    X, y, stream = wide_target_file(tmp_path)
    result = torchlr.fit(*((stream, None) if streamed else (X, y)), **WIDE)
    assert_printed_digits(result.losses[-1], result, X, y)


def flagged(loss, value, n, loss_scale=1.0):
    """too_coarse's flag for a mean loss of n rows of targets equal to value, b = 0."""
    y = torch.full((n, 1), float(value))  # M = value²
    return float(summed_loss.too_coarse(torch.tensor(loss, dtype=torch.float32), y,
                                        torch.zeros(1), loss_scale))


def test_too_coarse_flags_the_window_its_comment_states():
    # float32 misses a mean loss L of n rows by up to 2e-7 sqrt(M L / n): that reaches half
    # a printed unit (5e-7, or 1e-7 of the loss, in reported units) only for
    # 6.25 n / (M s²) < L < 4 M / n, s the loss_scale.
    n = 1000  # M = 4e6: the window is 1.5625e-3 to 16,000
    assert [flagged(L, 2000, n) for L in (1.25e-3, 1.96e-3, 12800, 20000)] == [0, 1, 1, 0]
    # A scaled target (M 1) reported times s = 1e6: 6.25e-9 to 4e-3.
    assert [flagged(L, 1.0, n, 1e6) for L in (5e-9, 7.8e-9, 3.2e-3, 5e-3)] == [0, 1, 1, 0]
    assert flagged(7.8e-9, 1.0, n, 1.0) == 0
    assert flagged(float("nan"), 2000, n) == 0 and flagged(float("inf"), 2000, n) == 0
    assert flagged(float("nan"), 2000, 0) == 0  # no rows


@pytest.mark.parametrize("n, edge", [(100, 1.6e-9), (1000, 1.6e-10), (100_000, 1e-10)])
def test_too_coarse_keeps_three_digits_of_a_loss_far_below_the_targets(n, edge):
    # Below (2e-7 / 5e-4)² M / n the relative error sqrt(M / (L n)) 2e-7 passes half a unit
    # of the third digit; below 1e-10 M, whatever n, the predictions' squared rounding
    # shows. M = 1 < 1.25 n: the printed window is empty, only this share flags.
    assert flagged(0.9 * edge, 1.0, n) == 1 and flagged(1.1 * edge, 1.0, n) == 0
