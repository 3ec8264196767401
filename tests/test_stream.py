"""Streaming from a .npy on disk: each row once per epoch, shuffled by block, seeded."""

import os
import re
import warnings

import numpy as np
import pytest
import torch

import torchlr
from torchlr.io import load_data
from torchlr.stream import BlockStream, block_order


def test_block_order_covers_each_row_once_in_shuffled_blocks():
    g = torch.Generator().manual_seed(0)
    blocks = list(block_order(103, 10, g))
    assert len(blocks) == 11
    starts = [start for start, _ in blocks]
    assert sorted(starts) == list(range(0, 103, 10)) and starts != sorted(starts)
    rows = torch.cat([start + perm for start, perm in blocks])
    assert torch.equal(rows.sort().values, torch.arange(103))  # a permutation of all rows
    for _, perm in blocks:  # rows stay within their block, shuffled there
        assert torch.equal(perm.sort().values, torch.arange(len(perm)))
    assert any(not torch.equal(perm, torch.arange(len(perm))) for _, perm in blocks)


def test_block_order_is_deterministic_under_a_seed():
    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([s + p for s, p in block_order(57, 8, g)])

    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))


@pytest.fixture
def table(tmp_path):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(103, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    full = torch.cat([X, y[:, None]], 1).double()  # float64 on disk, float32 in training
    path = tmp_path / "t.npy"
    np.save(path, full.numpy())
    return path, X, y


@pytest.mark.parametrize("batch_size", [1, 7, 10, 200])
def test_batches_hold_each_row_exactly_once(table, batch_size):
    path, X, y = table
    stream = BlockStream(path, block_rows=10)
    seen = []
    g = torch.Generator().manual_seed(3)
    batches = list(stream.batches(batch_size, g))
    assert all(len(bx) == batch_size for bx, _ in batches[:-1])  # only the last may be short
    assert len(batches) == -(-103 // batch_size)
    for bx, by in batches:
        # Every streamed row is a real row of the table, with its own target.
        idx = torch.cdist(bx, X).argmin(1)
        assert torch.equal(X[idx], bx) and torch.equal(y[idx][:, None], by)
        seen.append(idx)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(103))
    again = list(stream.batches(batch_size, torch.Generator().manual_seed(3)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


def test_drop_last_and_column_selection(table):
    path, X, y = table
    stream = BlockStream(path, target="x1", features=["x3", "x4"], block_rows=16)
    assert stream.shape == (103, 2)
    batches = list(stream.batches(10, torch.Generator().manual_seed(0), drop_last=True))
    assert len(batches) == 10 and all(len(b[0]) == 10 for b in batches)
    bx, by = batches[0]
    full = torch.cat([X, y[:, None]], 1)
    idx = torch.cdist(bx, full[:, 2:]).argmin(1)
    assert torch.equal(by, full[idx, :1])  # the first column alone, as a (k, 1) target


def test_a_table_of_one_row_streams(tmp_path):
    np.save(tmp_path / "row.npy", np.array([[2.0, 5.0]]))
    (bx, by), = BlockStream(tmp_path / "row.npy").batches(4, torch.Generator().manual_seed(0))
    assert torch.equal(bx, torch.tensor([[2.0]])) and torch.equal(by, torch.tensor([[5.0]]))


def test_stream_evaluate_and_fit_agree_with_memory(table):
    path, X, y = table
    stream = BlockStream(path, block_rows=9)
    w, b = torch.tensor([[0.5], [0.1], [-0.2]]), torch.tensor([0.7])
    torch.testing.assert_close(stream.evaluate(w, b), torchlr.evaluate(X, y, w, b))
    result = torchlr.fit(stream, None, lr=0.1, num_epochs=20, device="cpu")
    w_exact, b_exact = torchlr.least_squares(X, y)
    torch.testing.assert_close(result.w.double(), w_exact, atol=1e-4, rtol=0)
    assert len(result.train_losses) == 20 * 11


def test_a_standardized_fit_leaves_the_callers_stream_unscaled(table):
    # The fit scales a copy: afterwards the stream still reads the file's values, and a
    # result's w and b (in the data's units, w of shape (d,), b a float) evaluate on it as on
    # the same rows in memory.
    path, X, y = table
    stream = BlockStream(path, block_rows=9)
    result = torchlr.fit(stream, None, lr=0.1, num_epochs=5, standardize=True,
                         standardize_target=True, device="cpu")
    assert not result.scaling.is_identity
    assert torch.equal(stream.rows(torch.arange(len(X)))[0], X)
    torch.testing.assert_close(stream.evaluate(result.w, result.b),
                               torchlr.evaluate(X, y, result.w, result.b))
    with pytest.raises(ValueError, match="w must hold 3 value"):
        stream.evaluate(torch.zeros(2), 0.0)


def test_a_streamed_divergence_names_the_outlier_case_it_cannot_search_for(tmp_path):
    # In memory the data are searched and a value too large to square is named; a stream
    # is not (a pass over the file), so its message names that case beside the rate.
    rng = np.random.default_rng(0)
    table = rng.standard_normal((300, 3)).astype(np.float32)
    table[200, -1] = 1e20  # a target no rate can square in float32
    np.save(tmp_path / "t.npy", table)
    with pytest.raises(torchlr.DivergenceError) as info:
        torchlr.fit(BlockStream(tmp_path / "t.npy"), None, lr=1e-6, device="cpu")
    message = str(info.value)
    assert "smaller learning rate" in message
    assert "a value of 1.84e+19 or more" in message and "scale the data" in message
    X, y = torch.from_numpy(table[:, :-1]), torch.from_numpy(table[:, -1])
    with pytest.raises(torchlr.DivergenceError, match="a target value of 1e\\+20"):
        torchlr.fit(X, y, lr=1e-6, device="cpu")  # in memory: searched, and named


def test_stream_resume_equals_straight(table, tmp_path):
    path, _, _ = table
    kw = dict(lr=0.05, batch_size=7, device="cpu")
    straight = torchlr.fit(BlockStream(path, block_rows=10), None, num_epochs=3, **kw)
    ckpt = tmp_path / "s.pt"
    torchlr.fit(BlockStream(path, block_rows=10), None, num_epochs=1, save=str(ckpt), **kw)
    resumed = torchlr.fit(BlockStream(path, block_rows=10), None, num_epochs=3,
                          resume=str(ckpt), **kw)
    assert torch.equal(resumed.w, straight.w) and resumed.losses == straight.losses


def test_one_stream_object_saves_and_resumes_a_standardized_run(table, tmp_path):
    # A fit scales its own copy of the stream: the caller's keeps giving the file's rows as
    # they are, and the resume recognizes them and trains on them scaled as the saved run did.
    path, X, y = table
    kw = dict(lr=0.05, batch_size=7, standardize=True, standardize_target=True, device="cpu")
    straight = torchlr.fit(BlockStream(path, block_rows=10), None, num_epochs=3, **kw)
    stream, ckpt = BlockStream(path, block_rows=10), tmp_path / "s.pt"
    rows = torch.tensor([0, 5, len(X) - 1])
    before = stream.rows(rows)
    torchlr.fit(stream, None, num_epochs=1, save=str(ckpt), **kw)
    assert stream.scaling is None
    after = stream.rows(rows)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert torch.equal(after[0], X[rows])  # the file's own values
    resumed = torchlr.fit(stream, None, num_epochs=3, resume=str(ckpt), **kw)
    assert torch.equal(resumed.w, straight.w) and resumed.losses == straight.losses


def test_stream_refuses_bad_files(tmp_path):
    np.save(tmp_path / "one.npy", np.ones(5))
    with pytest.raises(ValueError, match="streaming needs a 2-D table"):
        BlockStream(tmp_path / "one.npy")
    np.save(tmp_path / "empty.npy", np.ones((0, 3)))
    with pytest.raises(ValueError, match=r"shape \(0, 3\); streaming needs a 2-D table"):
        BlockStream(tmp_path / "empty.npy")
    with pytest.raises(ValueError, match="reads a 2-D .npy file"):
        BlockStream(tmp_path / "t.csv")
    with pytest.raises(ValueError, match="No such file"):
        BlockStream(tmp_path / "none.npy")
    # Fields and Python objects, named as in memory (it said "has shape (30,)" for fields).
    np.save(tmp_path / "rec.npy", np.zeros(30, dtype=[("a", "f8"), ("y", "f8")]))
    np.save(tmp_path / "obj.npy", np.full((30, 2), None, dtype=object))
    for name, words in (("rec", r"a structured array \(fields 'a', 'y'\)"),
                        ("obj", r"an array of Python objects \(dtype object\)")):
        with pytest.raises(ValueError, match=f"{name}.npy: array 'x' is {words}"):
            BlockStream(tmp_path / f"{name}.npy")
        with pytest.raises(ValueError, match=f"{name}.npy: array 'x' is {words}"):
            load_data(tmp_path / f"{name}.npy")
    np.save(tmp_path / "two.npy", np.ones((4, 2)))
    with pytest.raises(ValueError, match="Unknown target column 'y'"):
        BlockStream(tmp_path / "two.npy", target="y")
    whole = (tmp_path / "two.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(whole[:-8])  # a copy that stopped short
    with pytest.raises(ValueError, match=r"cut.npy is truncated: .* promises \d+ bytes"):
        BlockStream(tmp_path / "cut.npy")
    bad = np.ones((30, 2))
    bad[17, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    stream = BlockStream(tmp_path / "nan.npy", block_rows=5)
    with pytest.raises(ValueError, match="nan.npy, row 18, column 'x2': the value is nan"):
        list(stream.batches(4, torch.Generator().manual_seed(0)))


def test_a_stream_reads_only_the_columns_the_run_uses(tmp_path):
    # A NaN or a float32 overflow in a column left out was refused, naming no column; in
    # memory the same file trains.
    table = torch.randn(40, 4, generator=torch.Generator().manual_seed(0)).double().numpy()
    table[5, 3], table[9, 2] = np.nan, 1e300  # x4 and x3: not among the columns used
    np.save(tmp_path / "t.npy", table)
    stream = BlockStream(tmp_path / "t.npy", target="x2", features=["x1"], block_rows=7)
    streamed = torchlr.fit(stream, None, num_epochs=2, batch_size=5)
    data = torchlr.load_data(tmp_path / "t.npy", target="x2", features=["x1"])
    w, b = streamed.w.reshape(-1, 1), torch.tensor([streamed.b])
    torch.testing.assert_close(stream.evaluate(w, b),
                               torchlr.evaluate(data.features, data.target, w, b))
    X, y = stream.rows(torch.tensor([9, 5, 0]))
    assert torch.equal(X[:, 0], torch.from_numpy(table[[9, 5, 0], 0]).float())
    assert torch.equal(y[:, 0], torch.from_numpy(table[[9, 5, 0], 1]).float())
    used = BlockStream(tmp_path / "t.npy", target="x4", block_rows=7)
    with pytest.raises(ValueError, match=r"t.npy, row 10, column 'x3': 1e\+300 is beyond"):
        torchlr.fit(used, None, num_epochs=1)


def test_a_file_changed_while_streaming_is_refused_at_the_next_block(tmp_path):
    # Rewritten in place the run trained on other rows unseen; cut short, the process died
    # of SIGBUS at the next read of a page past the new end.
    table = np.ones((60, 3))
    np.save(tmp_path / "t.npy", table)
    stream = BlockStream(tmp_path / "t.npy", block_rows=10)
    batches = stream.batches(5, torch.Generator().manual_seed(0))
    next(batches)
    table[:, 0] = 2.0
    before = os.stat(tmp_path / "t.npy")
    np.save(tmp_path / "t.npy", table)  # the same size, other values
    # A file system whose clock ticks every few ms may give the rewrite the same mtime: the
    # check then cannot see it (README says so). Here, a later time, as a later edit has.
    os.utime(tmp_path / "t.npy", ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="t.npy changed while it was being read"):
        list(batches)
    with pytest.raises(ValueError, match="t.npy changed while it was being read"):
        stream.evaluate(torch.zeros(2, 1), torch.zeros(1))


def test_streamed_standardization_matches_memory(tmp_path):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(250, 3, generator=g) * torch.tensor([0.01, 1.0, 300.0]) + torch.tensor(
        [0.05, -2.0, 100.0])
    y = X @ torch.tensor([40.0, -1.5, 0.02]) + 7.0 + 0.001 * torch.randn(250, generator=g)
    path = tmp_path / "s.npy"
    np.save(path, torch.cat([X, y[:, None]], 1).numpy())
    stream = BlockStream(path, block_rows=32)  # several blocks: the moments are combined
    kw = dict(standardize=True, standardize_target=True, lr=0.1, num_epochs=30, device="cpu")
    streamed = torchlr.fit(stream, None, **kw)
    in_memory = torchlr.fit(X, y, num_epochs=1, standardize=True, standardize_target=True)
    torch.testing.assert_close(streamed.scaling.x_mean, in_memory.scaling.x_mean)
    torch.testing.assert_close(streamed.scaling.x_scale, in_memory.scaling.x_scale)
    assert streamed.scaling.y_scale == pytest.approx(in_memory.scaling.y_scale, rel=1e-9)
    w_exact, b_exact = torchlr.least_squares(X, y)
    exact = X.double() @ w_exact + b_exact
    error = streamed.predict(X).reshape(-1).double() - exact
    assert float(error.norm() / exact.norm()) < 1e-3
    torch.testing.assert_close(streamed.w.double(), w_exact, rtol=1e-3, atol=0)
    # A later fit without scaling trains on the raw rows again.
    plain = torchlr.fit(stream, None, num_epochs=1, lr=1e-6, device="cpu")
    assert plain.scaling.is_identity


def test_stream_options_are_checked_like_data_read_whole(tmp_path):
    np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(20, 3)))
    path = tmp_path / "t.npy"
    with pytest.raises(ValueError, match="Feature columns repeat: 'x1'"):
        BlockStream(path, features=["x1", "x1"])
    with pytest.raises(ValueError, match="block_rows must be a positive int"):
        BlockStream(path, block_rows=0)
    with pytest.raises(TypeError, match="features must be a sequence of column names"):
        BlockStream(path, features="x1")
    huge = np.ones((10, 3))
    huge[5, 1] = 1e200  # finite in float64
    np.save(tmp_path / "huge.npy", huge)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning was a second line
        with pytest.raises(ValueError, match=r"row 6, column 'x2': 1e\+200 is beyond"):
            torchlr.fit(BlockStream(tmp_path / "huge.npy"), None, device="cpu")


def test_a_stream_resumes_only_in_the_blocks_it_was_read_in(tmp_path):
    np.save(tmp_path / "t.npy", np.random.default_rng(1).normal(size=(200, 3)))
    path = tmp_path / "t.npy"
    saved = tmp_path / "run.pt"
    torchlr.fit(BlockStream(path, block_rows=10), None, num_epochs=1, save=str(saved),
                device="cpu")
    with pytest.raises(ValueError, match="in blocks of 10 rows, this run in blocks of 50"):
        torchlr.fit(BlockStream(path, block_rows=50), None, num_epochs=2, resume=str(saved),
                    device="cpu")
    resumed = torchlr.fit(BlockStream(path, block_rows=10), None, num_epochs=2,
                          resume=str(saved), device="cpu")
    straight = torchlr.fit(BlockStream(path, block_rows=10), None, num_epochs=2, device="cpu")
    assert torch.equal(resumed.w, straight.w) and resumed.b == straight.b


def test_a_changed_row_of_a_streamed_file_is_other_data(tmp_path):
    # A stream is recognized by the rows it samples: the first, the last and evenly between.
    table = np.random.default_rng(3).normal(size=(600, 3))
    np.save(tmp_path / "t.npy", table)
    saved = tmp_path / "run.pt"
    torchlr.fit(BlockStream(tmp_path / "t.npy", block_rows=10), None, num_epochs=1,
                save=str(saved), device="cpu")
    table[-1, 0] += 1.0  # the last row: sampled whatever the file's size
    np.save(tmp_path / "t.npy", table)
    with pytest.raises(ValueError, match="not the data it trained on"):
        torchlr.fit(BlockStream(tmp_path / "t.npy", block_rows=10), None, num_epochs=2,
                    resume=str(saved), device="cpu")


def test_the_default_block_is_as_many_whole_rows_as_fit_in_16_mib(tmp_path):
    from torchlr import stream

    np.save(tmp_path / "t.npy", np.zeros((4, 3)))  # 24 bytes a row
    rows = BlockStream(tmp_path / "t.npy").block_rows
    assert rows * 24 <= stream.BLOCK_BYTES == 16 << 20 < (rows + 1) * 24


def test_other_data_is_named_before_other_blocks(tmp_path):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "a.npy", rng.normal(size=(200, 3)))
    np.save(tmp_path / "b.npy", rng.normal(size=(200, 3)))
    saved = tmp_path / "run.pt"
    torchlr.fit(BlockStream(tmp_path / "a.npy", block_rows=10), None, num_epochs=1,
                save=str(saved), device="cpu")
    with pytest.raises(ValueError, match="not the data it trained on"):
        torchlr.fit(BlockStream(tmp_path / "b.npy", block_rows=50), None, num_epochs=2,
                    resume=str(saved), device="cpu")
    # One-row blocks shuffle exactly as the rows in memory do: such a stream and the same
    # rows in memory resume each other.
    torchlr.fit(BlockStream(tmp_path / "a.npy", block_rows=1), None, num_epochs=1,
                save=str(saved), device="cpu")
    table = torch.from_numpy(np.load(tmp_path / "a.npy")).float()
    resumed = torchlr.fit(table[:, :2], table[:, 2], num_epochs=2, resume=str(saved),
                          device="cpu")
    straight = torchlr.fit(BlockStream(tmp_path / "a.npy", block_rows=1), None, num_epochs=2,
                           device="cpu")
    assert torch.equal(resumed.w, straight.w)


@pytest.mark.parametrize("features, target", [(True, False), (False, True)])
def test_streamed_scaling_of_one_part_matches_memory(tmp_path, features, target):
    # Either option alone scales its part of a stream, as it does data in memory.
    g = torch.Generator().manual_seed(1)
    X = torch.randn(120, 2, generator=g) * torch.tensor([5.0, 0.2]) + 3.0
    y = X @ torch.tensor([0.3, -2.0]) + 10.0 + 0.01 * torch.randn(120, generator=g)
    path = tmp_path / "s.npy"
    np.save(path, torch.cat([X, y[:, None]], 1).numpy())
    kw = dict(standardize=features, standardize_target=target, lr=0.05, num_epochs=2,
              device="cpu")
    streamed = torchlr.fit(BlockStream(path, block_rows=200), None, **kw)
    in_memory = torchlr.fit(X, y, **kw)
    assert streamed.scaling.is_identity is False
    torch.testing.assert_close(streamed.scaling.x_mean, in_memory.scaling.x_mean)
    torch.testing.assert_close(streamed.scaling.x_scale, in_memory.scaling.x_scale)
    assert streamed.scaling.y_mean == pytest.approx(in_memory.scaling.y_mean, rel=1e-6)
    assert streamed.scaling.y_scale == pytest.approx(in_memory.scaling.y_scale, rel=1e-6)
    torch.testing.assert_close(streamed.w_history, in_memory.w_history, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(streamed.b_history, in_memory.b_history, rtol=1e-5, atol=1e-5)


def test_fit_scaling_scales_the_features_and_not_the_target_by_default(tmp_path):
    table = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 3)).astype(np.float32)
    np.save(tmp_path / "t.npy", table)
    scaling = BlockStream(tmp_path / "t.npy", block_rows=16).fit_scaling()
    expected = torch.from_numpy(table[:, :2]).double()
    torch.testing.assert_close(scaling.x_mean, expected.mean(0).float())
    torch.testing.assert_close(scaling.x_scale, expected.std(0, correction=0).float())
    assert scaling.y_mean == 0.0 and scaling.y_scale == 1.0
    # Statistics come from the file, never from rows an earlier scaling already changed.
    stream = BlockStream(tmp_path / "t.npy", block_rows=16)
    stream.scaling = stream.fit_scaling(target=True)
    again = stream.fit_scaling()
    torch.testing.assert_close(again.x_mean, scaling.x_mean, rtol=0, atol=0)
    torch.testing.assert_close(again.x_scale, scaling.x_scale, rtol=0, atol=0)


# Tests below kill mutants that a mutation run found alive in stream.py.

def _table(tmp_path, n=40, seed=0):
    g = np.random.default_rng(seed)
    arr = g.normal(size=(n, 3)).astype(np.float32)
    arr[:, 2] = 2 * arr[:, 0] - 3 * arr[:, 1] + 1 + 0.01 * arr[:, 2]
    path = tmp_path / "t.npy"
    np.save(path, arr)
    return path, arr


@pytest.mark.parametrize("features,target", [(["x2", "x1"], "x3"), (["x2", "x3"], "x1")])
def test_a_stream_reads_columns_in_the_order_named(tmp_path, features, target):
    # Every column used, in another order: taken as the file's order, the model would train
    # on swapped features or on the wrong target, without a word.
    path, arr = _table(tmp_path)
    stream = BlockStream(path, target, features, block_rows=7)
    X, y = stream.rows(torch.arange(len(arr)), scaled=False)
    cols = [int(f[1:]) - 1 for f in features]
    np.testing.assert_array_equal(X.numpy(), arr[:, cols])
    np.testing.assert_array_equal(y.numpy()[:, 0], arr[:, int(target[1:]) - 1])
    w, b = torch.tensor([0.5, -1.0]), 0.25
    ref = ((torch.from_numpy(arr[:, cols]).double() @ w.double() + b
            - torch.from_numpy(arr[:, int(target[1:]) - 1]).double()) ** 2 / 2).mean()
    torch.testing.assert_close(stream.evaluate(w, b).double(), ref, rtol=1e-5, atol=1e-6)


def test_a_streamed_nan_names_its_own_column_when_columns_are_chosen(tmp_path):
    arr = np.arange(30, dtype=np.float64).reshape(10, 3)
    arr[4, 2] = np.nan
    path = tmp_path / "t.npy"
    np.save(path, arr)
    stream = BlockStream(path, "x1", ["x3"], block_rows=3)
    with pytest.raises(ValueError, match=re.escape("t.npy, row 5, column 'x3': the value is nan")):
        list(stream.batches(4, torch.Generator().manual_seed(0)))


def test_rows_in_any_order_name_the_file_row_of_a_nan(tmp_path):
    arr = np.arange(30, dtype=np.float64).reshape(10, 3)
    arr[0, 1] = np.nan
    path = tmp_path / "t.npy"
    np.save(path, arr)
    stream = BlockStream(path)
    with pytest.raises(ValueError, match=re.escape("t.npy, row 1, column 'x2': the value is nan")):
        stream.rows(torch.tensor([7, 3, 0]))


def test_a_standardized_streamed_fits_epoch_losses_are_the_full_data_loss(tmp_path):
    # Evaluated on unscaled rows with the scaled model's weights, the loss was another number.
    path, arr = _table(tmp_path, n=200)
    X, y = torch.from_numpy(arr[:, :2]), torch.from_numpy(arr[:, 2:])
    for target in (False, True):
        result = torchlr.fit(BlockStream(path, block_rows=32), None, lr=0.1, num_epochs=3,
                             batch_size=10, standardize=True, standardize_target=target,
                             device="cpu")
        expected = float(((X.double() @ result.w.double().reshape(-1, 1) + result.b
                           - y.double()) ** 2 / 2).mean())
        assert result.losses[-1] == pytest.approx(expected, rel=1e-4)


def test_a_one_column_npy_is_refused_by_its_shape(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.arange(5.0).reshape(5, 1))
    with pytest.raises(ValueError, match=re.escape("has shape (5, 1); streaming needs a 2-D "
                                                   "table with rows and at least 2 columns")):
        BlockStream(path)


def test_a_fit_without_standardize_ignores_a_scaling_the_caller_set_on_the_stream(tmp_path):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(103, 3, generator=g) * 5 + 2
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    path = tmp_path / "t.npy"
    np.save(path, torch.cat([X, y[:, None]], 1).double().numpy())
    stream = BlockStream(path, block_rows=10)
    stream.scaling = stream.fit_scaling()  # the caller's own, e.g. to look at scaled rows
    result = torchlr.fit(stream, None, num_epochs=1, device="cpu")  # no standardize: none
    assert result.scaling.is_identity and result.scaled_w is not None
    assert torch.equal(result.w, result.scaled_w)
