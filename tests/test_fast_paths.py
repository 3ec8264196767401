"""The speed-ups keep the results: blocked gathers, the one-kernel sgd, the lean steps."""

import threading

import pytest
import torch
from conftest import hand_loop

import torchlr
from torchlr import data, threads, train
from torchlr.data import batch_order, data_iter
from torchlr.scratch import init_params, linreg, sgd, squared_loss


def small_blocks(monkeypatch, nbytes, prefetch=None):
    """Gather nbytes of rows at a time; prefetch=True/False forces the gather thread on/off."""
    monkeypatch.setattr(data, "BLOCK_BYTES", nbytes)
    monkeypatch.setattr(data, "PREFETCH_BLOCK_BYTES", nbytes)
    if prefetch is not None:  # on any machine, whatever its core count
        monkeypatch.setattr(threads, "spare_core", lambda device: prefetch)


def gather_threads():
    """torchlr's own threads: the gather thread and the loss pass's second thread."""
    return [t for t in threading.enumerate() if t.name.startswith("torchlr-")]


def reference_batches(batch_size, X, y, seed, drop_last):
    """One index_select per batch over the same order: the plain data path."""
    order = batch_order(len(X), generator=torch.Generator().manual_seed(seed))
    stop = len(X) - len(X) % batch_size if drop_last else len(X)
    return [(X[order[s:min(s + batch_size, stop)]], y[order[s:min(s + batch_size, stop)]])
            for s in range(0, stop, batch_size)]


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("reuse_buffer", [False, True])
@pytest.mark.parametrize("block_bytes", [1, 200, 1000, 1 << 20])
@pytest.mark.parametrize(("n", "batch_size", "drop_last"),
                         [(103, 10, False), (103, 10, True), (100, 10, False), (7, 10, False),
                          (64, 1, False), (50, 50, True)])
def test_blocked_gather_gives_the_same_batches(monkeypatch, block_bytes, n, batch_size,
                                               drop_last, reuse_buffer, prefetch):
    small_blocks(monkeypatch, block_bytes, prefetch)
    gen = torch.Generator().manual_seed(3)
    X, y = torch.randn(n, 3, generator=gen), torch.randn(n, 1, generator=gen)
    # Cloned as drawn: with reuse_buffer a batch is valid only until the next one.
    got = [(Xb.clone(), yb.clone())
           for Xb, yb in data_iter(batch_size, X, y, generator=torch.Generator().manual_seed(5),
                                   drop_last=drop_last, reuse_buffer=reuse_buffer,
                                   prefetch=prefetch)]
    want = reference_batches(batch_size, X, y, 5, drop_last)
    assert len(got) == len(want)
    for (gX, gy), (wX, wy) in zip(got, want):
        assert torch.equal(gX, wX) and torch.equal(gy, wy)


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("labels_shape", ["(n,)", "(n, 1)", "(n, 2)", "a column of (n, 3)"])
def test_labels_of_any_shape_come_in_the_features_order(monkeypatch, labels_shape, prefetch):
    # The labels are gathered once per epoch (a 1-D gather where they are one column) and
    # each batch takes its slice of them: the pairs must still be the data set's rows.
    small_blocks(monkeypatch, 100, prefetch)  # several blocks
    X = torch.arange(120.0).reshape(40, 3)
    table = X * 10
    y = {"(n,)": table[:, 0], "(n, 1)": table[:, :1].contiguous(), "(n, 2)": table[:, :2],
         "a column of (n, 3)": table[:, 1:2]}[labels_shape]
    got = [(Xb.clone(), yb.clone())
           for Xb, yb in data_iter(3, X, y, generator=torch.Generator().manual_seed(2),
                                   drop_last=True, reuse_buffer=True, prefetch=prefetch)]
    want = reference_batches(3, X, y, 2, drop_last=True)
    assert len(got) == len(want) == 13
    for (gX, gy), (wX, wy) in zip(got, want):
        assert torch.equal(gX, wX) and torch.equal(gy, wy) and gy.shape == wy.shape


