"""The command line on files: train, predict, resume, and the column checks of predict."""

import csv
import math
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

import torchlr
from torchlr.cli import main
from torchlr.io import load_data

EPOCH = re.compile(r"^epoch (\d+), loss (\S+), val loss (\S+), val R2 (\S+)$")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the CLI writes TensorBoard runs under ./runs by default


@pytest.fixture
def houses(tmp_path):
    """A CSV whose target is a known linear function of columns on different scales.

    The columns are not in alphabetical order, so a weight printed or saved under a sorted
    name instead of its own column's shows.
    """
    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 3, generator=g) * torch.tensor([1.0, 50.0, 0.1]) + torch.tensor(
        [3.0, 100.0, 0.0])
    y = X @ torch.tensor([-4.0, 0.5, 20.0]) + 10.0
    path = tmp_path / "houses.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rooms", "area", "slope", "price"])
        writer.writerows([*map(repr, map(float, x)), repr(float(t))] for x, t in zip(X, y))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=np.float64)


TRAIN = ["--target", "price", "--standardize", "--standardize-target", "--lr", "0.1",
         "--device", "cpu"]


def test_train_on_a_csv_recovers_the_coefficients(houses, capsys):
    assert main(["train", "--data", str(houses), "--epochs", "40", "--quiet", *TRAIN]) == 0
    lines = capsys.readouterr().out.splitlines()
    weights = dict(re.match(r"^(w\[\w+\]|b)\s+= (\S+)$", line).groups() for line in lines)
    assert float(weights["w[area]"]) == pytest.approx(0.5, rel=1e-3)
    assert float(weights["w[rooms]"]) == pytest.approx(-4.0, rel=1e-3)
    assert float(weights["w[slope]"]) == pytest.approx(20.0, rel=1e-3)
    assert float(weights["b"]) == pytest.approx(10.0, rel=1e-2)


def test_each_loss_is_printed_with_the_digits_it_holds(houses, capsys):
    # The houses' price is exact: its loss falls far below 1e-6, which printed as 0.000000.
    argv = ["train", "--data", str(houses), "--epochs", "30", "--val-fraction", "0.25", *TRAIN]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()[:30]
    data = load_data(houses, target="price")
    result = torchlr.fit(data.features, data.target, num_epochs=30, val_fraction=0.25,
                         standardize=True, standardize_target=True, lr=0.1, device="cpu")
    assert result.losses[-1] < 1e-6 and result.val_losses[-1] < 1e-6
    printed = [EPOCH.match(line) for line in lines]
    seen = set()
    for m, loss, val_loss in zip(printed, result.losses, result.val_losses):
        for shown, value in ((m.group(2), loss), (m.group(3), val_loss)):
            mantissa, _, exponent = shown.partition("e")
            decimals = len(mantissa.partition(".")[2])
            digits = len(mantissa.replace(".", "").lstrip("0"))
            # Within half a unit of the last digit shown: the number rounded, not another.
            assert abs(float(shown) - value) <= 0.5 * 10 ** (int(exponent or 0) - decimals)
            if value < 1e-5:  # three significant digits, in exponent form
                assert exponent and digits == 3, shown
            elif value < 10:  # the chapter's six decimals
                assert not exponent and decimals == 6, shown
            else:  # seven significant digits at most: what float32 holds
                assert not exponent and digits == 7, shown
            seen.add("tiny" if value < 1e-5 else "chapter" if value < 10 else "large")
    assert seen == {"tiny", "chapter", "large"}


def test_validation_is_printed_per_epoch(houses, capsys):
    argv = ["train", "--data", str(houses), "--epochs", "3", "--val-fraction", "0.25", *TRAIN]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    data = load_data(houses, target="price")
    result = torchlr.fit(data.features, data.target, num_epochs=3, val_fraction=0.25,
                         standardize=True, standardize_target=True, lr=0.1, device="cpu")
    matches = [EPOCH.match(line) for line in lines[:3]]
    # Seven significant digits (35.16704), as the epoch's own loss: at most what float32 holds.
    assert [float(m.group(3)) for m in matches] == pytest.approx(result.val_losses, rel=5e-7)
    assert all(len(m.group(3).replace(".", "").lstrip("0")) <= 7 for m in matches)
    assert [float(m.group(4)) for m in matches] == [round(v, 6) for v in result.val_r2]


def test_predict_on_the_training_file_reproduces_the_fit(houses, tmp_path, capsys):
    model = tmp_path / "m.pt"
    argv = ["train", "--data", str(houses), "--epochs", "3", "--save", str(model), *TRAIN]
    assert main(argv) == 0
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(model), "--data", str(houses), "--output",
                 str(out)]) == 0
    header, table = read_csv(out)
    assert header == ["rooms", "area", "slope", "price", "prediction"]
    data = load_data(houses, target="price")
    result = torchlr.fit(data.features, data.target, num_epochs=3, standardize=True,
                         standardize_target=True, lr=0.1, device="cpu")
    expected = result.predict(data.features).reshape(-1)
    # The text reads back as exactly the float32 values the fit predicts.
    assert torch.equal(torch.from_numpy(table[:, -1].astype(np.float32)), expected)
    # ... which are the fitted line's, in the target's units (FitResult.predict and the CLI
    # share checkpoint.predict, so its own formula is no reference for it).
    by_hand = data.features.double() @ result.w.double() + result.b
    torch.testing.assert_close(torch.from_numpy(table[:, -1]), by_hand, rtol=1e-5, atol=1e-3)
    # ... and is short: a float32 never needs more than 9 significant digits.
    cells = [line.rsplit(",", 1)[1] for line in out.read_text().splitlines()[1:]]
    digits = [len(c.lstrip("-").replace(".", "").lstrip("0").split("e")[0]) for c in cells]
    assert max(digits) <= 9
    assert np.array_equal(table[:, :3].astype(np.float32), data.features.numpy())
    assert len(table) == 120


