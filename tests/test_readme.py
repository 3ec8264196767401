"""The README's Python examples run as written, in order, and print what it says they do."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import same_but_rounding

import torchlr

ROOT = Path(__file__).resolve().parents[1]


def python_blocks():
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def test_readme_has_the_examples_this_test_runs():
    blocks = python_blocks()
    assert len(blocks) >= 5
    assert any("torchlr.fit(" in b for b in blocks) and any("make_optimizer" in b for b in blocks)


@pytest.mark.timeout(240)
def test_readme_python_examples_run_in_order(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)  # runs/, houses.pt land here
    truth = torch.tensor([2.0, -3.4])
    generator_before = {}  # block number: the state of the examples' generator g before it
    checks = {
        # The first example's comment: the chapter's losses after each epoch.
        0: lambda ns: ns["result"].losses == pytest.approx([0.0392, 0.00014, 4.7e-05],
                                                            rel=0.05),
        # The hand-written scratch loop trained: w came close to the truth.
        1: lambda ns: torch.allclose(ns["w"].detach().reshape(-1), truth, atol=0.01),
        # The concise loop took the chapter's steps: the float64 replay of its epoch.
        2: lambda ns: _concise_loop_is_the_chapters_epoch(ns, generator_before[2]),
        # Around a fit: progress said per epoch, the sweep's last rate diverged, the closed
        # form's loss is the least, and the streamed file trained as the data in memory did.
        3: _around_a_fit,
        # The run is where the comment says, and holds the event file TensorBoard reads.
        4: lambda ns: re.fullmatch(r"runs/\d{8}-\d{6}-scratch-demo", ns["result"].run_dir)
        and any(f.startswith("events.out.tfevents") for f in os.listdir(ns["result"].run_dir)),
        5: _houses_predictions_are_the_fitted_line,
        # Two processes train the single-process model.
        6: lambda ns: torch.allclose(ns["result"].w, ns["torchlr"].fit(
            ns["X"], ns["y"], impl="concise", device="cpu").w, rtol=1e-5, atol=1e-6),
    }
    namespace: dict = {}
    blocks = python_blocks()
    # The file the streaming example reads: the examples' own chapter data, as one table.
    g = torch.Generator().manual_seed(0)
    X, y = torchlr.synthetic_data(truth, 4.2, 1000, generator=g)
    np.save("big.npy", torch.cat([X, y], 1).numpy())
    assert len(blocks) == len(checks)  # a new example comes with its check
    for i, block in enumerate(blocks):
        if "g" in namespace:
            generator_before[i] = namespace["g"].get_state()
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
        assert checks[i](namespace), f"README example {i + 1}"


def _around_a_fit(ns):
    result, points, big = ns["result"], ns["points"], ns["big"]
    exact = ns["compare"].mean_loss(ns["X"], ns["y"], ns["w_exact"], ns["b_exact"])
    return ([p.lr for p in points] == [0.01, 0.1, 1.0, 3.0] and points[-1].diverged
            and not points[1].diverged and exact <= min(result.losses)
            and torch.allclose(big.w, result.w, atol=1e-3) and abs(big.b - result.b) < 1e-3)


def _concise_loop_is_the_chapters_epoch(ns, generator_state):
    """The concise example's w and b equal one epoch of the chapter's SGD at lr 0.03, replayed
    in float64 raw ops from the same start and batches (drawn from g as the example drew
    them). After one epoch w is still about 0.15 from the truth, so a tolerance against the
    truth would pass a wrong rate; against the replay, a doubled or halved rate is off by
    more than 0.1, and float32 against float64 by under 1e-6."""
    g = torch.Generator()
    g.set_state(generator_state)
    w = ns["init_params"](2, generator=g)[0].detach().double()  # (2, 1), the model's start
    b = torch.zeros(1, dtype=torch.float64)
    X, y = ns["X"], ns["y"]
    for X_batch, y_batch in ns["data_iter"](10, X, y, generator=g):
        X_batch, y_batch = X_batch.double(), y_batch.double().reshape(-1, 1)
        r = X_batch @ w + b - y_batch  # (B, 1): the gradient of sum(r²/2) is Xᵀr, sum(r)
        w = w - 0.03 * (X_batch.T @ r) / len(X_batch)
        b = b - 0.03 * r.sum().reshape(1) / len(X_batch)
    model = ns["model"]
    return (torch.allclose(model.w.detach().double(), w, rtol=0, atol=1e-5)
            and torch.allclose(model.b.detach().double(), b, rtol=0, atol=1e-5))


def _houses_predictions_are_the_fitted_line(ns):
    """The loaded model and the result predict the same, and what the weights in original
    units say (the predictions share one function, so it is no reference for them)."""
    X, result = ns["data"].features, ns["result"]
    by_hand = X.double() @ result.w.double() + result.b
    loaded = ns["model"].predict(X)
    return (torch.equal(loaded, result.predict(X))
            and torch.allclose(loaded.reshape(-1).double(), by_hand, rtol=1e-5, atol=1e-3))


def console_blocks():
    return re.findall(r"^```console\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def transcript(block):
    """The block's commands ($ lines, joined across trailing backslashes), each with the
    lines it shows on stdout (TensorBoard's folder line goes to stderr and is left out)."""
    steps = []
    lines = iter(block.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + next(lines).strip()
            steps.append((command, []))
        elif not line.startswith("TensorBoard run: "):
            steps[-1][1].append(line)
    return steps


@pytest.mark.timeout(240)
def test_readme_console_transcripts_print_what_they_show(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    steps = [step for block in console_blocks() for step in transcript(block)]
    assert len(steps) >= 4 and any("--resume" in command for command, _ in steps)
    for command, shown in steps:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr)
        # Same lines and words; the numbers are float32 results that another CPU's kernels
        # round differently (val loss 135.094006 here, 135.093994 in the README: 1e-6 relative
        # at most), far inside same_but_rounding's 1e-4 and far from a stale transcript's.
        assert same_but_rounding(done.stdout, "\n".join(shown)), (
            f"{command}\n--- README\n" + "\n".join(shown) + f"\n--- now\n{done.stdout}")


def test_readme_quickstart_shows_what_make_run_prints(tmp_path):
    text = (ROOT / "README.md").read_text()
    shown = re.search(r"^`make run` prints.*?^```\n(.*?)^```", text, re.S | re.M)[1].splitlines()
    assert shown[0] == "== scratch ==" and shown[-1] == "..."  # scratch whole, concise begun
    # What Makefile's run does, on the CPU, where the README's digits come from.
    done = subprocess.run([sys.executable, "-m", "torchlr", "train", "--impl", "both",
                           "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    folder = re.compile(r"TensorBoard run: runs/\d{8}-\d{6}-(scratch|concise)")
    on_stderr = [line for line in shown if line.startswith("TensorBoard run: ")]
    assert [folder.fullmatch(line)[1] for line in on_stderr] == ["scratch"]
    assert [folder.fullmatch(line)[1] for line in done.stderr.splitlines()] == ["scratch",
                                                                                "concise"]
    printed = [line for line in shown[:-1] if line not in on_stderr]
    assert same_but_rounding("\n".join(done.stdout.splitlines()[:len(printed)]),
                             "\n".join(printed)), done.stdout
