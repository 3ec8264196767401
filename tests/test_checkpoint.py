"""Checkpoints: resume equals an uninterrupted run bit for bit; bad files are refused."""

import math
import os
import pickle
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch
from conftest import Payload

import torchlr
from torchlr.checkpoint import RUN_FIELDS, load_checkpoint, load_model, save_checkpoint
from torchlr.cli import main
from torchlr.concise import LinearRegression
from torchlr.preprocess import train_val_split
from torchlr.run import sampled_rows
from torchlr.stream import BlockStream
from torchlr.train import ConciseModel, ScratchModel


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the CLI writes TensorBoard runs under ./runs by default


def dataset(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g) * torch.tensor([1.0, 10.0, 0.1]) + 2
    y = X @ torch.tensor([1.0, -0.2, 5.0]) + 1.0 + 0.01 * torch.randn(n, generator=g)
    return X, y


OPTIONS = [
    {},
    {"standardize": True, "standardize_target": True, "val_fraction": 0.2, "batch_size": 7},
]


@pytest.mark.parametrize("impl", ["scratch", "concise"])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "scaled+val"])
@pytest.mark.parametrize("ahead", [False, True], ids=["", "orders-ahead"])
def test_resume_equals_straight_bit_for_bit(tmp_path, impl, options, ahead, request):
    if ahead:  # each epoch's order drawn while the one before trains, as on a GPU
        request.getfixturevalue("orders_ahead_on_cpu")
    X, y = dataset()
    kw = dict(impl=impl, lr=0.01, device="cpu", **options)
    straight = torchlr.fit(X, y, num_epochs=5, **kw)
    path = tmp_path / "run.pt"
    first = torchlr.fit(X, y, num_epochs=2, save=str(path), **kw)
    assert load_checkpoint(path)["epoch"] == 2
    resumed = torchlr.fit(X, y, num_epochs=5, resume=str(path), **kw)
    assert not torch.equal(first.w, straight.w)  # the resume did the remaining epochs
    assert torch.equal(resumed.w, straight.w) and resumed.b == straight.b
    assert torch.equal(resumed.scaled_w, straight.scaled_w)
    assert resumed.losses == straight.losses and resumed.val_losses == straight.val_losses
    assert torch.equal(resumed.w_history, straight.w_history)
    assert torch.equal(resumed.b_history, straight.b_history)
    assert resumed.val_r2 == straight.val_r2 and resumed.best_epoch == straight.best_epoch
    assert len(resumed.val_r2) == (5 if options.get("val_fraction") else 0)
    # The checkpoint keeps every minibatch loss and epoch time, so the history is whole.
    assert torch.equal(resumed.train_losses, straight.train_losses)
    assert len(resumed.epoch_seconds) == 5
    assert resumed.epoch_seconds[:2] == first.epoch_seconds


@pytest.mark.parametrize("ahead", [False, True], ids=["", "orders-ahead"])
def test_a_run_stopped_mid_way_resumes_as_if_never_stopped(tmp_path, ahead, request):
    # The checkpoint of an epoch that was not the run's last: with orders drawn ahead, the
    # next epoch's draw was under way when it was saved, and must not be in its generator.
    if ahead:
        request.getfixturevalue("orders_ahead_on_cpu")
    X, y = dataset()
    kw = dict(lr=0.01, device="cpu", num_epochs=5)
    straight = torchlr.fit(X, y, **kw)
    path = tmp_path / "run.pt"

    def stop_after_epoch_2(progress):
        if progress.epoch == 2 and progress.epoch_loss is not None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        torchlr.fit(X, y, save=str(path), on_progress=stop_after_epoch_2, **kw)
    assert load_checkpoint(path)["epoch"] == 2
    resumed = torchlr.fit(X, y, resume=str(path), **kw)
    assert torch.equal(resumed.w_history, straight.w_history) and resumed.b == straight.b
    assert resumed.losses == straight.losses


def test_resume_refuses_a_changed_run(tmp_path):
    X, y = dataset()
    path = tmp_path / "run.pt"
    torchlr.fit(X, y, num_epochs=1, save=str(path), device="cpu")
    with pytest.raises(ValueError, match=r"lr=0.03 in the checkpoint, 0.1 now"):
        torchlr.fit(X, y, num_epochs=3, lr=0.1, resume=str(path), device="cpu")
    with pytest.raises(ValueError, match=r"trained on 300 rows, this data gives 200"):
        torchlr.fit(X[:200], y[:200], num_epochs=3, resume=str(path), device="cpu")
    # Columns in words, not as the config's field names (which the CLI has no flag for).
    with pytest.raises(ValueError, match=re.escape(
            "feature columns None in the checkpoint, ['a', 'b', 'c'] now; target column None in "
            "the checkpoint, 'y' now")):
        torchlr.fit(X, y, num_epochs=3, feature_names=["a", "b", "c"], target_name="y",
                    resume=str(path), device="cpu")
    torchlr.fit(X, y, num_epochs=1, save=str(path), standardize=True, device="cpu")
    with pytest.raises(ValueError, match=r"not the data it trained on"):
        torchlr.fit(X + 1, y, num_epochs=3, standardize=True, resume=str(path), device="cpu")


