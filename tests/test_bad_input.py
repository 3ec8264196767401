"""Every bad input is refused before training, through the API and through the CLI."""

import math
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

import torchlr
import torchlr.compare
import torchlr.sweep
from torchlr import fit
from torchlr.cli import main

X = torch.randn(20, 2)
Y = torch.randn(20, 1)


def _quantized(t):
    with warnings.catch_warnings():  # torch deprecates making them, not holding them
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)


API_CASES = [
    # (features, labels, options, exception, words the message must contain)
    (torch.randn(20), Y, {}, ValueError, ["features", "2-D", "(20,)"]),
    (torch.randn(20, 2, 1), Y, {}, ValueError, ["features", "(20, 2, 1)"]),
    (X, torch.randn(10, 1), {}, ValueError, ["inconsistent", "20", "10"]),
    (X, torch.randn(20, 2), {}, ValueError, ["labels", "(n,) or (n, 1)", "(20, 2)"]),
    (torch.randn(0, 2), torch.randn(0, 1), {}, ValueError, ["empty", "(0, 2)"]),
    (X.clone().index_fill_(0, torch.tensor([3]), math.nan), Y, {}, ValueError,
     ["features", "NaN"]),
    (X, Y.clone().index_fill_(0, torch.tensor([3]), math.inf), {}, ValueError,
     ["labels", "inf"]),
    (X, Y, {"batch_size": 0}, ValueError, ["batch_size", "0"]),
    (X, Y, {"batch_size": -3}, ValueError, ["batch_size", "-3"]),
    (X, Y, {"batch_size": 2.5}, TypeError, ["batch_size", "2.5"]),
    (X, Y, {"lr": 0}, ValueError, ["lr", "0"]),
    (X, Y, {"lr": -0.1}, ValueError, ["lr", "-0.1"]),
    (X, Y, {"lr": math.inf}, ValueError, ["lr", "inf"]),
    (X, Y, {"lr": 5e-324}, ValueError, ["lr", "smallest normal", "5e-324"]),
    (X, Y, {"lr": math.nan}, ValueError, ["lr", "nan"]),
    (X, Y, {"lr": "0.1"}, TypeError, ["lr", "'0.1'"]),
    (X, Y, {"num_epochs": -1}, ValueError, ["num_epochs", "-1"]),
    (X, Y, {"impl": "keras"}, ValueError, ["impl", "'keras'", "'scratch'", "'concise'"]),
    (X, Y, {"impl": ["scratch"]}, TypeError, ["impl", "list", "['scratch']"]),
    (X, Y, {"device": "gpu"}, ValueError, ["device", "'gpu'"]),
    (X, Y, {"epochs": 3, "progress": print}, TypeError,
     ["unknown option(s) 'epochs', 'progress' (did you mean num_epochs for 'epochs', "
      "on_progress for 'progress'?)",
                                      "FitConfig's fields: impl, lr,"]),
    (X, Y, {"run": 1, "zz": 2}, TypeError, ["unknown option(s) 'run', 'zz';"]),
    ([["1.0", "2.0"]], [1.0], {}, TypeError, ["features", "sequence of numbers", "list"]),
    ([[1.0, 2.0], [3.0]], [1.0, 2.0], {}, TypeError,
     ["features", "list whose rows differ in length"]),
    ([[1.0, None]], [1.0], {}, TypeError, ["features", "list holding NoneType None"]),
    ([[1.0, 2**70]], [1.0], {}, TypeError, ["features", "holding integers beyond 64 bits"]),
    ([torch.ones(2, requires_grad=True)] * 3, [1.0] * 3, {}, TypeError,
     ["features", "holding tensors (join them with torch.stack)"]),
    ([[1.0, 2.0]], 3.0, {}, ValueError, ["labels", "shape ()"]),  # not one row of 3.0
    ([[1.0, 2.0]], np.array(3.0), {}, ValueError, ["labels", "shape ()"]),
    (np.array([["a", "b"]]), np.array([1.0]), {}, TypeError, ["features", "dtype"]),
    (X > 0, Y, {}, TypeError, ["features", "bool"]),
    (np.arange(40).astype("m8[s]").reshape(20, 2), Y, {}, TypeError, ["features", "timedelta"]),
    (X.double() * 1e300, Y, {}, ValueError, ["features", "40 value(s)", "range of float32"]),
    (X, Y, {"batch_size": 2**70}, ValueError, ["batch_size", str(2**70)]),
    (X, Y, {"num_epochs": 2**70}, ValueError, ["num_epochs", str(2**70)]),
    (X, Y, {"seed": 2**70}, ValueError, ["seed", str(2**70)]),
    (X, Y, {"seed": -(2**63) - 1}, ValueError, ["seed", str(-(2**63) - 1)]),
    # The first value out of range, and bools (an int subclass) where an int is meant.
    (X, Y, {"seed": 2**64}, ValueError, ["seed", str(2**64)]),
    (X, Y, {"seed": True}, TypeError, ["seed", "bool"]),
    (X, Y, {"early_stopping": True, "val_fraction": 0.2}, TypeError, ["early_stopping", "bool"]),
    (X, Y, {"early_stopping": -1, "val_fraction": 0.2}, ValueError, ["early_stopping", "-1"]),
    (X, Y, {"val_fraction": 1.0}, ValueError, ["val_fraction", "[0, 1)", "1.0"]),
    (X, Y, {"val_fraction": -0.5}, ValueError, ["val_fraction", "-0.5"]),
    (X, Y, {"val_fraction": "0.1"}, TypeError, ["val_fraction", "'0.1'"]),
    (X, Y, {"val_fraction": True}, TypeError, ["val_fraction", "True"]),
    (X, Y, {"feature_names": (1, 2)}, TypeError, ["feature_names", "(1, 2)"]),
    (X, Y, {"target_name": 7}, TypeError, ["target_name", "str or None", "7"]),
    # Truthy is not enough: a bool option given "no" would otherwise turn itself on.
    (X, Y, {"standardize": "no"}, TypeError, ["standardize", "bool", "'no'"]),
    (X, Y, {"standardize_target": 1}, TypeError, ["standardize_target", "bool", "1"]),
    (X, Y, {"drop_last": "no"}, TypeError, ["drop_last", "bool", "'no'"]),
    (X, Y, {"save": ""}, ValueError, ["save", "''"]),
    (X, Y, {"save": 5}, TypeError, ["save", "path or None", "5"]),
    (X, Y, {"resume": 2.5}, TypeError, ["resume", "path or None", "2.5"]),
    (X, Y, {"logdir": ""}, ValueError, ["logdir", "''"]),
    # Finite, but lr / batch_size does not fit the float32 step.
    (X, Y, {"lr": 4e39}, ValueError, ["lr", "4e+39", "float32"]),
    # torch's OpenMP crashes with tens of thousands of threads; 2**31 overflowed its int.
    (X, Y, {"threads": 2**31}, ValueError, ["threads", str(2**31)]),
    (X, Y, {"on_progress": 5}, TypeError, ["on_progress", "callable", "5"]),
    (X, Y, {"config": {"lr": 1}}, TypeError, ["config", "FitConfig", "dict"]),
    # Tensors that hold no dense values to train on: refused by name, not deep in torch.
    (X.to_sparse(), Y, {}, TypeError, ["features", "dense", "sparse_coo", "to_dense"]),
    (X, Y.to_sparse(), {}, TypeError, ["labels", "dense"]),
    (X.to("meta"), Y, {}, TypeError, ["features", "'meta'"]),
    (_quantized(X), Y, {}, TypeError,
     ["features", "quantized", "dequantize"]),
    (np.ma.array(X.numpy(), mask=np.arange(40).reshape(20, 2) % 7 == 0), Y.numpy(), {},
     ValueError, ["features", "masked array with 6 masked value(s)", ".filled()"]),
    # A checkpoint finds its columns by name: a repeated one would feed one column twice.
    (X, Y, {"feature_names": ("a", "a")}, ValueError, ["feature_names", "'a'", "2 times"]),
]


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    # The CLI writes TensorBoard runs under ./runs by default: keep them out of the checkout.
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("features, labels, options, error, words", API_CASES)
def test_api_rejects_bad_input(features, labels, options, error, words):
    with pytest.raises(error) as info:
        fit(features, labels, **{"device": "cpu", **options})
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_a_long_list_is_quoted_in_part():
    # Its whole repr made a message of 100 MB, in 2.7 s.
    X = [[1.0] * 5 for _ in range(200_000)]
    X[100_000][2] = None
    with pytest.raises(TypeError) as info:
        fit(X, [1.0] * len(X), device="cpu")
    message = str(info.value)
    assert message.startswith("features must be a tensor, array or sequence of numbers, got "
                              "list holding NoneType None: [[1.0, 1.0")
    assert len(message) < 400 and message.endswith("...]")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_api_rejects_cuda_without_cuda():
    with pytest.raises(ValueError, match="'cuda'.*CUDA is not available"):
        fit(X, Y, device="cuda")


