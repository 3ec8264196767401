import numpy as np
import pytest
import torch
from conftest import chapter_data

from torchlr.closed_form import least_squares


def test_recovers_noise_free_coefficients_exactly():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 4, generator=g)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    w_hat, b_hat = least_squares(X, X @ w + 0.7)
    torch.testing.assert_close(w_hat, w.double(), atol=1e-5, rtol=0)
    assert abs(b_hat - 0.7) < 1e-5


def test_matches_numpy_lstsq():
    X, y = chapter_data()
    w_hat, b_hat = least_squares(X, y)
    A = np.hstack([X.double().numpy(), np.ones((len(X), 1))])
    ref = np.linalg.lstsq(A, y.double().numpy(), rcond=None)[0][:, 0]
    np.testing.assert_allclose(w_hat.numpy(), ref[:-1], atol=1e-10)
    assert abs(b_hat - ref[-1]) < 1e-10


def residual_is_orthogonal(X, y, w, b, tol=1e-6):
    """The optimality condition of least squares: the residual is orthogonal to every column
    of [X, 1], measured as a cosine (loose enough for the rounding of the residual itself)."""
    A = torch.cat([X.double(), torch.ones(len(X), 1, dtype=torch.float64)], 1)
    r = A @ torch.cat([w, torch.tensor([b], dtype=torch.float64)]) - y.double()
    cosines = (A.T @ r).abs() / (A.norm(dim=0) * r.norm())
    return bool((cosines < tol).all()), float(r.pow(2).mean().sqrt())


def test_a_column_far_from_zero_is_not_cut_off():
    # A timestamp in seconds: beside the ones column it looked rank-deficient to gelsd,
    # and the solution ignored it (RMSE 24.7 against noise 0.01).
    g = torch.Generator().manual_seed(0)
    t = 1.7e9 + 86400 * torch.rand(1000, 1, generator=g, dtype=torch.float64)
    y = 0.001 * (t[:, 0] - 1.7e9) + 2 + 0.01 * torch.randn(1000, generator=g, dtype=torch.float64)
    w, b = least_squares(t, y)
    orthogonal, rmse = residual_is_orthogonal(t, y, w, b)
    assert orthogonal and rmse < 0.011
    assert abs(w.item() - 0.001) < 1e-6


def test_a_column_on_a_tiny_scale_is_not_cut_off():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1e-14, 1.0],
                                                                            dtype=torch.float64)
    y = X @ torch.tensor([1.0, 3e14, -2.0], dtype=torch.float64) + 0.5 \
        + 0.01 * torch.randn(500, generator=g, dtype=torch.float64)
    w, b = least_squares(X, y)
    orthogonal, rmse = residual_is_orthogonal(X, y, w, b)
    assert orthogonal and rmse < 0.011


def test_collinear_and_short_data_still_minimize():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(100, 2, generator=g)
    X = torch.cat([X, X[:, :1], torch.full((100, 1), 3.0)], 1)  # a repeated and a constant column
    y = X[:, 0] + X[:, 1] + 1
    w, b = least_squares(X, y)
    assert residual_is_orthogonal(X, y, w, b)[1] < 1e-6
    assert w[3] == 0  # a constant column's weight is the intercept's to carry
    X, y = torch.randn(3, 5, generator=g), torch.randn(3, generator=g)  # fewer rows than columns
    assert residual_is_orthogonal(X, y, *least_squares(X, y))[1] < 1e-12


def test_a_column_constant_to_rounding_takes_no_weight():
    # Few rows and a column that varies only in its 14th digit: scaled up, that noise took a
    # weight of 1e12 and b cancelled it to -4e18, leaving residuals of 70.
    g = torch.Generator().manual_seed(3)
    X = torch.randn(2, 5, generator=g, dtype=torch.float64)
    X[:, 2] = 3862901.5030305 + torch.tensor([1e-7, -1e-7], dtype=torch.float64)
    y = torch.randn(2, generator=g, dtype=torch.float64)
    w, b = least_squares(X, y)
    assert residual_is_orthogonal(X, y, w, b)[1] < 1e-9
    assert w[2] == 0 and abs(b) < 10


def test_a_column_that_varies_far_below_its_size_is_kept_when_it_explains_y():
    # Timestamps in microseconds over 0.1 s: they vary by 6e-11 of their size, which the
    # rounding-noise rule alone took for a constant column (weight 0, residuals of 87).
    t = 1.7e15 + np.arange(0, 100_000, 1000.0)
    y = 3e-3 * (t - 1.7e15) + 1
    w, b = least_squares(t.reshape(-1, 1), y)
    assert abs(w.item() - 3e-3) < 1e-9
    assert np.abs(t * w.item() + b - y).max() < 1e-2


def test_bad_input_is_refused_before_lapack(capfd):
    X = torch.tensor([[1.0], [float("nan")], [2.0]])
    with pytest.raises(ValueError, match="features contains NaN"):
        least_squares(X, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        least_squares(torch.ones(3, 1), torch.ones(4))
    with pytest.raises(ValueError, match=r"labels must have shape \(n,\) or \(n, 1\)"):
        least_squares(torch.ones(3, 1), torch.ones(1, 3))
    assert capfd.readouterr().out == ""  # LAPACK's own complaint was printed


def test_faint_columns_are_judged_one_by_one():
    # A faint signal (timestamps) beside a constant with a few ulps of noise: keeping both
    # gave the noise a weight of 3e7 and b = -3.9e13; the noise column alone is dropped.
    rng = np.random.default_rng(0)
    t = 1.7e15 + np.arange(0, 6000, 1000.0)
    c = 1e6 + np.array([0, 2**-33, 0, -(2**-33), 2**-33, 0])
    x = rng.normal(size=6)
    y = 3e-3 * (t - 1.7e15) + 2 * x + 1 + rng.normal(0, 0.01, 6)
    w, b = least_squares(np.stack([t, c, x], 1), y)
    assert w[1] == 0 and abs(w[0].item() - 3e-3) < 1e-4 and abs(b) < 1e13


def test_nested_lists_are_taken_like_arrays():
    w, b = least_squares([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])
    assert w.tolist() == pytest.approx([2.0]) and b == pytest.approx(1.0)