# One other value for each field that defines a run (checkpoint.RUN_FIELDS).
CHANGED = {"impl": "concise", "lr": 0.1, "batch_size": 7, "seed": 1, "drop_last": True,
           "val_fraction": 0.2, "standardize": True, "standardize_target": True,
           "feature_names": ("a", "b", "c"), "target_name": "y", "permutation": "hashed"}


@pytest.mark.parametrize("name", RUN_FIELDS)
def test_resume_refuses_each_changed_run_field(tmp_path, name):
    # Each one changes the run that goes on from the checkpoint: its steps, its order, its
    # rows or what its columns mean.
    X, y = dataset()
    path = tmp_path / "run.pt"
    torchlr.fit(X, y, num_epochs=1, save=str(path), device="cpu")
    epochs = []
    with pytest.raises(ValueError, match=r"^Cannot resume .*run.pt: ") as info:
        torchlr.fit(X, y, num_epochs=3, resume=str(path), device="cpu",
                    on_progress=epochs.append, **{name: CHANGED[name]})
    label = {"feature_names": "feature columns", "target_name": "target column"}.get(name)
    assert (label or f"{name}=") in str(info.value) and epochs == []


def test_every_run_field_has_a_changed_value_to_test():
    assert set(CHANGED) == set(RUN_FIELDS)


@pytest.mark.parametrize("change", ["other draw", "rows reordered", "two rows swapped",
                                    "one label", "one feature cell"])
def test_resume_refuses_other_data_of_the_same_shape(tmp_path, change):
    X, y = dataset(n=20_000)  # big enough that sums would hide a small change
    path = tmp_path / "run.pt"
    torchlr.fit(X, y, num_epochs=1, lr=1e-3, save=str(path), device="cpu")
    X, y = X.clone(), y.clone()
    if change == "other draw":
        X, y = dataset(n=20_000, seed=1)
    elif change == "rows reordered":
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
        X, y = X[order], y[order]
    elif change == "two rows swapped":  # rows far from the start, the end and the samples
        X[[5001, 5002]], y[[5001, 5002]] = X[[5002, 5001]], y[[5002, 5001]]
    elif change == "one label":
        y[7777] += 1e-3
    else:
        X[7777, 1] += 1e-3
    with pytest.raises(ValueError, match=r"not the data it trained on"):
        torchlr.fit(X, y, num_epochs=3, lr=1e-3, resume=str(path), device="cpu")


def test_resume_refuses_changed_validation_rows(tmp_path):
    X, y = dataset(n=2000)
    path = tmp_path / "run.pt"
    options = dict(lr=0.01, val_fraction=0.2, device="cpu")
    torchlr.fit(X, y, num_epochs=1, save=str(path), **options)
    _, val = train_val_split(len(X), 0.2, seed=0)
    y = y.clone()
    y[val[0]] += 1.0  # a held-out row: training rows unchanged
    with pytest.raises(ValueError, match=r"not the data it trained on"):
        torchlr.fit(X, y, num_epochs=2, resume=str(path), **options)


def test_resume_with_other_threads_scales_as_the_saved_run(tmp_path):
    # Scaling statistics summed on another number of threads may differ in their last bits;
    # the fingerprint says the data is the same, so the resumed run takes the saved ones.
    X, y = dataset(n=200_000)
    options = dict(lr=0.01, standardize=True, standardize_target=True, device="cpu",
                   batch_size=1000, threads=None)
    path = tmp_path / "run.pt"
    saved_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        straight = torchlr.fit(X, y, num_epochs=2, **options)
        torchlr.fit(X, y, num_epochs=1, save=str(path), **options)
        torch.set_num_threads(1)
        resumed = torchlr.fit(X, y, num_epochs=2, resume=str(path), **options)
    finally:
        torch.set_num_threads(saved_threads)
    assert resumed.scaling.y_scale == straight.scaling.y_scale  # differs on 1 thread
    assert len(resumed.losses) == 2


