import torch

from torchlr.concise import LinearRegression, half_mse, make_optimizer
from torchlr.scratch import init_params, linreg, sgd, squared_loss


def test_starts_where_scratch_starts_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    model = LinearRegression(5, generator=torch.Generator().manual_seed(3))
    w, b = init_params(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.w, w.detach()) and torch.equal(model.b, b.detach())
    assert torch.equal(state, torch.get_rng_state())
    assert isinstance(model.linear, torch.nn.Linear)


def test_forward_is_linreg():
    model = LinearRegression(3, generator=torch.Generator().manual_seed(0))
    X = torch.randn(8, 3)
    torch.testing.assert_close(model(X), linreg(X, model.w, model.b))


def test_half_mse_is_mean_squared_loss_and_mse_over_two():
    y_hat, y = torch.randn(9, 1), torch.randn(9)
    torch.testing.assert_close(half_mse(y_hat, y), squared_loss(y_hat, y).mean())
    torch.testing.assert_close(half_mse(y_hat, y),
                               torch.nn.MSELoss()(y_hat, y.reshape(-1, 1)) / 2)


def test_one_concise_step_equals_one_scratch_step():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(7, 3, generator=g), torch.randn(7, 1, generator=g)
    model = LinearRegression(3, generator=torch.Generator().manual_seed(1))
    w, b = init_params(3, generator=torch.Generator().manual_seed(1))

    opt = make_optimizer(model, lr=0.1)
    half_mse(model(X), y).backward()
    opt.step()

    squared_loss(linreg(X, w, b), y).sum().backward()
    sgd([w, b], 0.1, len(X))

    torch.testing.assert_close(model.w.detach(), w.detach(), rtol=0, atol=1e-7)
    torch.testing.assert_close(model.b.detach(), b.detach(), rtol=0, atol=1e-7)
