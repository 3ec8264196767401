import math

import pytest
import torch

from torchlr.scratch import init_params, linreg, sgd, squared_loss


def _problem(n=32, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, generator=g, dtype=torch.float64, requires_grad=True)
    return X, y, w, b


def test_autograd_gradient_equals_analytic_gradient():
    X, y, w, b = _problem()
    squared_loss(linreg(X, w, b), y).sum().backward()
    residual = X @ w.detach() + b.detach() - y  # (n, 1)
    torch.testing.assert_close(w.grad, X.T @ residual, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.grad, residual.sum(0), rtol=1e-12, atol=1e-12)


def test_squared_loss_is_per_example_half_square_with_reshape():
    y_hat = torch.tensor([[1.0], [2.0], [4.0]])
    y = torch.tensor([0.0, 2.0, 1.0])  # (n,): reshaped, not broadcast to (n, n)
    loss = squared_loss(y_hat, y)
    assert loss.shape == (3, 1)
    torch.testing.assert_close(loss[:, 0], torch.tensor([0.5, 0.0, 4.5]))


def test_linreg_is_xw_plus_b():
    X, _, w, b = _problem()
    torch.testing.assert_close(linreg(X, w, b), X @ w + b)


def test_sgd_step_equals_torch_optim_sgd_on_mean_half_loss():
    X, y, w, b = _problem(n=10)
    w2 = w.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()

    squared_loss(linreg(X, w, b), y).sum().backward()
    sgd([w, b], lr=0.03, batch_size=len(X))

    opt = torch.optim.SGD([w2, b2], lr=0.03)
    squared_loss(linreg(X, w2, b2), y).mean().backward()
    opt.step()

    torch.testing.assert_close(w.detach(), w2.detach(), rtol=0, atol=1e-14)
    torch.testing.assert_close(b.detach(), b2.detach(), rtol=0, atol=1e-14)


def test_sgd_owns_no_grad_keeps_leaves_and_clears_grads():
    X, y, w, b = _problem()
    squared_loss(linreg(X, w, b), y).sum().backward()
    w_id = id(w)
    sgd([w, b], 0.1, len(X))  # no caller no_grad: sgd must not raise or build a graph
    assert id(w) == w_id and w.is_leaf and w.requires_grad
    assert w.grad is None and b.grad is None
    assert w.grad_fn is None


def test_init_params_shapes_stats_and_seed():
    w, b = init_params(3, generator=torch.Generator().manual_seed(0))
    assert w.shape == (3, 1) and b.shape == (1,)
    assert w.requires_grad and b.requires_grad
    assert torch.equal(b, torch.zeros(1))
    big, _ = init_params(20000, generator=torch.Generator().manual_seed(0))
    assert abs(big.std().item() - 0.01) < 5e-4
    again, _ = init_params(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, again)


def test_init_params_zero_sigma():
    w, _ = init_params(4, sigma=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.zeros(4, 1))


@pytest.mark.parametrize("batch_size", [1, 7])
def test_sgd_divides_by_given_batch_size(batch_size):
    p = torch.ones(2, requires_grad=True)
    p.grad = torch.full((2,), 3.0)
    sgd([p], lr=0.5, batch_size=batch_size)
    torch.testing.assert_close(p.detach(), torch.ones(2) - 0.5 * 3.0 / batch_size)


def test_sgd_without_a_gradient_or_with_a_zero_batch_says_what_is_missing():
    # A learner's second sgd in a row (or one before backward) met "sub_(): argument 'other'
    # must be Tensor, not NoneType"; a batch size of 0, ZeroDivisionError.
    w, b = init_params(2, generator=torch.Generator().manual_seed(0))
    squared_loss(linreg(torch.ones(3, 2), w, b), torch.zeros(3)).sum().backward()
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        sgd([w, b], 0.03, 0)
    assert w.grad is not None  # refused before anything moved
    sgd([w, b], 0.03, 3)
    with pytest.raises(RuntimeError, match=r"shape \(2, 1\) has no gradient: call backward"):
        sgd([w, b], 0.03, 3)


def test_init_params_refuses_what_it_cannot_draw():
    for args, error, message in [
        ((-1,), ValueError, "num_inputs must be a positive int.*got -1"),
        ((0,), ValueError, "num_inputs must be a positive int.*got 0"),
        ((2.0,), TypeError, "num_inputs must be a positive int, got float: 2.0"),
        ((2, math.nan), ValueError, "sigma must be finite and >= 0, got nan"),
        ((2, -0.1), ValueError, "sigma must be finite and >= 0, got -0.1"),
        ((2, "0.01"), TypeError, "sigma must be a real number, got str"),
    ]:
        with pytest.raises(error, match=message):
            init_params(*args)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        init_params(2, generator=0)