@pytest.mark.parametrize("val_fraction", [0.2, 0.0])  # with a best epoch kept, and without
def test_a_checkpoint_with_losses_of_the_scaled_target_resumes_in_the_targets_units(
        tmp_path, val_fraction):
    # Checkpoints written before losses were reported in the target's units (no
    # "loss_units" mark) hold those of y / y_scale: a resumed run converts them, so its
    # history reads as one run's.
    X, y = dataset(n=300)
    y = 40.0 * y + 7.0
    options = dict(lr=0.05, standardize=True, standardize_target=True,
                   val_fraction=val_fraction, early_stopping=5 if val_fraction else 0,
                   device="cpu", batch_size=16)
    straight = torchlr.fit(X, y, num_epochs=3, **options)
    path = tmp_path / "old.pt"
    torchlr.fit(X, y, num_epochs=2, save=str(path), **options)
    state = torch.load(path, weights_only=True)
    history, factor = state["history"], state["scaling"]["y_scale"] ** 2
    assert factor > 100 and history.pop("loss_units") == "target"
    assert state["version"] == 4  # version 3 marked the target's units; older files were 2
    state["version"] = 2
    history["losses"] = [v / factor for v in history["losses"]]
    history["val_losses"] = [v / factor for v in history["val_losses"]]
    history["train_losses"] = history["train_losses"] / factor
    if val_fraction:
        state["best"]["val_loss"] /= factor
    else:
        assert state["best"] is None
    torch.save(state, path)
    resumed = torchlr.fit(X, y, num_epochs=3, resume=str(path), save=str(path), **options)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    assert resumed.val_losses == pytest.approx(straight.val_losses, rel=1e-5)
    torch.testing.assert_close(resumed.train_losses, straight.train_losses, rtol=1e-5, atol=0)
    saved = load_checkpoint(path)
    assert saved["history"]["loss_units"] == "target"
    if val_fraction:
        assert saved["best"]["val_loss"] == pytest.approx(min(straight.val_losses), rel=1e-5)


def test_sampled_rows_stay_in_range_at_any_size():
    for n in (1, 2, 255, 256, 257, 2**25 + 4, 10**8):  # float32 steps would reach n
        rows = sampled_rows(n)
        assert rows.min() == 0 and rows.max() == n - 1
        assert len(rows) == (n if n <= 256 else len(rows.unique())) and len(rows) <= 3 * 256


def test_an_empty_file_at_the_save_path_is_overwritten(tmp_path):
    X, y = dataset()
    path = tmp_path / "made-by-mktemp.pt"
    path.touch()
    torchlr.fit(X, y, num_epochs=1, lr=0.01, save=str(path), device="cpu")
    assert load_checkpoint(path)["epoch"] == 1


def test_resume_accepts_the_same_data_in_another_form(tmp_path):
    # The fingerprint is of the float32 rows the model trains on: float64 numpy input with
    # the same float32 values, a column-major copy, or -0.0 where 0.0 was, is the same data.
    X, y = dataset(n=5000)
    X[::7, 0] = 0.0
    path = tmp_path / "run.pt"
    torchlr.fit(X, y, num_epochs=1, lr=0.01, save=str(path), device="cpu")
    negative_zeros = X.clone()
    negative_zeros[::7, 0] = -0.0
    for X_again, y_again in ((X.double().numpy(), y.double().numpy()),
                             (X.T.contiguous().T, y), (negative_zeros, y)):
        resumed = torchlr.fit(X_again, y_again, num_epochs=2, lr=0.01, resume=str(path),
                              save=str(tmp_path / "again.pt"), device="cpu")
        assert len(resumed.losses) == 2


def test_a_streamed_run_and_its_file_in_memory_resume_each_other(tmp_path):
    from torchlr.io import load_data
    from torchlr.stream import BlockStream

    X, y = dataset(n=3000)
    table = torch.cat([X, y[:, None]], 1).numpy()
    np.save(tmp_path / "t.npy", table)
    path = tmp_path / "run.pt"
    torchlr.fit(BlockStream(tmp_path / "t.npy"), None, num_epochs=1, lr=0.01, save=str(path),
                device="cpu")
    data = load_data(tmp_path / "t.npy")
    resumed = torchlr.fit(data.features, data.target, num_epochs=2, lr=0.01,
                          resume=str(path), save=str(tmp_path / "mem.pt"), device="cpu")
    assert len(resumed.losses) == 2
    other = table.copy()
    other[0, 0] += 1.0  # the first row: one a stream's sampled digest reads
    np.save(tmp_path / "other.npy", other)
    with pytest.raises(ValueError, match=r"not the data it trained on"):
        torchlr.fit(BlockStream(tmp_path / "other.npy"), None, num_epochs=2, lr=0.01,
                    resume=str(path), device="cpu")


def test_a_checkpoint_is_written_after_every_epoch(tmp_path):
    X, y = dataset()
    path = tmp_path / "run.pt"
    seen = []

    def check(progress):
        if progress.epoch_loss is not None:  # the epoch is over: its checkpoint is on disk
            state = load_checkpoint(path)
            seen.append((progress.epoch, state["epoch"],
                         state["history"]["losses"][-1] == progress.epoch_loss))

    torchlr.fit(X, y, num_epochs=3, lr=0.01, save=str(path), device="cpu", on_progress=check)
    assert seen == [(1, 1, True), (2, 2, True), (3, 3, True)]