def test_reused_buffer_is_one_allocation_overwritten_block_by_block(monkeypatch):
    small_blocks(monkeypatch, 64, prefetch=False)  # 64 B of 12 B rows: 2 batches of 2 a block
    X = torch.arange(40.0).reshape(20, 2)
    y = torch.arange(20.0).reshape(20, 1)
    batches = data_iter(2, X, y, generator=torch.Generator().manual_seed(0), reuse_buffer=True)
    storages = {Xb.untyped_storage().data_ptr() for Xb, _ in batches}
    assert len(storages) == 1


def test_prefetch_gathers_each_block_on_a_second_thread_into_two_buffers(monkeypatch):
    small_blocks(monkeypatch, 64, prefetch=True)  # 5 blocks of 2 batches of 2
    gathered_on = []
    index_select = torch.index_select

    def spy(*args, **kwargs):
        gathered_on.append(threading.current_thread())
        return index_select(*args, **kwargs)

    monkeypatch.setattr(torch, "index_select", spy)
    X = torch.arange(40.0).reshape(20, 2)
    y = torch.arange(20.0).reshape(20, 1)
    storages = []
    for Xb, yb in data_iter(2, X, y, generator=torch.Generator().manual_seed(0),
                            reuse_buffer=True, prefetch=True):
        storages.append(Xb.untyped_storage().data_ptr())
        assert torch.equal(Xb[:, 0], 2 * yb[:, 0])  # rows intact: no gather wrote over them
    assert len(gathered_on) == 5  # X of each block; the labels are gathered once, up front
    assert threading.current_thread() not in gathered_on
    # Blocks alternate between two buffers: the one being read and the one being filled.
    blocks = storages[::2]
    assert len(set(blocks)) == 2 and blocks[0::2] == [blocks[0]] * 3
    assert not gather_threads()  # the thread ends with the epoch


def test_leaving_an_epoch_early_ends_its_gather_thread(monkeypatch):
    small_blocks(monkeypatch, 64, prefetch=True)
    X, y = torch.randn(40, 2), torch.randn(40, 1)
    batches = data_iter(2, X, y, generator=torch.Generator().manual_seed(0),
                        reuse_buffer=True, prefetch=True)
    next(batches)
    assert len(gather_threads()) == 1
    batches.close()
    assert not gather_threads()


def test_fit_that_raises_mid_epoch_leaves_no_gather_thread(monkeypatch):
    small_blocks(monkeypatch, 256, prefetch=True)
    gen = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 2000, generator=gen)
    with pytest.raises(torchlr.DivergenceError, match="epoch 1"):
        torchlr.fit(X * 1e3, y, lr=10.0, device="cpu", log_every=5)
    assert not gather_threads()

    def interrupt(progress):  # Ctrl-C at a host read, with gathers still ahead
        assert len(gather_threads()) == 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        torchlr.fit(X, y, device="cpu", log_every=5, on_progress=interrupt)
    assert not gather_threads()


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_worker_thread_changes_nothing_in_a_fit(monkeypatch, impl):
    small_blocks(monkeypatch, 200, prefetch=True)  # a block every few steps
    monkeypatch.setattr(data, "PREFETCH_BLOCK_BYTES", 840)  # blocks of another size with it
    monkeypatch.setattr(train, "EVAL_ROWS", 50)  # the epoch loss in 7 pieces
    gen = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data(torch.randn(5, generator=gen), 4.2, 301, generator=gen)
    runs = [torchlr.fit(X, y, impl=impl, batch_size=4, num_epochs=3, device="cpu", seed=7,
                        worker_thread=worker) for worker in (True, False)]
    for field in ("w_history", "b_history", "train_losses"):
        assert torch.equal(getattr(runs[0], field), getattr(runs[1], field))
    assert runs[0].losses == runs[1].losses