def test_rejected_before_training(monkeypatch):
    # The model is never built when an option is bad, even a late-checked one like device.
    import torchlr.train as train

    built = []
    monkeypatch.setitem(train.MODELS, "scratch", lambda *a: built.append(a))
    with pytest.raises(ValueError):
        fit(X, Y, device="tpu")
    with pytest.raises(ValueError):
        fit(X, torch.randn(19, 1), device="cpu")
    assert built == []


CLI_CASES = [
    (["--batch-size", "0"], "--batch-size must be a positive int"),
    (["--batch-size", "x"], "--batch-size"),
    (["--lr", "-1"], "--lr must be positive"),
    # Read as the option's value, not as an option: argparse alone reads only "-1", "-0.5".
    (["--lr", "-1e-3"], "--lr must be positive and finite, got -0.001"),
    (["--lr", "-inf"], "--lr must be positive and finite, got -inf"),
    (["--seed", "-1E2"], "--seed"),
    (["--lr", "nan"], "--lr must be positive"),
    (["--lr", "abc"], "--lr"),
    (["--epochs", "-2"], "--epochs must be an int"),
    (["--impl", "keras"], "--impl"),
    (["--device", "tpu"], "tpu"),
    (["--num-examples", "0"], "--num-examples must be"),
    (["--lr", "10"], "(--lr 10.0); try a smaller"),
    # The whole line: a switch's `=True` becomes the flag alone, never "no --cuda-graphs".
    (["--cuda-graphs", "--device", "cpu"], "torchlr: error: --cuda-graphs needs a CUDA device, "
     "got device 'cpu'; pass --device cuda or leave --cuda-graphs off\n"),
    (["--seed", "99999999999999999999999"], "--seed must be in"),
    (["--batch-size", "99999999999999999999"], "--batch-size must"),
    (["--num-examples", "99999999999999"], "ask for fewer examples"),
    (["--plot", ""], "Cannot save a plot to ''"),
    (["--logdir", ""], "--logdir must be"),
    (["--save", ""], "--save must be"),
    (["--dist-timeout", "inf"], "--dist-timeout"),
    # 1e-9 s was 0 ms (every wait failed at once); 7.5e9 s overflowed the store's deadline and
    # a collective hung; 1e300 overflowed timedelta (a traceback).
    (["--dist-timeout", "1e-9"], "must be from 0.001 to 604800 seconds (a week), got 1e-09"),
    (["--dist-timeout", "7.5e9"], "must be from 0.001 to 604800 seconds (a week), got 7.5e+09"),
    (["--dist-timeout", "1e300"], "must be from 0.001 to 604800 seconds (a week), got 1e+300"),
    (["--backend", "gloo"], "--backend applies only under torchrun"),
    (["--data", "t.csv", "--num-examples", "5"], "--num-examples sizes the chapter's"),
    (["--impl", "both", "--save", "s.pt"], "--save and --resume need one implementation"),
    (["--stream"], "--stream needs --data FILE"),
    (["--data", "no\nsuch.csv"], "No such file: no\\nsuch.csv"),  # one line, escaped
    # Only the options given are named: "--stream, --target and --features" was every time.
    (["--target", "y"], "--target needs --data FILE"),
    (["--features", "a", "--stream"], "--stream and --features need --data FILE"),
]
if not torch.cuda.is_available():
    CLI_CASES.append((["--device", "cuda"], "use --device cpu or --device auto"))