def test_checkpoint_holds_the_whole_run(tmp_path):
    X, y = dataset()
    path = tmp_path / "run.pt"
    result = torchlr.fit(X, y, impl="concise", num_epochs=2, save=str(path), device="cpu",
                         feature_names=("a", "b", "c"), target_name="t", standardize=True)
    state = torch.load(path, weights_only=True)  # plain tensors, numbers, lists and dicts
    assert state["impl"] == "concise" and state["epoch"] == 2
    assert state["feature_names"] == ["a", "b", "c"] and state["target_name"] == "t"
    assert state["config"]["standardize"] is True and state["config"]["lr"] == 0.03
    assert torch.equal(state["params"]["w"].reshape(-1), result.scaled_w)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.015  # MSELoss has no 1/2
    assert torch.equal(state["scaling"]["x_mean"], result.scaling.x_mean)
    assert state["history"]["losses"] == result.losses
    # The RNG state is the generator's after init and two epochs' permutations.
    g = torch.Generator().manual_seed(0)
    torch.randn(3, 1, generator=g)
    torch.randperm(300, generator=g)
    torch.randperm(300, generator=g)
    assert torch.equal(state["generator"], g.get_state())
    assert os.listdir(tmp_path) == ["run.pt"]  # no temporary file left beside it


def test_a_folder_or_garbage_is_named_as_such(tmp_path):
    with pytest.raises(ValueError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=r"notes.txt is not a torchlr checkpoint: not the zip "
                                         r"archive torch.save writes$"):
        load_checkpoint(tmp_path / "notes.txt")


def test_a_changed_byte_anywhere_in_the_stored_tensors_is_refused(tmp_path):
    # torch.load reads a damaged entry without checking its CRC-32: a flipped bit in w was
    # taken, predicted with and resumed from.
    X, y = dataset(n=60)
    good = tmp_path / "good.pt"
    torchlr.fit(X, y, num_epochs=1, save=str(good), device="cpu")
    data = good.read_bytes()
    with zipfile.ZipFile(good) as archive:
        entries = [(info.filename, info.header_offset, info.file_size)
                   for info in archive.infolist() if "/data/" in info.filename]
    assert entries
    for name, header, size in entries:
        start = header + 30 + len(name) + int.from_bytes(data[header + 28:header + 30],
                                                         "little")  # past the local header
        for offset in {start, start + size // 2, start + size - 1}:
            bad = bytearray(data)
            bad[offset] ^= 0x10
            path = tmp_path / "bad.pt"
            path.write_bytes(bytes(bad))
            with pytest.raises(ValueError, match=f"bad.pt is a damaged torchlr checkpoint: "
                                                 f"the bytes of its entry '{name}' do not match"):
                load_model(path)


def test_a_changed_byte_in_the_archives_index_is_refused_or_harmless(tmp_path):
    # The central directory and end records, which the CRC-32s do not cover: a flipped
    # folder bit loaded w as uninitialised memory, a flipped disk number was a traceback.
    X, y = dataset(n=60)
    good = tmp_path / "good.pt"
    torchlr.fit(X, y, num_epochs=1, save=str(good), device="cpu")
    data = good.read_bytes()
    expected = load_checkpoint(good)
    with zipfile.ZipFile(good) as archive:
        index = min(data.index(b"PK\x01\x02", info.header_offset)
                    for info in archive.infolist())
    path = tmp_path / "bad.pt"
    refused = 0
    for offset in range(index, len(data)):
        bad = bytearray(data)
        bad[offset] ^= 0x55
        path.write_bytes(bytes(bad))
        try:
            state = load_checkpoint(path)
        except ValueError as exc:
            assert str(exc).startswith(f"{path} is "), exc
            refused += 1
            continue
        for key in ("w", "b"):  # read as saved, or not at all
            assert torch.equal(state["params"][key], expected["params"][key]), offset
        assert torch.equal(state["history"]["w"], expected["history"]["w"]), offset
    assert refused > (len(data) - index) // 2


def test_a_checkpoint_that_cannot_be_read_is_not_called_a_foreign_file(tmp_path,
                                                                        monkeypatch):
    X, y = dataset(n=60)
    good = tmp_path / "good.pt"
    torchlr.fit(X, y, num_epochs=1, save=str(good), device="cpu")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(zipfile, "ZipFile", denied)  # as root, a mode of 000 would not do
    with pytest.raises(ValueError, match=r"^Cannot read .*good.pt: Permission denied$"):
        load_checkpoint(good)


def test_a_pickle_with_code_is_refused_without_torchs_advice_to_run_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(Payload(), "code.pt")  # the zip archive torch.save writes, holding code
    with pytest.raises(ValueError) as info:
        load_checkpoint("code.pt")
    assert str(info.value) == ("code.pt is not a readable torchlr checkpoint (UnpicklingError: "
                               "it holds Python objects other than tensors and plain values, "
                               "which are not loaded: loading them could run code)")
    assert not (tmp_path / "pwned").exists()


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"format": "old"})
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": "new"})
    assert path.read_bytes() == before  # the old file is intact, and no temporary remains
    assert os.listdir(tmp_path) == ["model.pt"]


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "pickle-code", "plain-dict",
                                  "damaged", "newer"])