@pytest.mark.parametrize("gradient", ["autograd", "analytic"])
@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_worker_thread_changes_nothing_with_blocks_of_their_own_size(monkeypatch, impl,
                                                                     gradient):
    # The real block sizes, 1 MiB alone and 4 MiB with the thread, and batches of 333 x 7
    # floats (9,324 bytes, not a multiple of 64): MKL rounded a batch that lay at another
    # offset in its block otherwise, and w came out 1 ulp off.
    monkeypatch.setattr(threads, "spare_core", lambda device: True)
    gen = torch.Generator().manual_seed(50000)
    X = torch.randn(50000, 7, generator=gen)
    y = X @ torch.randn(7, generator=gen) + 4.2
    runs = [torchlr.fit(X, y, impl=impl, gradient=gradient, batch_size=333, num_epochs=2,
                        lr=0.01, device="cpu", worker_thread=worker) for worker in (True, False)]
    for field in ("w_history", "b_history", "train_losses"):
        assert torch.equal(getattr(runs[0], field), getattr(runs[1], field)), field
    assert runs[0].losses == runs[1].losses


def test_a_second_thread_only_where_a_second_core_can_run_it(monkeypatch):
    assert not threads.spare_core(torch.device("cuda"))  # CUDA work is already async
    if not hasattr(threads.os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0})
    assert not threads.spare_core(torch.device("cpu"))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 3})
    assert threads.spare_core(torch.device("cpu"))


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_bad_worker_thread_is_refused_before_training(bad):
    X, y = torch.randn(10, 2), torch.randn(10)
    with pytest.raises(TypeError, match=f"worker_thread must be a bool, got {bad!r}"):
        torchlr.fit(X, y, device="cpu", worker_thread=bad)


@pytest.mark.parametrize("prefetch", [False, True])
def test_batches_survive_later_blocks(monkeypatch, prefetch):
    # Batches kept by the caller are views of their own block, never overwritten later.
    small_blocks(monkeypatch, 64, prefetch)
    X = torch.arange(40.0).reshape(20, 2)
    y = torch.arange(20.0).reshape(20, 1)
    kept = list(data_iter(3, X, y, generator=torch.Generator().manual_seed(0),
                          prefetch=prefetch))
    rows = torch.cat([b for _, b in kept]).reshape(-1)
    assert sorted(rows.tolist()) == list(range(20))
    for Xb, yb in kept:
        assert torch.equal(Xb[:, 0], 2 * yb[:, 0])


@pytest.mark.parametrize("batch_size", [10, 7])
def test_sgd_equals_the_chapter_formula_and_torch_optim(batch_size):
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(batch_size, 4, generator=gen), torch.randn(batch_size, 1, generator=gen)
    w, b = init_params(4, sigma=0.5, generator=gen)
    w_ref = w.detach().clone().requires_grad_()
    b_ref = b.detach().clone().requires_grad_()

    squared_loss(linreg(X, w, b), y).sum().backward()
    chapter = [p.detach() - 0.03 * p.grad / batch_size for p in (w, b)]
    sgd([w, b], 0.03, batch_size)
    assert w.grad is None and b.grad is None

    opt = torch.optim.SGD([w_ref, b_ref], lr=0.03)
    squared_loss(linreg(X, w_ref, b_ref), y).mean().backward()
    opt.step()
    for got, formula, ref in zip((w, b), chapter, (w_ref, b_ref)):
        torch.testing.assert_close(got.detach(), formula, rtol=0, atol=1e-7)
        torch.testing.assert_close(got.detach(), ref.detach(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("block_bytes", [64, 1 << 20])
def test_implementations_agree_after_every_epoch(monkeypatch, block_bytes):
    small_blocks(monkeypatch, block_bytes)
    gen = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data([2.0, -3.4, 1.0], 4.2, 95, generator=gen)
    runs = {impl: torchlr.fit(X, y, impl=impl, batch_size=10, num_epochs=4, device="cpu",
                              seed=9, log_every=3) for impl in ("scratch", "concise")}
    s, c = runs["scratch"], runs["concise"]
    torch.testing.assert_close(s.w_history, c.w_history, rtol=0, atol=1e-6)
    torch.testing.assert_close(s.b_history, c.b_history, rtol=0, atol=1e-6)
    torch.testing.assert_close(s.train_losses, c.train_losses, rtol=1e-5, atol=1e-7)
    assert len(s.train_losses) == 4 * 10


def test_fit_matches_a_hand_loop_over_the_reference_batches():
    # The fit's updates, batch by batch, against the chapter's loop on per-batch gathers.
    gen = torch.Generator().manual_seed(4)
    X, y = torchlr.synthetic_data([1.5, -0.5], 0.3, 57, generator=gen)
    result = torchlr.fit(X, y, impl="scratch", batch_size=8, num_epochs=2, device="cpu", seed=2)

    w, b, _ = hand_loop(X, y, seed=2, batch_size=8, num_epochs=2)
    torch.testing.assert_close(result.w, w.detach().reshape(-1), rtol=0, atol=1e-6)
    assert abs(result.b - float(b.detach())) < 1e-6


def test_divergence_still_names_epoch_and_step():
    gen = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 200, generator=gen)
    with pytest.raises(torchlr.DivergenceError, match=r"epoch 1, step \d+"):
        torchlr.fit(X * 1e3, y, lr=10.0, device="cpu")


def test_finite_data_whose_sum_overflows_is_accepted():
    # The one-sum finite check must fall back to the exact masks, not refuse the data.
    from torchlr.validation import check_data

    X = torch.full((4, 2), 3e38)
    y = torch.tensor([3e38, 3e38, -1.0, 0.0])
    assert not torch.isfinite(X.sum())
    got_X, got_y = check_data(X, y)
    assert torch.equal(got_X, X) and got_y.shape == (4, 1)
    for bad, word in ((float("nan"), "NaN"), (float("inf"), "inf")):
        X_bad = X.clone()
        X_bad[1, 0] = bad
        with pytest.raises(ValueError, match=f"features contains {word}"):
            check_data(X_bad, y)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_fit_uses_one_thread_on_the_cpu_and_restores_the_setting(two_threads):
    gen = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 100, generator=gen)
    seen = []
    torchlr.fit(X, y, device="cpu", on_progress=lambda p: seen.append(torch.get_num_threads()))
    assert set(seen) == {1}
    assert torch.get_num_threads() == 2
    seen.clear()
    torchlr.fit(X, y, device="cpu", threads=None,
                on_progress=lambda p: seen.append(torch.get_num_threads()))
    assert set(seen) == {2}


