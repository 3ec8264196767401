import torch

from torchlr.concise import LinearRegression, make_optimizer, mse
from torchlr.scratch import init_params, linreg, sgd, squared_loss


def test_starts_where_scratch_starts_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    model = LinearRegression(5, generator=torch.Generator().manual_seed(3))
    w, b = init_params(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.w, w.detach()) and torch.equal(model.b, b.detach())
    assert torch.equal(state, torch.get_rng_state())
    assert isinstance(model, torch.nn.Linear)
    assert model.weight.shape == (1, 5) and model.bias.shape == (1,)
    assert model.weight.device.type == "cpu" and model.weight.requires_grad
    assert [name for name, _ in model.named_parameters()] == ["weight", "bias"]


def test_forward_is_linreg():
    model = LinearRegression(3, generator=torch.Generator().manual_seed(0))
    X = torch.randn(8, 3)
    torch.testing.assert_close(model(X), linreg(X, model.w, model.b))


def test_mse_is_msel_loss_and_twice_the_mean_squared_loss():
    y_hat, y = torch.randn(9, 1), torch.randn(9)
    torch.testing.assert_close(mse(y_hat, y), torch.nn.MSELoss()(y_hat, y.reshape(-1, 1)))
    torch.testing.assert_close(mse(y_hat, y), 2 * squared_loss(y_hat, y).mean())


def test_optimizer_runs_at_half_the_learning_rate():
    model = LinearRegression(2, generator=torch.Generator().manual_seed(0))
    assert make_optimizer(model, 0.03).param_groups[0]["lr"] == 0.015


def test_one_concise_step_equals_one_scratch_step_to_the_bit():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(7, 3, generator=g), torch.randn(7, 1, generator=g)
    model = LinearRegression(3, generator=torch.Generator().manual_seed(1))
    w, b = init_params(3, generator=torch.Generator().manual_seed(1))
    opt = make_optimizer(model, lr=0.1)
    ref = LinearRegression(3, generator=torch.Generator().manual_seed(1))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)  # the chapter's 1/2 kept in the loss

    mse(model(X), y).backward()
    opt.step()
    (torch.nn.MSELoss()(ref(X), y) / 2).backward()
    ref_opt.step()
    squared_loss(linreg(X, w, b), y).sum().backward()
    sgd([w, b], 0.1, len(X))

    # Halving lr instead of the loss is exact: the same parameters bit for bit.
    assert torch.equal(model.weight, ref.weight) and torch.equal(model.bias, ref.bias)
    torch.testing.assert_close(model.w.detach(), w.detach(), rtol=0, atol=1e-7)
    torch.testing.assert_close(model.b.detach(), b.detach(), rtol=0, atol=1e-7)


def test_reset_parameters_redraws_from_a_fresh_generator_not_the_global_rng():
    model = LinearRegression(64, sigma=0.5, generator=torch.Generator().manual_seed(0))
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.bias.fill_(3.0)
    state = torch.get_rng_state()
    model.reset_parameters()
    assert torch.equal(state, torch.get_rng_state())
    assert not torch.equal(model.weight, before) and model.bias.item() == 0.0
    assert 0.3 < model.weight.std().item() < 0.7  # drawn at sigma = 0.5, not 0.01


def test_mse_of_a_flat_target_does_not_broadcast():
    y_hat, y = torch.zeros(5, 1), torch.arange(5.0)
    assert mse(y_hat, y).item() == (torch.arange(5.0) ** 2).mean().item()
