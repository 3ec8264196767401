import math

import numpy as np
import pytest
import torch
from conftest import TRUE_B, TRUE_W, chapter_data

import torchlr
from torchlr import FitConfig, fit, least_squares, train
from torchlr.data import data_iter
from torchlr.preprocess import train_val_split
from torchlr.scratch import init_params, linreg, sgd, squared_loss
from torchlr.train import SQUARE_LIMIT

NOISE_FLOOR = 0.01**2 / 2  # sigma^2 / 2


def _max_diff(a, b):
    return max((a.w_history - b.w_history).abs().max().item(),
               (a.b_history - b.b_history).abs().max().item())


def raw_chapter_sgd(X, y, *, seed=0, lr=0.03, batch_size=10, num_epochs=3):
    """The chapter's run in float64 raw torch ops, none of torchlr's: the reference for fit.

    fit's generator use, replicated: w ~ N(0, 0.01^2) of shape (d, 1) drawn first (as float32,
    as the chapter's parameters are), b = 0, then one torch.randperm(n) per epoch. Each step
    takes the residual r = X_b w + b - y_b of the loss sum(r^2 / 2), whose gradients are
    X_b^T r and sum(r), and divides them by the batch's real length. Returns the initial w
    (d, 1) float32, then float64 histories: w (epochs + 1, d), b (epochs + 1,), each epoch's
    mean r^2 / 2 over all rows at its final parameters, and each minibatch's mean r^2 / 2
    before its update (train_losses).
    """
    g = torch.Generator().manual_seed(seed)
    w0 = 0.01 * torch.randn(X.shape[1], 1, generator=g, dtype=torch.float32)
    X, y = X.double(), y.double().reshape(-1, 1)
    w, b = w0.double(), torch.zeros(1, dtype=torch.float64)
    ws, bs, losses, train_losses = [w.reshape(-1)], [b], [], []
    for _ in range(num_epochs):
        order = torch.randperm(len(X), generator=g)
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            r = X[idx] @ w + b - y[idx]  # (m, 1)
            train_losses.append((r**2 / 2).mean())
            w = w - lr * (X[idx].T @ r) / len(idx)
            b = b - lr * r.sum().reshape(1) / len(idx)
        losses.append(((X @ w + b - y) ** 2 / 2).mean())
        ws.append(w.reshape(-1))
        bs.append(b)
    return (w0, torch.stack(ws), torch.cat(bs), torch.stack(losses),
            torch.stack(train_losses))


# fit trains in float32, the reference in float64. Parameters of size O(1) drift apart by an
# ulp or two of 4.2 (4.8e-7) over 300 steps (measured: 3.7e-7). A loss of r^2 / 2 near the
# noise floor (r ~ 0.01) moves by r times float32's rounding of r (~1e-6 at |y| ~ 10): 1e-8
# absolute, 1.3e-4 relative at most (measured here; another CPU's float32 kernels round
# elsewhere, hence the margin). A dropped 1/2 or a wrong batch length moves a loss by a
# factor of 2 or more, and the parameters' path with it.
PARAM_TOL = dict(rtol=1e-5, atol=1e-6)
LOSS_TOL = dict(rtol=1e-3, atol=5e-8)


@pytest.mark.parametrize("num_examples", [1000, 1003])
def test_scratch_and_concise_agree_after_every_epoch(num_examples):
    X, y = chapter_data(num_examples=num_examples)
    s = fit(X, y, impl="scratch", num_epochs=4, device="cpu")
    c = fit(X, y, impl="concise", num_epochs=4, device="cpu")
    assert s.w_history.shape == (5, 2)
    assert torch.equal(s.w_history[0], c.w_history[0])  # the same start
    assert _max_diff(s, c) < 1e-6
    torch.testing.assert_close(torch.tensor(s.losses), torch.tensor(c.losses),
                               rtol=1e-4, atol=1e-9)


