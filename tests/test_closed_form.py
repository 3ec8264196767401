import numpy as np
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