def test_thread_setting_is_restored_after_an_error(two_threads):
    gen = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 200, generator=gen)
    with pytest.raises(torchlr.DivergenceError):
        torchlr.fit(X * 1e3, y, lr=10.0, device="cpu")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_threads_is_refused_before_training(bad):
    X, y = torch.randn(10, 2), torch.randn(10)
    with pytest.raises((ValueError, TypeError), match="threads"):
        torchlr.fit(X, y, device="cpu", threads=bad)


def test_thread_count_does_not_change_the_result(two_threads):
    gen = torch.Generator().manual_seed(1)
    X, y = torchlr.synthetic_data(torch.randn(64, generator=gen), 0.5, 4000, generator=gen)
    one = torchlr.fit(X, y, batch_size=512, num_epochs=2, device="cpu", threads=1)
    two = torchlr.fit(X, y, batch_size=512, num_epochs=2, device="cpu", threads=None)
    torch.testing.assert_close(one.w_history, two.w_history, rtol=0, atol=1e-6)


def test_thread_limit_leaves_other_devices_alone(two_threads):
    from torchlr.threads import CpuThreads

    with CpuThreads() as threads:
        threads.limit(1, torch.device("cuda"))  # nothing runs: only the device's type is read
        assert torch.get_num_threads() == 2
    with CpuThreads() as threads:
        threads.limit(1, torch.device("cpu"))
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_fit_on_a_reused_buffer_equals_the_plain_loop_across_many_blocks(monkeypatch, impl):
    # 64 B blocks: a new gather into the one buffer every two or so steps, 5 epochs.
    small_blocks(monkeypatch, 64)
    gen = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data([2.0, -3.4], 4.2, 57, generator=gen)
    result = torchlr.fit(X, y, impl=impl, batch_size=2, num_epochs=5, device="cpu", seed=4)

    g = torch.Generator().manual_seed(4)
    w, b = init_params(2, generator=g)
    for _ in range(5):
        for X_batch, y_batch in data_iter(2, X, y, generator=g):  # fresh blocks, kept intact
            squared_loss(linreg(X_batch, w, b), y_batch).sum().backward()
            sgd([w, b], 0.03, len(X_batch))
    exact = impl == "scratch"  # concise reaches the same update through other kernels
    torch.testing.assert_close(result.w, w.detach().reshape(-1), rtol=0,
                               atol=0 if exact else 1e-6)


