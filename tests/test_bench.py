"""The benchmark's reference loops really train, and its JSON names the machine."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import torchlr

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def chapter(bench):
    size = bench.SIZES["chapter"]
    X, y = bench.make_data(size)
    w, b = torchlr.least_squares(X, y)
    return size, X, y, w.float(), b


@pytest.mark.parametrize("name", ["loop_port", "dataloader"])
def test_reference_loops_reach_the_least_squares_solution(bench, chapter, name):
    size, X, y, w_star, b_star = chapter
    run = {"loop_port": bench.run_loop_port, "dataloader": bench.run_dataloader}[name]
    w, b = run(X, y, size, 0)
    torch.testing.assert_close(w, w_star, rtol=0, atol=2e-3)
    assert abs(b - b_star) < 2e-3


def test_sklearn_reference_reaches_the_least_squares_solution(bench, chapter):
    pytest.importorskip("sklearn")
    size, X, y, w_star, b_star = chapter
    w, b = bench.run_sklearn(bench.prepare_sklearn(X, y), size, 0)
    torch.testing.assert_close(w.float(), w_star, rtol=0, atol=2e-2)
    assert abs(b - b_star) < 2e-2


def test_quick_run_writes_json_naming_the_machine(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--repeats", "1", "--skip", "sklearn", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["machine"]) >= {"cpu", "torch_threads", "gpu", "torch"}
    assert report["machine"]["torch"] == torch.__version__
    rows = report["sizes"]["chapter"]["results"]
    assert "sklearn" not in rows
    assert not set(bench.GRAPHED) & set(rows)  # cuda_graphs fits run at the CUDA sizes only
    for impl in ("torchlr_scratch", "torchlr_concise"):
        row = rows[impl]
        # Paired: the median over rounds of this round's time over the reference's.
        pairs = [t / r for t, r in zip(row["times_s"], rows["loop_port"]["times_s"])]
        assert len(pairs) == 3  # --quick: 1 repeat, x3 at the chapter size
        assert row["ratio"]["loop_port"] == pytest.approx(sorted(pairs)[1])
        assert row["ratio_range"]["loop_port"] == pytest.approx([min(pairs), max(pairs)])
        assert row["us_per_step"] == pytest.approx(row["median_s"] / 300 * 1e6)
    targets = {(t["impl"], t["against"]): t for t in report["targets"]}
    assert targets["torchlr_concise", "dataloader"]["ratio"] == pytest.approx(
        rows["torchlr_concise"]["ratio"]["dataloader"])
    assert "torchlr scratch" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_cuda_sizes_skip_cleanly_without_cuda(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--sizes", "cuda-chapter", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["sizes"] == {}
    assert "no CUDA device" in capsys.readouterr().err


def test_graphed_step_target_is_microseconds_per_step(bench):
    def sizes(us):
        row = {"us_per_step": us, "x_read": 1.0, "ratio": {}, "ratio_range": {}}
        return {"cuda-chapter": {"results": {"torchlr_scratch_graphs": row}}}

    (met,) = bench.check_targets(sizes(19.5))
    assert (met["against"], met["ratio"], met["at_most"], met["met"]) == (
        "us_per_step", 19.5, 20.0, True)
    (missed,) = bench.check_targets(sizes(20.5))
    assert not missed["met"]