@pytest.mark.parametrize("args, word", CLI_CASES)
def test_cli_one_line_exit_2(args, word, capsys):
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["train", "--quiet", *args]))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and word in err, err
    assert "Traceback" not in err
    # The command line's own words: no library argument names, no `name=value`.
    prose = re.sub(r"--[\w-]+", "", err)
    assert not re.search(r"\b(num_epochs|batch_size|num_examples|cuda_graphs|lr|logdir)\b|=",
                         prose), err


def test_cli_keeps_column_names_and_paths_that_look_like_options(tmp_path, capsys):
    # Only the library's own option names become flags: a column or file named batch_size
    # is the user's word and stays as written.
    (tmp_path / "t.csv").write_text("batch_size,num_epochs,val_fraction\n1,2,3\n2,1,5\n")
    (tmp_path / "batch_size").mkdir()
    (tmp_path / "lr=0.1.csv").write_text("lr=1,b,y\n1,2,3\n2,,5\n")
    for args, expected in (
        (["--data", "t.csv", "--target", "nope"], "'batch_size', 'num_epochs', 'val_fraction'"),
        (["--data", "t.csv", "--features", "batch_size,batch_size"], "'batch_size', 'batch_size'"),
        (["--data", "batch_size"], "batch_size"),
        (["--resume", "lr=0.1.pt"], "lr=0.1.pt"),
        (["--data", "lr=0.1.csv"], "lr=0.1.csv, line 3"),
        (["--data", "lr=0.1.csv", "--target", "z"], "in lr=0.1.csv; its columns are: 'lr=1'"),
    ):
        assert main(["train", "--quiet", *args]) == 2
        err = capsys.readouterr().err
        assert expected in err and "--batch-size" not in err and "--lr" not in err, err