def test_fit_reproduces_the_hand_written_chapter_loop():
    # The chapter's loop, written out with the public pieces and the same generator use.
    X, y = chapter_data(num_examples=1003)
    g = torch.Generator().manual_seed(0)
    w, b = init_params(2, generator=g)
    for _ in range(3):
        for X_batch, y_batch in data_iter(10, X, y, generator=g):
            squared_loss(linreg(X_batch, w, b), y_batch).sum().backward()
            sgd([w, b], 0.03, len(X_batch))
    result = fit(X, y, impl="scratch", device="cpu")
    torch.testing.assert_close(result.w, w.detach().reshape(-1), rtol=0, atol=0)
    assert result.b == b.item()


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_a_step_seeds_backward_with_its_kept_one_off_the_cpu(impl):
    # A plain backward() makes a tensor of ones for every step: on a GPU, one kernel of the
    # fifteen a chapter-sized scratch step runs. On the CPU a kept one costs a sympy import
    # (test_a_scratch_fit_on_the_cpu_imports_no_sympy), so the CPU keeps the plain call.
    from torchlr.train import MODELS, backward_seed
    assert backward_seed(torch.device("cpu")) is None
    kept = backward_seed(torch.device("meta"))  # any device but the CPU: a 0-d float32 one
    assert kept.shape == () and kept.dtype == torch.float32 and kept.device.type == "meta"
    X, y = chapter_data(num_examples=10)

    def step(seed):
        model = MODELS[impl](2, 0.03, torch.Generator().manual_seed(0), torch.device("cpu"))
        model.seed = seed  # what it holds on a GPU, here on the CPU
        with torch.profiler.profile() as prof:
            model.step(X, y)
        names = {event.name for event in prof.events()}
        assert "aten::addmm" in names  # the profiler saw the step
        return names, [p.detach().clone() for p in model.leaves()]

    plain, plain_params = step(None)
    seeded, seeded_params = step(torch.ones(()))
    assert "aten::ones_like" in plain and "aten::ones_like" not in seeded
    for a, b in zip(plain_params, seeded_params):  # the same update, to the bit
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_orders_drawn_ahead_leave_the_run_as_it_was(impl, request):
    X, y = chapter_data(num_examples=1003)  # a short last batch too
    options = dict(impl=impl, num_epochs=4, device="cpu", log_every=7)
    plain = fit(X, y, **options)
    draws = request.getfixturevalue("orders_ahead_on_cpu")
    ahead = fit(X, y, **options)
    assert draws == [1003] * 4  # one order an epoch, none drawn after the last
    assert torch.equal(ahead.w_history, plain.w_history) and ahead.b == plain.b
    assert ahead.losses == plain.losses
    assert torch.equal(ahead.train_losses, plain.train_losses)


@pytest.mark.parametrize("num_examples", [95, 1000])  # 95: a short last batch of 5
@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_fit_matches_the_chapter_in_float64_raw_ops(impl, num_examples):
    # The wiring tests above replay fit with torchlr's own pieces, so a bug in one of them
    # (squared_loss without its 1/2, say) is in the reference too; this one shares none.
    X, y = chapter_data(num_examples=num_examples)
    result = fit(X, y, impl=impl, device="cpu", num_epochs=3, batch_size=10, lr=0.03, seed=0)
    w0, ws, bs, losses, train_losses = raw_chapter_sgd(X, y, num_epochs=3)
    assert torch.equal(result.w_history[0], w0.reshape(-1)) and result.b_history[0] == 0
    torch.testing.assert_close(result.w_history.double(), ws, **PARAM_TOL)
    torch.testing.assert_close(result.b_history.double(), bs, **PARAM_TOL)
    torch.testing.assert_close(torch.tensor(result.losses, dtype=torch.float64), losses,
                               **LOSS_TOL)
    assert result.train_losses.shape == (3 * math.ceil(num_examples / 10),)
    torch.testing.assert_close(result.train_losses.double(), train_losses, **LOSS_TOL)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_chapter_run_reaches_the_noise_floor(seed, impl):
    X, y = chapter_data(seed=seed)
    result = fit(X, y, impl=impl, seed=seed, device="cpu")
    assert len(result.losses) == 3
    assert result.losses[0] > result.losses[1] > 0
    assert NOISE_FLOOR / 2 < result.losses[-1] < NOISE_FLOOR * 1.6
    assert (result.w - TRUE_W).abs().max() < 3e-3
    assert abs(result.b - TRUE_B) < 3e-3
    assert result.w.shape == (2,) and result.w.device.type == "cpu"
    assert isinstance(result.b, float)


def test_losses_are_the_mean_squared_loss_over_the_training_set():
    X, y = chapter_data()
    result = fit(X, y, num_epochs=2, device="cpu")
    for epoch in (1, 2):
        w = result.w_history[epoch].reshape(-1, 1)
        b = result.b_history[epoch].reshape(1)
        expected = ((X.double() @ w.double() + b.double() - y.double()) ** 2 / 2).mean()
        assert math.isclose(result.losses[epoch - 1], expected.item(), rel_tol=1e-4)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_long_run_matches_least_squares(impl):
    X, y = chapter_data()
    w_exact, b_exact = least_squares(X, y)
    # Larger batches quiet the minibatch noise; reshuffled epochs cancel most of the rest.
    result = fit(X, y, impl=impl, lr=0.03, num_epochs=40, batch_size=100, device="cpu")
    assert (result.w.double() - w_exact).abs().max() < 1e-4
    assert abs(result.b - b_exact) < 1e-4


