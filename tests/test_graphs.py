"""cuda_graphs: the graphed epoch gives the usual loop's results, step for step.

Capturing needs a GPU (tests/test_cuda.py). Here the same device-side step runs on the CPU,
eagerly or under a stand-in capture that, like a real one, records the step without
running it; so everything but the CUDA calls themselves is checked on every machine.
"""

import contextlib
import gc
import weakref

import pytest
import torch
from conftest import chapter_data

import torchlr
from torchlr import graphs
from torchlr.data import batch_order
from torchlr.train import ANALYTIC_MODELS, MODELS, DivergenceError, ScratchModel

HISTORIES = ("w_history", "b_history", "train_losses")


@pytest.fixture
def on_cpu(monkeypatch):
    """Let cuda_graphs run on the CPU, with the device-side step run eagerly."""
    monkeypatch.setattr(graphs, "check_device", lambda device, streaming, distributed: None)


@pytest.fixture
def fake_capture(monkeypatch, on_cpu):
    """Warm-ups, captures and replays on the CPU; returns the calls, as (kind, function)."""
    calls = []

    def warm_up(fn, stream):
        calls.append(("warm_up", fn.__name__))
        fn()

    def capture(fn, stream):
        calls.append(("capture", fn.__name__))  # records; running it is the replay's job

        def replay():
            calls.append(("replay", fn.__name__))
            fn()
        return replay

    monkeypatch.setattr(graphs, "capturable", lambda device: True)
    monkeypatch.setattr(graphs, "side_stream", lambda device: None)
    monkeypatch.setattr(graphs, "warm_up", warm_up)
    monkeypatch.setattr(graphs, "capture", capture)
    return calls


def steps_run(calls, chunk):
    """Steps the warm-ups and replays ran: `chunk` for a chunk, 1 for a one-step graph."""
    return sum(chunk if fn == "_device_chunk" else 1 for kind, fn in calls if kind != "capture")


def count(calls, kind, fn):
    return calls.count((kind, fn))


def assert_same_run(a, b):
    for name in HISTORIES:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.losses == b.losses


CASES = [(1003, 10, False), (1003, 10, True), (1000, 10, False), (7, 10, False),
         (7, 10, True), (5, 1, False)]


@pytest.mark.parametrize("impl", ["scratch", "concise"])
@pytest.mark.parametrize(("n", "batch_size", "drop_last"), CASES)
def test_eager_device_step_matches_the_usual_loop(on_cpu, impl, n, batch_size, drop_last):
    X, y = chapter_data(num_examples=n)
    options = dict(impl=impl, batch_size=batch_size, drop_last=drop_last, log_every=7,
                   device="cpu")
    if drop_last and n < batch_size:  # no batch at all: refused, graphs or not
        with pytest.raises(ValueError, match="leaves no batch"):
            torchlr.fit(X, y, cuda_graphs=True, **options)
        return
    assert_same_run(torchlr.fit(X, y, cuda_graphs=True, **options),
                    torchlr.fit(X, y, **options))


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_captured_epochs_take_orders_drawn_ahead(fake_capture, orders_ahead_on_cpu, impl):
    X, y = chapter_data(num_examples=1003)  # and a short last batch, run eagerly
    options = dict(impl=impl, num_epochs=3, log_every=4, device="cpu")
    graphed = torchlr.fit(X, y, cuda_graphs=True, **options)
    assert orders_ahead_on_cpu == [1003] * 3
    assert_same_run(graphed, torchlr.fit(X, y, **options))