def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path, kind, capsys):
    X, y = dataset()
    good = tmp_path / "good.pt"
    torchlr.fit(X, y, num_epochs=1, save=str(good), device="cpu")
    path = tmp_path / "bad.pt"
    if kind == "garbage":
        path.write_bytes(os.urandom(256))
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:300])
    elif kind == "foreign":
        torch.save(LinearRegression(3).state_dict(), path)
    elif kind == "pickle-code":
        path.write_bytes(pickle.dumps(Payload()))
    elif kind == "plain-dict":
        torch.save({"weights": torch.ones(3)}, path)
    elif kind == "damaged":
        state = torch.load(good, weights_only=True)
        del state["generator"]
        torch.save(state, path)
    else:  # from a later torchlr, whose history this one may misread
        state = torch.load(good, weights_only=True)
        state["version"] += 1
        torch.save(state, path)
    with pytest.raises(ValueError, match="bad.pt") as info:
        load_checkpoint(path)
    assert "checkpoint" in str(info.value)
    if kind == "newer":
        assert "version 5; this torchlr reads versions 1 to 4" in str(info.value)
    data = tmp_path / "d.npy"
    np.save(data, torch.cat([X, y[:, None]], 1).numpy())
    out = tmp_path / "out.csv"
    for argv in (["predict", "--model", str(path), "--data", str(data), "--output", str(out)],
                 ["train", "--data", str(data), "--resume", str(path), "--epochs", "2"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "bad.pt" in err[0]
    assert not out.exists()
    assert not (tmp_path / "pwned").exists()  # read with weights_only: the pickle's code never ran


@pytest.mark.parametrize("impl,kind", [("scratch", ScratchModel), ("concise", ConciseModel)])
def test_load_model_gives_a_ready_model_of_its_implementation(tmp_path, impl, kind):
    X, y = dataset()
    path = tmp_path / "m.pt"
    result = torchlr.fit(X, y, impl=impl, num_epochs=2, standardize=True,
                         standardize_target=True, save=str(path), device="cpu")
    model = load_model(path)
    assert model.impl == impl and isinstance(model.model, kind)
    assert torch.equal(model.predict(X), result.predict(X))
    assert torch.equal(model.predict(X.double()), result.predict(X))  # cast as fit() casts
    # Both go through checkpoint.predict; the model in original units is the reference.
    by_hand = X.double() @ result.w.double() + result.b
    torch.testing.assert_close(model.predict(X).reshape(-1).double(), by_hand,
                               rtol=1e-5, atol=1e-5)
    if impl == "concise":  # a real nn.Module with the trained weights
        assert torch.equal(model.model.module.weight.reshape(-1), result.scaled_w)


def test_predict_refuses_features_and_predictions_that_are_not_finite(tmp_path):
    # Features of 1e39 became inf in float32 and were predicted as inf, without a word.
    X, y = dataset()  # 3 features
    path = tmp_path / "m.pt"
    result = torchlr.fit(X, y, num_epochs=1, save=str(path), device="cpu")
    beyond = r"holds 1 value\(s\) beyond the range of float32"
    for predict in (result.predict, load_model(path).predict):
        for given, words in ((np.array([[1.0, 1e39, 0.0]]), beyond),
                             ([[1.0, -1e39, 0.0]], beyond),
                             ([[float("inf"), 1.0, 0.0]], r"contains inf \(1 value"),
                             (torch.tensor([[1.0, 2.0, 0.0], [math.nan, math.nan, 0.0]]),
                              r"contains NaN \(2 value")):
            with pytest.raises(ValueError, match=f"^features {words}"):
                predict(given)
        # Finite features whose prediction overflows float32: the first such row is named.
        signs = torch.sign(result.w)
        big = torch.stack([torch.ones(3), 3e38 * signs, -3e38 * signs])
        overflowed = float(big[1] @ result.w + result.b)
        assert overflowed == math.inf  # the reference: the same sum in float32
        with pytest.raises(torchlr.checkpoint.NonFinitePrediction,
                           match="^features row 1: the prediction is inf, ") as info:
            predict(big)
        assert info.value.row == 1
        assert torch.isfinite(predict(big[:1])).all()


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_restores_the_best_epoch(tmp_path, patience):
    X, y = dataset()
    y_noisy = y + 3 * torch.randn(len(y), generator=torch.Generator().manual_seed(9))
    path = tmp_path / "es.pt"
    result = torchlr.fit(X, y_noisy, lr=0.05, num_epochs=40, val_fraction=0.3,
                         early_stopping=patience, standardize=True, save=str(path), device="cpu")
    best = result.best_epoch
    assert result.val_losses[best - 1] == min(result.val_losses)
    ran = len(result.losses)
    assert ran == best + patience  # stopped after `patience` epochs without progress
    assert best < ran < 40
    w_best, b_best = result.w_history[best], result.b_history[best]
    assert torch.equal(result.w, w_best) and result.b == pytest.approx(float(b_best), rel=1e-6)
    assert torch.equal(load_model(path).predict(X), result.predict(X))  # the best, as fit gave
    # Resuming the stopped run to a later epoch changes nothing: the straight run stopped too.
    again = torchlr.fit(X, y_noisy, lr=0.05, num_epochs=40, val_fraction=0.3,
                        early_stopping=patience, standardize=True, resume=str(path),
                        device="cpu")
    assert torch.equal(again.w, result.w) and again.losses == result.losses


def test_early_stopping_needs_a_validation_split():
    X, y = dataset()
    with pytest.raises(ValueError, match="early_stopping=3 needs a validation split"):
        torchlr.fit(X, y, early_stopping=3)


def test_a_version_1_concise_checkpoint_resumes_at_the_same_step(tmp_path):
    # Version 1 stored the concise optimizer at lr (its loss was halved); now lr / 2.
    X, y = dataset()
    kw = dict(impl="concise", lr=0.01, device="cpu")
    straight = torchlr.fit(X, y, num_epochs=4, **kw)
    path = tmp_path / "run.pt"
    torchlr.fit(X, y, num_epochs=2, save=str(path), **kw)
    state = torch.load(path, weights_only=True)
    state["version"] = 1
    state["optimizer"]["param_groups"][0]["lr"] = 0.01
    save_checkpoint(path, state)
    assert load_checkpoint(path)["optimizer"]["param_groups"][0]["lr"] == 0.005
    resumed = torchlr.fit(X, y, num_epochs=4, resume=str(path), **kw)
    assert torch.equal(resumed.w, straight.w) and resumed.b == straight.b


def test_a_checkpoint_that_hashed_negative_zeros_as_they_are_still_resumes(tmp_path):
    # Checkpoints written before -0.0 was hashed as 0.0 carry no "zeros" mark; data holding
    # a -0.0 is compared with them the old way, not refused.
    from torchlr.run import fingerprint

    X, y = dataset(n=500)
    X[::5, 1] = -0.0
    path = tmp_path / "old.pt"
    torchlr.fit(X, y, num_epochs=1, lr=0.01, save=str(path), device="cpu")
    state = torch.load(path, weights_only=True)
    old = fingerprint(X, y, signed_zeros=True)
    assert old["full"] != state["data"]["full"]  # the two rules differ on this data
    state["data"] = {k: old[k] for k in ("shape", "sampled", "full")}
    torch.save(state, path)
    resumed = torchlr.fit(X, y, num_epochs=2, lr=0.01, resume=str(path),
                          save=str(tmp_path / "new.pt"), device="cpu")
    assert resumed.losses == torchlr.fit(X, y, num_epochs=2, lr=0.01, device="cpu").losses
    with pytest.raises(ValueError, match="not the data it trained on"):
        torchlr.fit(X.flip(0), y.flip(0), num_epochs=2, lr=0.01, resume=str(path),
                    device="cpu")


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "scaled+val"])
def test_a_checkpoint_without_a_data_fingerprint_resumes_when_the_statistics_agree(
        tmp_path, options):
    # Checkpoints from before the fingerprint: the scaling statistics decide instead.
    X, y = dataset()
    straight = torchlr.fit(X, y, num_epochs=3, device="cpu", **options)
    path = tmp_path / "old.pt"
    torchlr.fit(X, y, num_epochs=2, save=str(path), device="cpu", **options)
    state = torch.load(path, weights_only=True)
    del state["data"]
    torch.save(state, path)
    resumed = torchlr.fit(X, y, num_epochs=3, resume=str(path), device="cpu", **options)
    assert torch.equal(resumed.w_history, straight.w_history)
    assert resumed.losses == straight.losses
    if options.get("standardize"):  # other data: other statistics, refused
        with pytest.raises(ValueError, match="statistics differ"):
            torchlr.fit(X * 1.5, y, num_epochs=3, resume=str(path), device="cpu", **options)