def test_short_last_batch_takes_a_true_mean_gradient():
    """Exercise 7: n = 1003, batch 10 leaves a last batch of 3."""
    X, y = chapter_data(num_examples=1003)
    w0 = torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    X_last, y_last = X[-3:].double(), y[-3:].double()

    # torchlr's scratch step divides by the batch's real length.
    w = w0.clone().requires_grad_()
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    squared_loss(linreg(X_last, w, b), y_last).sum().backward()
    sgd([w, b], 0.03, len(X_last))

    residual = X_last @ w0 - y_last  # (3, 1)
    mean_grad = X_last.T @ residual / 3  # the true mean gradient
    torch.testing.assert_close(w.detach(), w0 - 0.03 * mean_grad)
    # The chapter's fixed divisor (10) would shrink this step by 3/10.
    fixed = w0 - 0.03 * (X_last.T @ residual) / 10
    assert (w.detach() - fixed).abs().max() > 1e-3

    # And fit agrees with optim.SGD on the mean loss, short batch included.
    result = fit(X, y, impl="scratch", num_epochs=1, device="cpu")
    g = torch.Generator().manual_seed(0)
    w2, b2 = init_params(2, generator=g)
    opt = torch.optim.SGD([w2, b2], lr=0.03)
    sizes = []
    for X_batch, y_batch in data_iter(10, X, y, generator=g):
        sizes.append(len(X_batch))
        opt.zero_grad()
        squared_loss(linreg(X_batch, w2, b2), y_batch).mean().backward()
        opt.step()
    assert sizes[-1] == 3
    torch.testing.assert_close(result.w, w2.detach().reshape(-1), rtol=0, atol=1e-6)


def test_drop_last_skips_the_short_batch():
    X, y = chapter_data(num_examples=1003)
    kept = fit(X, y, num_epochs=1, device="cpu")
    dropped = fit(X, y, num_epochs=1, device="cpu", drop_last=True)
    assert len(kept.train_losses) == 101 and len(dropped.train_losses) == 100
    torch.testing.assert_close(kept.train_losses[:100], dropped.train_losses)


def test_same_seed_same_run_and_global_rng_untouched():
    X, y = chapter_data()
    state = torch.get_rng_state()
    a = fit(X, y, seed=5, device="cpu")
    b = fit(X, y, seed=5, device="cpu")
    c = fit(X, y, seed=6, device="cpu")
    assert torch.equal(a.w_history, b.w_history) and a.losses == b.losses
    assert not torch.equal(a.w_history, c.w_history)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("log_every", [0, 3])
def test_train_losses_are_each_minibatch_mean_loss(log_every):
    # 95 rows in batches of 10: the last batch holds 5. With log_every=0 it is read with the
    # epoch's nine full batches, and its mean must divide by its own length, not the first
    # one's; with log_every=3 it is alone in its read (steps 1-3, 4-6, 7-9, then 10).
    X, y = chapter_data(num_examples=95)
    result = fit(X, y, num_epochs=2, batch_size=10, log_every=log_every, device="cpu")
    assert result.train_losses.shape == (20,)
    # Each minibatch's mean r^2 / 2 before its update, both epochs, from the raw-op replay.
    *_, expected = raw_chapter_sgd(X, y, num_epochs=2)
    torch.testing.assert_close(result.train_losses.double(), expected, **LOSS_TOL)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_losses_are_in_the_targets_units_with_standardize_target(impl):
    # The fit trains on (y - mean) / std, whose squared losses are std² times the target's;
    # the epoch and the minibatch losses alike are reported in the target's units. The
    # reference: the raw-op replay on the target scaled here, with float64 statistics, and
    # its losses scaled back.
    X, y = chapter_data(num_examples=95)
    y64 = y.double()
    y_mean, y_std = float(y64.mean()), float(y64.std(correction=0))
    assert y_std**2 > 10  # a loss left in the scaled units is off by this factor
    result = fit(X, y, impl=impl, standardize_target=True, num_epochs=2, batch_size=10,
                 log_every=3, device="cpu")
    *_, losses, train_losses = raw_chapter_sgd(X, (y64 - y_mean) / y_std, num_epochs=2)
    assert result.train_losses.shape == (20,)
    torch.testing.assert_close(result.train_losses.double(), train_losses * y_std**2,
                               **LOSS_TOL)
    torch.testing.assert_close(torch.tensor(result.losses, dtype=torch.float64),
                               losses * y_std**2, **LOSS_TOL)


def test_log_every_does_not_change_the_result():
    X, y = chapter_data()
    a = fit(X, y, log_every=1, device="cpu")
    b = fit(X, y, log_every=0, device="cpu")
    assert torch.equal(a.w_history, b.w_history)
    assert torch.equal(a.train_losses, b.train_losses)


def test_progress_reports_each_epoch_loss():
    X, y = chapter_data()
    seen = []
    result = fit(X, y, device="cpu", log_every=40, on_progress=seen.append)
    ends = [p for p in seen if p.epoch_loss is not None]
    assert [p.epoch_loss for p in ends] == result.losses
    assert [p.step for p in seen if p.epoch == 1] == [40, 80, 100]


def test_zero_epochs_returns_the_initial_parameters():
    X, y = chapter_data()
    result = fit(X, y, num_epochs=0, device="cpu")
    w0, b0 = init_params(2, generator=torch.Generator().manual_seed(0))
    assert result.losses == [] and torch.equal(result.w, w0.detach().reshape(-1))
    assert result.b == 0.0
    assert result.train_losses.shape == (0,) and result.epoch_seconds == []  # no step ran


