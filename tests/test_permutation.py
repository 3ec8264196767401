"""permutation="hashed": an epoch's order as row numbers sorted by a seeded hash.

Checked against the hash written with Python's unbounded integers, for being a permutation
that looks uniform, and through fit, data_iter, checkpoints and the CLI. That the GPU
computes the same order is tests/test_cuda.py's.
"""

import pytest
import torch
from conftest import chapter_data, hand_loop

import torchlr
from torchlr import data
from torchlr.cli import main
from torchlr.data import batch_order, data_iter, hashed_order


def python_hashed_order(n, generator):
    """The same keys with Python ints, mod 2^32 spelled out: nothing can overflow here."""
    seeds = torch.randint(0, 1 << 32, (data._ROUNDS,), generator=generator).tolist()

    def key(i):
        x = i
        for seed in seeds:
            x ^= seed
            for multiplier in data._MULTIPLIERS:
                x ^= x >> 16
                x = (x * multiplier) % (1 << 32)
            x ^= x >> 16
        return x

    keys = [key(i) for i in range(n)]
    assert len(set(keys)) == n  # a bijection of 32-bit numbers: no two rows tie
    return sorted(range(n), key=keys.__getitem__)


@pytest.mark.parametrize("n", [1, 2, 10, 1000, 4099])
def test_hashed_order_is_the_python_reference(n):
    got = hashed_order(n, torch.Generator().manual_seed(n))
    assert got.dtype == torch.int64 and got.device.type == "cpu"
    assert got.tolist() == python_hashed_order(n, torch.Generator().manual_seed(n))


def test_each_draw_takes_three_numbers_from_the_generator():
    # So an epoch's order depends on the generator's state, as randperm's does, and the next
    # epoch (or a resumed run, from the saved state) draws the next order.
    gen, ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    first, second = hashed_order(500, gen), hashed_order(500, gen)
    assert not torch.equal(first, second)
    torch.randint(0, 1 << 32, (3,), generator=ref)
    assert torch.equal(second, hashed_order(500, ref))
    assert torch.equal(gen.get_state(), ref.get_state())
    assert torch.equal(first, batch_order(500, generator=torch.Generator().manual_seed(7),
                                          permutation="hashed"))


def test_hashed_orders_look_uniform():
    # 4000 orders of 40 rows: where each row lands, and whether row i comes before row i + 1
    # (neighbouring row numbers have the closest inputs to the hash).
    n, draws = 40, 4000
    gen = torch.Generator().manual_seed(0)
    places = torch.zeros(n, n)  # [row, position]: how often
    before = torch.zeros(n - 1)
    for _ in range(draws):
        order = hashed_order(n, gen)
        places[order, torch.arange(n)] += 1
        position = torch.empty(n, dtype=torch.long)
        position[order] = torch.arange(n)
        before += (position[:-1] < position[1:]).float()
    expected = draws / n
    chi2 = float(((places - expected) ** 2 / expected).sum())
    dof = (n - 1) ** 2  # chi-square's mean; its standard deviation is sqrt(2 dof), 55 here
    assert abs(chi2 - dof) < 5 * (2 * dof) ** 0.5
    share = before / draws  # 0.5 each, with a standard deviation of 0.0079
    assert float((share - 0.5).abs().max()) < 0.04
    assert abs(float(share.mean()) - 0.5) < 0.01


def test_hashed_order_refuses_more_rows_than_the_hash_keeps_apart():
    with pytest.raises(ValueError, match=r"at most 2\^32 rows, got 4294967297"):
        hashed_order((1 << 32) + 1, torch.Generator())