def test_unwritable_save_paths_are_refused_before_training(tmp_path, monkeypatch):
    import torchlr.train as train

    built = []
    monkeypatch.setitem(train.MODELS, "scratch", lambda *a: built.append(a))
    (tmp_path / "afile").write_text("x")
    for save, words in ((tmp_path, "is a folder"), (tmp_path / "afile" / "m.pt", "not a folder")):
        with pytest.raises(ValueError, match=words):
            fit(X, Y, device="cpu", save=str(save))
    assert built == []


def test_a_read_only_file_is_not_replaced(tmp_path, capsys):
    # Renaming over it needs only the folder's permission: it was replaced, mode and all.
    keep = tmp_path / "keep.pt"
    fit(X, Y, device="cpu", num_epochs=1, save=str(keep))
    before = keep.read_bytes()
    out = tmp_path / "out.csv"
    out.write_text("earlier predictions\n")
    for path in (keep, out):
        path.chmod(0o444)
    # Refused for root too, whom os.access lets write anything (CI runs as root here).
    with pytest.raises(ValueError, match=re.escape(f"save='{keep}' cannot be written: the "
                                                   f"file is read-only")):
        fit(X, Y, device="cpu", num_epochs=1, save=str(keep), seed=1)
    data = tmp_path / "d.csv"
    data.write_text("x1,x2\n1,2\n4,5\n")
    assert main(["predict", "--model", str(keep), "--data", str(data), "--output",
                 str(out)]) == 2
    # Said as --save's is: the flag, a space and the path (quoted where not one word).
    assert capsys.readouterr().err == (f"torchlr: error: --output {out} cannot be written: "
                                       f"the file is read-only\n")
    assert keep.read_bytes() == before and out.read_text() == "earlier predictions\n"


def test_cli_subprocess_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "torchlr", "train", "--lr", "0"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "lr" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_widest_seeds_are_taken():
    # torch.Generator.manual_seed takes [-2**63, 2**64): both ends train.
    for seed in (2**64 - 1, -(2**63)):
        assert len(fit(X, Y, num_epochs=1, seed=seed, device="cpu").losses) == 1


