"""The README's Python examples run as written, in order, and print what it says they do."""

import re
import shutil
from pathlib import Path

import pytest
import torch

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
    checks = {
        # The first example's comment: the chapter's losses after each epoch.
        0: lambda ns: ns["result"].losses == pytest.approx([0.0392, 0.00014, 4.7e-05],
                                                            rel=0.05),
        # The hand-written loops trained: w came close to the truth.
        1: lambda ns: torch.allclose(ns["w"].detach().reshape(-1), truth, atol=0.01),
        2: lambda ns: torch.allclose(ns["model"].w.detach().reshape(-1), truth, atol=0.3),
    }
    namespace: dict = {}
    for i, block in enumerate(python_blocks()):
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
        assert checks.get(i, lambda ns: True)(namespace), f"README example {i + 1}"
