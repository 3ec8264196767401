"""The benchmark's reference loops really train, and its JSON names the machine."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchlr

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
GPU_CHECK = BENCH.parent / "gpu_check.sh"
# Where the results are shown: the README's summary, and the whole record.
PERFORMANCE_DOCS = (BENCH.parents[1] / "README.md", BENCH.parents[1] / "docs" / "performance.md")


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
    assert not set(bench.CUDA_ONLY) & set(rows)  # cuda_graphs fits run at the CUDA sizes only
    for impl in bench.TORCHLR + bench.ANALYTIC:
        row = rows[impl]
        # Paired: the median over rounds of this round's time over the reference's.
        pairs = [t / r for t, r in zip(row["times_s"], rows["loop_port"]["times_s"])]
        assert len(pairs) == 3  # --quick: 1 repeat, x3 at the chapter size
        assert row["ratio"]["loop_port"] == pytest.approx(sorted(pairs)[1])
        assert row["ratio_range"]["loop_port"] == pytest.approx([min(pairs), max(pairs)])
        assert row["us_per_step"] == pytest.approx(row["median_s"] / 300 * 1e6)
        assert row["marginal_us_per_step"] > 0  # measured at the chapter size
    targets = {(t["impl"], t["against"]): t for t in report["targets"]}
    assert targets["torchlr_concise", "dataloader"]["ratio"] == pytest.approx(
        rows["torchlr_concise"]["ratio"]["dataloader"])
    out = capsys.readouterr().out
    assert "torchlr scratch" in out and "marginal µs/step" in out


def test_a_reference_that_raises_is_left_out_and_torchlr_raising_stops_the_run(
        bench, tmp_path, monkeypatch, capsys):
    def refused(X, y):  # what cuSOLVER's lstsq does with 10Mx101 on an H100
        raise torch.linalg.LinAlgError("cusolver error: CUSOLVER_STATUS_INVALID_VALUE")

    monkeypatch.setattr(bench, "run_lstsq", refused)
    keep = {"read", "lstsq", "torchlr_scratch"}
    skip = ",".join(n for n in bench.REFERENCES + bench.ALL_TORCHLR if n not in keep)
    out = tmp_path / "r.json"
    args = ["--sizes", "chapter", "--repeats", "1", "--skip", skip, "--no-rss"]
    assert bench.main(args + ["--out", str(out)]) == 0
    record = json.loads(out.read_text())["sizes"]["chapter"]
    assert set(record["results"]) == {"read", "torchlr_scratch"}
    assert record["failed"] == {"lstsq": "LinAlgError: cusolver error: "
                                         "CUSOLVER_STATUS_INVALID_VALUE"}
    assert "lstsq" not in record["results"]["torchlr_scratch"]["ratio"]
    assert "(d) lstsq failed at this size" in capsys.readouterr().out
    assert "(d) lstsq failed at this size" in bench.markdown(json.loads(out.read_text()))

    def broken(*args, **kwargs):
        raise RuntimeError("torchlr broke")

    monkeypatch.setattr(bench, "run_torchlr", broken)
    with pytest.raises(RuntimeError, match="torchlr broke"):
        bench.main(args + ["--out", str(tmp_path / "s.json")])


def test_a_failed_call_waits_for_its_own_queued_work(bench, monkeypatch):
    # A refused lstsq on a GPU leaves kernels queued: timed without a wait, they were charged
    # to the next job (a read pass 100x its usual time in both GPU files).
    waits = []
    monkeypatch.setattr(bench, "sync", lambda device: waits.append(device))

    def refused():
        raise RuntimeError("cusolver error")

    with pytest.raises(RuntimeError):
        bench.timed(refused, "cuda")
    assert waits == ["cuda"]


def test_an_out_path_that_cannot_be_written_is_found_before_the_run(bench, tmp_path):
    assert bench.unwritable(tmp_path / "new" / "r.json") is None
    # As root, os.access says yes to /proc; a file cannot be made there by anyone.
    assert "cannot write /proc/x/y.json" in bench.unwritable(Path("/proc/x/y.json"))


def test_each_torchlr_job_fits_with_the_options_its_name_lists(bench, chapter):
    size, X, y, _, _ = chapter
    for name in bench.ALL_TORCHLR:
        call = bench.torchlr_fit(name, X, y, size)
        assert call.args[-1] == ("concise" if "concise" in name else "scratch")
        assert call.keywords == {"cuda_graphs": "_graphs" in name,
                                 "gradient": "analytic" if "analytic" in name else "autograd",
                                 "permutation": "hashed" if "hashed" in name else "randperm"}
    result = bench.torchlr_fit("torchlr_concise_analytic", X, y, size)()
    assert result.config.impl == "concise" and result.config.gradient == "analytic"
    assert len(bench.HASHED) == 4 and set(bench.HASHED) <= set(bench.LABELS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_cuda_sizes_skip_cleanly_without_cuda(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    only_read = ",".join(bench.REFERENCES + bench.ALL_TORCHLR)  # left out: a fast run
    assert bench.main(["--sizes", "chapter,cuda-chapter", "--repeats", "1", "--skip", only_read,
                       "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["sizes"]) == ["chapter"]
    assert "no CUDA device: skipping cuda-chapter" in capsys.readouterr().err
    # Nothing left to run: no report, which would overwrite this machine's results file.
    assert bench.main(["--sizes", "cuda-chapter", "--out-dir", str(tmp_path / "d")]) == 2
    assert "nothing to run" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_graph_steps_refuses_without_cuda(tmp_path):
    script = BENCH.parent / "graph_steps.py"
    done = subprocess.run([sys.executable, str(script), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "needs a CUDA device" in done.stderr
    assert not list(tmp_path.iterdir())


def test_graph_steps_own_code_runs_on_the_cpu(tmp_path, monkeypatch):
    """graph_steps.py on the CPU, each capture a stand-in that runs what it records: its
    Python is checked here, not on a GPU whose minutes are few."""
    from torchlr import graphs

    spec = importlib.util.spec_from_file_location("graph_steps",
                                                  BENCH.parent / "graph_steps.py")
    gs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gs)
    monkeypatch.setattr(gs, "DEVICE", torch.device("cpu"))
    monkeypatch.setattr(graphs, "check_device", lambda *args: None)
    monkeypatch.setattr(graphs, "capturable", lambda device: True)
    monkeypatch.setattr(graphs, "side_stream", lambda device: None)
    monkeypatch.setattr(graphs, "warm_up", lambda fn, stream: fn())
    monkeypatch.setattr(graphs, "capture", lambda fn, stream: fn)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Stand-in Card")
    monkeypatch.setattr(gs, "TIMELINE_EPOCHS", 3)
    out = tmp_path / "g.json"
    assert gs.main(["--epochs", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["gpu"] == "Stand-in Card" and report["errors"] == {}
    assert set(report["us_per_step"]) == {"scratch", "concise", "scratch analytic",
                                          "concise analytic"}
    for r in report["us_per_step"].values():
        assert r["chunk_length"] == 10  # the chapter's 100 full batches
        for key in ("one_step", "chunk"):
            assert set(r[key]) == {"replay", "host", "gpu"}
            assert all(v > 0 for v in r[key].values())
        assert "fit_marginal" in r
    for size in ("chapter", "10Mx100_batch"):
        profiles = report["kernels"][size]
        assert set(profiles) == set(report["us_per_step"])
        for k in profiles.values():
            assert k["kernels_per_step"] == sum(e["per_step"] for e in k["kernels"]) > 0
            times = [e["us_per_step"] for e in k["kernels"]]
            assert times == sorted(times, reverse=True) and k["gpu_us_per_step"] > 0
        # The autograd step's backward multiplies by X^T (addmm's backward, an mm); the
        # analytic step's forward is the same addmm, its gradient no mm of autograd's.
        names = {e["name"] for e in profiles["scratch"]["kernels"]}
        assert {"aten::addmm", "aten::mm"} <= names
    assert set(report["chunk_gpu_us_per_step_10Mx100_batch"]) == set(report["us_per_step"])
    assert all(v > 0 for v in report["chunk_gpu_us_per_step_10Mx100_batch"].values())
    for t in report["fit_timeline"].values():
        assert t["steps"] == (gs.TIMELINE_EPOCHS - 2) * 100 and t["gpu_busy_us_per_step"] > 0
        idle = [g["us"] for g in t["longest_idle"]]
        assert len(idle) == gs.LONGEST_IDLE and idle == sorted(idle, reverse=True)
    assert report["fixed_work_10Mx100"]["randperm_10M_s"] > 0

    # A capture that fails costs its own figure, not the model's others.
    def epoch_capture_fails(fn, stream):
        if fn.__name__ == "epoch_of_units":
            raise RuntimeError("capture failed\nand torch's advice")
        return fn

    monkeypatch.setattr(graphs, "capture", epoch_capture_fails)
    assert gs.main(["--epochs", "1", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["errors"]["scratch: one_step_gpu"] == "RuntimeError: capture failed"
    kept = report["us_per_step"]["scratch"]
    assert set(kept["one_step"]) == {"replay", "host"} and "fit_marginal" in kept


def test_orders_ahead_own_code_runs_on_the_cpu(tmp_path, monkeypatch, capsys,
                                                orders_ahead_on_cpu):
    """orders_ahead.py on the CPU at a small size, with graphs' capture a stand-in."""
    from torchlr import graphs

    spec = importlib.util.spec_from_file_location("orders_ahead",
                                                  BENCH.parent / "orders_ahead.py")
    oa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oa)
    monkeypatch.setattr(oa, "DEVICE", "cpu")
    monkeypatch.setattr(oa, "SIZES", {"3000x5": (3000, 5, 100)})
    monkeypatch.setattr(graphs, "check_device", lambda *args: None)
    monkeypatch.setattr(graphs, "capturable", lambda device: True)
    monkeypatch.setattr(graphs, "side_stream", lambda device: None)
    monkeypatch.setattr(graphs, "warm_up", lambda fn, stream: fn())
    monkeypatch.setattr(graphs, "capture", lambda fn, stream: fn)
    out = tmp_path / "o.json"
    assert oa.main(["--epochs", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["seconds_per_later_epoch"]) == {"3000x5", "3000x5, graphs"}
    for row in report["seconds_per_later_epoch"].values():
        assert row["off"] > 0 and row["on"] > 0
        assert row["on_over_off"] == pytest.approx(row["on"] / row["off"])
    # Drawn ahead in the "on" fits only: the warm-up's 2 epochs, then 2 rounds of 2 fits.
    assert len(orders_ahead_on_cpu) == 2 + 2 * 2 * 2
    assert oa.main(["--epochs", "1"]) == 2  # no epoch after the first to time
    assert capsys.readouterr().err == ("orders_ahead.py: error: --epochs must be at least 2: "
                                       "the first epoch's order is never ahead\n")
    # The results file is checked before any timing, as bench.py's is.
    (tmp_path / "afile").write_text("")
    assert oa.main(["--out", str(tmp_path / "afile" / "o.json")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert oa.main(["--out-dir", ""]) == 2
    assert capsys.readouterr().err == "orders_ahead.py: error: --out-dir must be a path, got ''\n"
    assert len(orders_ahead_on_cpu) == 2 + 2 * 2 * 2  # no fit ran for these


def test_gpu_check_runs_the_cuda_tests_then_the_bench_and_keeps_its_files(bench, tmp_path):
    # A GPU session has minutes of device time for this one script: its steps are checked
    # here, with every CUDA test skipping and the bench at the chapter size instead.
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "BENCH_ARGS", "PY")}
    env["PY"] = sys.executable
    refused = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 3 and "sees no CUDA device" in refused.stderr

    out, results = tmp_path / "out", tmp_path / "results"
    only_read = ",".join(bench.REFERENCES + bench.ALL_TORCHLR)
    env.update(OUT=str(out), RESULTS_DIR=str(results), GPU_CHECK_REQUIRE_CUDA="0",
               BENCH_ARGS=f"--sizes chapter --repeats 1 --skip {only_read}")
    proc = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (out / "gpu_check.log").read_text()
    assert re.search(r"\b\d+ skipped", log)  # the CUDA tests were collected: they skip here
    assert "tests exit 0, bench exit 0" in log
    [copied] = out.glob("*.json")  # the results file, where the device tool brings files back
    assert copied.read_text() == (results / copied.name).read_text()
    assert list(json.loads(copied.read_text())["sizes"]) == ["chapter"]


def test_graphed_step_targets_are_microseconds_per_step(bench):
    row = {"us_per_step": 20.5, "marginal_us_per_step": 19.5, "ratio": {}, "ratio_range": {}}
    sizes = {"cuda-chapter": {"size": {"device": "cuda"},
                              "results": {"torchlr_scratch_graphs": row}}}
    machine = {"cpu_count": 16, "torch_threads": 16}
    whole, marginal = bench.check_targets(sizes, machine)
    assert (whole["against"], whole["ratio"], whole["at_most"], whole["met"]) == (
        "us_per_step", 20.5, 20.0, False)
    assert (marginal["against"], marginal["ratio"], marginal["met"]) == (
        "marginal_us_per_step", 19.5, True)
    del row["marginal_us_per_step"]  # not measured: no verdict either
    assert [t["against"] for t in bench.check_targets(sizes, machine)] == ["us_per_step"]


def test_a_one_thread_read_is_no_floor_for_a_two_thread_fit(bench):
    # On 2 cores the fit gathers on a second thread; a read on one torch thread is then no
    # like-for-like floor, so the stretch target gets no verdict.
    row = {"x_read": 7.5, "x_read_range": [7.0, 8.0], "ratio": {}, "ratio_range": {}}
    sizes = {"1Mx100": {"size": {"device": "cpu"}, "results": {"torchlr_scratch": row}}}
    (one,) = bench.check_targets(sizes, {"cpu_count": 2, "torch_threads": 1})
    assert one["met"] is None and one["rounds_range"] == [7.0, 8.0]
    assert bench.verdict(one, {"cpu_count": 2, "torch_threads": 1}, sizes).startswith(
        "not like for like")
    (two,) = bench.check_targets(sizes, {"cpu_count": 2, "torch_threads": 2})
    assert two["met"] is True and bench.verdict(two, {"cpu_count": 2, "torch_threads": 2},
                                                sizes) == "met"


@pytest.mark.parametrize("name", ["torchlr_scratch", "torchlr_concise",
                                  "torchlr_scratch_analytic", "torchlr_concise_analytic"])
def test_torchlr_jobs_reach_the_least_squares_solution(bench, chapter, name):
    size, X, y, w_star, b_star = chapter
    result = bench.torchlr_fit(name, X, y, size)()
    torch.testing.assert_close(result.w, w_star, rtol=0, atol=2e-3)
    assert abs(result.b - b_star) < 2e-3


def test_a_partial_run_leaves_the_machines_results_file_alone(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    assert bench.main(["--quick", "--repeats", "1", "--skip", "sklearn,dataloader"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_performance_tables_are_the_committed_results(bench):
    # docs/performance.md shows every results file; the README the latest CPU run's, and
    # names every file it quotes at a glance.
    readme, doc = (PERFORMANCE_DOCS[0].read_text(), PERFORMANCE_DOCS[1].read_text())
    files = sorted((BENCH.parent / "results").glob("*t.json"))
    assert len(files) >= 3
    for path in files:
        assert bench.markdown(json.loads(path.read_text())) in doc, path.name
    assert any(bench.markdown(json.loads(path.read_text())) in readme for path in files)
    for name in re.findall(r"`([\w.-]+t\.json)`", readme):
        assert (BENCH.parent / "results" / name).is_file(), name


def test_the_readmes_targets_at_a_glance_quote_their_files(bench):
    # The summary table is written by hand: each figure labelled with a one-run file's
    # machine must be one of that file's target ratios, to the digits shown.
    glance = PERFORMANCE_DOCS[0].read_text().split("### The targets at a glance")[1]
    rows = "\n".join(line for line in glance.split("\n###")[0].splitlines()
                     if line.startswith("| ") and not line.startswith("| target"))
    files = {"AMD": "amd-epyc-2t.json", "H200": "nvidia-h200-16t.json",
             "H100": "nvidia-h100-80gb-hbm3-16t.json"}
    quoted = 0
    for label, name in files.items():
        report = json.loads((BENCH.parent / "results" / name).read_text())
        # The target ratios, and the memory row's peak RSS over the data.
        ratios = [t["ratio"] for t in report["targets"]] + [
            rss["peak_over_data"] for rss in report.get("peak_rss_1Mx100", {}).values()]
        for figure in re.findall(rf"\b{label} (\d+(?:\.\d+)?)\b", rows):
            digits = len(figure.partition(".")[2])
            assert any(round(r, digits) == float(figure) for r in ratios), (label, figure)
            quoted += 1
    assert quoted >= 20


def test_performance_prose_calls_no_target_met_that_its_file_gives_no_verdict(bench):
    # The prose beside the tables quotes their ratios: a ratio the file judges not like for
    # like (met: null) must not be quoted as met.
    unjudged = [t for path in (BENCH.parent / "results").glob("*t.json")
                for t in json.loads(path.read_text())["targets"] if t["met"] is None]
    assert unjudged  # the one-thread file's read-pass rows
    for doc in PERFORMANCE_DOCS:
        text = doc.read_text()
        for t in unjudged:
            assert f"{t['ratio']:.1f} (met)" not in text, (doc.name, t)


def test_marginal_step_is_the_extra_time_per_extra_step(bench, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def fit_taking(seconds):
        def run():
            clock[0] += seconds
        return run

    # 27 ms more for 900 more steps: 30 µs a step, whatever the fixed 10 ms.
    assert bench.marginal_step_us(fit_taking(0.010), fit_taking(0.037), 900, "cpu") == (
        pytest.approx(30.0))


@pytest.fixture
def threads_kept(bench):
    """main(["--threads", N]) sets torch's threads for the process: put them back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    bench.FIT_OPTIONS.clear()


@pytest.fixture
def no_timing(bench, monkeypatch):
    """main() with each size's timing and each peak-RSS child stood in for (milliseconds,
    not minutes); returns the child command lines it was asked to run."""
    def bench_size(size, repeats, slow_repeats, skip):
        return {"size": {**size.__dict__, "references": list(size.references),
                         "steps": size.steps}, "results": {}, "failed": {}}

    children = []

    def run(command, **kwargs):
        children.append(command)
        impl = command[command.index("--rss-child") + 2]
        record = {"impl": impl, "data_bytes": 1, "rss_before_data": 0, "rss_before_fit": 0,
                  "peak_rss": 1}
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(record) + "\n")

    monkeypatch.setattr(bench, "bench_size", bench_size)
    monkeypatch.setattr(bench, "subprocess", type("Stub", (), {"run": staticmethod(run)}))
    return children


@pytest.mark.parametrize("options", [["--no-rss"], ["--repeats", "4"], ["--slow-repeats", "2"],
                                     ["--threads", "1"], ["--sizes", "chapter"],
                                     ["--skip", "sklearn"], ["--quick"]])
def test_a_run_other_than_the_default_leaves_the_results_file_alone(
        bench, tmp_path, monkeypatch, capsys, no_timing, threads_kept, options):
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    assert bench.main(options) == 0
    assert list(tmp_path.iterdir()) == []
    assert f"a partial run ({options[0]})" in capsys.readouterr().err
    # The default run, and a partial one told where, still write.
    assert bench.main(options + ["--out-dir", str(tmp_path / "kept")]) == 0
    assert len(list((tmp_path / "kept").iterdir())) == 1
    assert bench.main([]) == 0
    [written] = tmp_path.glob("*.json")
    assert written.name == bench.default_name(bench.machine(), 1)


def test_the_default_name_tells_the_fits_threads_apart(bench):
    two = {"cpu": "Intel(R) Xeon(R) Processor", "gpu": None, "torch_threads": 2}
    # The default run on two cores, and `--threads 2`, whose fits run on 2 threads, not 1.
    assert bench.default_name(two, 1) == "intel-r-xeon-r-processor-2t.json"
    assert bench.default_name(two, 2) == "intel-r-xeon-r-processor-2t-fit2t.json"
    # The committed files keep the names their runs give.
    for path in (BENCH.parent / "results").glob("*t.json"):
        report = json.loads(path.read_text())
        assert bench.default_name(report["machine"],
                                  report["settings"]["torchlr_fit_threads"]) == path.name


def test_threads_reach_the_peak_rss_children(bench, tmp_path, capsys, no_timing, threads_kept):
    out = tmp_path / "r.json"
    assert bench.main(["--sizes", "1Mx100", "--threads", "2", "--out", str(out)]) == 0
    assert [c[-2:] for c in no_timing] == [["--threads", "2"]] * len(bench.TORCHLR)
    assert set(json.loads(out.read_text())["peak_rss_1Mx100"]) == set(bench.TORCHLR)
    # And a child fits under them: the chapter size, trained once in this process.
    capsys.readouterr()
    assert bench.main(["--rss-child", "chapter", "torchlr_scratch", "--threads", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["torch_threads"], record["torchlr_fit_threads"]) == (2, 2)


def _bad_command_lines(bench, tmp_path):
    """Each bad command line, by a piece of the one line that refuses it."""
    not_json = tmp_path / "notes.json"
    not_json.write_text("not JSON\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    graph_steps = str(BENCH.parent / "results" / "nvidia-h100-80gb-hbm3-graph-steps.json")
    return {
        "argument --repeats: must be at least 1, got 0": ["--quick", "--repeats", "0"],
        "argument --repeats: must be at least 1, got -1": ["--quick", "--repeats", "-1"],
        "argument --slow-repeats: must be at least 1, got 0": ["--slow-repeats", "0"],
        "argument --threads: must be at least 1, got -1": ["--quick", "--threads", "-1"],
        "argument --threads: must be at least 1, got 0": ["--quick", "--threads", "0"],
        "argument --threads: must be at most 1024": ["--quick", "--threads", "2000"],
        "cannot read": ["--markdown", str(tmp_path / "missing.json")],
        "is not JSON": ["--markdown", str(not_json)],
        "is not a results file of bench.py": ["--markdown", graph_steps],
        "it is a directory": ["--quick", "--out", str(tmp_path)],
        "a_file is not a directory": ["--quick", "--out", str(a_file / "r.json")],
        "give --quick or --sizes, not both": ["--quick", "--sizes", "1Mx100"],
        "unknown job(s) dataloadr in --skip; choose from read, loop_port": [
            "--quick", "--skip", "dataloadr"],
        "--sizes ',' names no size": ["--sizes", ","],
        "unknown size(s) huge in --sizes": ["--sizes", "chapter,huge"],
        "--skip leaves no job to run": ["--quick", "--skip", ",".join(
            bench.JOBS)],
        # The CUDA-only jobs never run at a CPU size: skipping all the others leaves none.
        "--skip leaves no job to run at chapter": ["--quick", "--skip", ",".join(
            job for job in bench.JOBS if job not in bench.CUDA_ONLY)],
        # Empty, each fell back to the default: the machine's committed full-run file.
        "--out must be a path, got ''": ["--quick", "--out", ""],
        "--out-dir must be a path, got ''": ["--quick", "--out-dir", ""],
        "File name too long": ["--quick", "--out", str(tmp_path / ("a" * 300 + ".json"))],
        "--quick runs 1 repeat, not --repeats 3": ["--quick", "--repeats", "3"],
        "--quick runs 1 repeat, not --repeats 5": ["--quick", "--repeats", "5"],  # the default
    }


def test_bad_command_lines_are_refused_in_one_line_before_any_work(
        bench, tmp_path, monkeypatch, capsys, threads_kept):
    def no_work(*args, **kwargs):
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(bench, "bench_size", no_work)
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path / "results")
    threads = torch.get_num_threads()
    for message, argv in _bad_command_lines(bench, tmp_path).items():
        assert bench.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("bench.py: error: ") and err.count("\n") == 1, err
        assert message in err, (argv, err)
        assert torch.get_num_threads() == threads and bench.FIT_OPTIONS == {}
    assert not (tmp_path / "results").exists()


def test_help_names_the_skippable_jobs_and_the_quick_sizes_rule(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "not with --sizes" in text and "not with --quick" in text
    assert all(job in text for job in bench.JOBS)


def test_gpu_check_says_in_one_line_when_its_python_has_no_torch(tmp_path):
    no_torch = tmp_path / "python"  # this Python without its site-packages: no torch
    no_torch.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S -I "$@"\n')
    no_torch.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "BENCH_ARGS")}
    for py, said in ((no_torch, "torch is not importable by"),
                     (tmp_path / "nowhere", "no Python at")):
        done = subprocess.run(["bash", str(GPU_CHECK)], env={**env, "PY": str(py)},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 3
        assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
        assert said in done.stderr and "PY=" in done.stderr
    assert "(ModuleNotFoundError: No module named 'torch')" in subprocess.run(
        ["bash", str(GPU_CHECK)], env={**env, "PY": str(no_torch)}, capture_output=True,
        text=True, timeout=60).stderr


@pytest.fixture(scope="module")
def bench_stream():
    spec = importlib.util.spec_from_file_location("bench_stream",
                                                  BENCH.parent / "bench_stream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, said", [
    (["--gib", "0"], "argument --gib: must be a number above 0, got 0"),
    (["--gib", "-1"], "argument --gib: must be a number above 0"),
    (["--gib", "nan"], "argument --gib: must be a number above 0"),
    (["--gib", "1e-12"], "holds no row"),
    (["--batch-size", "0"], "argument --batch-size: must be a whole number above 0"),
    (["--lr", "-0.1"], "argument --lr: must be a number above 0"),
    # argparse's own test took "-1e-3" and "-inf" for options ("expected one argument").
    (["--lr", "-1e-3"], "argument --lr: must be a number above 0, got -1e-3"),
    (["--lr", "-inf"], "argument --lr: must be a number above 0, got -inf"),
    (["--threads", "0"], "argument --threads: must be a whole number above 0"),
    (["--threads", "-2"], "argument --threads: must be a whole number above 0"),
    (["--threads", "2000"], "argument --threads: must be at most 1024"),
    (["--gib", "1e300"], "argument --gib: must be at most 1048576, got 1e+300"),
    (["--gib", "100000"], "--gib 100000 needs 100000.00 GiB in "),  # more than any disk here
])
def test_bench_stream_refuses_bad_values_before_generating(bench_stream, monkeypatch, capsys,
                                                            argv, said):
    def no_file(*args):
        raise AssertionError("the file was generated")

    monkeypatch.setattr(bench_stream, "generate", no_file)
    assert bench_stream.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_stream.py: error: ") and err.count("\n") == 1, err
    assert said in err


def test_bench_stream_peak_is_its_training_process_alone(bench_stream, capsys):
    # A larger child waited for before (here 1.3 GiB): RUSAGE_CHILDREN, the largest of all
    # children, would have put the small training run over the 1 GiB limit.
    subprocess.run([sys.executable, "-c", "b = b'x' * (1300 << 20)"], check=True)
    assert bench_stream.main(["--gib", "0.0002"]) == 0
    out = capsys.readouterr().out
    peak = int(re.search(r"peak RSS of the training process: (\d+) MiB", out).group(1))
    assert 100 < peak < 1024  # torch alone is more than 100 MiB


def test_bench_stream_says_what_its_threads_reach(bench_stream, capsys):
    from torchlr.train import MAX_THREADS

    assert bench_stream.MAX_THREADS == MAX_THREADS  # kept apart so torch is not imported
    with pytest.raises(SystemExit):
        bench_stream.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 4.0)", "(default: 4096)", "(default: 0.1)",
                    "(default: unset, torch's choice)"):
        assert default in text
    # A small file, trained for real: --threads sets the process's OMP_NUM_THREADS, while
    # `torchlr train` fits on FitConfig's threads, which the line must name, not --threads.
    assert bench_stream.main(["--gib", "0.0002", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert (f"OMP_NUM_THREADS=2, torchlr.fit's steps on {torchlr.FitConfig().threads} torch "
            "thread") in out
    assert "training threads: 2" not in out


# bench_stream.py's figures come after a file of gigabytes is made and trained on: its
# _main here prints in their place.
STREAM_PRINTS = (f"import sys; sys.path.insert(0, {str(BENCH.parent)!r}); import bench_stream; "
                 f"bench_stream._main = lambda argv: print('figures') or 0; "
                 f"raise SystemExit(bench_stream.main([]))")


@pytest.mark.parametrize("argv", [
    [str(BENCH), "--markdown", str(BENCH.parent / "results" / "amd-epyc-2t.json")],
    ["-c", STREAM_PRINTS],
], ids=["bench", "bench_stream"])
def test_a_reader_gone_ends_the_benchmark_quietly(argv):
    # `bench.py --markdown FILE | head`: head gone before the table is written. The write's
    # BrokenPipeError was a traceback; now the status is 141 (128 + SIGPIPE), with nothing
    # said, as the torchlr command does.
    read, write = os.pipe()
    os.close(read)
    try:
        # Buffered, as stdout into a pipe is unless PYTHONUNBUFFERED (set on some machines)
        # says otherwise: the write then fails at the flush.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        done = subprocess.run([sys.executable, *argv], stdout=write, env=env,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")