def test_cli_data_commands_name_what_is_missing(tmp_path, capsys):
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32))
    assert main(["train", "--quiet", "--data", str(data), "--features", ","]) == 2
    assert capsys.readouterr().err == "torchlr: error: --features lists no column: ','\n"
    unnamed = tmp_path / "unnamed.pt"  # saved from Python without feature names
    X = torch.randn(20, 2)
    fit(X, X.sum(1), num_epochs=1, save=str(unnamed), device="cpu")
    assert main(["predict", "--model", str(unnamed), "--data", str(data)]) == 2
    assert "unnamed.pt has no feature names; it cannot match columns" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["predict", "--model", str(unnamed)])
    assert info.value.code == 2
    assert "the following arguments are required: --data" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["predict", "--data", str(data)])
    assert info.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err


def _helpers_data():
    g = torch.Generator().manual_seed(0)
    return torchlr.synthetic_data([2.0, -3.4], 4.2, 40, generator=g)


def _summary(**changes):
    X, y = _helpers_data()
    run = fit(X, y, num_epochs=1, device="cpu")
    kwargs = dict(runs={"s": run}, true_w=[2.0, -3.4], true_b=4.2)
    kwargs.update(changes)
    return torchlr.compare.summary(X, y, **kwargs)


# The helpers beside fit check what they are given as fit does: each of these broadcast a
# wrong value into a result, or failed inside torch, numpy or Python naming nothing given.
HELPER_CASES = {
    "summary, true_w of one value": (lambda: _summary(true_w=[2.0]),
                                     ValueError, "true_w must hold 2 value(s)"),
    "summary, runs a list": (lambda: _summary(runs=[1]), TypeError,
                             "runs must map names to FitResults, got list"),
    "summary, true_b None": (lambda: _summary(true_b=None), TypeError,
                             "true_b must be a real number"),
    "summary, exact of one item": (lambda: _summary(exact=(torch.zeros(2),)), TypeError,
                                   "exact must be a pair (w, b)"),
    "synthetic b beyond float32": (lambda: torchlr.synthetic_data([1.0], 1e39, 3), ValueError,
                                   "the labels X w + b + noise pass float32's range"),
    "synthetic noise beyond float32": (lambda: torchlr.synthetic_data([1.0], 0, 3, noise=1e39),
                                       ValueError, "pass float32's range"),
    "synthetic w finite but not in float32": (lambda: torchlr.synthetic_data([1e39], 0, 3),
                                              ValueError, "w must be finite in float32"),
    "sweep, a bool rate": (lambda: torchlr.sweep.lr_sweep(*_helpers_data(), [True]),
                           TypeError, "lrs[0] must be a positive finite number, got bool"),
    "sweep, a str of rates": (lambda: torchlr.sweep.lr_sweep(*_helpers_data(), "0.03"),
                              TypeError, "lrs must be a sequence of learning rates, got str"),
    "sweep, a config dict": (lambda: torchlr.sweep.lr_sweep(*_helpers_data(), [0.1], {}),
                             TypeError, "config must be a FitConfig or None"),
    "data_iter, sparse": (lambda: torchlr.data_iter(10, _helpers_data()[0].to_sparse(),
                                                    _helpers_data()[1]),
                          TypeError, "features is a sparse tensor"),
    "data_iter, reuse_buffer with grad": (
        lambda: torchlr.data_iter(10, _helpers_data()[0].requires_grad_(), _helpers_data()[1],
                                  reuse_buffer=True),
        ValueError, "reuse_buffer=True gathers features into a buffer"),
    "data_iter, unknown permutation unshuffled": (
        lambda: torchlr.data_iter(10, *_helpers_data(), shuffle=False, permutation="rand"),
        ValueError, "Unknown permutation 'rand'"),
    "least_squares, a ragged list": (lambda: torchlr.least_squares([[1, 2], [3]], [1, 2]),
                                     TypeError, "features must be a tensor, array or sequence"),
    "least_squares, numbers as text": (
        lambda: torchlr.least_squares([["1", "2"], ["3", "4"]], [1, 2]),
        TypeError, "features must be a tensor, array or sequence of numbers"),
    # evaluate returned nan for a NaN weight, and inf for one beyond float32.
    "evaluate, a NaN weight": (lambda: torchlr.evaluate(*_helpers_data(), [math.nan, 1.0], 0),
                               ValueError, "w must hold finite numbers within float32's"),
    "evaluate, a weight beyond float32": (
        lambda: torchlr.evaluate(*_helpers_data(), [1e39, 1.0], 0),
        ValueError, "w must hold finite numbers within float32's range (about ±3.4e38), "
                    "got [1e+39, 1.0]"),
    "load_model, bytes": (lambda: torchlr.load_model(b"model.pt"), TypeError,
                          "path must be a str or os.PathLike, got bytes"),
    "load_model, None": (lambda: torchlr.load_model(None), TypeError,
                         "path must be a str or os.PathLike, got NoneType"),
}


