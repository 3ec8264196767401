import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import torchlr
from torchlr import concise
from torchlr.concise import LinearRegression, make_optimizer, mse, optimizer_step
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


def test_bad_sizes_and_rates_are_named_as_given():
    # Not as nn.Linear's empty() or as SGD's halved rate ("Invalid learning rate: -0.5").
    with pytest.raises(TypeError, match="num_inputs must be a positive int, got str: '2'"):
        LinearRegression("2")
    with pytest.raises(ValueError, match="num_inputs .* got 0"):
        LinearRegression(0)
    model = LinearRegression(2)
    with pytest.raises(ValueError, match="lr must be positive and finite, got -1"):
        make_optimizer(model, -1)


def _batch_and_concise_step():
    """A random batch (X, y), and a model after one concise step on it at lr 0.1."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(7, 3, generator=g), torch.randn(7, 1, generator=g)
    model = LinearRegression(3, generator=torch.Generator().manual_seed(1))
    start = model.weight.detach().clone()
    opt = make_optimizer(model, lr=0.1)
    mse(model(X), y).backward()
    opt.step()
    assert not torch.equal(model.weight, start)  # the step moved w
    return X, y, model


def test_halving_the_rate_is_halving_the_loss_to_the_bit():
    X, y, model = _batch_and_concise_step()
    ref = LinearRegression(3, generator=torch.Generator().manual_seed(1))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)  # the chapter's 1/2 kept in the loss
    (torch.nn.MSELoss()(ref(X), y) / 2).backward()
    ref_opt.step()
    # Scaling by 2 is exact in binary floating point: the same parameters bit for bit.
    assert torch.equal(model.weight, ref.weight) and torch.equal(model.bias, ref.bias)


def test_one_concise_step_equals_one_scratch_step_to_float_precision():
    X, y, model = _batch_and_concise_step()
    w, b = init_params(3, generator=torch.Generator().manual_seed(1))
    squared_loss(linreg(X, w, b), y).sum().backward()
    sgd([w, b], 0.1, len(X))
    # The same update in exact arithmetic, rounded elsewhere: MSELoss's gradient divides each
    # residual by the batch length before the sum over the batch, sgd divides the summed
    # gradient. So to float precision, not to the bit.
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


def _steps(take_step, momentum: float = 0.0) -> list[torch.Tensor]:
    """Parameters after each of 20 steps on random batches, each step taken by take_step."""
    g = torch.Generator().manual_seed(0)
    model = LinearRegression(4, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum, weight_decay=0.01)
    history = []
    for _ in range(20):
        X, y = torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)
        opt.zero_grad()
        mse(model(X), y).backward()
        take_step(opt)
        history.append(torch.cat([model.weight.detach().ravel(), model.bias.detach()]))
    return history


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_optimizer_step_changes_the_parameters_exactly_as_optimizer_step(momentum):
    ours = _steps(optimizer_step, momentum)
    theirs = _steps(lambda opt: opt.step(), momentum)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not torch.equal(ours[0], ours[-1])  # the steps moved something


class _CountRanges:
    """Stands in for torch.autograd.profiler.record_function, counting the ranges entered."""

    names: list[str] = []

    def __init__(self, name: str, args=None) -> None:
        self.name = name

    def __enter__(self):
        _CountRanges.names.append(self.name)
        return self

    def __exit__(self, *exc) -> None:
        return None


@pytest.fixture
def ranges(monkeypatch):
    _CountRanges.names = []
    monkeypatch.setattr(torch.autograd.profiler, "record_function", _CountRanges)
    return _CountRanges.names


def test_optimizer_step_skips_the_profiler_range_when_nothing_watches(ranges):
    model = LinearRegression(2, generator=torch.Generator().manual_seed(0))
    opt = make_optimizer(model, 0.03)
    mse(model(torch.ones(3, 2)), torch.zeros(3, 1)).backward()
    opt.step()
    assert ranges == ["Optimizer.step#SGD.step"]  # the stand-in sees the public step's range
    optimizer_step(opt)
    assert ranges == ["Optimizer.step#SGD.step"]  # and none from ours


def test_optimizer_step_goes_the_public_way_when_torch_lacks_what_it_checks(ranges, monkeypatch):
    model = LinearRegression(2, generator=torch.Generator().manual_seed(0))
    opt = make_optimizer(model, 0.03)
    mse(model(torch.ones(3, 2)), torch.zeros(3, 1)).backward()
    monkeypatch.delattr(torch.autograd, "_profiler_enabled")
    optimizer_step(opt)
    monkeypatch.undo()
    monkeypatch.setattr(torch.autograd.profiler, "record_function", _CountRanges)
    monkeypatch.delattr(type(opt).step, "hooked")
    optimizer_step(opt)
    assert ranges == ["Optimizer.step#SGD.step"] * 2


@pytest.mark.parametrize("gradient", ["autograd", "analytic"])
def test_a_concise_fit_calls_every_step_hook_once_per_step(gradient):
    X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 100, generator=torch.Generator().manual_seed(0))
    seen = {"pre": 0, "post": 0}
    pre = register_optimizer_step_pre_hook(
        lambda *_: seen.__setitem__("pre", seen["pre"] + 1))
    post = register_optimizer_step_post_hook(
        lambda *_: seen.__setitem__("post", seen["post"] + 1))
    try:
        hooked = torchlr.fit(X, y, impl="concise", num_epochs=2, gradient=gradient)
    finally:
        pre.remove()
        post.remove()
    assert seen == {"pre": 20, "post": 20}  # 100 rows, batch 10, 2 epochs
    plain = torchlr.fit(X, y, impl="concise", num_epochs=2, gradient=gradient)
    assert torch.equal(hooked.w, plain.w) and hooked.losses == plain.losses


def test_a_profiled_concise_fit_shows_each_optimizer_step():
    X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 100, generator=torch.Generator().manual_seed(0))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torchlr.fit(X, y, impl="concise", num_epochs=1)
    steps = [e for e in prof.events() if e.name == "Optimizer.step#SGD.step"]
    assert len(steps) == 10
    assert not concise._observed(make_optimizer(LinearRegression(2), 0.03))  # profiler gone


def test_optimizer_step_calls_the_optimizers_own_step_hooks():
    model = LinearRegression(2, generator=torch.Generator().manual_seed(0))
    opt = make_optimizer(model, 0.03)
    mse(model(torch.ones(3, 2)), torch.zeros(3, 1)).backward()
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    before = model.weight.detach().clone()
    optimizer_step(opt)
    assert calls == ["pre", "post"]
    assert not torch.equal(before, model.weight)  # and it stepped
