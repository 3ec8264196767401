"""The notebooks run top to bottom in a real Jupyter kernel and leave nothing behind."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from conftest import same_but_rounding

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_linear_regression_scratch.ipynb", "02_compare_implementations.ipynb",
         "03_exercises.ipynb"]
SKIPPED = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}


def load_runner():
    spec = importlib.util.spec_from_file_location("notebook_runner", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files_under(root: Path) -> set[str]:
    """Every file of the checkout except the environment, caches and git's own folder."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED]
        found.update(os.path.relpath(os.path.join(folder, f), root) for f in files)
    return found


def git_status() -> str | None:
    if shutil.which("git") is None:
        return None
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Each notebook executed once in a fresh kernel, and what the checkout looked like."""
    runner = load_runner()
    before = (files_under(ROOT), git_status())
    results, workdirs = {}, {}
    for name in NAMES:
        workdirs[name] = tmp_path_factory.mktemp(name.split("_")[0])
        results[name] = runner.execute_notebook(NOTEBOOKS / name, workdirs[name], timeout=120)
    after = (files_under(ROOT), git_status())
    return results, before, after, workdirs


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def skipped(cell) -> bool:
    return "skip-execution" in cell.metadata.get("tags", [])


def text_of(nb) -> str:
    """All stdout and text/plain or text/markdown output, in order.

    The kernel flushes stdout on a timer, so one printed line can arrive as two stream
    outputs: stream texts are joined as they are, other outputs on lines of their own.
    """
    parts = []
    for cell in code_cells(nb):
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                parts.append(out.text)
            elif "data" in out:
                text = out.data.get("text/markdown", out.data.get("text/plain", ""))
                parts.append(f"\n{text}\n")
    return "".join(parts)


def images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in code_cells(nb)
               for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_clean_with_every_cell_executed(executed, name):
    nb = executed[0][name]
    for cell in code_cells(nb):
        if skipped(cell):
            assert cell.execution_count is None and cell.outputs == []
            continue
        assert cell.execution_count is not None
        for out in cell.outputs:
            assert out.output_type != "error"
            # Warnings (stderr) would show up in the committed notebook: there should be none.
            assert not (out.output_type == "stream" and out.name == "stderr"), out.text


def test_running_the_notebooks_leaves_no_file_in_the_checkout(executed):
    _, (files_before, status_before), (files_after, status_after), _ = executed
    assert files_after - files_before == set()
    assert status_after == status_before


def test_chapter_notebook_prints_the_chapter_lines_and_draws(executed):
    nb = executed[0][NAMES[0]]
    text = text_of(nb)
    losses = [float(v) for v in re.findall(r"^epoch \d, loss (\d\.\d{6})$", text, re.M)]
    assert len(losses) == 3
    assert losses[0] > 100 * losses[2] and 2e-5 < losses[2] < 1e-4  # near sigma^2 / 2
    errors = re.search(r"Error in estimating w \[\s*(\S+)\s+(\S+)\]", text)
    assert errors and all(abs(float(e)) < 3e-3 for e in errors.groups()), text[-800:]
    assert "Error in estimating b" in text
    assert images(nb) >= 3
    headings = [cell.source.splitlines()[0] for cell in nb.cells if cell.cell_type == "markdown"
                and cell.source.startswith("## ")]
    assert [h.split()[1] for h in headings] == [f"3.2.{i}" for i in range(1, 9)]
    # The loop is written out with the scratch pieces, not hidden in fit().
    loop = "".join(cell.source for cell in code_cells(nb))
    for piece in ("scratch.sgd(", "backward()", "torchlr.data_iter(", "scratch.init_params("):
        assert piece in loop


def test_comparison_notebook_reports_gap_table_and_cuda(executed):
    nb = executed[0][NAMES[1]]
    text = text_of(nb)
    gaps = [float(v) for v in re.findall(r"max \|scratch - concise\| = (\S+)", text)]
    assert len(gaps) == 4 and gaps[0] == 0 and max(gaps) < 1e-5
    assert "| closed form | cpu |" in text
    assert "CUDA is not available" in text or "max |cpu - cuda|" in text
    assert images(nb) >= 2
    (tensorboard,) = [cell for cell in code_cells(nb) if skipped(cell)]
    assert "%load_ext tensorboard" in tensorboard.source
    assert "--logdir ../runs" in tensorboard.source
    # The runs it opens: one folder per implementation, written under the kernel's ../runs,
    # which the test put in a temporary folder.
    printed = re.findall(r"-> \.\./runs/(\S+)", text)
    logged = sorted(p.name for p in (executed[3][NAMES[1]] / "runs").iterdir())
    assert sorted(printed) == logged and len(logged) == 2
    for folder in logged:
        assert list((executed[3][NAMES[1]] / "runs" / folder).glob("events.out.tfevents.*"))


def test_exercises_notebook_answers_all_seven(executed):
    nb = executed[0][NAMES[2]]
    sections, current = {}, None
    for cell in nb.cells:
        match = re.match(r"## Exercise (\d)\n", cell.source + "\n")
        if cell.cell_type == "markdown" and match:
            current = int(match.group(1))
            sections[current] = []
        elif cell.cell_type == "code" and current is not None:
            sections[current].append(cell)
    assert sorted(sections) == list(range(1, 8))
    for number, cells in sections.items():
        assert any(cell.outputs for cell in cells), f"Exercise {number} shows no result"
    text = text_of(nb)
    assert "Gradient descent diverged" in text  # Planck in SI units, caught
    assert "Training diverged" in text  # the learning-rate sweep, caught
    planck = re.search(r"T = (\d+\.\d) K, eps = (\S+)\s+\(true", text)
    assert planck and abs(float(planck.group(1)) - 5800) < 50
    newton = re.search(r"max difference: (\S+)", text)
    assert newton and float(newton.group(1)) < 1e-8


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_carry_their_outputs(name):
    """The files in git were executed top to bottom, so they read well on a code host."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    counts = [cell.execution_count for cell in code_cells(nb) if not skipped(cell)]
    assert counts == list(range(1, len(counts) + 1))
    assert images(nb) >= 1
    for cell in code_cells(nb):  # saved through execute.py: no print cut across two outputs
        kinds = [(out.output_type, out.get("name")) for out in cell.outputs]
        assert not any(a == b and a[0] == "stream" for a, b in zip(kinds, kinds[1:]))
    nbformat.validate(nb)


# Cells whose output is not a function of the code: wall times, and what the machine has.
UNREPEATABLE = ("compare.summary(", "torch.cuda.is_available()")


def printed(cell) -> str:
    """A cell's stdout and text/plain results, with run-folder time stamps masked."""
    parts = [out.get("text", "") if out.output_type == "stream"
             else out.get("data", {}).get("text/plain", "") for out in cell.outputs]
    return re.sub(r"\d{8}-\d{6}", "<time>", "".join(parts))


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_are_what_the_code_prints_now(executed, name):
    """A notebook whose code changed is re-executed (notebooks/execute.py) before it lands.

    Its numbers were printed on another CPU: they may differ in their float32 rounding.
    """
    fresh = code_cells(executed[0][name])
    committed = code_cells(nbformat.read(NOTEBOOKS / name, as_version=4))
    assert len(fresh) == len(committed)
    for number, (new, old) in enumerate(zip(fresh, committed), start=1):
        if skipped(old) or any(marker in old.source for marker in UNREPEATABLE):
            continue
        assert same_but_rounding(printed(new), printed(old)), (
            f"{name}, code cell {number}: the committed output is stale; run "
            f"notebooks/execute.py\n--- committed\n{printed(old)}\n--- now\n{printed(new)}")