@pytest.mark.parametrize("case", list(HELPER_CASES))
def test_helpers_refuse_bad_input_naming_it(case):
    call, kind, message = HELPER_CASES[case]
    with pytest.raises(kind, match=re.escape(message)):
        call()


def test_a_sweep_takes_rates_from_arrays_and_tensors():
    X, y = _helpers_data()
    for lrs in (np.array([0.01, 0.02]), torch.tensor([0.01, 0.02]), (0.01, 0.02)):
        points = torchlr.sweep.lr_sweep(X, y, lrs, num_epochs=1, device="cpu")
        assert [p.lr for p in points] == pytest.approx([0.01, 0.02], rel=1e-7)


def test_stream_paths_that_are_folders_and_features_given_as_one_str(tmp_path):
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(ValueError, match=r"d.npy is a folder, not a .npy file"):
        torchlr.BlockStream(tmp_path / "d.npy")
    np.save(tmp_path / "t.npy", np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match=re.escape("use ['x1', 'x2']")):
        torchlr.BlockStream(tmp_path / "t.npy", features="x1,x2")


def test_output_and_save_paths_are_named_alike(tmp_path, capsys, monkeypatch):
    # One way of quoting for both: --save's comes from the library's save='...' rewritten,
    # --output's from the command line's own check.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a folder").mkdir()
    assert main(["train", "--epochs", "1", "--no-tensorboard", "--save", "a folder"]) == 2
    saved = capsys.readouterr().err
    model = tmp_path / "m.pt"
    assert main(["train", "--epochs", "1", "--no-tensorboard", "--save", str(model)]) == 0
    (tmp_path / "d.csv").write_text("x1,x2\n1,2\n4,5\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--data", "d.csv", "--output",
                 "a folder"]) == 2
    output = capsys.readouterr().err
    assert saved == "torchlr: error: --save 'a folder' is a folder; give a file path\n"
    assert output == saved.replace("--save", "--output")
    # A path with a slash is one word too, for both: --save's was quoted, --output's not.
    # One holding a ' is repr'd in double quotes: --save's was left as save="it's/".
    for folder, shown in [("sub", "sub/"), ("it's", "\"it's/\"")]:
        (tmp_path / folder).mkdir()
        assert main(["train", "--epochs", "1", "--no-tensorboard", "--save", f"{folder}/"]) == 2
        saved = capsys.readouterr().err
        assert main(["predict", "--model", str(model), "--data", "d.csv", "--output",
                     f"{folder}/"]) == 2
        assert saved == f"torchlr: error: --save {shown} is a folder; give a file path\n"
        assert capsys.readouterr().err == saved.replace("--save", "--output")


# --- The public pieces beside fit: what a review of the API found reaching raw errors. ---


def test_data_iter_batches_follow_autograd_when_the_features_require_it():
    # The gather into a buffer (index_select's out=) is not tracked; it raised at the first
    # batch, though only reuse_buffer=True says it cannot track.
    X = torch.randn(10, 2, requires_grad=True)
    batches = list(torchlr.data_iter(3, X, torch.randn(10, 1),
                                     generator=torch.Generator().manual_seed(0)))
    sum(Xb.sum() for Xb, _ in batches).backward()
    assert torch.equal(X.grad, torch.ones(10, 2))  # each row once: d(sum)/dX is all ones


