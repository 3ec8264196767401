"""CUDA paths: run wherever CUDA is present, skipped elsewhere."""

import warnings
from collections import Counter

import pytest
import torch
from conftest import chapter_data, requires_cuda

from torchlr import data, fit
from torchlr.data import HASHED_ON_DEVICE_ROWS, data_iter, hashed_order
from torchlr.scratch import init_params

pytestmark = [pytest.mark.cuda, requires_cuda]


@pytest.fixture
def hashed_on_gpu(monkeypatch):
    """Every permutation="hashed" order computed on the GPU, whatever the rows."""
    monkeypatch.setattr(data, "HASHED_ON_DEVICE_ROWS", 0)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_cuda_matches_cpu(impl):
    X, y = chapter_data(num_examples=1003)
    cpu = fit(X, y, impl=impl, device="cpu", num_epochs=3)
    gpu = fit(X, y, impl=impl, device="cuda", num_epochs=3)
    assert gpu.device.startswith("cuda")
    assert gpu.w.device.type == "cpu" and isinstance(gpu.b, float)
    torch.testing.assert_close(gpu.w_history, cpu.w_history, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(gpu.losses), torch.tensor(cpu.losses),
                               rtol=1e-3, atol=1e-8)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_analytic_gradient_matches_autograd_on_cuda(impl):
    X, y = chapter_data(num_examples=1003)
    autograd = fit(X, y, impl=impl, device="cuda", num_epochs=3)
    analytic = fit(X, y, impl=impl, device="cuda", num_epochs=3, gradient="analytic")
    for name in ("w_history", "b_history", "train_losses"):
        torch.testing.assert_close(getattr(analytic, name), getattr(autograd, name),
                                   rtol=1e-4, atol=1e-6)


def test_scratch_and_concise_agree_on_cuda():
    X, y = chapter_data(num_examples=1003)
    s = fit(X, y, impl="scratch", device="cuda")
    c = fit(X, y, impl="concise", device="cuda")
    assert (s.w_history - c.w_history).abs().max() < 1e-6


def test_batch_order_does_not_depend_on_device():
    X, y = chapter_data(num_examples=257)
    y = torch.arange(257.0).reshape(-1, 1)
    cpu = [yb for _, yb in data_iter(16, X, y, generator=torch.Generator().manual_seed(3))]
    gpu = [yb for _, yb in data_iter(16, X.cuda(), y.cuda(),
                                     generator=torch.Generator().manual_seed(3))]
    assert all(a.device.type == "cuda" for a in gpu)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))


@pytest.mark.parametrize("n", [1000, 100_003])
def test_hashed_order_does_not_depend_on_device(n):
    # 100,003 rows: computed on the GPU itself (from HASHED_ON_DEVICE_ROWS); 1000 on the CPU.
    assert (n >= HASHED_ON_DEVICE_ROWS) == (n > 1000)
    gpu = hashed_order(n, torch.Generator().manual_seed(n), "cuda")
    cpu = hashed_order(n, torch.Generator().manual_seed(n))
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_hashed_fit_matches_cpu_with_and_without_graphs(impl, hashed_on_gpu):
    X, y = chapter_data(num_examples=1003)
    options = dict(impl=impl, num_epochs=3, permutation="hashed")
    cpu = fit(X, y, device="cpu", **options)
    gpu = fit(X, y, device="cuda", **options)
    graphed = fit(X, y, device="cuda", cuda_graphs=True, **options)
    for run in (gpu, graphed):
        torch.testing.assert_close(run.w_history, cpu.w_history, rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.tensor(run.losses), torch.tensor(cpu.losses),
                                   rtol=1e-3, atol=1e-8)
    torch.testing.assert_close(graphed.train_losses, gpu.train_losses, rtol=1e-6, atol=1e-7)


def test_init_params_same_on_every_device():
    w_cpu, _ = init_params(5, generator=torch.Generator().manual_seed(0))
    w_gpu, b_gpu = init_params(5, generator=torch.Generator().manual_seed(0), device="cuda")
    assert w_gpu.is_cuda and b_gpu.is_cuda and w_gpu.is_leaf
    assert torch.equal(w_cpu, w_gpu.cpu())