def test_config_object_and_overrides():
    X, y = chapter_data()
    config = FitConfig(impl="concise", num_epochs=1, device="cpu")
    result = fit(X, y, config, lr=0.05)
    assert result.config.lr == 0.05 and result.impl == "concise"
    assert config.lr == 0.03  # the caller's config is not mutated
    with pytest.raises(TypeError, match="no_such_option"):
        fit(X, y, no_such_option=1)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_divergence_stops_with_epoch_and_step(impl):
    X, y = chapter_data()
    with pytest.raises(torchlr.DivergenceError) as info:
        fit(X, y, impl=impl, lr=5.0, device="cpu")
    message = str(info.value)
    assert "epoch 1" in message and "step" in message and "smaller learning rate" in message
    # The named step is the first non-finite minibatch loss.
    step = int(message.split("step ")[1].split()[0])
    g = torch.Generator().manual_seed(0)
    w, b = init_params(2, generator=g)
    first_bad = None
    for i, (X_batch, y_batch) in enumerate(data_iter(10, X, y, generator=g), start=1):
        loss = squared_loss(linreg(X_batch, w, b), y_batch).sum()
        if not torch.isfinite(loss):
            first_bad = i
            break
        loss.backward()
        sgd([w, b], 5.0, len(X_batch))
    assert step == first_bad


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_a_loss_too_large_for_float32_before_any_update_points_to_scaling(impl):
    X, y = chapter_data()
    y = y * 1e19  # finite, but (y_hat - y)^2 overflows float32 on the first batch
    assert torch.isfinite(y).all()
    with pytest.raises(torchlr.DivergenceError, match=r"before any update.*standardize") as info:
        fit(X, y, impl=impl, device="cpu")
    assert "learning rate" not in str(info.value)  # no rate could help


def test_an_outlier_is_named_whichever_loss_it_first_makes_inf():
    # One batch of all rows: 1e25 makes the first minibatch loss inf, before any update;
    # 1e20 leaves that loss finite (w is small at the start) and the epoch loss, after the
    # step, inf. Either way the value is named, not the rate.
    for value, words in ((1e25, "The first minibatch loss is already inf, before any update"),
                         (1e20, "The epoch loss became inf at epoch 1, step 1")):
        X, y = chapter_data()
        X[500, 1] = value
        with pytest.raises(torchlr.DivergenceError) as info:
            fit(X, y, batch_size=len(X), device="cpu")
        message = str(info.value)
        assert message.startswith(words + ": the data hold a feature value of "
                                  f"{value:.3g} (as trained on)"), message
        assert "learning rate" not in message


@pytest.mark.parametrize("column", ["target", "feature"])
def test_an_outlier_in_the_held_out_rows_is_named_not_printed_as_an_inf_loss(column):
    # The held-out rows are never trained on, so training's checks never met the value: the
    # validation loss was inf, printed as such, and early stopping compared infs.
    X, y = chapter_data()
    _, val = train_val_split(len(X), 0.2, seed=0)
    row = int(val[3])
    if column == "target":
        y[row] = 1e25
    else:
        X[row, 0] = 1e25
    with pytest.raises(torchlr.DivergenceError) as info:
        fit(X, y, val_fraction=0.2, early_stopping=1, device="cpu")
    assert str(info.value) == (
        f"The validation loss became inf at epoch 1: the held-out rows hold a {column} value "
        f"of 1e+25 (as trained on), whose square is beyond float32's range; remove such rows "
        f"or scale the data (standardize=True, standardize_target=True).")


@pytest.mark.parametrize("column", ["target", "feature"])
def test_an_outlier_too_large_to_square_is_named_not_blamed_on_the_rate(column):
    X, y = chapter_data()
    # Row 500 is not in the first batch (the first loss is the case above), and 1e20's square
    # is beyond float32 at any rate: the plain SGD loop overflows on it too.
    if column == "target":
        y[500] = 1e20
    else:
        X[500, 0] = 1e20
    assert SQUARE_LIMIT < 1e20
    with pytest.raises(torchlr.DivergenceError) as info:
        fit(X, y, impl="scratch", lr=1e-6, device="cpu")
    message = str(info.value)
    assert f"a {column} value of 1e+20" in message and "standardize" in message
    assert "learning rate" not in message and "before any update" not in message
    # The first step of a later epoch came after updates: the rate is blamed there.
    later = str(train._divergence("minibatch loss", math.inf, 2, 1, 0.03, None))
    assert later.startswith("Training diverged: the minibatch loss became inf at epoch 2, "
                            "step 1 (lr=0.03)")
    # An ordinary divergence still names the rate.
    with pytest.raises(torchlr.DivergenceError, match="try a smaller learning rate"):
        fit(*chapter_data(), lr=5.0, device="cpu")