def test_plots_take_the_chapters_parameters_and_name_their_bad_arguments():
    import torchlr.plots as plots

    w, b = torchlr.scratch.init_params(2, generator=torch.Generator().manual_seed(0))
    assert plots.scatter(X, Y, w=w, b=b) is not None  # b requires grad, as in the chapter
    for call, error, message in [
        (lambda: plots.scatter(X, Y[:5]), ValueError, "labels has 5 values but features has 20"),
        (lambda: plots.scatter(X, Y, column=1.5), TypeError, "column must be an int"),
        (lambda: plots.scatter(X, Y, w=w, b="1"), TypeError, "b must be a real number"),
        (lambda: plots.scatter(X, Y, w=w, b=torch.ones(2)), ValueError, "b must be one number"),
        (lambda: plots.loss_curves([0.5, 0.1]), TypeError, "runs must be FitResults, or a"),
        (lambda: plots.loss_curves({"a": [1.0]}, reference="x"), TypeError,
         "reference must be a real number"),
    ]:
        with pytest.raises(error, match=message):
            call()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the library never warns: matplotlib did, of a legend
        plots.loss_curves([])
    # Integers of numpy and torch name a column; runs may come from a generator.
    for column in (np.int64(0), torch.tensor(1)):
        assert plots.scatter(X, Y, column=column).axes[0].get_xlabel() == (
            f"features[:, {int(column)}]")
    result = fit(X, Y, num_epochs=2, device="cpu")
    drawn = plots.loss_curves(run for run in [result, result])
    assert len(drawn.axes[0].get_lines()) == 2
    assert plots.trajectories(run for run in [result]) is not None


