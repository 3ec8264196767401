"""gradient="analytic": the hand-derived gradient against autograd, and fits that agree."""

import pytest
import torch
from conftest import chapter_data
from torch import nn

import torchlr
from torchlr import analytic, distributed
from torchlr.cli import main
from torchlr.concise import LinearRegression, make_optimizer, mse
from torchlr.scratch import init_params, linreg, sgd, squared_loss
from torchlr.train import DivergenceError

HISTORIES = ("w_history", "b_history", "train_losses")


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_analytic_fit_runs_no_backward(impl, monkeypatch):
    def no_backward(*args, **kwargs):
        raise AssertionError("backward() ran in an analytic fit")

    X, y = chapter_data()
    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    result = torchlr.fit(X, y, impl=impl, gradient="analytic", device="cpu")
    assert result.losses[-1] < 1e-4
    with pytest.raises(AssertionError, match="backward"):  # the default does run it
        torchlr.fit(X, y, impl=impl, num_epochs=1, device="cpu")


def batch(rows, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, d, generator=g)
    y = X @ torch.randn(d, 1, generator=g) + 0.5 + 0.1 * torch.randn(rows, 1, generator=g)
    return X, y


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_sgd_step_is_autograd_and_sgd(rows):
    X, y = batch(rows)
    w, b = init_params(3, sigma=0.5, generator=torch.Generator().manual_seed(1))
    w_ref, b_ref = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    total = squared_loss(linreg(X, w_ref, b_ref), y).sum()
    total.backward()
    sgd([w_ref, b_ref], 0.1, rows)
    raw = analytic.sgd_step(X, y, w, b, 0.1)
    torch.testing.assert_close(w, w_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b, b_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(raw / 2, total.detach(), rtol=1e-6, atol=0)
    assert w.grad is None and b.grad is None  # no graph, nothing accumulated


def test_sgd_step_is_the_formula_in_float64():
    """w - lr / B X^T (X w + b - y), b - lr / B sum(r), computed independently in float64."""
    X, y = batch(50, d=4)
    w, b = init_params(4, sigma=0.3, generator=torch.Generator().manual_seed(2))
    X64, y64, w64, b64 = X.double(), y.double(), w.detach().double(), b.detach().double()
    r = X64 @ w64 + b64 - y64
    analytic.sgd_step(X, y.reshape(-1), w, b, 0.05)  # a flat y is reshaped, not broadcast
    torch.testing.assert_close(w.detach().double(), w64 - 0.05 / 50 * X64.T @ r,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach().double(), b64 - 0.05 / 50 * r.sum(0),
                               rtol=1e-5, atol=1e-6)


def test_a_long_batchs_small_step_rounds_w_once():
    # The step's gradient is summed whole, then taken: w ends within an ulp of the exact
    # update of its float32 values. Accumulated into w a block of rows at a time (BLAS's
    # w.addmm_ on 4096 rows), w was rounded once a block: several ulps off, more than the
    # step itself at this rate, and scratch's analytic fits drifted from concise's.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4096, 8, generator=g) * 100 + 50
    y = torch.randn(4096, generator=g)
    w = torch.randn(8, 1, generator=g) * 1000
    b = torch.zeros(1)
    r = (torch.addmm(b, X, w) - y.reshape(-1, 1)).double()  # the step's own float32 r
    exact = w.double() - 1e-7 / 4096 * (X.double().T @ r)
    analytic.sgd_step(X, y, w, b, 1e-7)
    ulps = (w.double() - exact).abs() / (torch.finfo(torch.float32).eps * exact.abs())
    assert float(ulps.max()) <= 1.0


def test_analytic_scratch_fits_small_steps_on_large_columns_as_autograd_does():
    # Columns in the thousands and lr 1e-7: each step is a few ulps of w. Rounding w once a
    # block of rows (the old w.addmm_) ended this fit at a loss of 2.49, four times the
    # 0.618 that every other path reaches.
    g = torch.Generator().manual_seed(0)
    n = 1300
    X = torch.stack([1000 * torch.randn(n, generator=g),
                     2000 + 0.03 * torch.randn(n, generator=g)], 1)
    y = X @ torch.tensor([0.5, 8000.0]) + 4 + torch.randn(n, generator=g)
    kw = dict(lr=1e-7, batch_size=50, num_epochs=5, device="cpu")
    fast = torchlr.fit(X, y, impl="scratch", gradient="analytic", **kw)
    # This problem's condition amplifies float32's rounding: concise's own losses are
    # 2e-4 from scratch's at epoch 4, against the 300% the drift made.
    for impl, rtol in (("scratch", 1e-5), ("concise", 1e-3)):
        ref = torchlr.fit(X, y, impl=impl, gradient="autograd", **kw)
        torch.testing.assert_close(fast.losses, ref.losses, rtol=rtol, atol=0)
        torch.testing.assert_close(fast.w, ref.w, rtol=1e-5, atol=0)


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_mse_grads_are_backwards(rows):
    X, y = batch(rows)
    module = LinearRegression(3, sigma=0.5, generator=torch.Generator().manual_seed(3))
    mse(module(X), y).backward()
    expected = [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    raw = analytic.set_mse_grads(module, X, y)
    for p, grad in zip(module.parameters(), expected):
        assert p.grad.shape == p.shape
        torch.testing.assert_close(p.grad, grad, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(raw / rows, nn.MSELoss()(module(X), y), rtol=1e-6, atol=0)


def test_mse_grads_drive_optim_sgd_as_backward_does():
    X, y = batch(20)
    models = [LinearRegression(3, generator=torch.Generator().manual_seed(4)) for _ in range(2)]
    optimizers = [make_optimizer(m, 0.1) for m in models]
    for _ in range(5):
        optimizers[0].zero_grad()
        mse(models[0](X), y).backward()
        optimizers[0].step()
        analytic.set_mse_grads(models[1], X, y)
        optimizers[1].step()
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


CASES = [(1003, 10, False), (1003, 10, True), (7, 10, False), (300, 1, False)]


@pytest.mark.parametrize("impl", ["scratch", "concise"])
@pytest.mark.parametrize(("n", "batch_size", "drop_last"), CASES)
def test_fit_agrees_with_autograd(impl, n, batch_size, drop_last):
    X, y = chapter_data(num_examples=n)
    options = dict(impl=impl, batch_size=batch_size, drop_last=drop_last, num_epochs=3,
                   log_every=7, device="cpu")
    fast = torchlr.fit(X, y, gradient="analytic", **options)
    slow = torchlr.fit(X, y, **options)
    for name in HISTORIES:
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name),
                                   rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(slow.losses),
                               rtol=1e-4, atol=1e-7)
    assert fast.config.gradient == "analytic"


def test_both_implementations_agree_and_reach_least_squares():
    X, y = chapter_data()
    results = [torchlr.fit(X, y, impl=impl, gradient="analytic", num_epochs=10, device="cpu")
               for impl in ("scratch", "concise")]
    torch.testing.assert_close(results[0].w_history, results[1].w_history, rtol=1e-5, atol=1e-6)
    w_exact, b_exact = torchlr.least_squares(X, y)
    for result in results:
        torch.testing.assert_close(result.w.double(), w_exact, atol=2e-3, rtol=0)
        assert abs(result.b - float(b_exact)) < 2e-3
        assert result.losses[-1] < 6e-5  # the noise floor, sigma^2 / 2 = 5e-5


def test_resume_equals_straight_bit_for_bit(tmp_path):
    X, y = chapter_data(num_examples=300)
    kw = dict(impl="scratch", gradient="analytic", device="cpu", batch_size=7)
    straight = torchlr.fit(X, y, num_epochs=3, **kw)
    torchlr.fit(X, y, num_epochs=1, save=str(tmp_path / "a.pt"), **kw)
    resumed = torchlr.fit(X, y, num_epochs=3, resume=str(tmp_path / "a.pt"), **kw)
    assert torch.equal(resumed.w_history, straight.w_history)
    assert resumed.losses == straight.losses


def test_divergence_names_the_same_step_as_autograd():
    X, y = chapter_data(num_examples=200)
    messages = []
    for gradient in ("autograd", "analytic"):
        with pytest.raises(DivergenceError) as err:
            torchlr.fit(X, y, lr=1e4, device="cpu", gradient=gradient)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_bad_gradient_is_refused_before_training():
    X, y = chapter_data(num_examples=20)
    with pytest.raises(ValueError, match="Unknown gradient 'numeric'; choose one of "
                                         "'autograd', 'analytic'"):
        torchlr.fit(X, y, gradient="numeric")


def test_refused_in_a_process_group(monkeypatch):
    monkeypatch.setattr(distributed, "current", lambda: distributed.DataParallel(0, 2))
    # A group of one's own making: its barrier and its flags of failure go nowhere (the
    # real group's test is in test_distributed).
    monkeypatch.setattr(distributed.DataParallel, "barrier", lambda self, device: None)
    monkeypatch.setattr(distributed.DataParallel, "all_succeeded",
                        lambda self, device, failed: None)
    X, y = chapter_data(num_examples=20)
    with pytest.raises(ValueError, match="gradient='analytic' is not supported in a process"):
        torchlr.fit(X, y, gradient="analytic", device="cpu")


@pytest.fixture
def cli_gradients(tmp_path, monkeypatch):
    """The gradient of each fit the CLI runs, in order (runs in tmp_path)."""
    monkeypatch.chdir(tmp_path)
    seen = []
    real_fit = torchlr.train.fit

    def spy(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        seen.append(result.config.gradient)
        return result

    monkeypatch.setattr("torchlr.cli.fit", spy)
    return seen


def test_cli_flag_reaches_fit(cli_gradients, capsys):
    seen = cli_gradients
    argv = ["train", "--device", "cpu", "--no-tensorboard"]
    assert main([*argv, "--gradient", "analytic"]) == 0
    analytic_lines = capsys.readouterr().out.splitlines()
    assert main([*argv, "--gradient", "autograd"]) == 0
    assert seen == ["analytic", "autograd"]
    # The hand-derived gradient prints the chapter's epoch lines to their six decimals, and
    # the last is at the noise floor, sigma^2 / 2 = 5e-5 (the chapter's epoch-3 loss).
    assert analytic_lines[:3] == capsys.readouterr().out.splitlines()[:3]
    assert analytic_lines[2].startswith("epoch 3, loss ")
    assert float(analytic_lines[2].split()[-1]) == pytest.approx(5e-5, rel=0.1)


def test_cli_resume_keeps_the_runs_gradient_unless_given(cli_gradients):
    seen = cli_gradients
    base = ["train", "--device", "cpu", "--no-tensorboard", "--quiet"]
    assert main([*base, "--epochs", "1", "--gradient", "analytic", "--save", "run.pt"]) == 0
    assert main([*base, "--epochs", "2", "--resume", "run.pt"]) == 0
    assert main([*base, "--epochs", "3", "--resume", "run.pt", "--gradient", "autograd"]) == 0
    assert main([*base, "--epochs", "1"]) == 0
    assert seen == ["analytic", "analytic", "autograd", "autograd"]
