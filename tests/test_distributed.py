"""Data-parallel training: N gloo processes over loopback against one process."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import REPO_ROOT, chapter_data

import torchlr
from torchlr import cli, distributed
from torchlr.cli import build_parser, in_cli_terms, main
from torchlr.data import data_iter
from torchlr.distributed import DataParallel, WorkerError, launch, launch_fit, shard_bounds
from torchlr.stream import BlockStream
from torchlr.train import ConciseModel, FitConfig, ScratchModel, group_agreement

IMPLS = ("scratch", "concise")
# Batch 10: 1003 rows leave a last batch of 3 (split 2 + 1), 1001 a last batch of 1 (1 + 0).
SIZES = (1003, 1001)
OPTIONS = {"device": "cpu", "num_epochs": 2, "log_every": 7, "seed": 3}


def _fit_all(datasets, npy, checkpoint):
    """Worker: every (n, impl) fit, plus the parameters each rank ended with; streamed fits;
    a fit resumed from a checkpoint rank 0 saved."""
    results = {}
    for n, (X, y) in datasets.items():
        for impl in IMPLS:
            result = torchlr.fit(X, y, impl=impl, **OPTIONS)
            every_w = [None] * distributed.world_size()
            dist.all_gather_object(every_w, (result.w, result.b))
            results[n, impl] = (result, every_w)
    for impl in IMPLS:
        results["stream", impl] = torchlr.fit(_stream(npy), None, impl=impl, **OPTIONS)
    X, y = datasets[SIZES[0]]
    torchlr.fit(X, y, save=checkpoint, **{**OPTIONS, "num_epochs": 1})
    # The next fit's first collective waits for rank 0, which has saved by then.
    results["resumed"] = torchlr.fit(X, y, resume=checkpoint, **OPTIONS)
    try:  # ranks that were given different seeds must refuse to train together
        torchlr.fit(X, y, device="cpu", seed=distributed.rank())
    except ValueError as exc:
        results["disagree"] = str(exc)
    try:  # rank 0 alone resumes: refused on every rank, none left waiting for the others
        torchlr.fit(X, y, resume=checkpoint if distributed.rank() == 0 else None, **OPTIONS)
    except ValueError as exc:
        results["one resumes"] = str(exc)
    try:  # rank 0 alone refuses its checkpoint (another lr): the others must not wait for it
        torchlr.fit(X, y, resume=checkpoint, **{**OPTIONS, "lr": 0.5 if distributed.rank() == 0
                                                else 0.03})
    except ValueError as exc:
        said = [None] * distributed.world_size()
        dist.all_gather_object(said, str(exc))
        results["one refuses"] = said
    # Refused later, as its state is restored: a damaged generator state on rank 0 alone.
    damaged = checkpoint + ".damaged"
    if distributed.rank() == 0:
        state = torch.load(checkpoint, weights_only=True)
        state["generator"] = torch.zeros(5, dtype=torch.uint8)
        torch.save(state, damaged)
    dist.barrier()
    try:
        torchlr.fit(X, y, resume=damaged if distributed.rank() == 0 else checkpoint, **OPTIONS)
    except ValueError as exc:
        said = [None] * distributed.world_size()
        dist.all_gather_object(said, str(exc))
        results["one damaged"] = said
    # Valid on each rank, but not the same run: checkpoints at other epochs, or host reads
    # at other steps (each one a collective).
    later = checkpoint + ".epoch2"
    torchlr.fit(X, y, save=later, **OPTIONS)
    for key, options in (("other epochs", dict(resume=checkpoint if distributed.rank() == 0
                                               else later)),
                         ("other reads", dict(log_every=5 + distributed.rank()))):
        try:
            torchlr.fit(X, y, **{**OPTIONS, "num_epochs": 3, **options})
        except ValueError as exc:
            results[key] = str(exc)
    return results


def _stream(path):
    return BlockStream(path, block_rows=97)  # blocks that end inside batches


def _fail_on_rank_one(X, y):
    def stop(progress):
        if distributed.rank() == 1 and progress.epoch == 2:
            raise RuntimeError("rank 1 gives up")
    return torchlr.fit(X, y, device="cpu", log_every=5, on_progress=stop)


def _killed_on_rank_one(X, y):
    def die(progress):
        if distributed.rank() == 1 and progress.epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no Python error, no error file
    return torchlr.fit(X, y, device="cpu", log_every=5, on_progress=die)


def _stall_on_rank_one(X, y):
    def stall(progress):
        if distributed.rank() == 1 and progress.epoch == 2:
            time.sleep(120)
    return torchlr.fit(X, y, device="cpu", log_every=5, on_progress=stall)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_bounds_split_like_tensor_split(world):
    for length in range(0, 25):
        bounds = [shard_bounds(length, r, world) for r in range(world)]
        expected = torch.tensor_split(torch.arange(length), world)
        assert [list(range(lo, hi)) for lo, hi in bounds] == [t.tolist() for t in expected]


@pytest.mark.parametrize("drop_last, last_slices", [(False, [1, 0, 0]), (True, [4, 3, 3])])
def test_each_global_batch_is_the_ranks_slices_in_order(drop_last, last_slices):
    X, y = chapter_data(num_examples=1001)
    world = 3
    reference = list(data_iter(10, X, y, generator=torch.Generator().manual_seed(5),
                               drop_last=drop_last))
    per_rank = [
        list(DataParallel(r, world).batches(10, X, y, generator=torch.Generator().manual_seed(5),
                                            drop_last=drop_last))
        for r in range(world)
    ]
    assert all(len(batches) == len(reference) for batches in per_rank)
    for step, (X_ref, y_ref) in enumerate(reference):
        slices = [batches[step] for batches in per_rank]
        assert all(length == len(X_ref) for _, _, length in slices)
        torch.testing.assert_close(torch.cat([s[0] for s in slices]), X_ref, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([s[1] for s in slices]), y_ref, rtol=0, atol=0)
    assert [len(per_rank[r][-1][0]) for r in range(world)] == last_slices


@pytest.mark.parametrize("batch_size, drop_last", [(10, False), (10, True), (64, False)])
def test_streamed_slices_are_the_streams_batches_cut_per_rank(tmp_path, batch_size, drop_last):
    X, y = chapter_data(num_examples=1001)
    np.save(tmp_path / "t.npy", torch.cat([X, y], 1).numpy())
    stream = _stream(tmp_path / "t.npy")
    after = torch.Generator().manual_seed(5)
    reference = list(stream.batches(batch_size, after, drop_last))
    for world in (2, 3):
        per_rank = []
        for r in range(world):
            gen = torch.Generator().manual_seed(5)
            per_rank.append(list(DataParallel(r, world).batches(
                batch_size, stream, None, generator=gen, drop_last=drop_last)))
            # Each rank's generator ends the epoch where one process's does.
            assert torch.equal(gen.get_state(), after.get_state())
        assert all(len(batches) == len(reference) for batches in per_rank)
        for step, (X_ref, y_ref) in enumerate(reference):
            slices = [batches[step] for batches in per_rank]
            assert all(length == len(X_ref) for _, _, length in slices)
            assert torch.equal(torch.cat([s[0] for s in slices]), X_ref)
            assert torch.equal(torch.cat([s[1] for s in slices]), y_ref)


def test_torchrun_env_and_backend_choice(monkeypatch):
    assert distributed.in_torchrun({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert not distributed.in_torchrun({"RANK": "0", "WORLD_SIZE": "2"})
    assert distributed.default_backend("cpu") == "gloo"
    assert distributed.default_backend("cuda:1") == "nccl"
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="backend='nccl' needs a CUDA device"):
        distributed.setup("cpu", backend="nccl")
    with pytest.raises(ValueError, match="Unknown backend 'mpi'"):
        distributed.setup("cpu", backend="mpi")
    for timeout in (0, -1.0, "60", None):
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            distributed.setup("cpu", timeout=timeout)
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        distributed.setup("cpu")
    assert not distributed.is_distributed()  # nothing was joined on the way


def test_setup_joins_a_group_and_teardown_leaves_it(monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    try:
        # Any positive timeout, under a second too.
        assert distributed.setup("cpu", store=dist.HashStore(), timeout=0.5) == torch.device("cpu")
        assert distributed.current() == DataParallel(0, 1)
        assert dist.get_backend() == "gloo"
    finally:
        distributed.teardown()
    assert not distributed.is_distributed()
    distributed.teardown()  # outside a group: nothing to leave, no error


@pytest.mark.parametrize("nprocs", [0, -2, True, 2.0, "2", None])
def test_launch_refuses_a_bad_process_count_before_starting_any(nprocs):
    with pytest.raises(ValueError, match=r"nprocs must be a positive int, got "):
        launch(_fit_all, nprocs)


@pytest.mark.parametrize("timeout", [0, -5, True, float("inf"), "60", 1e-9, 7.5e9])
def test_launch_refuses_a_bad_timeout_before_starting_any(timeout):
    # It went to the rendezvous store, whose C++ error named no argument.
    with pytest.raises(ValueError, match=r"timeout must be (a positive number|from 0.001 to)"):
        launch(_fit_all, 2, timeout=timeout)


def test_launch_fit_says_how_to_train_a_stream(tmp_path):
    np.save(tmp_path / "t.npy", np.ones((10, 2)))
    with pytest.raises(TypeError, match=r"launch_fit takes tensors .* call launch\(fn\)"):
        launch_fit(BlockStream(tmp_path / "t.npy"), None)


def test_the_ranks_compare_seeds_exactly():
    # As float64 numbers 2**53 and 2**53 + 1 were one seed, and the ranks trained apart.
    agreed = [group_agreement(FitConfig(seed=seed), n=10, d=2, first_epoch=1, stream=None,
                              data_digest="0" * 64)["seed"] for seed in (2**53, 2**53 + 1, 0)]
    assert len(set(agreed)) == 3


def test_outside_a_group_nothing_changes():
    assert distributed.current() is None
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)


@pytest.mark.parametrize("permutation", ["randperm", "hashed"])
@pytest.mark.parametrize("impl", IMPLS)
def test_fit_in_a_one_process_group_equals_plain_fit(single_process_group, impl, permutation):
    X, y = chapter_data(num_examples=203)
    options = dict(impl=impl, device="cpu", num_epochs=2, permutation=permutation)
    in_group = torchlr.fit(X, y, **options)
    assert distributed.current() == DataParallel(0, 1)
    dist.destroy_process_group()
    plain = torchlr.fit(X, y, **options)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    torch.testing.assert_close(in_group.w_history, plain.w_history, rtol=1e-6, atol=0)
    torch.testing.assert_close(in_group.train_losses, plain.train_losses, rtol=1e-5, atol=0)
    assert in_group.losses == pytest.approx(plain.losses, rel=1e-6)


@pytest.mark.parametrize("model_cls", [ScratchModel, ConciseModel])
def test_a_rank_with_no_rows_steps_with_zero_gradient(single_process_group, model_cls):
    model = model_cls(2, 0.03, torch.Generator().manual_seed(0), torch.device("cpu"))
    w0, b0 = (p.detach().clone() for p in model.params())
    loss = DataParallel(0, 1).wrap(model, torch.device("cpu")).step(
        torch.empty(0, 2), torch.empty(0, 1), 3)
    assert float(loss) == 0.0  # not NaN: an empty slice contributes nothing
    w, b = model.params()
    assert torch.equal(w, w0) and torch.equal(b, b0)


def test_two_processes_train_the_single_process_model(tmp_path):
    datasets = {n: chapter_data(seed=1, num_examples=n) for n in SIZES}
    npy = tmp_path / "table.npy"
    X, y = datasets[SIZES[1]]
    np.save(npy, torch.cat([X, y], 1).numpy())
    checkpoint = str(tmp_path / "run.pt")
    results = launch(_fit_all, 2, args=(datasets, str(npy), checkpoint), device="cpu")
    for key in [k for k in results if isinstance(k, tuple)]:
        source, impl = key
        if source == "stream":  # the same rows as SIZES[1], streamed from the file
            two, every_w = results[key], None
            one = torchlr.fit(_stream(npy), None, impl=impl, **OPTIONS)
            X, y = datasets[SIZES[1]]
        else:
            (two, every_w), (X, y) = results[key], datasets[source]
            one = torchlr.fit(X, y, impl=impl, **OPTIONS)
        # Same model within float rounding, after every epoch.
        torch.testing.assert_close(two.w_history, one.w_history, rtol=1e-5, atol=0)
        torch.testing.assert_close(two.b_history, one.b_history, rtol=1e-5, atol=0)
        # The epoch loss is the whole set's mean at the group's parameters, and it
        # prints as the single process's (6 decimals).
        at_two = [float(torchlr.evaluate(X, y, w.reshape(-1, 1), b.reshape(1)))
                  for w, b in zip(two.w_history[1:], two.b_history[1:])]
        assert two.losses == pytest.approx(at_two, rel=1e-5)
        assert two.losses == pytest.approx(one.losses, rel=1e-5, abs=1e-7)
        # Each minibatch loss is the global batch's mean, not one rank's share.
        torch.testing.assert_close(two.train_losses, one.train_losses, rtol=1e-5, atol=1e-7)
        if every_w is not None:  # both ranks hold the same parameters
            assert torch.equal(every_w[0][0], every_w[1][0]) and every_w[0][1] == every_w[1][1]
    # Every rank resumed from rank 0's checkpoint and went on as one uninterrupted run would.
    X, y = datasets[SIZES[0]]
    whole = torchlr.fit(X, y, **OPTIONS)
    torch.testing.assert_close(results["resumed"].w_history, whole.w_history, rtol=1e-5, atol=0)
    assert results["disagree"] == (
        "The 2 processes disagree on ['seed']: every rank must train with the same options "
        "on the same data."
    )
    assert results["one resumes"] == results["disagree"].replace("'seed'",
                                                                 "'resume', 'first_epoch'")
    own, other = results["one refuses"]
    assert "Cannot resume" in own and "lr" in own
    assert other == "process 0 of the group refused the run (its own error says why); every " \
                    "process stops"
    assert "disagree on ['first_epoch']" in results["other epochs"]
    assert "disagree on ['log_every']" in results["other reads"]
    own, other = results["one damaged"]
    assert "damaged" in own or "generator" in own, own
    assert other.startswith("process 0 of the group refused the run")


def test_a_failing_worker_stops_the_launch_and_is_named():
    X, y = chapter_data(num_examples=1001)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"first rank 1: RuntimeError: rank 1 gives up"):
        launch(_fail_on_rank_one, 2, args=(X, y), device="cpu")
    assert time.monotonic() - start < 60


def test_a_killed_worker_is_named_with_its_stage():
    X, y = chapter_data(num_examples=1001)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"first rank 1: killed by SIGKILL while running"):
        launch(_killed_on_rank_one, 2, args=(X, y), device="cpu")
    assert time.monotonic() - start < 60


def test_a_stalled_worker_times_out_instead_of_hanging():
    X, y = chapter_data(num_examples=1001)
    start = time.monotonic()
    # Rank 0 waits on rank 1's gradients for at most the group's timeout.
    with pytest.raises(WorkerError, match=r"first rank 0: .*[Tt]imed out"):
        launch(_stall_on_rank_one, 2, args=(X, y), device="cpu", timeout=3)
    assert time.monotonic() - start < 60


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def _torchrun_matches_one_process(argv, capsys, torchrun_only=()):
    """Run `torchlr <argv>` in this process, then on 2 processes under torchrun (with the
    options that apply only there added): same output."""
    assert main(argv) == 0
    expected = capsys.readouterr().out.splitlines()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "torchlr", *argv, *torchrun_only],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # Rank 0 alone prints: one copy of each line, the same text around the numbers.
    assert [NUMBER.sub("#", line) for line in lines] == [NUMBER.sub("#", e) for e in expected]
    got = [float(v) for line in lines for v in NUMBER.findall(line)]
    want = [float(v) for line in expected for v in NUMBER.findall(line)]
    assert got == pytest.approx(want, rel=1e-4, abs=2e-6)  # the last printed digit may round


def test_torchrun_cli_prints_the_single_process_numbers(tmp_path, capsys):
    argv = ["train", "--impl", "both", "--num-examples", "1001", "--epochs", "2",
            "--device", "cpu", "--seed", "4", "--logdir", str(tmp_path)]
    _torchrun_matches_one_process(argv, capsys, torchrun_only=["--backend", "gloo"])
    # Two TensorBoard runs from this process and two from rank 0: none from rank 1.
    assert len(list(tmp_path.iterdir())) == 4


def test_torchrun_cli_on_a_csv(tmp_path, capsys):
    X, y = chapter_data(seed=2, num_examples=403)
    X = X * torch.tensor([100.0, 0.1])  # columns on different scales
    path = tmp_path / "table.csv"
    rows = ["a,b,target"] + [f"{a:.6f},{b:.6f},{t:.6f}" for (a, b), t in zip(X.tolist(), y[:, 0])]
    path.write_text("\n".join(rows) + "\n")
    argv = ["train", "--data", str(path), "--target", "target", "--standardize",
            "--val-fraction", "0.2", "--impl", "both", "--epochs", "2", "--batch-size", "16",
            "--device", "cpu", "--no-tensorboard"]
    _torchrun_matches_one_process(argv, capsys)


def _disagreements(X, y, npy):
    """Worker: fits whose two ranks differ in one thing each; what each rank was told."""
    same = (X, y, {})
    held_out = {"val_fraction": 0.2}
    cases = {  # what differs: (rank 0's features, labels, options), then rank 1's
        "stream": ((_stream(npy), None, {}), same),  # the same rows, streamed on rank 0
        "standardize": (same, (X, y, {"standardize": True})),
        "standardize_target": (same, (X, y, {"standardize_target": True})),
        "feature_names": ((X, y, {"feature_names": ("a", "b")}),
                          (X, y, {"feature_names": ("b", "a")})),
        "target_name": ((X, y, {"target_name": "t"}), (X, y, {"target_name": "u"})),
        "data_values": (same, (X, y + 1, {})),  # the same shape, other values
        "val_fraction": ((X, y, held_out), (X, y, {"val_fraction": 0.21})),
        "early_stopping": ((X, y, {**held_out, "early_stopping": 1}),
                           (X, y, {**held_out, "early_stopping": 5})),
    }
    told = {}
    for key, per_rank in cases.items():
        features, labels, options = per_rank[distributed.rank()]
        try:
            torchlr.fit(features, labels, **{**OPTIONS, **options})
            said = None
        except ValueError as exc:
            said = str(exc)
        told[key] = [None] * distributed.world_size()
        dist.all_gather_object(told[key], said)
    return told


def test_ranks_must_agree_on_what_changes_the_collectives_or_the_model(tmp_path):
    X, y = chapter_data(seed=1, num_examples=1001)
    npy = tmp_path / "table.npy"
    np.save(npy, torch.cat([X, y], 1).numpy())
    told = launch(_disagreements, 2, args=(X, y, str(npy)), device="cpu", timeout=20)
    # Each is refused on both ranks before training, naming what differs (a held-out
    # fraction also changes the number of training rows).
    for key, said in told.items():
        names = ["samples", key] if key == "val_fraction" else [key]
        assert said == [f"The 2 processes disagree on {names}: every rank must train with "
                        f"the same options on the same data."] * 2, key


def _cli_on_each_rank(argvs, folder):
    """Worker: `torchlr <argv>` with this rank's argv; its exit status and output to a file.

    A rank whose argv is None runs nothing, and leaves the group once rank 0 is done.
    """
    rank = distributed.rank()
    out, err = io.StringIO(), io.StringIO()
    if argvs[rank] is None:
        while not os.path.exists(os.path.join(folder, "rank-0.json")):
            time.sleep(0.05)
        return None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argvs[rank])
    with open(os.path.join(folder, f"rank-{rank}.json.tmp"), "w") as f:
        json.dump({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}, f)
    os.replace(os.path.join(folder, f"rank-{rank}.json.tmp"),
               os.path.join(folder, f"rank-{rank}.json"))
    return None


def _cli_ranks(tmp_path, argvs, timeout=20.0):
    folder = tmp_path / "said"
    folder.mkdir()
    launch(_cli_on_each_rank, 2, args=(argvs, str(folder)), device="cpu", timeout=timeout)
    return [json.loads((folder / f"rank-{r}.json").read_text())
            for r in range(2) if (folder / f"rank-{r}.json").exists()]


def _csv(tmp_path):
    X, y = chapter_data(seed=2, num_examples=203)
    path = tmp_path / "table.csv"
    rows = ["a,b,t"] + [f"{a:.6f},{b:.6f},{t:.6f}" for (a, b), t in zip(X.tolist(), y[:, 0])]
    path.write_text("\n".join(rows) + "\n")
    return path


TRAIN = ["train", "--device", "cpu", "--epochs", "1", "--no-tensorboard"]


def test_a_rank_that_refuses_its_data_in_the_cli_tells_the_others(tmp_path):
    good = [*TRAIN, "--data", str(_csv(tmp_path))]
    rank0, rank1 = _cli_ranks(tmp_path, [good, [*TRAIN, "--data", str(tmp_path / "no.csv")]])
    assert (rank0["code"], rank1["code"]) == (2, 2)
    # One line each, no traceback: rank 0 learns of rank 1's refusal at once.
    assert rank0["stderr"] == ("torchlr: error: [rank 0] process 1 of the group refused the "
                               "run (its own error says why); every process stops\n")
    assert re.fullmatch(r"torchlr: error: \[rank 1\] [^\n]*no\.csv[^\n]*\n", rank1["stderr"])
    assert rank0["stdout"] == ""


def test_cli_ranks_refuse_a_stream_on_one_rank_in_the_cli_words(tmp_path):
    X, y = chapter_data(seed=2, num_examples=203)
    npy = tmp_path / "table.npy"
    np.save(npy, torch.cat([X, y], 1).numpy())
    tensors = [*TRAIN, "--data", str(npy)]
    said = _cli_ranks(tmp_path, [[*tensors, "--stream"], tensors])
    assert [r["code"] for r in said] == [2, 2]
    assert [r["stderr"] for r in said] == [
        f"torchlr: error: [rank {r}] The 2 processes disagree on [--stream]: every rank must "
        f"train with the same options on the same data.\n" for r in range(2)]


def test_a_rank_asking_for_the_analytic_gradient_tells_the_others(tmp_path):
    # Refused in fit before its told block: the other rank met a closed connection.
    rank0, rank1 = _cli_ranks(tmp_path, [TRAIN, [*TRAIN, "--gradient", "analytic"]])
    assert (rank0["code"], rank1["code"]) == (2, 2)
    assert rank0["stderr"] == ("torchlr: error: [rank 0] process 1 of the group refused the "
                               "run (its own error says why); every process stops\n")
    assert rank1["stderr"].startswith("torchlr: error: [rank 1] --gradient analytic is not "
                                      "supported in a process group")


def test_cli_ranks_refuse_impl_both_on_one_rank(tmp_path):
    # Each fit agreed, but rank 0's second fit (--impl both) was left to train alone: it
    # failed on a closed connection, or waited out the timeout.
    said = _cli_ranks(tmp_path, [[*TRAIN, "--impl", "both"], [*TRAIN, "--impl", "scratch"]])
    assert [r["code"] for r in said] == [2, 2]
    assert [r["stderr"] for r in said] == [
        f"torchlr: error: [rank {r}] The 2 processes disagree on [the number of fits "
        f"(--impl both makes two)]: every rank must train with the same options on the same "
        f"data.\n" for r in range(2)]
    assert said[0]["stdout"] == ""  # refused before the first fit


def test_a_failed_collective_is_one_line_under_torchrun(tmp_path):
    # Rank 1 never makes rank 0's first collective: rank 0 times out after 2 seconds.
    start = time.monotonic()
    (rank0,) = _cli_ranks(tmp_path, [TRAIN, None], timeout=2)
    assert rank0["code"] == 2
    assert re.fullmatch(r"torchlr: error: \[rank 0\] the process group failed: [^\n\[]*"
                        r"[Tt]imed out[^\n]*\n", rank0["stderr"]), rank0["stderr"]
    assert time.monotonic() - start < 30


def _raise_from(filename, message):
    """Raise RuntimeError(message) from a frame of the given file, as a library's code would."""
    exec(compile(f"raise RuntimeError({message!r})", filename, "exec"))