def fit_data(tmp_path, stream):
    """fit's (features, labels) for 40 rows: in memory, or a stream of the same rows."""
    X, y = dataset(n=40)
    if not stream:
        return X, y
    np.save(tmp_path / "d.npy", torch.cat([X, y[:, None]], 1).numpy())
    return BlockStream(tmp_path / "d.npy"), None


@pytest.mark.parametrize("stream", [False, True], ids=["memory", "stream"])
def test_feature_names_must_name_every_column(tmp_path, stream):
    data = fit_data(tmp_path, stream)
    with pytest.raises(ValueError, match="feature_names has 4 names for 3 feature columns"):
        torchlr.fit(*data, num_epochs=1, feature_names=("a", "b", "c", "d"),
                    save=str(tmp_path / "c.pt"), device="cpu")
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("stream", [False, True], ids=["memory", "stream"])
def test_a_file_that_is_not_a_checkpoint_is_not_overwritten(tmp_path, stream):
    data = fit_data(tmp_path, stream)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    epochs = []
    with pytest.raises(ValueError, match="cannot read as its checkpoint"):
        torchlr.fit(*data, num_epochs=1, save=str(notes), device="cpu",
                    on_progress=epochs.append)
    assert notes.read_text() == "keep me" and epochs == []  # refused before training