def test_a_divergence_on_large_features_names_standardize_beside_the_rate():
    # Columns in the hundreds (an area in m², say): the Hessian's trace, mean |x|² + 1, is
    # some 10^4 against d + 1 = 3 for standardized ones, so lr=0.03 diverges where the
    # same rate on the standardized columns converges.
    X, _ = chapter_data()
    X = X * 50 + 200
    y = X @ torch.tensor([0.02, -0.03]) + 1.0
    assert train._unscaled_features(X) and not train._unscaled_features(chapter_data()[0])
    with pytest.raises(torchlr.DivergenceError) as info:
        fit(X, y, lr=0.03, num_epochs=1, device="cpu")
    assert str(info.value).endswith("try a smaller learning rate, or standardize the "
                                    "features, whose scale makes small rates necessary "
                                    "(standardize=True).")
    scaled = fit(X, y, lr=0.03, num_epochs=3, standardize=True, device="cpu")
    assert scaled.losses[-1] < 1e-6  # the hint's fix works: y is exact in X
    # Standardized columns that diverge at a rate too large: the rate alone is named.
    with pytest.raises(torchlr.DivergenceError) as info:
        fit(X, y, lr=5.0, standardize=True, device="cpu")
    assert str(info.value).endswith("try a smaller learning rate.")
    # The chapter's unit-scale columns: standardizing would not help, so it is not named.
    with pytest.raises(torchlr.DivergenceError) as info:
        fit(*chapter_data(), lr=5.0, device="cpu")
    assert "standardize" not in str(info.value)


def test_numpy_and_integer_inputs_are_converted():
    X, y = chapter_data()
    a = fit(X.numpy(), y.numpy().reshape(-1), num_epochs=1, device="cpu")
    b = fit(X, y, num_epochs=1, device="cpu")
    assert torch.equal(a.w, b.w)
    Xi = torch.randint(-3, 4, (200, 2), generator=torch.Generator().manual_seed(0))
    yi = Xi @ torch.tensor([2, -1]) + 3
    result = fit(Xi, yi, num_epochs=20, lr=0.02, device="cpu")
    assert (result.w - torch.tensor([2.0, -1.0])).abs().max() < 1e-2


def test_big_endian_and_long_double_arrays_train_as_native_float64_does():
    # FITS files and network formats hold big-endian arrays; numpy's longdouble has no torch
    # type. Both are the same numbers, and train as their native float64 copies do.
    X, y = chapter_data(num_examples=100)
    X64, y64 = X.double().numpy(), y.double().numpy()
    native = fit(X64, y64, num_epochs=1, device="cpu")
    for dtype in (">f8", np.longdouble):
        other = fit(X64.astype(dtype), y64.astype(dtype), num_epochs=1, device="cpu")
        assert other.losses == native.losses and torch.equal(other.w, native.w)
        w, b = torchlr.least_squares(X64.astype(dtype), y64.astype(dtype))
        assert torch.equal(w, torchlr.least_squares(X64, y64)[0])
        # A value float32 cannot hold is named as for a native array (the check reads the
        # caller's own array, which torch.as_tensor refuses in these two layouts).
        for value, words in ((1e300, "beyond the range of float32"), (np.inf, "contains inf")):
            bad = X64.copy()
            bad[3, 1] = value
            with pytest.raises(ValueError, match=f"^features .*{words}"):
                fit(bad.astype(dtype), y64, device="cpu")
            with pytest.raises(ValueError, match=f"^labels .*{words}"):
                torchlr.evaluate(X64.astype(dtype), bad[:, 1:].astype(dtype), [1.0, 1.0], 0.0)


def test_evaluate_checks_and_converts_its_inputs_as_fit_does():
    X, y = chapter_data(num_examples=100)
    Xi = torch.randint(-3, 4, (100, 2), generator=torch.Generator().manual_seed(0))
    w, b = torch.tensor([2.0, -3.4]), 4.2
    # Integer features are numbers like any others: the weights are not cut to integers.
    exact = ((Xi.double() @ w.double() + b - y.double().reshape(-1)) ** 2 / 2).mean()
    torch.testing.assert_close(torchlr.evaluate(Xi, y, w, b).double(), exact, rtol=1e-6,
                               atol=0)
    assert torch.equal(torchlr.evaluate(X.numpy(), y.numpy(), w.numpy(), [b]),
                       torchlr.evaluate(X, y, w.reshape(-1, 1), torch.tensor([b])))
    for args, error, words in [
        ((X, y, torch.ones(3), b), ValueError, ["w", "2 value(s)", "(3,)"]),
        ((X, y, [1.0, 2.0, 3.0], b), ValueError, ["w", "2 value(s)", "(3,)"]),
        ((X, y, [True, False], b), TypeError, ["w", "real numbers", "bool"]),
        ((X, y, w, torch.ones(2)), ValueError, ["b", "1 value(s)", "(2,)"]),
        ((X, y[:50], w, b), ValueError, ["inconsistent", "100", "50"]),
        ((X[:0], y[:0], w, b), ValueError, ["features", "empty"]),
        ((X, y, "w", b), TypeError, ["w", "'w'"]),
        ((X, y, w, None), TypeError, ["b", "None"]),
    ]:
        with pytest.raises(error) as info:
            torchlr.evaluate(*args)
        assert all(word in str(info.value) for word in words), (words, str(info.value))
    with pytest.raises(TypeError, match="worker_thread must be a bool"):
        torchlr.evaluate(X, y, w, b, worker_thread="yes")


