"""torchlr.solvers against closed forms and torch.autograd.functional.hessian."""

import pytest
import torch

import torchlr
from torchlr import solvers
from torchlr.scratch import linreg, squared_loss


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(2)
    X, y = torchlr.synthetic_data(torch.tensor([2.0, -3.4]), 4.2, 300, generator=gen)
    return X.double(), y.double()


def zero_params():
    w = torch.zeros(2, 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    return w, b


def test_gradient_descent_reaches_least_squares(data):
    X, y = data
    w, b = zero_params()
    losses = solvers.gradient_descent(lambda: squared_loss(linreg(X, w, b), y).mean(),
                                      [w, b], lr=0.5, steps=200)
    assert len(losses) == 201
    assert all(later <= earlier + 1e-15 for earlier, later in zip(losses, losses[1:]))
    w_exact, b_exact = torchlr.least_squares(X, y)
    torch.testing.assert_close(w.detach().reshape(-1), w_exact, rtol=0, atol=1e-8)
    assert float(b.detach()) == pytest.approx(b_exact, abs=1e-8)
    assert w.grad is None and b.grad is None


def test_gradient_descent_names_the_step_where_it_diverges(data):
    X, y = data
    w, b = zero_params()
    with pytest.raises(torchlr.DivergenceError, match=r"at step \d+ of 400 \(lr=50\.0\)"):
        solvers.gradient_descent(lambda: squared_loss(linreg(X, w, b), y).mean(), [w, b],
                                 lr=50.0, steps=400)
    with pytest.raises(ValueError, match="lr must be > 0"):
        solvers.gradient_descent(lambda: w.sum(), [w], lr=0.0, steps=1)


def test_hessian_of_the_squared_loss_is_the_gram_matrix(data):
    X, y = data
    w, b = zero_params()
    H = solvers.hessian(lambda: squared_loss(linreg(X, w, b), y).mean(), [w, b])
    A = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)  # (n, d + 1)
    torch.testing.assert_close(H, A.T @ A / len(X))


def test_hessian_matches_torch_functional_hessian_on_a_non_quadratic_loss():
    u = torch.tensor([0.3, -0.7], dtype=torch.float64, requires_grad=True)
    v = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)
    unused = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)

    def f(u, v):
        return torch.exp(u[0] * v) + torch.sin(u[1]) * v ** 3 + (u ** 2).sum() * v

    H = solvers.hessian(lambda: f(u, v), [u, v, unused])
    (huu, huv), (hvu, hvv) = torch.autograd.functional.hessian(f, (u.detach(), v.detach()))
    reference = torch.zeros(4, 4, dtype=torch.float64)
    reference[:2, :2] = huu
    reference[:2, 2] = huv
    reference[2, :2] = hvu
    reference[2, 2] = hvv
    torch.testing.assert_close(H, reference)  # the unused parameter's row and column are 0


def test_one_newton_step_solves_least_squares(data):
    X, y = data
    w, b = zero_params()
    step = solvers.newton_step(lambda: squared_loss(linreg(X, w, b), y).mean(), [w, b])
    w_exact, b_exact = torchlr.least_squares(X, y)
    torch.testing.assert_close(w.detach().reshape(-1), w_exact, rtol=0, atol=1e-10)
    assert float(b.detach()) == pytest.approx(b_exact, abs=1e-10)
    torch.testing.assert_close(step, torch.cat([w_exact, torch.tensor([b_exact],
                                                                       dtype=torch.float64)]))


def test_gradient_descent_ignores_old_gradients_and_unused_parameters():
    x = torch.tensor([1.0, 2.0, 3.0])
    w = torch.zeros((), requires_grad=True)
    unused = torch.ones((), requires_grad=True)
    (w * 100).backward()  # a gradient left over from the caller's own backward()

    def loss_fn():
        return ((w * x - 2 * x) ** 2).mean()

    solvers.gradient_descent(loss_fn, [w, unused], lr=0.1, steps=1)
    # One step from w = 0 on mean((w x - 2x)^2): gradient -4 mean(x^2) = -56/3.
    assert float(w.detach()) == pytest.approx(0.1 * 56 / 3)
    assert float(unused.detach()) == 1.0


def test_gradient_descent_of_no_steps_only_measures():
    w = torch.tensor([2.0], requires_grad=True)
    assert solvers.gradient_descent(lambda: (w**2).sum(), [w], lr=0.1, steps=0) == [4.0]
    assert float(w.detach()) == 2.0
    with pytest.raises(ValueError, match="steps must be >= 0"):
        solvers.gradient_descent(lambda: (w**2).sum(), [w], lr=0.1, steps=-1)


def test_hessian_row_of_a_gradient_that_does_not_depend_on_the_params():
    # d/dc of 3c is the constant 3: no graph to differentiate, so its row is zero.
    u = torch.tensor([0.5, -1.5], dtype=torch.float64, requires_grad=True)
    c = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def f(u, c):
        return (u**3).sum() + 3 * c

    H = solvers.hessian(lambda: f(u, c), [u, c])
    (huu, huc), (hcu, hcc) = torch.autograd.functional.hessian(f, (u.detach(), c.detach()))
    reference = torch.zeros(3, 3, dtype=torch.float64)
    reference[:2, :2] = huu
    assert not huc.any() and not hcu.any() and not hcc.any()
    torch.testing.assert_close(H, reference, rtol=0, atol=0)