def test_runtime_errors_of_collectives_are_one_line_only_in_a_group(monkeypatch, capsys):
    gloo = ("[/gloo/transport/tcp/pair.cc:534] Connection reset by peer\n"
            "Exception raised from recvAsync at ...")
    collective = os.path.join(os.path.dirname(torch.distributed.__file__), "fake_c10d.py")

    def broken(args, out):
        _raise_from(collective, gloo)

    monkeypatch.setattr(cli, "_train", broken)
    with pytest.raises(RuntimeError, match="Connection reset"):  # one process: a bug
        main(TRAIN)
    monkeypatch.setattr(cli, "_train_data_parallel", broken)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    assert main(TRAIN) == 2
    assert capsys.readouterr().err == ("torchlr: error: [rank 1] the process group failed: "
                                       "Connection reset by peer\n")
    # Any other RuntimeError in a group (a sparse tensor, CUDA out of memory, a bug) keeps
    # its traceback: it was said as "the process group failed".
    monkeypatch.setattr(cli, "_train_data_parallel",
                        lambda args, out: _raise_from(__file__, "Could not run 'aten::ne'"))
    with pytest.raises(RuntimeError, match="aten::ne"):
        main(TRAIN)
    # torch's own DistError (a store that timed out, a closed socket) is the group's failure
    # whatever frames it passed through.
    def closed(args, out):
        raise dist.DistNetworkError("Connection closed by peer")

    monkeypatch.setattr(cli, "_train_data_parallel", closed)
    assert main(TRAIN) == 2
    assert capsys.readouterr().err == ("torchlr: error: [rank 1] the process group failed: "
                                       "Connection closed by peer\n")
    # Rank 0's line says what the run kept, as an interrupted run's does.
    def closed_after_saving(args, out):
        exc = dist.DistNetworkError("Connection closed by peer")
        exc.saved_to, exc.saved_epoch, exc.run_dir = "m.pt", 3, "runs/x-scratch"
        raise exc

    monkeypatch.setattr(cli, "_train_data_parallel", closed_after_saving)
    assert main(TRAIN) == 2
    assert capsys.readouterr().err == (
        "torchlr: error: [rank 1] the process group failed: Connection closed by peer; m.pt "
        "holds epoch 3; the TensorBoard run so far is in runs/x-scratch\n")