def test_first_nonfinite_finds_the_first_bad_value_even_when_the_sum_overflows():
    from torchlr.train import first_nonfinite

    assert first_nonfinite(torch.tensor([3e38, 3e38])) is None  # finite; the sum is inf
    assert first_nonfinite(torch.tensor([1.0, float("nan"), float("inf")])) == 1
    assert first_nonfinite(torch.tensor([1.0, 2.0, float("inf"), -float("inf")])) == 2
    assert first_nonfinite(torch.tensor([0.5, 0.25])) is None


def test_numpy_scalar_options_write_a_checkpoint_that_loads(tmp_path):
    # np.int64 and np.float64 options were stored as they were: torch.load(weights_only=True)
    # then refused the checkpoint, and the next fit refused to overwrite it.
    np = pytest.importorskip("numpy")
    X, y = chapter_data(num_examples=100)
    options = dict(batch_size=np.int64(10), lr=np.float64(0.03), seed=np.int64(3),
                   val_fraction=np.float64(0.2), num_epochs=np.int64(2), device="cpu")
    path = tmp_path / "run.pt"  # a Path, stored as str
    result = fit(X, y, save=path, true_b=np.float64(4.2), **options)
    plain = fit(X, y, batch_size=10, lr=0.03, seed=3, val_fraction=0.2, num_epochs=2,
                device="cpu")
    assert result.losses == plain.losses
    assert type(result.config.lr) is float and type(result.config.seed) is int
    model = torchlr.load_model(path)
    torch.testing.assert_close(model.predict(X), result.predict(X), rtol=0, atol=0)
    fit(X, y, save=path, **options)  # its own checkpoint: overwritten


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_trains_under_a_callers_no_grad_or_inference_mode(mode, impl):
    X, y = chapter_data()
    expected = fit(X, y, impl=impl, device="cpu")
    with mode():
        result = fit(X, y, impl=impl, device="cpu")
        assert not torch.is_grad_enabled()  # the caller's mode is back
    assert result.losses == expected.losses


@pytest.mark.parametrize("default", [torch.float64, torch.float16, torch.bfloat16])
def test_any_default_dtype_trains_the_same_float32_model(default):
    X, y = chapter_data()
    # 257 is not a bfloat16 (8 significant bits): the per-batch losses divide by it exactly.
    config = dict(batch_size=257, device="cpu")
    expected = {impl: fit(X, y, impl=impl, **config) for impl in ("scratch", "concise")}
    before = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        X64, y64 = torchlr.synthetic_data(TRUE_W, TRUE_B, 1000,
                                          generator=torch.Generator().manual_seed(0))
        assert X64.dtype == torch.float32
        for impl, want in expected.items():
            got = fit(X, y, impl=impl, **config)
            assert got.losses == want.losses
            assert got.train_losses.dtype == torch.float32
            assert torch.equal(got.train_losses, want.train_losses)
            assert torch.equal(got.w, want.w) and got.b == want.b
    finally:
        torch.set_default_dtype(before)


def test_a_read_only_numpy_array_trains_without_a_warning(tmp_path, recwarn):
    np = pytest.importorskip("numpy")
    X, y = chapter_data(num_examples=100)
    np.save(tmp_path / "X.npy", X.numpy())
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    assert not mapped.flags.writeable
    result = fit(mapped, y, device="cpu")
    assert result.losses == fit(X, y, device="cpu").losses
    assert [str(w.message) for w in recwarn] == []


def test_evaluate_and_predict_take_a_results_own_parameters():
    X, y = chapter_data()
    result = fit(X, y, device="cpu", config=FitConfig(num_epochs=2))  # config by keyword too
    assert len(result.losses) == 2
    # The fit's last epoch loss, from the (d,) w and float b it returns, with y (n,) or (n, 1).
    for labels in (y, y[:, 0]):
        assert float(torchlr.evaluate(X, labels, result.w, result.b)) == result.losses[-1]
    by_hand = X @ result.w.reshape(-1, 1) + torch.tensor(result.b, dtype=torch.float32)
    torch.testing.assert_close(result.predict(X), by_hand)
    for wrong in (torch.ones(3, 3), torch.ones(3)):
        with pytest.raises(ValueError, match=r"shape \(n, 2\).*got shape"):
            result.predict(wrong)


def test_fit_takes_its_data_by_keyword_too():
    # fit(features=X, labels=y) failed with "missing 2 required positional arguments".
    X, y = chapter_data(num_examples=100)
    by_position = fit(X, y, FitConfig(num_epochs=2, device="cpu"))
    by_keyword = fit(features=X, labels=y, num_epochs=2, device="cpu")
    assert torch.equal(by_keyword.w, by_position.w) and by_keyword.losses == by_position.losses