def _syncs(num_examples, **options):
    """Where fit synchronized the host with the GPU: a Counter of file:line, one per sync."""
    X, y = chapter_data(num_examples=num_examples)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit(X, y, device="cuda", num_epochs=2, log_every=0, **options)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return Counter(f"{w.filename}:{w.lineno}" for w in caught
                   if "synchroniz" in str(w.message))


def _assert_syncs_do_not_grow_with_steps(**options):
    # A first fit pays one-off syncs (seen: one more in the first fit of a process on an
    # H100, torch 2.11), which say nothing about the steps: it runs uncounted.
    _syncs(1000, **options)
    small, large = _syncs(1000, **options), _syncs(10000, **options)
    # Ten times the steps, the same syncs in the same places: none of them is per step.
    assert large == small, f"10000 rows: {dict(large)}; 1000 rows: {dict(small)}"
    assert sum(small.values()) > 0  # the epoch's loss read: the counting sees syncs


@pytest.mark.parametrize("gradient", ["autograd", "analytic"])
def test_no_host_sync_per_step(gradient):
    _assert_syncs_do_not_grow_with_steps(gradient=gradient)


@pytest.mark.parametrize("gradient", ["autograd", "analytic"])
def test_no_host_sync_per_graphed_step(gradient):
    _assert_syncs_do_not_grow_with_steps(cuda_graphs=True, gradient=gradient)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_no_host_sync_per_step_in_the_hashed_order(cuda_graphs, hashed_on_gpu):
    _assert_syncs_do_not_grow_with_steps(cuda_graphs=cuda_graphs, permutation="hashed")


@pytest.mark.parametrize("gradient", ["autograd", "analytic"])
@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_cuda_graphs_replay_the_eager_steps(impl, gradient, monkeypatch):
    from torchlr import graphs

    calls = []
    real_capture, real_warm_up = graphs.capture, graphs.warm_up

    def counting_capture(fn, stream):
        replay = real_capture(fn, stream)

        def counted():
            calls.append(("replay", fn.__name__))
            replay()
        return counted

    def counting_warm_up(fn, stream):
        calls.append(("warm_up", fn.__name__))
        real_warm_up(fn, stream)

    monkeypatch.setattr(graphs, "capture", counting_capture)
    monkeypatch.setattr(graphs, "warm_up", counting_warm_up)
    X, y = chapter_data(num_examples=1003)  # 100 full batches and a short one per epoch
    eager = fit(X, y, impl=impl, device="cuda", num_epochs=3, gradient=gradient)
    graphed = fit(X, y, impl=impl, device="cuda", num_epochs=3, gradient=gradient,
                  cuda_graphs=True)
    # The graph launches the eager step's kernels on the same values; the tolerance only
    # allows for cuBLAS picking another kernel for a differently aligned batch.
    for name in ("w_history", "b_history", "train_losses"):
        torch.testing.assert_close(getattr(graphed, name), getattr(eager, name),
                                   rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.tensor(graphed.losses), torch.tensor(eager.losses),
                               rtol=1e-6, atol=1e-9)
    # Chunks of 10 batches: the first runs eagerly as the warm-up, the other 29 are one
    # captured graph's replays, the capture's own included.
    assert graphs.chunk_length(100, 10 * 2 * 4) == 10
    assert calls == [("warm_up", "_device_chunk")] + [("replay", "_device_chunk")] * 29


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_orders_drawn_ahead_on_cuda_leave_the_run_as_it_was(monkeypatch, cuda_graphs):
    # From AHEAD_MIN_ROWS rows a CUDA fit draws each epoch's order while the last trains.
    X, y = chapter_data(num_examples=data.AHEAD_MIN_ROWS + 3)  # and a short last batch
    options = dict(device="cuda", num_epochs=3, batch_size=4096, cuda_graphs=cuda_graphs)
    draws = []
    draw_next = data.OrdersAhead.draw_next
    monkeypatch.setattr(data.OrdersAhead, "draw_next",
                        lambda self: (draws.append(1), draw_next(self)))
    ahead = fit(X, y, **options)
    assert len(draws) == 3
    monkeypatch.setattr(data, "AHEAD_DEVICES", ())
    in_turn = fit(X, y, **options)
    assert len(draws) == 3  # none drawn ahead
    assert torch.equal(ahead.w_history, in_turn.w_history) and ahead.losses == in_turn.losses