def test_batch_order_names_an_unknown_permutation():
    with pytest.raises(ValueError, match="Unknown permutation 'sorted'; choose one of "
                                         "'randperm', 'hashed'"):
        batch_order(5, permutation="sorted")


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("block_bytes", [40, 1 << 20])
def test_data_iter_gathers_the_hashed_order(monkeypatch, block_bytes, prefetch):
    monkeypatch.setattr(data, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(data, "PREFETCH_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(data.threads, "spare_core", lambda device: prefetch)
    X = torch.randn(103, 3, generator=torch.Generator().manual_seed(1))
    y = torch.arange(103.0).reshape(-1, 1)
    got = [(Xb.clone(), yb.clone()) for Xb, yb in data_iter(
        10, X, y, generator=torch.Generator().manual_seed(4), permutation="hashed",
        reuse_buffer=True, prefetch=prefetch)]
    order = python_hashed_order(103, torch.Generator().manual_seed(4))
    assert torch.cat([yb for _, yb in got]).view(-1).long().tolist() == order
    assert all(torch.equal(Xb, X[yb.view(-1).long()]) for Xb, yb in got)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_fit_follows_the_hashed_order(impl):
    # The chapter's loop by hand, drawing each epoch's order with permutation="hashed".
    X, y = chapter_data(num_examples=203)
    result = torchlr.fit(X, y, impl=impl, permutation="hashed", batch_size=8, num_epochs=2,
                         device="cpu", seed=3)
    _, b, history = hand_loop(X, y, seed=3, batch_size=8, num_epochs=2, permutation="hashed")
    # Every epoch's parameters, not three copies of the last: the history holds snapshots.
    got = torch.cat([result.w_history, result.b_history.reshape(-1, 1)], 1)
    torch.testing.assert_close(got, history, rtol=0, atol=1e-6)
    assert result.b == pytest.approx(float(b.detach()), abs=1e-6)
    plain = torchlr.fit(X, y, impl=impl, batch_size=8, num_epochs=2, device="cpu", seed=3)
    assert not torch.equal(result.w_history, plain.w_history)  # another order: another run


def test_hashed_runs_reach_the_noise_floor():
    X, y = chapter_data(num_examples=1000)
    result = torchlr.fit(X, y, permutation="hashed", device="cpu")
    assert 3e-5 < result.losses[-1] < 7e-5  # the noise floor, 0.01² / 2, as with randperm


def test_permutation_is_checked():
    X, y = chapter_data(num_examples=20)
    with pytest.raises(ValueError, match="Unknown permutation 'shuffled'; choose one "
                                         "of 'randperm', 'hashed'"):
        torchlr.fit(X, y, permutation="shuffled", device="cpu")


def test_a_stream_refuses_the_hashed_order(tmp_path):
    import numpy as np

    path = tmp_path / "table.npy"
    np.save(path, torch.cat(chapter_data(num_examples=30), 1).numpy())
    stream = torchlr.BlockStream(str(path))
    with pytest.raises(ValueError, match="permutation='hashed' is not supported when "
                                         "streaming from disk"):
        torchlr.fit(stream, None, permutation="hashed", device="cpu")
    assert main(["train", "--data", str(path), "--stream", "--permutation", "hashed",
                 "--device", "cpu", "--no-tensorboard"]) == 2


def test_a_hashed_run_resumes_as_it_would_have_gone_on(tmp_path):
    X, y = chapter_data(num_examples=203)
    options = dict(permutation="hashed", device="cpu", batch_size=16)
    path = str(tmp_path / "run.pt")
    torchlr.fit(X, y, num_epochs=1, save=path, **options)
    resumed = torchlr.fit(X, y, num_epochs=3, resume=path, **options)
    straight = torchlr.fit(X, y, num_epochs=3, **options)
    assert torch.equal(resumed.w_history, straight.w_history)
    assert resumed.losses == straight.losses
    with pytest.raises(ValueError, match="permutation='hashed' in the checkpoint, "
                                         "'randperm' now"):
        torchlr.fit(X, y, num_epochs=3, resume=path, device="cpu", batch_size=16)


def test_a_checkpoint_from_before_the_option_resumes_in_randperms_order(tmp_path):
    X, y = chapter_data(num_examples=203)
    path = tmp_path / "old.pt"
    torchlr.fit(X, y, num_epochs=1, save=str(path), device="cpu")
    state = torch.load(path, weights_only=True)
    del state["config"]["permutation"]  # as version 3 wrote it
    state["version"] = 3
    torch.save(state, path)
    resumed = torchlr.fit(X, y, num_epochs=2, resume=str(path), device="cpu")
    assert torch.equal(resumed.w_history, torchlr.fit(X, y, num_epochs=2, device="cpu").w_history)
    with pytest.raises(ValueError, match="permutation='randperm' in the checkpoint"):
        torchlr.fit(X, y, num_epochs=2, resume=str(path), device="cpu", permutation="hashed")


def test_cli_permutation(tmp_path, capsys):
    args = ["train", "--device", "cpu", "--no-tensorboard", "--quiet"]
    assert main([*args, "--permutation", "hashed"]) == 0
    hashed = capsys.readouterr().out
    X, y = torchlr.synthetic_data(torch.tensor([2.0, -3.4]), 4.2, 1000,
                                  generator=torch.Generator().manual_seed(0))
    result = torchlr.fit(X, y, permutation="hashed", device="cpu")
    true_b = float(torch.tensor(4.2))  # the float32 b that drew the data
    assert f"Error in estimating b {true_b - result.b:.6g}\n" in hashed
    assert main(args) == 0
    assert capsys.readouterr().out != hashed
    # A resumed run keeps its permutation: given, it must be the checkpoint's.
    path = str(tmp_path / "run.pt")
    assert main([*args, "--epochs", "1", "--save", path]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume", path, "--permutation", "hashed"]) == 2
    assert ("--permutation hashed differs from the checkpoint's 'randperm'"
            in capsys.readouterr().err)