def test_predict_to_stdout_and_without_the_target_column(houses, tmp_path, capsys,
                                                         monkeypatch):
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(houses), "--epochs", "1", "--save", str(model),
                 *TRAIN]) == 0
    capsys.readouterr()
    features_only = tmp_path / "new.csv"
    features_only.write_text("slope,area,rooms\n0.1,120,2\n")  # any column order
    assert main(["predict", "--model", str(model), "--data", str(features_only)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rooms,area,slope,prediction"  # the model's order, the training file's
    expected = torchlr.checkpoint.load_model(model).predict(torch.tensor([[2.0, 120.0, 0.1]]))
    assert np.float32(lines[1].split(",")[-1]) == expected.item()
    # "-" names stdout, as it does for most tools (it wrote a file called "-").
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--model", str(model), "--data", str(features_only),
                 "--output", "-"]) == 0
    assert capsys.readouterr().out.splitlines() == lines and not os.path.exists("-")


def test_predict_lists_the_column_difference(houses, tmp_path, capsys):
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(houses), "--epochs", "1", "--save", str(model),
                 *TRAIN]) == 0
    capsys.readouterr()
    other = tmp_path / "other.csv"
    other.write_text("area,rooms,colour\n1,2,3\n")
    out = tmp_path / "out.csv"
    assert main(["predict", "--model", str(model), "--data", str(other), "--output",
                 str(out)]) == 2
    err = capsys.readouterr().err.strip()
    # What is missing, then what the file has to rename.
    assert err.endswith("missing 'slope'; its columns are: 'area', 'rooms', 'colour'")
    assert "\n" not in err and not out.exists()