def test_load_data_and_streams_name_a_column_that_is_no_name(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,target\n1,2,3\n2,3,5\n4,1,7\n")
    for options, message in [({"target": 3}, "target must be a column name (a str), got int"),
                             ({"features": [0, 1]}, "features must be column names (str), got int"),
                             ({"features": 5}, "features must be a sequence of column names")]:
        with pytest.raises(TypeError, match=re.escape(message)):
            torchlr.load_data(path, **options)
    # A generator is read once: it named no column when load_data went over it twice.
    once = torchlr.load_data(path, features=(name for name in ["a", "b"]))
    assert once.feature_names == ["a", "b"]
    assert torch.equal(once.features, torchlr.load_data(path, features=["a", "b"]).features)
    np.save(tmp_path / "t.npy", np.ones((4, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="target must be a column name"):
        torchlr.BlockStream(tmp_path / "t.npy", target=1)


def test_the_chapter_pieces_check_their_device_as_fit_does():
    from torchlr.concise import LinearRegression
    from torchlr.scratch import init_params

    assert init_params(2, device="auto")[0].device == torchlr.resolve_device("auto")
    assert LinearRegression(2, device="auto").weight.device == torchlr.resolve_device("auto")
    with pytest.raises(ValueError, match=r"device='gpu' is not a device name"):
        init_params(2, device="gpu")
    with pytest.raises(TypeError, match="device must be a str or torch.device, got int"):
        LinearRegression(2, device=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_chapter_pieces_say_cuda_is_missing_as_fit_does():
    from torchlr.concise import LinearRegression
    from torchlr.scratch import init_params

    for make in (lambda: init_params(2, device="cuda"), lambda: LinearRegression(2, device="cuda")):
        with pytest.raises(ValueError, match="CUDA is not available"):
            make()


def test_sgd_refuses_a_rate_or_batch_it_cannot_step_with():
    from torchlr.scratch import init_params, sgd

    w, b = init_params(2, generator=torch.Generator().manual_seed(0))
    w.grad, b.grad = torch.ones_like(w), torch.ones_like(b)
    before = w.detach().clone()
    for args, error, message in [
        (([w, b], None, 10), TypeError, "lr must be a number, got NoneType"),
        (([w, b], math.nan, 10), ValueError, "lr must be positive and finite, got nan"),
        (([w, b], -1.0, 10), ValueError, "lr must be positive and finite, got -1.0"),
        (([w, b], 0.1, True), TypeError, "batch_size must be a number, got bool"),
        (([w, b], 0.1, "10"), TypeError, "batch_size must be a number, got str"),
        ((w, 0.1, 10), TypeError, r"params must be a sequence of tensors, such as \[w, b\]"),
    ]:
        with pytest.raises(error, match=message):
            sgd(*args)
    assert torch.equal(w.detach(), before) and w.grad is not None  # refused before a step
    sgd([w, b], torch.tensor(0.1), torch.tensor(10))  # tensors pass unchecked: no GPU sync
    assert torch.allclose(w.detach(), before - 0.01)
    # A generator of parameters (model.parameters()) is read once, not used up by the checks.
    w.grad, b.grad = torch.ones_like(w), torch.ones_like(b)
    sgd((p for p in [w, b]), 0.1, 10)
    assert torch.allclose(w.detach(), before - 0.02) and w.grad is None and b.grad is None


def test_results_compare_as_objects_and_sweep_points_hash():
    result = fit(X, Y, num_epochs=1, device="cpu")
    assert result == result and result != fit(X, Y, num_epochs=1, device="cpu")
    [point] = torchlr.sweep.lr_sweep(X, Y, [0.1], config=torchlr.FitConfig(num_epochs=1,
                                                                           device="cpu"))
    assert point in {point} and point.lr == 0.1 and len(point.losses) == 1
    data = torchlr.io.Dataset(X, Y, ["a", "b"], "y", "p")
    assert data != torchlr.io.Dataset(X.clone(), Y, ["a", "b"], "y", "p")  # raised on tensors


def test_launch_fit_checks_its_options_and_data_before_starting_processes():
    from torchlr.distributed import launch_fit

    for options, error, message in [({"lr": -1}, ValueError, "lr must be positive"),
                                    ({"epochs": 3}, TypeError, "did you mean num_epochs"),
                                    ({"device": "gpu"}, ValueError, "is not a device name")]:
        with pytest.raises(error, match=message):  # a ValueError, not a WorkerError
            launch_fit(X, Y, nprocs=1, **options)
    with pytest.raises(ValueError, match="features has 20, labels has 5"):
        launch_fit(X, Y[:5], nprocs=1)


def test_the_package_ships_its_type_hints():
    from importlib.resources import files

    assert files("torchlr").joinpath("py.typed").is_file()  # PEP 561: checkers read the hints
    assert 'torchlr = ["py.typed"]' in (REPO_ROOT / "pyproject.toml").read_text()


def test_true_w_of_another_length_is_refused_without_a_logdir_too():
    # It was checked only where TensorBoard used it: without a logdir it passed unseen.
    with pytest.raises(ValueError, match="true_w has 1 values but features has 2 columns"):
        fit(X, Y, num_epochs=1, device="cpu", true_w=(1.0,))


def test_compare_and_evaluate_name_what_they_cannot_read(tmp_path):
    w, b = torchlr.least_squares(X, Y)
    assert torchlr.compare.mean_loss(X, Y, w, b) == pytest.approx(
        float(((X.double() @ w + b - Y.double().reshape(-1)) ** 2 / 2).mean()), rel=1e-12)
    for args, message in [((X, Y, torch.ones(3), 0.0), r"w must hold 2 value\(s\), got shape"),
                          ((X, Y[:5], w, b), "features has 20, labels has 5"),
                          ((X, Y, w, math.nan), r"b must hold finite numbers, got \[nan\]"),
                          ((X, Y, w, torch.ones(2)), r"b must hold 1 value\(s\)")]:
        with pytest.raises(ValueError, match=message):
            torchlr.compare.mean_loss(*args)
    np.save(tmp_path / "t.npy", np.ones((4, 3), dtype=np.float32))
    stream = torchlr.BlockStream(tmp_path / "t.npy")
    with pytest.raises(TypeError, match=r"for a BlockStream, call its own evaluate\(w, b\)"):
        torchlr.evaluate(stream, None, [1.0, 2.0], 0.0)
    for given in (stream, None):  # said as what it is, not "holding" itself
        with pytest.raises(TypeError, match=rf"got {type(given).__name__}: "):
            torchlr.least_squares(given, Y)