def test_fit_takes_lists_of_numbers_as_it_takes_tensors():
    # It refused them, while least_squares and predict took them.
    X, y = chapter_data(num_examples=100)
    expected = fit(X, y, num_epochs=2, device="cpu")
    for features, labels in ((X.tolist(), y.tolist()), (X.tolist(), y.reshape(-1).tolist())):
        got = fit(features, labels, num_epochs=2, device="cpu")
        assert torch.equal(got.w, expected.w) and got.losses == expected.losses
    assert torch.equal(torchlr.evaluate(X.tolist(), y.tolist(), expected.w, expected.b),
                       torchlr.evaluate(X, y, expected.w, expected.b))
    with pytest.raises(ValueError, match="labels holds 1 value.* beyond the range of float32"):
        fit(X[:2].tolist(), [1.0, 1e39], device="cpu")
    with pytest.raises(TypeError, match="labels must be a tensor, array or sequence of numbers"):
        fit(X[:2].tolist(), ["1.0", "2.0"], device="cpu")


def test_predict_takes_what_fit_takes_and_refuses_the_rest(tmp_path):
    X, y = chapter_data(num_examples=100)
    result = fit(X, y, num_epochs=1, device="cpu", save=tmp_path / "m.pt")
    loaded = torchlr.load_model(tmp_path / "m.pt")
    for model in (result, loaded):
        expected = model.predict(X[:3])
        for same in (X[:3].double(), X[:3].numpy(), X[:3].tolist()):
            assert torch.equal(model.predict(same), expected)
        for bad, words in [(X[:3] > 0, "bool"), (X[:3].to(torch.complex64), "complex64"),
                           (X[:3].to_sparse(), "dense"), ("abc", "str"),
                           ((X[:3] > 0).tolist(), "bool")]:
            with pytest.raises(TypeError, match=f"features .*{words}"):
                model.predict(bad)


def test_a_stream_brings_its_own_labels(tmp_path):
    np = pytest.importorskip("numpy")
    from torchlr.stream import BlockStream

    X, y = chapter_data(num_examples=50)
    np.save(tmp_path / "t.npy", torch.cat([X, y], 1).numpy())
    with pytest.raises(ValueError, match="labels must be None"):
        fit(BlockStream(tmp_path / "t.npy"), y, device="cpu")


def test_epoch_seconds_are_each_epochs_own_time():
    import time

    X, y = chapter_data()
    start = time.perf_counter()
    result = fit(X, y, num_epochs=3, device="cpu")
    wall = time.perf_counter() - start
    assert len(result.epoch_seconds) == 3
    assert all(0 < s for s in result.epoch_seconds) and sum(result.epoch_seconds) <= wall


def test_a_non_finite_epoch_loss_is_a_divergence_named_by_its_epoch(monkeypatch):
    # Minibatch losses can stay finite while the loss over all rows is not (a row that
    # drop_last never trains on, say): the epoch's own check names it.
    import torchlr.train as train_module

    real = train_module._epoch_end
    calls = []

    def second_epoch_overflows(*args, **kwargs):
        calls.append(1)
        loss, w, b = real(*args, **kwargs)
        return (math.inf if len(calls) == 2 else loss), w, b

    monkeypatch.setattr(train_module, "_epoch_end", second_epoch_overflows)
    X, y = chapter_data(num_examples=100)
    with pytest.raises(torchlr.DivergenceError,
                       match=r"the epoch loss became inf at epoch 2, step 10 \(lr=0\.03\)"):
        fit(X, y, num_epochs=3, device="cpu")


def test_fit_config_takes_paths_and_up_to_1024_threads(tmp_path):
    from pathlib import Path

    config = FitConfig(save=tmp_path / "m.pt", logdir=Path("runs"), threads=1024)
    config.validate()
    # Kept as text: checkpoints and TensorBoard's config table store them as str.
    assert config.save == str(tmp_path / "m.pt") and config.logdir == "runs"
    assert config.threads == 1024
    with pytest.raises(ValueError, match="threads must be at most 1024, got 1025"):
        FitConfig(threads=1025).validate()