def test_a_model_of_some_columns_predicts_on_its_own_training_file(houses, tmp_path, capsys):
    # Trained with --features, the model uses two of the file's columns: the others are not
    # read, and its predictions are those of the same rows with only its columns.
    model = tmp_path / "sub.pt"
    assert main(["train", "--data", str(houses), "--features", "rooms,area", "--epochs", "2",
                 "--save", str(model), *TRAIN]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--data", str(houses)]) == 0
    whole = capsys.readouterr().out.splitlines()
    assert whole[0] == "rooms,area,price,prediction"
    only = tmp_path / "only.csv"
    with open(houses, newline="") as f, open(only, "w", newline="") as g:
        csv.writer(g).writerows([row[1], row[0]] for row in csv.reader(f))  # area, rooms
    assert main(["predict", "--model", str(model), "--data", str(only)]) == 0
    alone = capsys.readouterr().out.splitlines()
    assert alone[0] == "rooms,area,prediction" and len(alone) == len(whole)
    assert [line.split(",")[-1] for line in alone][1:] == \
        [line.split(",")[-1] for line in whole][1:]


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_cli_resume_equals_straight(houses, tmp_path, capsys, impl):
    straight, part = tmp_path / "straight.pt", tmp_path / "part.pt"
    common = ["--data", str(houses), "--impl", impl, "--val-fraction", "0.2", *TRAIN]
    assert main(["train", *common, "--epochs", "4", "--save", str(straight)]) == 0
    assert main(["train", *common, "--epochs", "2", "--save", str(part)]) == 0
    capsys.readouterr()
    # Options come from the checkpoint: only the data and the new epoch count are given.
    assert main(["train", "--data", str(houses), "--resume", str(part), "--epochs", "4",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in out[:2]] == ["epoch 3", "epoch 4"]
    a = torch.load(straight, weights_only=True)
    b = torch.load(part, weights_only=True)
    assert b["epoch"] == 4
    assert torch.equal(a["params"]["w"], b["params"]["w"])
    assert torch.equal(a["params"]["b"], b["params"]["b"])
    assert torch.equal(a["generator"], b["generator"])
    assert a["history"]["val_losses"] == b["history"]["val_losses"]


def test_a_resume_logs_where_its_run_did_unless_told_otherwise(houses, tmp_path, capsys):
    from test_tensorboard import read_run, scalars

    mine = tmp_path / "mine"
    assert main(["train", "--data", str(houses), *TRAIN, "--epochs", "2", "--device", "cpu",
                 "--logdir", str(mine), "--run-name", "exp1", "--save", "m.pt"]) == 0
    resume = ["train", "--data", str(houses), "--resume", "m.pt", "--device", "cpu"]
    assert main([*resume, "--epochs", "3"]) == 0
    # Under the run's own --logdir, with its name: one watching `--logdir mine` sees epoch 3.
    first, second = sorted(mine.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert "-scratch-exp1" in first.name and "-scratch-exp1" in second.name
    assert scalars(read_run(str(second)), "loss/epoch")[0] == [3]
    assert not (tmp_path / "runs").exists()
    saved = torch.load("m.pt", weights_only=True)["config"]
    assert (saved["logdir"], saved["run_name"]) == (str(mine), "exp1")
    # Named on the line, they win; --no-tensorboard writes no run.
    assert main([*resume, "--epochs", "4", "--logdir", "elsewhere", "--run-name", "b",
                 "--log-every", "5"]) == 0
    [other] = (tmp_path / "elsewhere").iterdir()
    assert other.name.endswith("-scratch-b")
    assert scalars(read_run(str(other)), "loss/epoch")[0] == [4]
    steps = scalars(read_run(str(other)), "loss/train")[0]  # a resume may read more often
    assert len(steps) > 2 and all(b - a == 5 for a, b in zip(steps[:-2], steps[1:-1]))
    assert main([*resume, "--epochs", "5", "--no-tensorboard"]) == 0
    assert len(list(mine.iterdir())) == 2 and len(list((tmp_path / "elsewhere").iterdir())) == 1
    # A run that logged nowhere resumes into the default folder, as every train logs, with
    # the name the line gives.
    assert main(["train", "--data", str(houses), *TRAIN, "--epochs", "1", "--device", "cpu",
                 "--no-tensorboard", "--save", "quiet.pt"]) == 0
    assert main(["train", "--data", str(houses), "--resume", "quiet.pt", "--epochs", "2",
                 "--device", "cpu", "--run-name", "bar"]) == 0
    [run] = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-scratch-bar")
    assert scalars(read_run(str(run)), "loss/epoch")[0] == [2]
    capsys.readouterr()


def test_a_streamed_run_resumes_streamed_without_being_told(tmp_path, capsys, monkeypatch):
    # Read in blocks, its batch order is the blocks': resumed from memory it was refused,
    # and the message did not say to add --stream. A resume keeps its options.
    from torchlr import stream

    monkeypatch.setattr(stream, "BLOCK_BYTES", 1200)  # 100 rows of 3 float32 a block
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 2, generator=g)
    np.save("t.npy", torch.cat([X, (X @ torch.tensor([2.0, -3.4]) + 4.2)[:, None]], 1).numpy())
    common = ["train", "--data", "t.npy", "--device", "cpu", "--no-tensorboard"]
    assert main([*common, "--stream", "--epochs", "3", "--save", "straight.pt"]) == 0
    assert main([*common, "--stream", "--epochs", "1", "--save", "part.pt"]) == 0
    assert torch.load("part.pt", weights_only=True)["data"]["block_rows"] == 100
    assert main([*common, "--resume", "part.pt", "--epochs", "3"]) == 0
    a, b = (torch.load(p, weights_only=True) for p in ("straight.pt", "part.pt"))
    assert b["epoch"] == 3 and torch.equal(a["params"]["w"], b["params"]["w"])
    assert a["history"]["losses"] == b["history"]["losses"]
    capsys.readouterr()


def test_resume_refuses_other_options(houses, tmp_path, capsys):
    part = tmp_path / "part.pt"
    assert main(["train", "--data", str(houses), "--epochs", "1", "--save", str(part),
                 *TRAIN]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(houses), "--resume", str(part), "--epochs", "2",
                 "--lr", "0.5"]) == 2
    assert "differs from the checkpoint's 0.1" in capsys.readouterr().err
    # Options of the data's preparation and of early stopping are the run's too, and an
    # option written with its default value (0.03 for --lr) is an option given.
    for option in (["--val-fraction", "0.5"], ["--early-stopping", "1"], ["--lr", "0.03"]):
        assert main(["train", "--data", str(houses), "--resume", str(part), "--epochs", "2",
                     *option]) == 2
        assert f"{option[0]} " in capsys.readouterr().err
    assert main(["train", "--resume", str(part), "--epochs", "2"]) == 2
    assert "pass it again with --data" in capsys.readouterr().err
    # The other implementation is another run; --impl both is refused for --resume itself.
    assert main(["train", "--data", str(houses), "--resume", str(part), "--epochs", "2",
                 "--impl", "concise"]) == 2
    assert "--impl concise differs from the checkpoint's 'scratch'" in capsys.readouterr().err


def test_empty_checkpoint_paths_are_refused_and_nothing_is_overwritten(tmp_path, capsys):
    part = tmp_path / "part.pt"
    base = ["train", "--no-tensorboard", "--quiet"]
    assert main([*base, "--epochs", "1", "--save", str(part)]) == 0
    before = part.read_bytes()
    capsys.readouterr()
    # An empty --save beside --resume was read as no --save: the run wrote back to part.pt.
    assert main([*base, "--epochs", "2", "--resume", str(part), "--save", ""]) == 2
    assert "--save must be a file path, got ''" in capsys.readouterr().err
    assert part.read_bytes() == before
    assert main([*base, "--epochs", "2", "--resume", ""]) == 2
    assert "--resume must be a checkpoint's path, got ''" in capsys.readouterr().err
    # Refused before either implementation trains (it printed "== scratch ==" first).
    assert main([*base, "--impl", "both", "--save", ""]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "need one implementation" in err
    with pytest.raises(ValueError, match="resume must be a checkpoint's path"):
        torchlr.fit(torch.zeros(4, 1), torch.arange(4.0), resume="")


def test_resume_keeps_the_saved_target_and_features(houses, tmp_path, capsys):
    # The target is not the last column: without --target the resumed run must not fall
    # back to the file's default (price), nor to all the other columns as features.
    options = ["--target", "rooms", "--features", "area,price", "--standardize", "--lr", "0.1",
               "--device", "cpu", "--no-tensorboard"]
    part = tmp_path / "part.pt"
    assert main(["train", "--data", str(houses), "--epochs", "1", "--save", str(part),
                 *options]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(houses), "--epochs", "2", *options]) == 0
    straight = capsys.readouterr().out.splitlines()
    assert main(["train", "--data", str(houses), "--resume", str(part), "--epochs", "2",
                 "--no-tensorboard"]) == 0
    resumed = capsys.readouterr().out.splitlines()
    assert straight[1:] == resumed[:len(straight) - 1]  # epoch 2 on, and the same weights
    assert [line.split()[0] for line in resumed[1:3]] == ["w[area]", "w[price]"]
    # Columns or switches given again must be the run's, and the message says so in flags
    # (a new target among the saved features was "both the target and a feature").
    again = ["train", "--data", str(houses), "--resume", str(part), "--epochs", "3"]
    for extra, message in [(["--target", "area"], "--target area differs from the "
                                                   "checkpoint's 'rooms'"),
                           (["--features", "price,area"], "--features price,area differs "
                                                          "from the checkpoint's 'area,price'"),
                           (["--standardize-target"], "--standardize-target was not given to "
                                                      "the checkpoint's run")]:
        assert main([*again, *extra]) == 2
        assert message in capsys.readouterr().err
    assert main([*again, "--target", "rooms", "--features", "area,price", "--standardize",
                 "--no-tensorboard", "--quiet"]) == 0


def test_synthetic_run_saves_and_resumes(tmp_path, capsys):
    path = tmp_path / "chapter.pt"
    assert main(["train", "--device", "cpu", "--epochs", "1", "--save", str(path)]) == 0
    assert main(["train", "--device", "cpu", "--epochs", "3", "--resume", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"saved {path}"
    straight = torchlr.fit(*torchlr.synthetic_data(
        torch.tensor([2.0, -3.4]), 4.2, 1000, generator=torch.Generator().manual_seed(0)),
        device="cpu")
    state = torch.load(path, weights_only=True)
    assert torch.equal(state["params"]["w"].reshape(-1), straight.w)
    assert state["feature_names"] == ["x1", "x2"]


def test_synthetic_resume_draws_the_data_of_the_checkpoints_seed(tmp_path, capsys):
    # --seed draws the chapter's data too: a resume without it must not train on seed 0's.
    path = tmp_path / "seed5.pt"
    args = ["train", "--device", "cpu", "--no-tensorboard"]
    assert main([*args, "--seed", "5", "--epochs", "1", "--save", str(path)]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "3", "--resume", str(path)]) == 0
    resumed = capsys.readouterr().out.splitlines()
    assert main([*args, "--seed", "5", "--epochs", "3"]) == 0
    straight = capsys.readouterr().out.splitlines()
    assert resumed[:-1] == straight[1:]  # epochs 2 and 3, the errors; then "saved ..."


def test_saved_is_said_only_when_a_checkpoint_was_written(tmp_path, capsys):
    path = tmp_path / "none.pt"
    assert main(["train", "--epochs", "0", "--save", str(path), "--no-tensorboard"]) == 0
    assert "saved" not in capsys.readouterr().out and not path.exists()


def test_train_never_writes_its_plot_over_a_checkpoint(houses, tmp_path, capsys):
    # The checkpoint is written each epoch and the plot at the end: at one path the plot
    # would replace the checkpoint after "saved" was printed. Refused before training,
    # through another spelling of the path or a hard link too.
    same = tmp_path / "same.png"
    for save, plot in ((str(same), str(same)), (str(same), f"{tmp_path}/./same.png")):
        assert main(["train", "--data", str(houses), "--epochs", "1", "--save", save,
                     "--plot", plot, "--no-tensorboard", *TRAIN]) == 2
        assert f"--save {save} is the --plot file; not overwriting it" in \
            capsys.readouterr().err
        assert not same.exists()
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(houses), "--epochs", "1", "--save", str(model),
                 "--no-tensorboard", *TRAIN]) == 0
    saved = model.read_bytes()
    link = tmp_path / "link.png"
    os.link(model, link)
    capsys.readouterr()
    # A resumed run writes back to --resume; with --save elsewhere, --resume is still read.
    for extra in ([], ["--save", str(tmp_path / "other.pt")]):
        assert main(["train", "--data", str(houses), "--epochs", "2", "--resume", str(model),
                     "--plot", str(link), "--no-tensorboard", *extra]) == 2
        err = capsys.readouterr().err
        assert "not overwriting it" in err and "--plot" in err and "--resume" in err
        assert model.read_bytes() == saved and not (tmp_path / "other.pt").exists()