def test_exact_number_is_an_integer_that_float64_holds_exactly():
    # The ranks compare these as float64 in one collective: each must be exact (an integer
    # below 2**53), and different texts must give different numbers.
    numbers = [distributed.exact_number(repr(("column", i))) for i in range(500)]
    assert all(x.is_integer() and 0 <= x < 2**53 for x in numbers)
    assert len(set(numbers)) == len(numbers)


def test_a_workers_stage_is_starting_until_it_marks_one(tmp_path):
    # What a WorkerError says of a worker killed by a signal: where it had got to.
    folder = str(tmp_path)
    assert distributed._stage(folder, 1) == "starting"
    distributed._mark(folder, 1, "running")
    assert (distributed._stage(folder, 1), distributed._stage(folder, 0)) == ("running",
                                                                              "starting")


def test_a_run_with_stderr_closed_keeps_its_exit_status(monkeypatch, capsys, tmp_path):
    # With 2>&- the CLI's stderr lines have nowhere to go; writing them raised, and the exit
    # status was 1 for a refused option (2 expected) and for a run that trained (0).
    monkeypatch.setattr(sys, "stderr", None)
    assert main(["train", "--device", "cpu", "--epochs", "-1"]) == 2
    assert main(["train", "--device", "cpu", "--epochs", "1", "--logdir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("epoch 1, loss ")


class _Writes(io.StringIO):
    """A stderr that keeps each write apart."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def test_each_error_line_is_one_write(monkeypatch):
    # Under torchrun the ranks share one unbuffered stderr: a line written in two pieces
    # can have another rank's line between them.
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["train", "--device", "cpu", "--epochs", "-1"]) == 2
    assert len(stderr.writes) == 1 and stderr.writes[0].startswith("torchlr: error: ")
    assert stderr.writes[0].endswith("\n") and stderr.writes[0].count("\n") == 1


def test_exit_now_keeps_the_output_and_status_and_skips_the_shutdown():
    # A finished worker leaves without the interpreter's shutdown (atexit handlers, where
    # gloo can abort a finished run), yet what it wrote to its buffered pipes still arrives.
    code = ("import atexit, sys\n"
            "from torchlr.distributed import exit_now\n"
            "atexit.register(print, 'atexit ran')\n"
            "print('printed', end='')\n"
            "sys.stderr.write('warned')\n"
            "exit_now(3)\n"
            "print('after')\n")
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT, env=buffered)
    # (stderr may hold a warning from importing torch on some machines: only its end counts)
    assert (proc.returncode, proc.stdout) == (3, "printed")
    assert proc.stderr.endswith("warned"), proc.stderr


def test_cli_names_everything_the_ranks_compare_in_its_own_words():
    agreed = group_agreement(FitConfig(), n=10, d=2, first_epoch=1, stream=None,
                             data_digest="0" * 64)
    # Set from Python only: the command line leaves them at their defaults on every rank.
    compared = [name for name in agreed if name not in ("drop_last", "log_every")]
    message = in_cli_terms(f"The 2 processes disagree on {compared}: every rank must train "
                           f"with the same options on the same data.", build_parser())
    listed = message.split("disagree on [")[1].split("]:")[0]
    assert "'" not in listed and "_" not in listed, listed
    assert "--resume, the epoch --resume continues from" in listed
    assert "--epochs" in listed and "--stream" in listed and "--val-fraction" in listed
    assert listed.endswith("--early-stopping, --permutation")


def test_a_ranks_empty_share_of_a_streamed_batch_is_float32_under_any_default_dtype():
    # A rank with no rows of a batch got torch's default dtype: under float64 its matmul
    # with the float32 parameters failed ("expected m1 and m2 to have the same dtype").
    from torchlr.distributed import _take

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        X, y = _take([], 0, 3)
    finally:
        torch.set_default_dtype(previous)
    assert X.shape == (0, 3) and y.shape == (0, 1)
    assert X.dtype == y.dtype == torch.float32


def test_timeout_bounds_are_inclusive():
    from torchlr.distributed import MAX_TIMEOUT, MIN_TIMEOUT, timeout_out_of_range
    assert timeout_out_of_range(MIN_TIMEOUT) == ""
    assert timeout_out_of_range(MAX_TIMEOUT) == ""
    assert timeout_out_of_range(MIN_TIMEOUT / 2) != ""