def test_a_scratch_fit_on_the_cpu_imports_no_sympy():
    # backward(gradient) checks the gradient's shape with torch's symbolic-shape tools, whose
    # first use imports sympy: 0.3-0.45 s that a process's first epoch paid (0.3 s against
    # 0.011 s for the next). Only a fresh process shows it. (Concise imports it anyway:
    # torch.optim.SGD's constructor imports torch._dynamo.)
    import subprocess
    import sys

    code = ("import sys, torch, torchlr\n"
            "X = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))\n"
            "torchlr.fit(X, X.sum(1), num_epochs=1, device='cpu')\n"
            "print('sympy' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "False\n"


def test_a_split_without_early_stopping_keeps_the_last_epochs_params():
    # Only early stopping keeps the best epoch: a split alone returns the last one.
    X, y = chapter_data()
    result = fit(X, y, num_epochs=8, lr=0.3, batch_size=10, val_fraction=0.2,
                 early_stopping=0, seed=0, device="cpu")
    assert min(result.val_losses) < result.val_losses[-1]  # the last epoch is not the best
    assert result.best_epoch is None
    assert torch.equal(result.w, result.w_history[-1])
    assert result.b == pytest.approx(float(result.b_history[-1]), abs=0)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
@pytest.mark.parametrize("streamed", [False, True])
def test_a_standardized_constant_column_gets_no_weight(impl, streamed, tmp_path):
    # Standardized, the column is all zeros: no gradient moved its weight from its random
    # start (-0.0218), and in original units b took that weight times the column's 1234.567
    # (31.1 where least squares says 4.2).
    X, y = chapter_data(num_examples=1003)
    X = torch.cat([X, torch.full((len(X), 1), 1234.567)], 1)
    data = (X, y)
    if streamed:
        np.save(tmp_path / "t.npy", torch.cat([X, y.reshape(-1, 1)], 1).numpy())
        data = (torchlr.BlockStream(tmp_path / "t.npy", block_rows=77), None)
    result = fit(*data, impl=impl, standardize=True, device="cpu")
    w_exact, b_exact = least_squares(X, y)  # centred: the constant column's weight is 0
    assert w_exact[2] == 0 and bool((result.w_history[:, 2] == 0).all())
    torch.testing.assert_close(result.w.double(), w_exact, rtol=0, atol=2e-3)
    assert result.b == pytest.approx(b_exact, abs=2e-3)


def test_a_column_major_table_of_unrefined_losses_fits_as_its_rows_do():
    # Targets near 0 (M < 1.25 n): the epoch loss is never summed again in float64, so it
    # is BLAS's float32 sum, which depends on the layout unless fit copies the table to rows
    # (the test below, on targets near 3,000, now sits inside the float64 refinement).
    g = torch.Generator().manual_seed(1)
    X, y = torchlr.synthetic_data(torch.randn(9, generator=g), 0.5, 3000, generator=g)
    by_column = X.T.contiguous().T
    assert not by_column.is_contiguous() and torch.equal(by_column, X)
    for standardize in (False, True):
        a = torchlr.fit(X, y, lr=0.03, num_epochs=3, device="cpu", standardize=standardize)
        b = torchlr.fit(by_column, y, lr=0.03, num_epochs=3, device="cpu",
                        standardize=standardize)
        assert a.losses == b.losses
        assert torch.equal(a.w_history, b.w_history) and torch.equal(a.b_history, b.b_history)
    assert torch.equal(torchlr.evaluate(X, y, a.w, a.b), torchlr.evaluate(by_column, y, a.w, a.b))


def test_a_column_major_table_trains_and_predicts_as_its_rows_do():
    # A pandas DataFrame's .values is often column-major: the epoch loss, summed by BLAS in
    # that layout, printed another 5th digit (0.509885 for 0.509890) than the same rows.
    g = torch.Generator().manual_seed(0)
    area = torch.rand(400, generator=g) * 2000 + 9000
    age = torch.rand(400, generator=g) * 100 + 450
    X = torch.stack([area, age], 1)
    y = 0.3 * area - 2 * age + 1000 + torch.randn(400, generator=g)
    by_column = X.T.contiguous().T
    assert not by_column.is_contiguous() and torch.equal(by_column, X)
    for given in (by_column, by_column.numpy()):
        a = torchlr.fit(X, y, standardize=True, lr=0.1, device="cpu")
        b = torchlr.fit(given, y, standardize=True, lr=0.1, device="cpu")
        assert a.losses == b.losses
        assert torch.equal(a.w_history, b.w_history) and torch.equal(a.b_history, b.b_history)
        assert torch.equal(a.predict(X), b.predict(given))


def test_a_result_prints_as_a_short_summary_of_itself():
    # The dataclass's repr printed every tensor and the whole config (5 kB at 50 columns).
    X = torch.randn(100, 50, generator=torch.Generator().manual_seed(0))
    result = fit(X, X.sum(1), num_epochs=2, device="cpu")
    text = repr(result)
    assert len(text) < 250 and str(result) == text
    assert text.startswith("FitResult(impl='scratch', device='cpu', epochs=2, loss=")
    assert f"loss={result.losses[-1]:.6g}," in text and f"b={result.b:.6g})" in text
    assert f"w=[{result.w[0].item():.6g}, " in text and "... (50 in all)]" in text


def test_a_results_summary_gives_the_loss_of_the_epoch_it_kept():
    # With early stopping, w and b are the kept epoch's: the summary printed the last
    # epoch's loss beside them.
    X, y = chapter_data(num_examples=200)
    y = y + 3.0 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    result = fit(X, y, num_epochs=40, val_fraction=0.3, early_stopping=2, lr=0.3,
                 batch_size=2, device="cpu")
    assert result.best_epoch is not None and result.best_epoch < len(result.losses)
    text = repr(result)
    assert f"best_epoch={result.best_epoch}, loss={result.losses[result.best_epoch - 1]:.6g}," \
        in text
    assert torch.equal(result.w, result.w_history[result.best_epoch])