def test_outputs_never_overwrite_the_data(houses, tmp_path, capsys):
    before = houses.read_bytes()
    assert main(["train", "--data", str(houses), "--save", str(houses), *TRAIN]) == 2
    assert "--save " + str(houses) + " is the --data file; not overwriting it" in \
        capsys.readouterr().err
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(houses), "--epochs", "1", "--save", str(model),
                 *TRAIN]) == 0
    assert main(["predict", "--model", str(model), "--data", str(houses), "--output",
                 str(houses)]) == 2
    assert "is the --data file" in capsys.readouterr().err
    assert houses.read_bytes() == before
    saved = model.read_bytes()
    assert main(["predict", "--model", str(model), "--data", str(houses), "--output",
                 str(model)]) == 2
    assert "is the --model file" in capsys.readouterr().err and model.read_bytes() == saved
    assert main(["train", "--data", str(houses), "--save", str(tmp_path / "new") + "/",
                 *TRAIN]) == 2
    assert "is a folder" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_written_files_take_the_usual_permissions(houses, tmp_path):
    # The temporary file behind each atomic write starts as 0600; the result must not stay so.
    model, out = tmp_path / "m.pt", tmp_path / "p.csv"
    old = os.umask(0o022)
    try:
        assert main(["train", "--data", str(houses), "--epochs", "1", "--save", str(model),
                     *TRAIN]) == 0
        assert main(["predict", "--model", str(model), "--data", str(houses), "--output",
                     str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(model.stat().st_mode) == stat.S_IMODE(out.stat().st_mode) == 0o644
    model.chmod(0o600)  # a file kept private stays so when it is rewritten
    assert main(["train", "--data", str(houses), "--resume", str(model), "--epochs", "2"]) == 0
    assert stat.S_IMODE(model.stat().st_mode) == 0o600


def test_predict_into_a_closed_pipe_exits_quietly(houses, tmp_path):
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(houses), "--epochs", "1", "--save", str(model),
                 *TRAIN]) == 0
    big = tmp_path / "big.csv"
    big.write_text(houses.read_text() + "".join(houses.read_text().splitlines(True)[1:]) * 400)
    done = subprocess.run(f"{sys.executable} -m torchlr predict --model {model} --data {big} "
                          f"| head -1; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert done.stdout == "rooms,area,slope,price,prediction\n"
    assert done.stderr == "" and done.returncode == 141


def test_stream_trains_from_npy(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 2, generator=g)
    y = X @ torch.tensor([2.0, -3.4]) + 4.2
    path = tmp_path / "big.npy"
    np.save(path, torch.cat([X, y[:, None]], 1).numpy())
    assert main(["train", "--data", str(path), "--stream", "--epochs", "5", "--lr", "0.1",
                 "--device", "cpu", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("w[x1]") and float(lines[0].split()[-1]) == pytest.approx(
        2.0, abs=1e-3)
    assert main(["train", "--data", str(path), "--stream", "--val-fraction", "0.1"]) == 2
    assert "not supported when streaming" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["sampled", "unsampled"])
def test_a_streamed_constant_target_is_refused_as_in_memory(tmp_path, capsys, where):
    from torchlr.run import sampled_rows

    n = 5000
    table = np.column_stack([np.linspace(0, 1, n, dtype=np.float32), np.full(n, 2.0, np.float32)])
    if where == "unsampled":  # one target differs, in a row the quick sample skips
        row = next(i for i in range(n) if i not in set(sampled_rows(n).tolist()))
        table[row, 1] = 3.0
    path = tmp_path / "t.npy"
    np.save(path, table)
    np.savetxt(tmp_path / "t.csv", table, delimiter=",", header="x1,x2", comments="")
    argv = ["train", "--epochs", "1", "--device", "cpu", "--quiet"]
    code = 0 if where == "unsampled" else 2
    assert main([*argv, "--data", str(tmp_path / "t.csv")]) == code
    in_memory = capsys.readouterr().err
    assert main([*argv, "--data", str(path), "--stream"]) == code
    streamed = capsys.readouterr().err
    if code:
        assert "Target column 'x2'" in streamed and "is constant (every value is 2.0)" in streamed
        assert streamed.replace("t.npy", "t.csv") == in_memory


def test_a_one_row_file_is_refused_streamed_or_not(tmp_path, capsys):
    np.save(tmp_path / "row.npy", np.array([[1.0, 5.0]], np.float32))
    assert main(["train", "--data", str(tmp_path / "row.npy"), "--stream"]) == 2
    assert "is constant (every value is 5.0)" in capsys.readouterr().err


def test_an_undefined_validation_r2_is_said_to_be_so(tmp_path, capsys):
    # One validation row: SS_tot is 0 and R² = 1 - SS_res / SS_tot has no value ("nan" was
    # printed as if it were a number).
    path = tmp_path / "two.csv"
    path.write_text("a,y\n1,3\n4,7\n")
    assert main(["train", "--data", str(path), "--epochs", "2", "--val-fraction", "0.5",
                 "--no-tensorboard"]) == 0
    lines = [EPOCH.match(line) for line in capsys.readouterr().out.splitlines()[:2]]
    assert [m[4] for m in lines] == ["undefined", "undefined"]
    assert all(math.isfinite(float(m[3])) for m in lines)  # the loss of that row is defined


def test_validation_goes_to_tensorboard(houses, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    argv = ["train", "--data", str(houses), "--epochs", "3", "--val-fraction", "0.25",
            "--logdir", str(logdir), *TRAIN]
    assert main(argv) == 0
    (run,) = logdir.iterdir()
    acc = EventAccumulator(str(run))
    acc.Reload()
    data = load_data(houses, target="price")
    result = torchlr.fit(data.features, data.target, num_epochs=3, val_fraction=0.25,
                         standardize=True, standardize_target=True, lr=0.1, device="cpu")
    for tag, expected in (("loss/val", result.val_losses), ("r2/val", result.val_r2)):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        torch.testing.assert_close([e.value for e in events], expected, rtol=1e-6, atol=0)


def test_unwritable_paths_are_one_line_errors(houses, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["train", "--data", str(houses), "--epochs", "1", "--save",
                 str(blocker / "m.pt"), *TRAIN]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("torchlr: error:")
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(houses), "--epochs", "1", "--save", str(model),
                 *TRAIN]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--data", str(houses), "--output",
                 str(blocker / "out.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    # Checked before the model is read: the check's words, not the system's.
    assert err == [f"torchlr: error: --output {blocker / 'out.csv'} cannot be written: "
                   f"{str(blocker)!r} is a file, not a folder"]


def test_early_stopping_from_the_cli(houses, tmp_path, capsys):
    noisy = tmp_path / "noisy.csv"
    g = torch.Generator().manual_seed(1)
    lines = houses.read_text().splitlines()
    noise = 40 * torch.randn(len(lines) - 1, generator=g)
    rows = [",".join([*line.split(",")[:-1], repr(float(line.split(",")[-1]) + float(e))])
            for line, e in zip(lines[1:], noise)]
    noisy.write_text("\n".join([lines[0], *rows]) + "\n")
    argv = ["train", "--data", str(noisy), "--epochs", "60", "--val-fraction", "0.3",
            "--early-stopping", "2", "--batch-size", "4", *TRAIN]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    said = next(line for line in out if line.startswith("early stopping"))
    stopped, kept, kept_loss = re.fullmatch(
        r"early stopping: stopped after epoch (\d+); kept epoch (\d+) \(lowest validation "
        r"loss, (\S+)\)", said).groups()
    stopped, kept = int(stopped), int(kept)
    epochs = [EPOCH.match(line) for line in out if line.startswith("epoch")]
    val = [float(m.group(3)) for m in epochs]
    assert len(epochs) == stopped == kept + 2 < 60 and val[kept - 1] == min(val)
    assert kept_loss == epochs[kept - 1].group(3)  # the kept epoch's line, digit for digit

    # A patience longer than the run: every epoch runs, and the line says so.
    argv[argv.index("--epochs") + 1] = "3"
    argv[argv.index("--early-stopping") + 1] = "50"
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    val = [float(m.group(3)) for m in map(EPOCH.match, out) if m]
    kept = val.index(min(val)) + 1
    kept_loss = [m.group(3) for m in map(EPOCH.match, out) if m][kept - 1]
    assert len(val) == 3 and (f"early stopping: ran all 3 epochs; kept epoch {kept} (lowest "
                              f"validation loss, {kept_loss})") in out


def trained_and_predicted(tmp_path, header):
    """(model, predictions CSV): a model trained on four rows under header, then its
    predictions on the same file."""
    table = tmp_path / "t.csv"
    table.write_text(f"{header}\n1,2,3\n2,1,5\n3,5,4\n4,4,4\n")
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(table), "--save", str(model), "--no-tensorboard",
                 "--quiet"]) == 0
    out = tmp_path / "out.csv"
    assert main(["predict", "--model", str(model), "--data", str(table), "--output",
                 str(out)]) == 0
    return model, out


def test_predict_quotes_names_keeps_them_distinct_and_echoes_an_unknown_target(tmp_path,
                                                                               capsys):
    # A column name with a comma was written bare (5 names over 4 values); a feature named
    # prediction gave a header that repeats it; an empty target cell refused the row.
    model, out = trained_and_predicted(tmp_path, '"a,1",prediction,y')
    names, values = read_csv(out)
    assert names == ["a,1", "prediction", "y", "_prediction"]
    expected = torchlr.load_model(model).predict(torch.tensor(values[:, :2], dtype=torch.float32))
    assert np.array_equal(values[:, 3].astype(np.float32), expected[:, 0].numpy())
    unknown = tmp_path / "new.csv"
    unknown.write_text('"a,1",prediction,y\n1,2,\n3,5,NA\n2,1,5\n')
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--data", str(unknown)]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert [row[2] for row in rows] == ["y", "", "", "5.0"]
    missing_feature = tmp_path / "bad.csv"
    missing_feature.write_text('"a,1",prediction,y\n1,,3\n')
    assert main(["predict", "--model", str(model), "--data", str(missing_feature)]) == 2
    assert "column 'prediction': missing value" in capsys.readouterr().err


def test_a_model_of_columns_named_by_numbers_predicts_on_their_columns_alone(tmp_path,
                                                                            capsys):
    # A spectrum's wavelengths: the training file passed (its target has a name), and a
    # file of the features alone, all numbers, was refused as a file without a header.
    model, _ = trained_and_predicted(tmp_path, "400.5,500.5,conc")
    new = tmp_path / "new.csv"
    new.write_text("400.5,500.5\n0.2,0.4\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--data", str(new)]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = torchlr.load_model(model).predict(torch.tensor([[0.2, 0.4]]))
    assert lines[0] == "400.5,500.5,prediction" and len(lines) == 2
    assert np.float32(lines[1].split(",")[2]) == expected[0, 0].item()
    new.write_text("0.2,0.4\n0.1,0.3\n")  # no header: the model's names are the hint
    assert main(["predict", "--model", str(model), "--data", str(new)]) == 2
    assert capsys.readouterr().err == (
        f"torchlr: error: {new}, line 1: the first row holds only numbers ('0.2,0.4'), not "
        f"the names of the columns; add a header row that names them ('400.5', '500.5', "
        f"'conc')\n")  # not train's advice to name a column


def test_a_npy_without_columns_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((5, 0)))
    assert main(["train", "--data", str(tmp_path / "empty.npy")]) == 2
    assert "holds no columns" in capsys.readouterr().err


def test_synthetic_resume_keeps_the_checkpoints_size(tmp_path, capsys):
    path = tmp_path / "n500.pt"
    args = ["train", "--device", "cpu", "--no-tensorboard"]
    assert main([*args, "--num-examples", "500", "--epochs", "1", "--save", str(path)]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume", str(path)]) == 0
    resumed = capsys.readouterr().out.splitlines()
    assert main([*args, "--num-examples", "500", "--epochs", "2"]) == 0
    assert resumed[:-1] == capsys.readouterr().out.splitlines()[1:]
    assert main([*args, "--epochs", "3", "--resume", str(path), "--num-examples", "600"]) == 2
    assert "--num-examples 600 differs from the checkpoint's 500" in capsys.readouterr().err


def test_logdir_on_a_file_and_a_closed_stdout_are_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("")
    assert main(["train", "--logdir", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    model, data = tmp_path / "m.pt", tmp_path / "d.npy"
    X = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    np.save(data, X.numpy())
    torchlr.fit(X, X.sum(1), num_epochs=1, save=str(model), device="cpu",
                feature_names=("x1", "x2"))
    monkeypatch.setattr("sys.stdout", None)
    assert main(["train"]) == 2
    assert capsys.readouterr().err == "torchlr: error: standard output is closed\n"
    # predict writes its table to standard output unless --output names a file
    assert main(["predict", "--model", str(model), "--data", str(data)]) == 2
    assert capsys.readouterr().err == "torchlr: error: standard output is closed\n"
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(model), "--data", str(data), "--output",
                 str(out)]) == 0
    assert len(out.read_text().splitlines()) == 21


@pytest.fixture
def ab_model(tmp_path):
    """A checkpoint over features a, b with weights near 5 and -5, and target y."""
    g = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data(torch.tensor([5.0, -5.0]), 1.0, 200, generator=g)
    path = tmp_path / "ab.pt"
    torchlr.fit(X, y, num_epochs=5, save=str(path), device="cpu", feature_names=("a", "b"),
                target_name="y")
    return path


def test_predict_writes_one_row_per_row_and_refuses_a_row_of_empty_cells(ab_model, tmp_path,
                                                                          capsys):
    # A blank line is no row; a line of separators is a row of missing features, refused as
    # one missing cell is (it was skipped, so later predictions moved up a row).
    data = tmp_path / "new.csv"
    data.write_text("a,b,y\n1,1,2\n\n2,2,\n \n3,3,NA\n")
    assert main(["predict", "--model", str(ab_model), "--data", str(data)]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert [row[:3] for row in rows] == [["a", "b", "y"], ["1.0", "1.0", "2.0"],
                                         ["2.0", "2.0", ""], ["3.0", "3.0", ""]]
    out = tmp_path / "out.csv"
    for empty in (",,", " , , "):
        data.write_text(f"a,b,y\n1,1,2\n\n{empty}\n3,3,5\n")
        assert main(["predict", "--model", str(ab_model), "--data", str(data), "--output",
                     str(out)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [f"torchlr: error: {data}, line 4, column 'a': missing value "
                       f"{empty.split(',')[0]!r}"]
        assert not out.exists()


def test_predict_refuses_a_prediction_that_is_not_finite(ab_model, tmp_path, capsys):
    # Finite float32 features whose products overflow: 3e38 * 5 is inf, and 1e38 * 5 minus
    # 1e38 * 5 is inf - inf = nan, which was written as an empty cell (an unknown target).
    out = tmp_path / "out.csv"
    out.write_text("earlier results\n")
    data = tmp_path / "big.csv"
    for rows, line, value in (("1,2\n\n3e38,0\n1e38,1e38\n", 4, "inf"),
                              ("1,2\n1e38,1e38\n3e38,0\n", 3, "nan")):
        data.write_text("a,b\n" + rows)
        for output in ([], ["--output", str(out)]):
            assert main(["predict", "--model", str(ab_model), "--data", str(data),
                         *output]) == 2
            captured = capsys.readouterr()
            assert captured.out == "" and captured.err == (
                f"torchlr: error: {data}, line {line}: the prediction is {value}, not a finite "
                f"number: the row's values are too large for float32 arithmetic with this "
                f"model\n")
            assert out.read_text() == "earlier results\n"  # left as it was, not half-written
    np.save(tmp_path / "big.npy", np.array([[1.0, 2.0], [3e38, 0.0]], dtype=np.float32))
    state = torch.load(ab_model, weights_only=True)
    state["feature_names"] = ["x1", "x2"]  # the columns of a bare array
    torch.save(state, tmp_path / "x.pt")
    assert main(["predict", "--model", str(tmp_path / "x.pt"), "--data",
                 str(tmp_path / "big.npy")]) == 2
    assert f"{tmp_path / 'big.npy'}, row 2: the prediction is inf" in capsys.readouterr().err


def test_predict_help_describes_the_columns_it_writes(ab_model, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("Writes CSV, one row per input row: the model's feature columns in its order, the "
            "target if the file has it, then `prediction` (`_prediction` if a column has that "
            "name).") in text
    # ... as it does: the file's own order (y first, b before a) is not the output's.
    data = tmp_path / "new.csv"
    data.write_text("y,b,a\n1,2,3\n")
    assert main(["predict", "--model", str(ab_model), "--data", str(data)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "a,b,y,prediction"


def test_paths_in_messages_are_quoted_as_given(tmp_path, capsys):
    # A message names the file as the user wrote it, even one that reads like a library
    # option (`lr=5`), which the rewriting into flags would otherwise make `--lr 5`.
    assert main(["train", "--data", "lr=5", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "torchlr: error: No such file: lr=5\n"
    assert main(["train", "--data", "batch_size=3.csv", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "torchlr: error: No such file: batch_size=3.csv\n"
    assert main(["train", "--lr", "0", "--device", "cpu"]) == 2  # still in the CLI's terms
    assert capsys.readouterr().err == "torchlr: error: --lr must be positive and finite, " \
                                      "got 0.0\n"



def test_an_empty_path_is_refused_by_its_option(capsys):
    # Not "No such file: " with nothing after it.
    for argv, words in ((["train", "--data", ""], "--data must be a file path"),
                        (["train", "--logdir", ""], "--logdir must be a folder path"),
                        (["predict", "--model", "m.pt", "--data", ""],
                         "--data must be a file path"),
                        (["predict", "--model", "", "--data", "d.csv"],
                         "--model must be a checkpoint file path")):
        assert main(argv) == 2
        assert capsys.readouterr().err == f"torchlr: error: {words}, got ''\n"


def test_options_of_the_tensorboard_run_are_refused_with_no_tensorboard(tmp_path, capsys):
    # They were accepted and ignored: a user who meant to log a run found nothing there.
    for extra, words in ((["--logdir", str(tmp_path / "runs")], "--logdir names"),
                         (["--run-name", "a"], "--run-name names"),
                         (["--logdir", "", "--run-name", "a"], "--logdir and --run-name name")):
        assert main(["train", "--epochs", "1", "--device", "cpu", "--no-tensorboard",
                     *extra]) == 2
        assert capsys.readouterr().err == (f"torchlr: error: {words} the TensorBoard run, "
                                           f"which --no-tensorboard does not write\n")
    assert not (tmp_path / "runs").exists()


def test_a_resumed_run_may_name_its_own_checkpoint_with_save(houses, tmp_path, capsys):
    # Writing back to --resume is the one overlap meant, with --save at that file too.
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(houses), "--epochs", "1", "--save", str(model),
                 *TRAIN]) == 0
    assert main(["train", "--data", str(houses), "--epochs", "2", "--resume", str(model),
                 "--save", f"{tmp_path}/./m.pt"]) == 0
    assert torch.load(model, weights_only=False)["epoch"] == 2


# Tests below kill mutants that a mutation run found alive in cli.py and cli_data.py.

def test_describe_weights_aligns_the_equals_signs_and_prints_nine_digits():
    from torchlr.cli_data import describe_weights
    lines = describe_weights(torch.tensor([1.23456789, 2.0]), 0.123456789012, ["a", "bb"])
    assert lines == ["w[a]  = 1.23456788", "w[bb] = 2", "b     = 0.123456789"]
    assert len({line.index("=") for line in lines}) == 1


def test_the_error_vector_prints_six_significant_digits():
    from torchlr.cli import _format_vector
    assert _format_vector(torch.tensor([1.234567891e-4, -0.5, 123456.7])) == \
        "[0.000123457 -0.5 123457]"


def test_quiet_says_nothing_of_the_saved_plot(tmp_path, capsys):
    plot = tmp_path / "loss.png"
    assert main(["train", "--epochs", "1", "--no-tensorboard", "--quiet",
                 "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    assert plot.exists()
    assert "Saved the loss curves" not in captured.err + captured.out
    assert main(["train", "--epochs", "1", "--no-tensorboard", "--plot", str(plot)]) == 0
    assert f"Saved the loss curves to {plot}" in capsys.readouterr().err


def test_predict_names_its_column_apart_from_prediction_and__prediction(tmp_path):
    model, out = trained_and_predicted(tmp_path, "prediction,_prediction,y")
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prediction", "_prediction", "y", "__prediction"]
    X = torch.tensor([[float(v) for v in row[:2]] for row in rows[1:]])
    expected = torchlr.load_model(model).predict(X)[:, 0].numpy()
    assert np.array_equal(np.array([np.float32(row[3]) for row in rows[1:]]), expected)


def test_an_os_error_names_its_path_without_the_errno_prefix():
    from torchlr.cli import _os_error_text
    exc = FileNotFoundError(2, "No such file or directory", "out/x.csv")
    assert str(exc).startswith("[Errno 2]")
    assert _os_error_text(exc) == "No such file or directory: 'out/x.csv'"
    assert _os_error_text(OSError(28, "No space left on device")) == "No space left on device"


def test_impl_both_cannot_resume(tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    assert main(["train", "--epochs", "1", "--save", str(ck), "--no-tensorboard",
                 "--quiet"]) == 0
    before = ck.read_bytes()
    capsys.readouterr()
    assert main(["train", "--impl", "both", "--resume", str(ck), "--epochs", "2",
                 "--no-tensorboard", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--save and --resume need one implementation" in captured.err
    assert ck.read_bytes() == before


def _weight_names(table, features, capsys):
    """The names of the weights a one-epoch fit on table prints, its features as given."""
    assert main(["train", "--data", str(table), "--features", features, "--epochs", "1",
                 "--no-tensorboard", "--quiet"]) == 0
    return [line.split("=")[0].strip() for line in capsys.readouterr().out.splitlines()]


def test_features_listed_with_spaces_after_commas(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("a,b,y\n1,2,3\n2,1,5\n3,5,4\n4,4,4\n")
    assert _weight_names(table, "b, a", capsys) == ["w[b]", "w[a]", "b"]


def test_features_read_as_the_header_is_where_text_follows_a_quote(tmp_path, capsys):
    # The header '"a,b" ,c' is read (csv keeps the space, the names are stripped); the same
    # text in --features was refused as "a quote left open".
    table = tmp_path / "t.csv"
    table.write_text('"a,b" ,c,y\n1,2,3\n2,3,5\n3,1,4\n')
    assert _weight_names(table, '"a,b" ,c', capsys) == ["w[a,b]", "w[c]", "b"]


@pytest.mark.parametrize("features", ['"x1', "x1\nx2", 'x1,"x2'])
def test_features_that_are_not_one_csv_row_are_refused_in_one_line(tmp_path, capsys, features):
    # A line break raised csv.Error, no ValueError: a traceback. An open quote was closed
    # without a word.
    table = tmp_path / "t.csv"
    table.write_text("x1,x2,y\n1,2,3\n2,1,5\n3,5,4\n")
    assert main(["train", "--data", str(table), "--features", features, "--epochs", "1",
                 "--no-tensorboard"]) == 2
    assert capsys.readouterr().err == (
        f"torchlr: error: --features is not one row of comma-separated names (a quote left "
        f"open, or a line break): {features!r}\n")


def test_a_feature_whose_name_holds_a_comma_is_named_quoted(tmp_path, capsys):
    # --features reads as a CSV row, as the header does: '"a,b"' is the one column a,b.
    table = tmp_path / "t.csv"
    table.write_text('"a,b",c d ,y\n1,2,3\n2,1,5\n3,5,4\n4,4,4\n')
    assert _weight_names(table, '"a,b", c d', capsys) == ["w[a,b]", "w[c d]", "b"]
    assert main(["train", "--data", str(table), "--features", "a,b", "--epochs", "1",
                 "--no-tensorboard"]) == 2
    assert "Unknown feature column(s) 'a', 'b'" in capsys.readouterr().err
    assert main(["train", "--data", str(table), "--features", ' , ""', "--epochs", "1",
                 "--no-tensorboard"]) == 2
    assert "--features lists no column" in capsys.readouterr().err


def test_resume_quotes_the_checkpoints_columns_and_target_is_stripped(tmp_path, capsys):
    # A column named lr=5: unquoted in the message, it was rewritten as the flag --lr 5.
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(40, 3, generator=g).tolist()
    path = tmp_path / "lr.csv"
    path.write_text("lr=5,b,y\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    part = tmp_path / "part.pt"
    assert main(["train", "--data", str(path), "--epochs", "1", "--save", str(part),
                 "--no-tensorboard"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(path), "--resume", str(part), "--epochs", "2",
                 "--features", "b", "--no-tensorboard"]) == 2
    assert capsys.readouterr().err == ("torchlr: error: --features b differs from the "
                                       "checkpoint's 'lr=5,b'; a resumed run keeps its "
                                       "columns\n")
    # --target ' y ' names y, as --features ' b ' names b: the header's names are stripped.
    assert main(["train", "--data", str(path), "--resume", str(part), "--epochs", "2",
                 "--target", " y ", "--features", " lr=5 , b ", "--no-tensorboard"]) == 0
    assert "epoch 2, loss" in capsys.readouterr().out


def test_an_unknown_device_is_named_by_its_option(capsys):
    assert main(["train", "--device", "gpu", "--no-tensorboard"]) == 2
    assert capsys.readouterr().err.startswith("torchlr: error: --device gpu is not a device "
                                              "name; expected one of auto, cpu, cuda")


def test_a_file_whose_columns_are_named_as_the_chapters_resumes_on_them(tmp_path, capsys):
    # x1,x2 of a .npy file looked like the chapter's synthetic columns, so a resume did not
    # take them from the checkpoint and was refused.
    g = torch.Generator().manual_seed(0)
    table = torch.randn(300, 4, generator=g)
    table[:, 3] = table[:, 0] * 2 - table[:, 1] + 0.5
    np.save("t.npy", table.numpy())
    common = ["train", "--data", "t.npy", "--device", "cpu", "--no-tensorboard"]
    assert main([*common, "--features", "x1,x2", "--target", "x4", "--epochs", "2",
                 "--save", "straight.pt"]) == 0
    assert main([*common, "--features", "x1,x2", "--target", "x4", "--epochs", "1",
                 "--save", "part.pt"]) == 0
    assert main([*common, "--resume", "part.pt", "--epochs", "2"]) == 0
    a, b = (torch.load(p, weights_only=True) for p in ("straight.pt", "part.pt"))
    assert tuple(b["config"]["feature_names"]) == ("x1", "x2") and b["epoch"] == 2
    assert torch.equal(a["params"]["w"], b["params"]["w"])
    capsys.readouterr()
