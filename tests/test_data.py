import math

import numpy as np
import pytest
import torch
from conftest import TRUE_B, TRUE_W
from hypothesis import given, settings
from hypothesis import strategies as st

import torchlr
from torchlr.data import data_iter, synthetic_data


def test_synthetic_data_shapes_and_model():
    g = torch.Generator().manual_seed(1)
    X, y = synthetic_data(TRUE_W, TRUE_B, 5000, noise=0.01, generator=g)
    assert X.shape == (5000, 2) and X.dtype == torch.float32
    assert y.shape == (5000, 1) and y.dtype == torch.float32
    residual = y[:, 0] - (X @ TRUE_W + TRUE_B)
    # The residual is the noise: mean ~0, std ~0.01 (5000 draws: std error of std ~1e-4).
    assert abs(residual.mean()) < 1e-3
    assert abs(residual.std() - 0.01) < 1e-3
    assert abs(X.mean()) < 0.05 and abs(X.std() - 1) < 0.05


def test_synthetic_data_noise_free_is_exact():
    X, y = synthetic_data([1.5, -2.0, 0.5], -1.0, 50, noise=0.0,
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y[:, 0], X @ torch.tensor([1.5, -2.0, 0.5]) - 1.0)


def test_synthetic_data_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = synthetic_data(TRUE_W, TRUE_B, 100, generator=torch.Generator().manual_seed(7))
    b = synthetic_data(TRUE_W, TRUE_B, 100, generator=torch.Generator().manual_seed(7))
    c = synthetic_data(TRUE_W, TRUE_B, 100, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_synthetic_data_rejects_bad_num_examples(bad):
    with pytest.raises((ValueError, TypeError), match="num_examples"):
        synthetic_data(TRUE_W, TRUE_B, bad)


def _epoch(n, batch_size, seed, drop_last=False, shuffle=True, d=3):
    X = torch.arange(n * d, dtype=torch.float32).reshape(n, d)
    y = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    g = torch.Generator().manual_seed(seed)
    return X, y, list(data_iter(batch_size, X, y, generator=g, drop_last=drop_last,
                                shuffle=shuffle))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), batch_size=st.integers(1, 64), seed=st.integers(0, 2**31))
def test_each_example_once_per_epoch_with_true_batch_sizes(n, batch_size, seed):
    X, y, batches = _epoch(n, batch_size, seed)
    sizes = [len(xb) for xb, _ in batches]
    assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    seen = torch.cat([yb[:, 0] for _, yb in batches]).long()
    assert sorted(seen.tolist()) == list(range(n))
    for xb, yb in batches:  # rows stay paired with their labels
        torch.testing.assert_close(xb, X[yb[:, 0].long()])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), batch_size=st.integers(1, 64), seed=st.integers(0, 2**31))
def test_drop_last_drops_only_the_short_batch(n, batch_size, seed):
    _, _, batches = _epoch(n, batch_size, seed, drop_last=True)
    assert [len(xb) for xb, _ in batches] == [batch_size] * (n // batch_size)
    seen = torch.cat([yb[:, 0] for _, yb in batches]).long().tolist() if batches else []
    assert len(set(seen)) == len(seen) == (n // batch_size) * batch_size


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 200), batch_size=st.integers(1, 64), seed=st.integers(0, 2**31))
def test_same_seed_same_order(n, batch_size, seed):
    _, _, a = _epoch(n, batch_size, seed)
    _, _, b = _epoch(n, batch_size, seed)
    assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(a, b))


def test_new_order_each_epoch_from_one_generator():
    X = torch.randn(100, 2)
    y = torch.arange(100.0).reshape(-1, 1)
    g = torch.Generator().manual_seed(0)
    first = torch.cat([yb for _, yb in data_iter(10, X, y, generator=g)])
    second = torch.cat([yb for _, yb in data_iter(10, X, y, generator=g)])
    assert not torch.equal(first, second)
    assert torch.equal(first.sort(0).values, second.sort(0).values)