DAMAGES = {
    "no marker": (lambda s: s.update(format="other"), "no 'torchlr-checkpoint' marker"),
    "w not a tensor": (lambda s: s["params"].update(w=[1.0, 2.0, 3.0]), "bad parameters"),
    "w one-dimensional": (lambda s: s["params"].update(w=torch.zeros(3)), "bad parameters"),
    "b of two values": (lambda s: s["params"].update(b=torch.zeros(2)), "bad parameters"),
    # A fit saves only after an epoch that stayed finite, and always in float32.
    "w NaN": (lambda s: s["params"]["w"].view(-1)[1].fill_(math.nan), "not finite float32"),
    "b inf": (lambda s: s["params"]["b"].fill_(math.inf), "not finite float32"),
    "w float64": (lambda s: s["params"].update(w=s["params"]["w"].double()), "not finite float32"),
    "losses not a list": (lambda s: s["history"].update(losses=torch.zeros(2)), "bad history"),
    "w history a list": (lambda s: s["history"].update(w=[]), "bad history"),
    "train_losses a list": (lambda s: s["history"].update(train_losses=[0.1]), "bad history"),
    "epoch_seconds a tensor": (lambda s: s["history"].update(epoch_seconds=torch.ones(2)),
                               "bad history"),
    "best without w": (lambda s: s.update(best={"epoch": 1}), "bad best epoch"),
    "fingerprint shape": (lambda s: s["data"].update(shape=(3, 4)), "bad data fingerprint"),
    "old y_scale a bool": (lambda s: (s["history"].pop("loss_units"),
                                      s["scaling"].update(y_scale=True)), "bad scaling"),
    "unknown impl": (lambda s: s.update(impl="ridge"), "unknown implementation 'ridge'"),
    # Each of these was a traceback (or, for the epoch and the history, a resumed run).
    "impl not the config's": (lambda s: s.update(impl="concise"),
                              "its implementation 'concise' is not its config's 'scratch'"),
    "version a tensor": (lambda s: s.update(version=torch.tensor([4, 4])), "checkpoint version"),
    "scaling empty": (lambda s: s.update(scaling={}), "bad scaling"),
    "x_mean missing": (lambda s: s["scaling"].pop("x_mean"), "bad scaling"),
    "y_mean None": (lambda s: s["scaling"].update(y_mean=None), "bad scaling"),
    "x_scale of another length": (lambda s: s["scaling"].update(x_scale=torch.ones(4)),
                                  "bad scaling"),
    # A scale of 0 or below: predict divides by it (inf, NaN, or columns turned around).
    "x_scale zero": (lambda s: s["scaling"]["x_scale"].__setitem__(0, 0.0), "bad scaling"),
    "y_scale negative": (lambda s: s["scaling"].update(y_scale=-1.0), "bad scaling"),
    "val_fraction missing": (lambda s: s["config"].pop("val_fraction"),
                             "its config lacks 'val_fraction'"),
    "val_fraction a tensor": (lambda s: s["config"].update(val_fraction=torch.tensor(0.2)),
                              "its config's val_fraction is tensor(0.2000)"),
    "drop_last a number": (lambda s: s["config"].update(drop_last=1), "config's drop_last is 1"),
    "feature_names of numbers": (lambda s: s["config"].update(feature_names=[1, 2, 3]),
                                 "its config's feature_names is [1, 2, 3]"),
    "best missing": (lambda s: s.update(best=None), "holds no best epoch"),
    "best without val_loss": (lambda s: s["best"].pop("val_loss"), "bad best epoch"),
    "fingerprint shape empty": (lambda s: s["data"].update(shape=[]), "bad data fingerprint"),
    "fingerprint full a tensor": (lambda s: s["data"].update(full=torch.zeros(2)),
                                  "bad data fingerprint"),
    "negative epoch": (lambda s: s.update(epoch=-5), "its epoch -5 is not the 2 epochs"),
    "history shorter": (lambda s: s["history"].update(losses=[]),
                        "its epoch 2 is not the 0 epochs"),
    "generator state": (lambda s: s.update(generator=torch.zeros(3, dtype=torch.uint8)),
                        "optimizer or RNG state is damaged"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_each_damage_is_named(tmp_path, damage):
    X, y = dataset(n=60)
    good = tmp_path / "good.pt"
    torchlr.fit(X, y, num_epochs=2, save=str(good), val_fraction=0.2, early_stopping=1,
                standardize=True, standardize_target=True, device="cpu")
    state = torch.load(good, weights_only=True)
    change, message = DAMAGES[damage]
    change(state)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_model(path)


def test_a_checkpoint_loads_whatever_its_runs_folders_and_rules_are_now(tmp_path):
    # Loading once validated the saved config as a new run's: a logdir that cannot be
    # written here (the CLI's relative "runs", another machine) refused the checkpoint as
    # damaged, and so did values an older torchlr allowed.
    X, y = dataset(n=60)
    good = tmp_path / "good.pt"
    result = torchlr.fit(X, y, num_epochs=1, save=str(good), logdir=str(tmp_path / "tb"),
                         device="cpu")
    shutil.rmtree(tmp_path / "tb")
    (tmp_path / "tb").write_text("a file where the runs were")
    torch.testing.assert_close(load_model(good).predict(X), result.predict(X), rtol=0, atol=0)
    state = torch.load(good, weights_only=True)
    state["config"].update(lr=1e-39, feature_names=["a", "a", "b"])  # refused by fit today
    torch.save(state, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["config"]["lr"] == 1e-39


def test_a_missing_checkpoint_is_named_as_missing(tmp_path):
    with pytest.raises(ValueError, match="No such checkpoint file: .*nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_a_short_write_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    # torch's zip writer reports a full disk as a RuntimeError; the file before stays.
    path = tmp_path / "c.pt"
    path.write_bytes(b"before")

    def full_disk(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed\nmore")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"Cannot write .*c\.pt: the write stopped short; is the "
                                      r"disk or a quota full\? \(\[enforce fail .*file write "
                                      r"failed\)$"):
        save_checkpoint(path, {"format": "x"})
    assert path.read_bytes() == b"before" and os.listdir(tmp_path) == ["c.pt"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_save_path_no_file_can_be_made_in_is_refused_before_training(tmp_path):
    # os.access says yes to root everywhere: /proc passed the check, and the run trained to
    # its first save before the write failed.
    X, y = dataset()
    with pytest.raises(ValueError, match=r"save='/proc/x/m.pt' cannot be written: '/proc'"):
        torchlr.fit(X, y, num_epochs=1, save="/proc/x/m.pt", device="cpu")
    with pytest.raises(ValueError, match=r"logdir='/proc/x' cannot be written"):
        torchlr.fit(X, y, num_epochs=1, logdir="/proc/x", device="cpu")


def test_sampled_rows_spread_evenly_from_the_first_row_to_the_last():
    # The rows a checkpoint's data digest reads: another choice refuses every older stream
    # checkpoint as "not the data it trained on".
    from torchlr.run import SAMPLED_ROWS
    n = 100_000
    rows = set(sampled_rows(n).tolist())
    assert len(rows) == 3 * SAMPLED_ROWS - 2  # rows 0 and n - 1 are read once
    assert {i * (n - 1) // (SAMPLED_ROWS - 1) for i in range(SAMPLED_ROWS)} <= rows


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_a_loaded_model_predicts_one_row_to_the_bit_as_its_fit_result(impl, tmp_path):
    # Concise keeps nn.Linear's weight (1, d), whose transpose has strides (1, d); BLAS
    # rounded a one-row product with it 1 ulp off the result's (d, 1) copy of the same w.
    differ = []
    for seed in range(16):
        g = torch.Generator().manual_seed(seed)
        d = 9 + seed % 4
        X = torch.randn(1, d, generator=g) * 100 + 1000
        y = X @ torch.randn(d, generator=g) + 5e5
        path = tmp_path / f"{seed}.pt"
        result = torchlr.fit(X, y, impl=impl, num_epochs=1, lr=1e-9, device="cpu",
                             save=str(path))
        if not torch.equal(result.predict(X), load_model(path).predict(X)):
            differ.append(seed)
    assert differ == []