@pytest.mark.parametrize("impl", ["scratch", "concise"])
@pytest.mark.parametrize(("n", "batch_size", "drop_last"), CASES)
def test_captured_epochs_match_the_usual_loop(fake_capture, impl, n, batch_size, drop_last):
    X, y = chapter_data(num_examples=n)
    options = dict(impl=impl, batch_size=batch_size, drop_last=drop_last, num_epochs=3,
                   log_every=4, device="cpu")
    if drop_last and n < batch_size:
        with pytest.raises(ValueError, match="leaves no batch"):
            torchlr.fit(X, y, cuda_graphs=True, **options)
        return
    assert_same_run(torchlr.fit(X, y, cuda_graphs=True, **options),
                    torchlr.fit(X, y, **options))
    full = n // batch_size
    chunk = graphs.chunk_length(full, batch_size * X[0].numel() * 4)
    # Every full batch of the three epochs ran once: in a warm-up or in a replay.
    assert steps_run(fake_capture, chunk) == 3 * full
    captured = [fn for kind, fn in fake_capture if kind == "capture"]
    assert len(captured) == len(set(captured))  # each graph is captured once
    for fn in captured:  # and only after its warm-ups
        first = fake_capture.index(("capture", fn))
        warmed = fake_capture[:first].count(("warm_up", fn))
        assert warmed == (graphs.WARMUP_STEPS if fn == "_device_step" else -(-3 // chunk))


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_captured_analytic_steps_match_the_usual_loop(fake_capture, impl):
    """gradient="analytic" under a capture: the graph holds the hand-derived step."""
    X, y = chapter_data(num_examples=1003)
    options = dict(impl=impl, gradient="analytic", num_epochs=2, log_every=9, device="cpu")
    assert_same_run(torchlr.fit(X, y, cuda_graphs=True, **options),
                    torchlr.fit(X, y, **options))
    # 100 full batches an epoch, chunks of 10: the first chunk is the warm-up, the second
    # is captured, and every step after it is in a chunk's replay; no one-step graph.
    assert graphs.chunk_length(100, 10 * 2 * 4) == 10
    assert fake_capture == ([("warm_up", "_device_chunk"), ("capture", "_device_chunk")]
                            + [("replay", "_device_chunk")] * 19)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_captured_epochs_in_the_hashed_order_match_the_usual_loop(fake_capture, impl):
    X, y = chapter_data(num_examples=1003)
    options = dict(impl=impl, permutation="hashed", num_epochs=2, log_every=9, device="cpu")
    graphed = torchlr.fit(X, y, cuda_graphs=True, **options)
    assert_same_run(graphed, torchlr.fit(X, y, **options))
    plain = torchlr.fit(X, y, impl=impl, num_epochs=2, device="cpu")
    assert not torch.equal(graphed.w_history, plain.w_history)  # not randperm's order


@pytest.mark.parametrize("where", ["on_cpu", "fake_capture"])
def test_each_step_sees_the_rows_of_its_batch(where, request):
    """The gather inside the step takes batch i's rows of the epoch's order, in order:
    one batch at a time eagerly, a chunk's batches at once under a capture."""
    request.getfixturevalue(where)
    X, y = chapter_data(num_examples=173)  # 17 full batches of 10, then 3 rows
    seen = []

    def step(Xb, yb):
        seen.append((Xb.clone(), yb.clone()))
        return Xb.sum()

    graphed = graphs.GraphedSteps(step, [], X, y, 10, False)
    # Under a capture: a chunk of 16 batches (17 has no divisor near 16), then one step.
    assert graphed.chunk == (16 if where == "fake_capture" else 1)
    gen, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):  # the chunk's warm-up, its capture, a replay
        seen.clear()
        for batch in graphed.batches(gen):
            graphed.step(*batch)
        order = batch_order(173, generator=ref)  # the same draw, epoch by epoch
        assert len(seen) == 18
        for k, (Xb, yb) in enumerate(seen):
            rows = order[10 * k:10 * (k + 1)]
            assert torch.equal(Xb, X[rows]) and torch.equal(yb, y[rows])
        assert torch.equal(graphed.losses, torch.stack([Xb.sum() for Xb, _ in seen[:17]]))


def test_chunk_length_prefers_a_divisor_of_the_epoch():
    batch = 10 * 2 * 4  # the chapter's: 10 rows of 2 float32 features
    assert graphs.chunk_length(100, batch) == 10  # the chapter: 10 chunks an epoch
    assert graphs.chunk_length(976, 1024 * 400) == 16  # 1Mx100 at batch 1024
    assert graphs.chunk_length(1220, 8192 * 400) == 10  # 10Mx100 at batch 8192
    assert graphs.chunk_length(97, batch) == 16  # prime: chunks of 16 and one step left
    # A divisor below half the cap (7 of 21) would make chunks too short: the cap instead.
    assert graphs.chunk_length(21, batch) == 16 and graphs.chunk_length(24, batch) == 12
    assert graphs.chunk_length(2, batch) == 2  # the shortest chunk
    assert graphs.chunk_length(136, batch) == 8  # 8 * 17: a divisor of exactly half the cap
    assert graphs.chunk_length(5, batch) == 5  # fewer batches than the cap: one chunk
    assert graphs.chunk_length(1, batch) == 1 and graphs.chunk_length(0, batch) == 1
    assert graphs.chunk_length(100, 40 << 20) == 1  # two 40 MiB batches exceed 64 MiB


def test_model_step_is_the_scratch_step(on_cpu):
    """The loss slot holds what the model's step returned: the summed loss for scratch."""
    X, y = chapter_data(num_examples=20)
    gen = torch.Generator().manual_seed(0)
    model = ScratchModel(2, 0.03, gen, torch.device("cpu"))
    w0, b0 = model.w.detach().clone(), model.b.detach().clone()
    graphed = graphs.GraphedSteps(model.step, model.leaves(), X, y, 20, False)
    (batch,) = list(graphed.batches(torch.Generator().manual_seed(1)))
    loss = graphed.step(*batch)
    rows = batch_order(20, generator=torch.Generator().manual_seed(1))
    y_hat = X[rows] @ w0 + b0
    expected = ((y_hat - y[rows]) ** 2 / 2).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    # The analytic gradient of the summed loss, divided by the batch size, times lr.
    grad_w = X[rows].T @ (y_hat - y[rows])
    torch.testing.assert_close(model.w.detach(), w0 - 0.03 * grad_w / 20, rtol=1e-6, atol=1e-7)


def test_divergence_names_the_same_step(fake_capture):
    X, y = chapter_data(num_examples=200)
    with pytest.raises(DivergenceError) as plain:
        torchlr.fit(X, y, lr=1e4, device="cpu")
    with pytest.raises(DivergenceError) as graphed:
        torchlr.fit(X, y, lr=1e4, device="cpu", cuda_graphs=True)
    assert str(graphed.value) == str(plain.value)


def test_cuda_graphs_need_cuda(tmp_path):
    X, y = chapter_data(num_examples=20)
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device, got device 'cpu'"):
        torchlr.fit(X, y, device="cpu", cuda_graphs=True, logdir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # refused before the run folder is made


def test_cuda_graphs_must_be_a_bool():
    X, y = chapter_data(num_examples=20)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool, got 'yes'"):
        torchlr.fit(X, y, cuda_graphs="yes")


@pytest.mark.parametrize(("streaming", "distributed", "message"),
                         [(True, False, "streaming"), (False, True, "process group")])
def test_cuda_graphs_refuse_streams_and_groups(streaming, distributed, message):
    with pytest.raises(ValueError, match=message):
        graphs.check_device(torch.device("cuda"), streaming, distributed)


def test_a_streamed_fit_with_cuda_graphs_is_refused_before_any_capture(tmp_path, monkeypatch):
    # The fit tells check_device that it streams (on a CPU-only machine the device check
    # would refuse first, so it is let through here).
    import numpy as np

    from torchlr.stream import BlockStream

    X, y = chapter_data(num_examples=20)
    np.save(tmp_path / "d.npy", torch.cat([X, y.reshape(-1, 1)], 1).numpy())
    monkeypatch.setattr(graphs, "capturable", lambda device: True)
    monkeypatch.setattr(graphs, "capture", lambda *a, **k: pytest.fail("captured"))
    with pytest.raises(ValueError, match="not supported when streaming"):
        torchlr.fit(BlockStream(tmp_path / "d.npy"), None, cuda_graphs=True, device="cpu")


def test_cli_flag_turns_graphs_on(on_cpu, monkeypatch, tmp_path, capsys):
    from torchlr.cli import main

    made = []
    real = graphs.GraphedSteps

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--device", "cpu", "--no-tensorboard"]) == 0
    plain = capsys.readouterr().out
    monkeypatch.setattr(graphs, "GraphedSteps", spy)
    assert main(["train", "--device", "cpu", "--no-tensorboard", "--cuda-graphs"]) == 0
    assert capsys.readouterr().out == plain  # the same printed numbers
    assert len(made) == 1


def test_resumed_graphed_run_continues_the_plain_one(fake_capture, tmp_path):
    X, y = chapter_data(num_examples=103)
    path = str(tmp_path / "run.pt")
    torchlr.fit(X, y, num_epochs=2, save=path, device="cpu", cuda_graphs=True)
    resumed = torchlr.fit(X, y, num_epochs=3, resume=path, device="cpu", cuda_graphs=True)
    plain = torchlr.fit(X, y, num_epochs=3, device="cpu")
    assert torch.equal(resumed.w_history, plain.w_history)
    assert torch.equal(resumed.b_history, plain.b_history)
    assert resumed.losses == plain.losses


@pytest.mark.parametrize("models", [MODELS, ANALYTIC_MODELS], ids=["autograd", "analytic"])
@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_params_hold_no_autograd_graph_and_follow_the_steps(impl, models):
    # The fit holds w and b for a whole epoch. A view made through autograd (weight.T) would
    # keep weight's AccumulateGrad node, and the stream it was made on, alive that long;
    # on CUDA the captured backward then waits on the default stream and the capture fails.
    model = models[impl](2, 0.03, torch.Generator().manual_seed(0), torch.device("cpu"))
    w, b = model.params()
    assert w.grad_fn is None and b.grad_fn is None
    assert w.shape == (2, 1) and b.shape == (1,)
    w0, b0 = w.clone(), b.clone()
    X, y = chapter_data(num_examples=10)
    model.step(X, y)
    w1, b1 = model.params()
    assert torch.equal(w, w1) and torch.equal(b, b1)  # the views saw the update
    assert not torch.equal(w, w0) and not torch.equal(b, b0)


def test_no_garbage_collection_runs_during_a_capture(monkeypatch):
    """A collection mid-capture may free an earlier fit's graph, which CUDA refuses while a
    stream captures: capture() keeps the collector off for the capture, and only then."""
    seen = []

    class FakeGraph:
        def replay(self):
            seen.append(("replay", gc.isenabled()))

    @contextlib.contextmanager
    def fake_graph(graph, stream):
        seen.append(("enter", gc.isenabled()))
        yield
        seen.append(("exit", gc.isenabled()))

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    assert gc.isenabled()
    replay = graphs.capture(lambda: seen.append(("fn", gc.isenabled())), stream=None)
    assert seen == [("enter", False), ("fn", False), ("exit", False)] and gc.isenabled()
    replay()
    assert seen[-1] == ("replay", True)

    def fails():
        raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.raises(RuntimeError, match="capturing the training step failed"):
        graphs.capture(fails, stream=None)
    assert gc.isenabled()  # back on after a failed capture too
    gc.disable()
    try:
        graphs.capture(lambda: None, stream=None)
        assert not gc.isenabled()  # and left off where the caller had turned it off
    finally:
        gc.enable()


def test_graphed_steps_go_without_a_garbage_collection(on_cpu):
    # No reference cycle: the graphs, and the GPU memory they hold, go with the fit.
    X, y = chapter_data(num_examples=30)
    graphed = graphs.GraphedSteps(lambda Xb, yb: Xb.sum(), [], X, y, 10, False)
    for batch in graphed.batches(torch.Generator().manual_seed(0)):
        graphed.step(*batch)
    gone = weakref.ref(graphed)
    gc.disable()
    try:
        del graphed
        assert gone() is None
    finally:
        gc.enable()
