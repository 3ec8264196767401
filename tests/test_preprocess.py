"""Split and standardization: statistics from the training rows only, results in original units."""

import math

import pytest
import torch

import torchlr
from torchlr.preprocess import Scaling, r2_score, train_val_split


def badly_scaled(n=400, seed=0):
    """Well-conditioned once scaled, but columns of very different size and offset."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g) * torch.tensor([0.01, 1.0, 300.0]) + torch.tensor(
        [0.05, -2.0, 100.0])
    y = X @ torch.tensor([40.0, -1.5, 0.02]) + 7.0 + 0.001 * torch.randn(n, generator=g)
    return X, y


def test_split_is_seeded_disjoint_and_complete():
    train, val = train_val_split(100, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(100))
    again = train_val_split(100, 0.2, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    assert not torch.equal(train_val_split(100, 0.2, seed=4)[1], val)
    with pytest.raises(ValueError, match="leaves 0 for validation"):
        train_val_split(3, 0.1, seed=0)


def test_scaling_uses_training_rows_only():
    X, y = badly_scaled()
    result = torchlr.fit(X, y, val_fraction=0.25, standardize=True, standardize_target=True,
                         num_epochs=1, device="cpu")
    train, _ = train_val_split(len(X), 0.25, seed=0)
    X64, y64 = X[train].double(), y[train].double()
    torch.testing.assert_close(result.scaling.x_mean, X64.mean(0).float())
    torch.testing.assert_close(result.scaling.x_scale, X64.std(0, correction=0).float())
    assert result.scaling.y_mean == pytest.approx(float(y64.mean()))
    assert not torch.allclose(result.scaling.x_mean, X.double().mean(0).float(), rtol=0,
                              atol=0)  # the held-out rows are not in the statistics


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_standardized_fit_matches_the_unscaled_closed_form(impl):
    X, y = badly_scaled()
    result = torchlr.fit(X, y, impl=impl, standardize=True, standardize_target=True, lr=0.1,
                         num_epochs=30, device="cpu")
    w_exact, b_exact = torchlr.least_squares(X, y)
    # Weights are reported in original units, and predictions come out in them too.
    torch.testing.assert_close(result.w.double(), w_exact, rtol=1e-3, atol=0)
    assert result.b == pytest.approx(b_exact, rel=1e-3)
    exact = X.double() @ w_exact + b_exact
    error = result.predict(X).reshape(-1).double() - exact
    assert float(error.norm() / exact.norm()) < 1e-3  # relative, over all predictions
    assert float(error.abs().max()) < 1e-3 * float(exact.std())  # and each one


def test_unscaled_sgd_fails_where_scaling_succeeds():
    X, y = badly_scaled()
    with pytest.raises(torchlr.DivergenceError):
        torchlr.fit(X, y, lr=0.1, num_epochs=30, device="cpu")


def test_original_params_invert_the_scaling():
    X, y = badly_scaled()
    scaling = Scaling.fit(X, y.reshape(-1, 1), target=True)
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(3, 1, generator=g), torch.randn(1, generator=g)
    w_orig, b_orig = scaling.original_params(w, b)
    via_scaled = scaling.unscale_target(scaling.features(X) @ w + b).reshape(-1)
    torch.testing.assert_close(X @ w_orig + b_orig, via_scaled, rtol=1e-4, atol=1e-3)


def test_constant_feature_is_only_shifted():
    X = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    scaling = Scaling.fit(X, torch.zeros(3, 1), target=False)
    assert torch.equal(scaling.features(X)[:, 1], torch.zeros(3))


def test_r2_matches_its_definition_and_validation_is_reported():
    y = torch.tensor([[1.0], [2.0], [4.0]])
    y_hat = torch.tensor([[1.5], [2.0], [3.0]])
    ss_tot = float(((y - y.mean()) ** 2).sum())
    assert float(r2_score(y_hat, y)) == pytest.approx(1 - 1.25 / ss_tot, rel=1e-6)
    X, y = badly_scaled()
    result = torchlr.fit(X, y, standardize=True, standardize_target=True, val_fraction=0.2,
                         num_epochs=4, lr=0.1, device="cpu")
    assert len(result.val_losses) == len(result.val_r2) == 4
    _, val = train_val_split(len(X), 0.2, seed=0)
    pred = result.predict(X[val])
    torch.testing.assert_close(result.val_r2[-1], float(r2_score(pred, y[val])), rtol=1e-4,
                               atol=1e-5)
    assert result.val_r2[-1] > 0.999


def test_validation_loss_and_r2_against_their_formulas():
    # Features scaled, target not: the held-out loss is then in the data's own units.
    X, y = badly_scaled()
    result = torchlr.fit(X, y, standardize=True, val_fraction=0.25, num_epochs=3, lr=0.1,
                         device="cpu")
    _, val = train_val_split(len(X), 0.25, seed=0)
    terms = X[val].double() * result.w.double().reshape(-1)
    residual = terms.sum(1) + result.b - y[val].double()
    val_loss = float((residual ** 2 / 2).mean())  # the chapter's squared_loss, its 1/2 kept
    y_val = y[val].double()
    r2 = 1 - float((residual ** 2).sum() / ((y_val - y_val.mean()) ** 2).sum())
    # The fit evaluates the residuals in float32, where they cancel terms ~10^4 times larger
    # (|r| ~ 2e-3, |y| ~ 20): each is off by about eps32 times those terms, the loss
    # (mean r²/2) by about mean(|r| * that), 0.3% of it here. The float32 rounding of w and
    # the CPU's kernels move it by less (1.8e-4 on one CPU, under 1e-4 on another); a wrong
    # formula (no 1/2, the training rows, a sum) moves it by 14% or more.
    rounding = torch.finfo(torch.float32).eps * (
        y_val.abs() + terms.abs().sum(1) + abs(result.b))
    assert result.val_losses[-1] == pytest.approx(
        val_loss, abs=float((residual.abs() * rounding).mean()))
    assert result.val_r2[-1] == pytest.approx(r2, rel=1e-5)
    # A poor fit too, where R² is far from 1: the variance it divides by is the targets',
    # not the predictions' (near 1, either gives about the same number).
    poor = torchlr.fit(X, y, standardize=True, val_fraction=0.25, num_epochs=1, lr=0.003,
                       device="cpu")
    residual = (X[val].double() @ poor.w.double() + poor.b - y_val)
    r2 = 1 - float((residual ** 2).sum() / ((y_val - y_val.mean()) ** 2).sum())
    assert r2 < 0  # worse than the mean: the first epoch at a tiny rate
    assert poor.val_r2[-1] == pytest.approx(r2, rel=1e-5)


def test_r2_of_no_rows_is_nan():
    # Undefined, as for one row: the scaling's amax() over nothing raised instead.
    r2 = r2_score(torch.empty(0, 1), torch.empty(0))
    assert r2.shape == () and r2.dtype == torch.float32 and math.isnan(float(r2))


@pytest.mark.parametrize("value, rows", [(0.1, 50), (0.1, 7), (1e3 + 0.3, 4096), (-2.7, 999)])
def test_r2_of_many_equal_targets_is_nan(value, rows):
    # float32's mean of these rows is not the value itself (50 x 0.1f sums to 5.0000005):
    # the SS_tot of that mean's error made R² about -1e14 where it is undefined.
    y = torch.full((rows, 1), value)
    assert float(y.mean()) != float(y[0]) or rows == 7  # the case that went wrong
    y_hat = y + torch.linspace(-1, 1, rows).reshape(-1, 1)
    assert math.isnan(float(r2_score(y_hat, y)))
    X = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    result = torchlr.fit(X, torch.full((100,), 0.1), val_fraction=0.5, num_epochs=2,
                         device="cpu")
    assert all(math.isnan(r2) for r2 in result.val_r2)


def test_r2_of_targets_far_from_zero_for_their_spread_keeps_its_digits():
    # 1000 plus a spread of 0.01: float32's mean is 2.6e-5 off, which alone added n·δ² to
    # SS_tot and moved R² by 2.8e-7; the corrected sum leaves 2.5e-8 here.
    g = torch.Generator().manual_seed(0)
    y = 1000 + 0.01 * torch.randn(4096, 1, generator=g)
    y_hat = y + 0.002 * torch.randn(4096, 1, generator=g)
    y64, h64 = y.double(), y_hat.double()
    exact = 1 - float(((y64 - h64) ** 2).sum() / ((y64 - y64.mean()) ** 2).sum())
    assert float(r2_score(y_hat, y)) == pytest.approx(exact, abs=1e-7)


@pytest.mark.parametrize("scale", [1e-23, 1.0, 5e18])
def test_r2_of_targets_of_any_size_is_their_fits(scale):
    # Unscaled, float32's sums of squares vanished near 1e-23 and overflowed near 5e18, and
    # an R² of 0.99 read 1.0.
    g = torch.Generator().manual_seed(0)
    y = (3 + torch.randn(1000, 1, generator=g)) * scale
    y_hat = 0.9 * y
    y64, h64 = y.double(), y_hat.double()
    exact = 1 - float(((y64 - h64) ** 2).sum() / ((y64 - y64.mean()) ** 2).sum())
    assert float(r2_score(y_hat, y)) == pytest.approx(exact, abs=1e-6)
    assert exact < 0.95


def test_r2_of_a_constant_target_is_nan():
    # SS_tot = 0: undefined, not -inf (one held-out row gives this).
    assert math.isnan(float(r2_score(torch.tensor([[1.0]]), torch.tensor([[2.0]]))))
    X, y = badly_scaled()
    result = torchlr.fit(X[:11], y[:11], standardize=True, val_fraction=0.05, num_epochs=1,
                         device="cpu")
    assert math.isnan(result.val_r2[0]) and math.isfinite(result.val_losses[0])


def test_early_stopping_lets_a_finite_loss_replace_a_non_finite_first_one():
    from torchlr.holdout import EarlyStopping

    losses: list[float] = []
    stopper = EarlyStopping(2, losses)
    stops = []
    for epoch, loss in enumerate([math.nan, 2.0, 1.0, 0.5, 0.7], start=1):
        losses.append(loss)
        stops.append(stopper.update(epoch, torch.tensor([float(epoch)]), torch.zeros(1)))
    assert stopper.best["epoch"] == 4 and stops == [False] * 5


def test_split_bounds():
    # 0 is allowed (every row trains); 1 and beyond, or below 0, are refused.
    train, val = train_val_split(5, 0.0, seed=0)
    assert torch.equal(train, torch.arange(5)) and len(val) == 0
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
            train_val_split(5, bad, seed=0)
    # The smallest split that leaves a row on each side.
    train, val = train_val_split(2, 0.5, seed=0)
    assert len(train) == 1 and len(val) == 1


def test_early_stopping_needs_a_strictly_lower_loss():
    from torchlr.holdout import EarlyStopping

    losses: list[float] = []
    stopper = EarlyStopping(2, losses)
    stops = []
    for epoch, loss in enumerate([1.0, 1.0, 1.0], start=1):
        losses.append(loss)
        stops.append(stopper.update(epoch, torch.tensor([float(epoch)]), torch.zeros(1)))
    # An equal loss is no improvement: the first epoch stays the best, and two epochs later
    # patience has run out.
    assert stopper.best["epoch"] == 1 and float(stopper.best["w"]) == 1.0
    assert stops == [False, False, True]


def test_scaling_leaves_an_unscaled_part_as_the_identity():
    X, y = badly_scaled()
    y = 5.0 + 0.5 * (y - y.mean()) / y.std()  # std 0.5, mean 5: both visible if used
    features_only = Scaling.fit(X, y, target=False)
    assert features_only.y_mean == 0.0 and features_only.y_scale == 1.0
    assert features_only.loss_scale == 1.0
    torch.testing.assert_close(features_only.target(y), y, rtol=0, atol=0)
    target_only = Scaling.fit(X, y, target=True, features=False)
    assert target_only.y_mean == pytest.approx(float(y.double().mean()))
    # A target spread below 1 is scaled as any other, not left alone.
    assert target_only.y_scale == pytest.approx(float(y.double().std(correction=0)), rel=1e-6)
    assert target_only.y_scale < 1
    assert not target_only.x_mean.any() and bool((target_only.x_scale == 1).all())


def test_constant_target_is_only_shifted():
    X, _ = badly_scaled()
    y = torch.full((len(X),), 3.0)
    scaling = Scaling.fit(X, y, target=True)
    assert scaling.y_mean == 3.0 and scaling.y_scale == 1.0
    result = torchlr.fit(X, y, standardize=True, standardize_target=True, num_epochs=2,
                         device="cpu")
    # Nothing to learn but the mean; the small random start decays towards it.
    assert all(math.isfinite(loss) for loss in result.train_losses)
    torch.testing.assert_close(result.predict(X[:4]).reshape(-1), y[:4], rtol=0, atol=0.01)


@pytest.mark.parametrize("y_mean, y_scale", [(0.0, 2.0), (3.0, 1.0), (1.0, 1.0), (3.0, 2.0),
                                              (0.0, 1.0)])
def test_target_scaling_against_its_formula(y_mean, y_scale):
    # Either part alone must still apply (a mean of exactly 0 or a scale of exactly 1).
    scaling = Scaling(torch.zeros(2), torch.ones(2), y_mean, y_scale)
    y = torch.tensor([[1.0], [-4.0], [10.0]])
    torch.testing.assert_close(scaling.target(y), (y - y_mean) / y_scale, rtol=0, atol=0)
    torch.testing.assert_close(scaling.unscale_target(y), y * y_scale + y_mean, rtol=0, atol=0)
    assert scaling.loss_scale == y_scale**2
    assert scaling.is_identity == (y_mean == 0.0 and y_scale == 1.0)


@pytest.mark.parametrize("x_mean, x_scale", [([0.0, 0.0], [2.0, 1.0]), ([1.0, 0.0], [1.0, 1.0]),
                                              ([1.0, -2.0], [2.0, 0.5])])
def test_feature_scaling_against_its_formula(x_mean, x_scale):
    # Either part alone must still apply: columns of std 1 and a mean of 3 are shifted.
    scaling = Scaling(torch.tensor(x_mean), torch.tensor(x_scale), 0.0, 1.0)
    X = torch.tensor([[1.0, -4.0], [10.0, 0.5]])
    assert not scaling.is_identity
    torch.testing.assert_close(scaling.features(X),
                               (X - torch.tensor(x_mean)) / torch.tensor(x_scale),
                               rtol=0, atol=0)


def test_r2_of_a_target_with_a_small_spread():
    # SS_tot far below 1 is still a spread: R² is defined, not NaN.
    y = torch.tensor([[0.01], [0.02], [0.04]])
    y_hat = torch.tensor([[0.015], [0.02], [0.03]])
    ss_tot = float(((y.double() - y.double().mean()) ** 2).sum())
    expected = 1 - 0.000125 / ss_tot
    assert ss_tot < 1e-3
    assert float(r2_score(y_hat, y)) == pytest.approx(expected, rel=1e-4)


def test_a_scaling_whose_weights_would_pass_float32_is_refused_before_training():
    # Features around 1e-30 and a target around 1e10 train fine once scaled, but w in original
    # units is about 1e40: the fit returned w = [inf, -inf], and evaluate() on it gave nan.
    g = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 200, generator=g)
    epochs = []
    with pytest.raises(ValueError, match=r"feature column 1 varies so much less than the "
                                         r"target .* would pass float32's largest value"):
        torchlr.fit(X * 1e-30, y * 1e10, standardize=True, standardize_target=True,
                    on_progress=epochs.append)
    assert epochs == []
    # At the edge of the range the weights are large but finite, and predict as they should.
    # Scaled, it is the same problem as the data at its own size, with weights 1e28 times.
    result = torchlr.fit(X * 1e-15, y * 1e13, standardize=True, standardize_target=True)
    same = torchlr.fit(X, y, standardize=True, standardize_target=True)
    assert torch.isfinite(result.w).all() and all(map(math.isfinite, result.losses))
    torch.testing.assert_close(result.w.double() * 1e-28, same.w.double(), rtol=1e-5, atol=0)
    # A target whose squared losses float32 cannot report is refused too (they were inf).
    with pytest.raises(ValueError, match=r"the target's standard deviation .* too large to "
                                         r"report its squared losses in float32"):
        torchlr.fit(X, y * 1e20, standardize=True, standardize_target=True)
    # One outlier alone can cause it; the outlier error that suggested standardize_target
    # must not end in a refusal that hides the value: this one names removing it.
    y_out = y.clone()
    y_out[0] = 1e20
    with pytest.raises(ValueError, match=r"too large to report .* remove an outlier"):
        torchlr.fit(X[:10], y_out[:10], standardize_target=True)


@pytest.mark.parametrize("options", [dict(standardize=True), dict(standardize_target=True),
                                     dict(standardize=True, standardize_target=True)])
def test_a_scaled_fits_b_is_rounded_to_float32_as_its_history_is(options):
    # Put in original units in float64, b was returned unrounded (567.1430366583809 beside
    # a b_history[-1] of 567.14306640625), where the README promises float32 as for w.
    X, y = badly_scaled()
    result = torchlr.fit(X, y + 560, num_epochs=2, lr=1e-6, device="cpu", **options)
    assert isinstance(result.b, float)
    assert result.b == float(torch.tensor(result.b, dtype=torch.float32))
    assert result.b == float(result.b_history[-1])
    w, b = result.scaling.original_params(result.scaled_w, torch.tensor(result.scaled_b))
    assert torch.equal(w, result.w) and b == result.b


def test_a_scaled_target_is_shifted_by_the_mean_the_model_trained_on():
    # A target near 1e8 (float32's step there is 8): its mean 99999997.816 is 1e8 in
    # float32, which the model's (y - y_mean) / y_scale used. Kept in float64, the stored
    # scaling rebuilt a model whose loss was 85% above the one the fit reported.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 2, generator=g)
    y = 1e8 + 64 * (X @ torch.tensor([1.0, -2.0]))
    result = torchlr.fit(X, y, standardize_target=True, lr=0.1, num_epochs=20, device="cpu")
    s = result.scaling
    assert s.y_mean == 1e8 != float(y.double().mean())
    scaled = (X.double() - s.x_mean.double()) / s.x_scale.double()
    rebuilt = (scaled @ result.scaled_w.double() + result.scaled_b) * s.y_scale + s.y_mean
    loss = 0.5 * float(((rebuilt - y.double()) ** 2).mean())
    assert loss == pytest.approx(result.losses[-1], rel=1e-5)
    # A checkpoint's float64 values (from before this rounding) load as the same float32.
    assert Scaling.from_state({**s.state(), "y_mean": 99999997.816}).y_mean == 1e8