def test_order_is_the_generators_randperm():
    # The order is exactly randperm(n) from the generator: nothing else consumes it.
    X = torch.randn(37, 2)
    y = torch.arange(37.0).reshape(-1, 1)
    order = torch.randperm(37, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    got = torch.cat([yb for _, yb in data_iter(8, X, y, generator=g)])
    assert torch.equal(got[:, 0].long(), order)


def test_no_shuffle_keeps_file_order():
    X, y, batches = _epoch(23, 5, 0, shuffle=False)
    assert torch.equal(torch.cat([yb for _, yb in batches]), y)


def test_data_iter_validates_eagerly():
    X, y = torch.randn(10, 2), torch.randn(9, 1)
    with pytest.raises(ValueError, match=r"10.*9"):
        data_iter(2, X, y)
    with pytest.raises(ValueError, match="batch_size"):
        data_iter(0, X, X[:, :1])
    with pytest.raises(TypeError, match="batch_size"):
        data_iter(2.0, X, X[:, :1])
    # A flag given "no" would otherwise count as set: drop the short batch, or shuffle.
    for flag in ("shuffle", "drop_last", "reuse_buffer", "prefetch"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool, got 'no'"):
            data_iter(3, X, X[:, :1], **{flag: "no"})


def test_public_names():
    assert torchlr.data_iter is data_iter and torchlr.synthetic_data is synthetic_data


def test_in_order_batches_never_include_an_empty_one():
    # split() of no rows gives one empty piece: sgd then divided by a batch length of 0.
    X, y = torch.randn(7, 2), torch.randn(7, 1)
    assert list(data_iter(10, X, y, shuffle=False, drop_last=True)) == []
    assert list(data_iter(3, X[:0], y[:0], shuffle=False)) == []
    assert [len(b) for b, _ in data_iter(3, X, y, shuffle=False)] == [3, 3, 1]
    assert [len(b) for b, _ in data_iter(3, X[:1], y[:1], shuffle=False)] == [1]


def test_data_iter_and_synthetic_data_refuse_what_they_cannot_use():
    with pytest.raises(TypeError, match="features must be a torch.Tensor, got ndarray"):
        list(data_iter(2, torch.randn(4, 2).numpy(), torch.randn(4, 1)))
    with pytest.raises(ValueError, match="w must be finite"):
        synthetic_data([float("nan"), 1.0], 4.2, 5)
    for noise in (-0.01, math.inf, math.nan):  # a finite noise below 0, or any non-finite
        with pytest.raises(ValueError, match=f"noise must be finite and >= 0, got {noise!r}"):
            synthetic_data([2.0, -3.4], 4.2, 5, noise=noise)
    for b in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match=f"b must be finite, got {b!r}"):
            synthetic_data([2.0, -3.4], b, 5)
    # Each named, not left to torch or Python to fail on (or, for w, to flatten or accept).
    for args, kwargs, error, message in [
        (([2.0], "x", 5), {}, TypeError, "b must be a real number, got str: 'x'"),
        (([2.0], torch.tensor([1.0, 2.0]), 5), {}, ValueError,
         r"b must be one number, got shape \(2,\)"),
        (([2.0], True, 5), {}, TypeError, "b must be a real number, got bool"),
        (([2.0], 4.2, 5, "0.1"), {}, TypeError, "noise must be a real number, got str"),
        (([2.0], 4.2, 5), {"generator": 5}, TypeError, "generator must be a torch.Generator"),
        (([[1.0, 2.0], [3.0, 4.0]], 4.2, 5), {}, ValueError,
         r"w must hold one weight per feature.*\(2, 2\)"),
        (([], 4.2, 5), {}, ValueError, r"w must hold one weight per feature.*\(0,\)"),
        (("ab", 4.2, 5), {}, TypeError,
         "w must be a tensor, array or sequence of numbers, got str"),
    ]:
        with pytest.raises(error, match=message):
            synthetic_data(*args, **kwargs)
    with pytest.raises(ValueError, match="features must have one row per example, got a 0-d"):
        data_iter(2, torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        data_iter(2, torch.randn(4, 2), torch.randn(4, 1), generator=5)


def test_synthetic_data_takes_w_and_b_in_the_forms_users_write():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    X, y = synthetic_data([2.0, -3.4], 4.2, 20, generator=g())
    for w, b in [(torch.tensor([[2.0], [-3.4]]), torch.tensor(4.2)), (np.array([2.0, -3.4]),
                                                                     np.float64(4.2)),
                 (torch.tensor([2.0, -3.4], requires_grad=True), torch.tensor([4.2]))]:
        X2, y2 = synthetic_data(w, b, 20, generator=g())
        assert torch.equal(X2, X) and torch.equal(y2, y)


def test_data_drawn_without_a_generator_differs_run_to_run():
    # Seeded from OS entropy: unseeded calls are random, not torch's fixed default seed.
    from torchlr.data import fresh_generator

    first, second = fresh_generator(), fresh_generator()
    assert first.initial_seed() != second.initial_seed()
    assert first.initial_seed() != torch.Generator().initial_seed()
    X1, _ = torchlr.synthetic_data(torch.tensor([2.0, -3.4]), 4.2, 50)
    X2, _ = torchlr.synthetic_data(torch.tensor([2.0, -3.4]), 4.2, 50)
    assert not torch.equal(X1, X2)


def test_orders_drawn_ahead_are_those_drawn_in_turn_and_so_are_the_generator_states():
    from torchlr.data import OrdersAhead, batch_order

    in_turn, ahead_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ahead = OrdersAhead(1000, ahead_gen)
    try:
        for epoch in range(4):
            order = ahead.take()
            if epoch < 3:
                ahead.draw_next()  # drawn while this epoch would train
            assert torch.equal(order, batch_order(1000, generator=in_turn))
            # What a checkpoint saves after this epoch: the state before the next draw.
            assert torch.equal(ahead_gen.get_state(), in_turn.get_state())
        ahead.draw_next()  # drawn, never taken: the generator stays where it was
        assert torch.equal(ahead_gen.get_state(), in_turn.get_state())
    finally:
        ahead.close()


def test_orders_are_drawn_ahead_only_for_large_data_on_a_gpu():
    from torchlr.data import AHEAD_MIN_ROWS, OrdersAhead, orders_ahead

    gen, cuda = torch.Generator(), torch.device("cuda")
    made = orders_ahead(AHEAD_MIN_ROWS, gen, cuda, "randperm")
    assert isinstance(made, OrdersAhead)
    made.close()
    assert orders_ahead(AHEAD_MIN_ROWS - 1, gen, cuda, "randperm") is None
    assert orders_ahead(AHEAD_MIN_ROWS, gen, cuda, "hashed") is None  # drawn on the GPU
    assert orders_ahead(10 ** 7, gen, torch.device("cpu"), "randperm") is None