@pytest.mark.parametrize("n", [1, 49, 50, 51, 349])
def test_loss_in_pieces_is_the_float64_mean_whichever_thread_sums_them(monkeypatch, n):
    monkeypatch.setattr(train, "EVAL_ROWS", 50)
    monkeypatch.setattr(threads, "spare_core", lambda device: True)
    summed_on = []
    piece_sum = train.loss_sum

    def spy(*args):
        summed_on.append(threading.current_thread().name)
        assert not torch.is_grad_enabled()  # no graph built on either thread
        return piece_sum(*args)

    gen = torch.Generator().manual_seed(n)
    X, y = torch.randn(n, 3, generator=gen), torch.randn(n, 1, generator=gen)
    w = torch.randn(3, 1, generator=gen).requires_grad_()  # as a fit's parameters are
    b = torch.randn(1, generator=gen).requires_grad_()
    # mean_loss: evaluate() less its input checks.
    alone = train.mean_loss(X, y, w, b)
    monkeypatch.setattr(train, "loss_sum", spy)
    shared = train.mean_loss(X, y, w, b, worker_thread=True)
    monkeypatch.undo()
    w, b = w.detach(), b.detach()
    exact = ((X.double() @ w.double() + b.double() - y.double()) ** 2 / 2).mean()
    assert shared.dtype == torch.float32 and shared.shape == () and not shared.requires_grad
    assert torch.equal(alone, shared)  # the same bits with or without the second thread
    torch.testing.assert_close(shared.double(), exact, rtol=1e-6, atol=0)
    pieces = -(-n // 50)
    if pieces > 1:  # every other piece on the second thread
        # The first, third, ... pieces here.
        assert summed_on.count(threading.current_thread().name) == (pieces + 1) // 2
        assert sum(name.startswith("torchlr-loss") for name in summed_on) == pieces // 2
    assert not gather_threads()


def test_alternate_keeps_the_order_and_cancels_on_an_error():
    assert threads.alternate(lambda x: x * x, range(7)) == [0, 1, 4, 9, 16, 25, 36]
    assert threads.alternate(lambda x: x, []) == []

    def fail_on_four(x):
        if x == 4:
            raise ValueError("four")
        return x

    with pytest.raises(ValueError, match="four"):
        threads.alternate(fail_on_four, range(100))
    assert not gather_threads()


@pytest.mark.parametrize("reuse_buffer", [False, True])
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("d", [1, 3, 7, 9])
def test_each_batch_lies_to_the_64_bytes_where_a_whole_epoch_gather_puts_it(
        monkeypatch, prefetch, reuse_buffer, d):
    # MKL rounds a product by where its rows start, to the 64 bytes: a batch must start at
    # the same offset whatever the block size (1 MiB alone, 4 MiB with the gather thread).
    # The layout itself is checked here, on any CPU, whatever its BLAS does with it.
    monkeypatch.setattr(threads, "spare_core", lambda device: prefetch)
    monkeypatch.setattr(data, "BLOCK_BYTES", 700)
    monkeypatch.setattr(data, "PREFETCH_BLOCK_BYTES", 1900)
    g = torch.Generator().manual_seed(d)
    X, y = torch.randn(301, d, generator=g), torch.randn(301, 1, generator=g)
    order = torch.randperm(301, generator=g)
    whole = X.index_select(0, order)  # torch's allocator aligns a new tensor to 64 bytes
    assert whole.data_ptr() % 64 == 0
    at = 0
    for X_batch, y_batch in data.batches_in_order(3, X, y, order, False,
                                                  reuse_buffer=reuse_buffer,
                                                  prefetch=prefetch):
        assert torch.equal(X_batch, whole[at:at + len(X_batch)])
        assert torch.equal(y_batch, y[order[at:at + len(y_batch)]])
        assert X_batch.data_ptr() % 64 == whole[at:].data_ptr() % 64, at
        at += len(X_batch)
    assert at == 301
