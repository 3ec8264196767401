"""The command's entry point, torchlr.launch: a Ctrl-C while torch is imported ends in one line.

`import torch` takes about a second, before torchlr.cli's handler exists: a Ctrl-C in that
second printed a page of traceback. The children below are interrupted inside that import
on purpose: a sitecustomize module puts a finder ahead of the others that acts when `torch`
is first looked up.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
from conftest import REPO_ROOT

import torchlr

TRAIN = ["train", "--epochs", "1", "--no-tensorboard"]
SCRIPT = Path(sys.executable).parent / "torchlr"  # the installed console script

# Each finder's find_spec acts on the first look-up of "torch", then lets the import go on.
INTERRUPTIONS = {
    # KeyboardInterrupt raised inside the import.
    "raised": "raise KeyboardInterrupt",
    # A real SIGINT, handled by whatever handler the process has then.
    "signal": "os.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)  # raised here at the latest",
    # Caught on the way, as torch's C code clears the one raised inside numpy's import: torch
    # goes on loading, and the command must still stop.
    "swallowed": """\
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    pass""",
    # Raised in a weakref callback, where Python only prints it ("Exception ignored in").
    "unraisable": """\
class Thing:
    pass

def callback(ref):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)

thing = Thing()
self.refs.append(weakref.ref(thing, callback))
del thing""",
    # Raised inside code run from a string, as dataclasses run theirs: CPython then killed
    # the process with SIGINT at the end of `python -m`, after its line and status 130.
    "in exec": 'exec("os.kill(os.getpid(), signal.SIGINT)\\ntime.sleep(5)")',
    # SIGTERM, as `kill` or a job scheduler sends it: the system's handler ended the process
    # without a word.
    "sigterm": "os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(5)",
    "sigterm unraisable": """\
def callback(ref):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)

self.thing = type("Thing", (), {})()
self.refs.append(weakref.ref(self.thing, callback))
del self.thing""",
    # Not an interrupt: the import's own error, which keeps its traceback.
    "failed": "raise ImportError('no torch here')",
}

SITECUSTOMIZE = """\
import os
import signal
import sys
import time
import weakref

# A suite started in the background may ignore SIGINT, and its children with it.
signal.signal(signal.SIGINT, signal.default_int_handler)


class AtTorch:
    def __init__(self):
        self.done, self.refs = False, []

    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not self.done:
            self.done = True
{body}
        return None


sys.meta_path.insert(0, AtTorch())
"""


def _child_env(tmp_path: Path, interruption: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    body = textwrap.indent(INTERRUPTIONS[interruption], " " * 12)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(body=body))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO_ROOT)])
    return env


def _run(args: list[str], tmp_path: Path, env: dict[str, str] | None = None):
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_entry_point_imports_no_torch(tmp_path):
    done = _run([sys.executable, "-c",
                 "import torchlr.launch, sys; print('torch' in sys.modules)"], tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "False\n", "")


@pytest.mark.parametrize("entry", ["python -m torchlr", "console script"])
@pytest.mark.parametrize("interruption", ["raised", "signal", "swallowed", "unraisable",
                                          "in exec"])
def test_ctrl_c_while_torch_is_imported_ends_in_one_line(tmp_path, entry, interruption):
    if entry == "console script":
        if not SCRIPT.exists():
            pytest.skip(f"no installed console script at {SCRIPT}")
        assert "torchlr.launch" in SCRIPT.read_text(), \
            f"{SCRIPT} predates torchlr.launch: run `pip install -e .` again"
    args = [sys.executable, "-m", "torchlr"] if entry == "python -m torchlr" else [str(SCRIPT)]
    done = _run(args + TRAIN, tmp_path, _child_env(tmp_path, interruption))
    assert (done.returncode, done.stderr, done.stdout) == (130, "torchlr: interrupted\n", "")


@pytest.mark.parametrize("interruption", ["sigterm", "sigterm unraisable"])
def test_sigterm_while_torch_is_imported_ends_in_one_line(tmp_path, interruption):
    done = _run([sys.executable, "-m", "torchlr", *TRAIN], tmp_path,
                _child_env(tmp_path, interruption))
    assert (done.returncode, done.stderr, done.stdout) == (143, "torchlr: terminated\n", "")


def test_sigterm_during_the_import_is_the_systems_under_torchrun(tmp_path):
    # torchrun stops its workers with SIGTERM, and torchlr.cli leaves it to the system there.
    env = {**_child_env(tmp_path, "sigterm"), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0"}
    done = _run([sys.executable, "-m", "torchlr", *TRAIN], tmp_path, env)
    assert (done.returncode, done.stderr, done.stdout) == (-signal.SIGTERM, "", "")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_after_the_interrupted_line_changes_nothing(tmp_path, delay, second):
    # Python's shutdown puts the system's handlers back, and torch's (here imported whole,
    # the first Ctrl-C having been swallowed inside it) takes a while more: a second Ctrl-C
    # then killed the process by its signal.
    process = subprocess.Popen([sys.executable, "-m", "torchlr", *TRAIN], cwd=tmp_path,
                               env=_child_env(tmp_path, "swallowed"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    time.sleep(delay)
    process.send_signal(second)
    out, err = process.communicate(timeout=120)
    assert (process.returncode, line + err, out) == (130, "torchlr: interrupted\n", "")


def test_interrupted_ignores_both_signals_for_the_way_out(monkeypatch, capsys):
    from torchlr import launch
    monkeypatch.setattr(launch, "_said", [])
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, lambda *args: None)  # a handler of Python's, as the CLI's
    try:
        with pytest.raises(SystemExit) as info:
            launch._interrupted(signal.SIGTERM)
        assert info.value.code == 143
        assert capsys.readouterr().err == "torchlr: terminated\n"
        for signum in before:
            assert signal.getsignal(signum) is signal.SIG_IGN
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_ctrl_c_while_torch_is_imported_with_stderr_closed_says_nothing(tmp_path):
    code = ("import sys; sys.stderr = None; sys.argv = ['torchlr', *sys.argv[1:]]\n"
            "import torchlr.launch\ntorchlr.launch.console()")
    done = _run([sys.executable, "-c", code, *TRAIN], tmp_path, _child_env(tmp_path, "raised"))
    assert (done.returncode, done.stderr, done.stdout) == (130, "", "")


def test_an_import_that_fails_by_itself_keeps_its_traceback(tmp_path):
    done = _run([sys.executable, "-m", "torchlr", *TRAIN], tmp_path,
                _child_env(tmp_path, "failed"))
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert done.stderr.rstrip().endswith("ImportError: no torch here")


def test_python_m_torchlr_help_still_works(tmp_path):
    done = _run([sys.executable, "-m", "torchlr", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: torchlr")


def test_the_console_script_is_the_launchers():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["torchlr"] == "torchlr.launch:console"


def test_public_names_are_loaded_on_first_use(tmp_path):
    code = textwrap.dedent("""\
        import sys, types
        import torchlr
        assert not any(m == "torch" or m.startswith("torchlr.") for m in sys.modules)
        assert torchlr.__version__ == "0.1.0"
        from torchlr import fit, scratch, concise, analytic
        assert fit is torchlr.fit is torchlr.train.fit
        assert torchlr.data_iter is torchlr.data.data_iter
        assert all(isinstance(m, types.ModuleType) for m in (scratch, concise, analytic))
        assert torchlr.scratch is sys.modules["torchlr.scratch"]
        for name in torchlr.__all__:
            getattr(torchlr, name)
        star = {}
        exec("from torchlr import *", star)
        assert set(torchlr.__all__) <= set(star) and set(torchlr.__all__) <= set(dir(torchlr))
        torchlr.validation, torchlr.preprocess, torchlr.run  # any submodule, as before
        try:
            torchlr.no_such_name
        except AttributeError as exc:
            assert str(exc) == "module 'torchlr' has no attribute 'no_such_name'"
        else:
            raise AssertionError("torchlr.no_such_name resolved")
        assert not hasattr(torchlr, "__wrapped__")
        print("ok")
        """)
    done = _run([sys.executable, "-c", code], tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_public_names_resolve_here_too():
    from torchlr import analytic, concise, data_iter, fit, scratch  # noqa: F401
    assert torchlr.data_iter is torchlr.data.data_iter
    assert isinstance(torchlr.scratch, types.ModuleType)
    assert all(hasattr(torchlr, name) for name in torchlr.__all__)


def test_type_checkers_see_each_public_name_where_it_is_loaded_from():
    # The `if TYPE_CHECKING:` imports are what editors read; __getattr__'s table is what
    # runs: each name in __all__ is in both, from the same module.
    tree = ast.parse((REPO_ROOT / "torchlr" / "__init__.py").read_text())
    block = next(node for node in tree.body
                 if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    static = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            module = node.module.removeprefix("torchlr").lstrip(".")
            static[alias.asname or alias.name] = module or alias.name
    assert set(static) == set(torchlr.__all__) - {"__version__"}
    assert {name: module for name, module in static.items() if module != name} \
        == torchlr._DEFINED_IN


def test_interrupted_is_said_only_once(monkeypatch, capsys):
    from torchlr import launch
    monkeypatch.setattr(launch, "_said", [])
    launch._say_interrupted()
    launch._say_interrupted()
    assert capsys.readouterr().err == "torchlr: interrupted\n"


@pytest.mark.parametrize("env, tag", [
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, "[rank 3] "),  # global, not local
    ({"RANK": "3"}, ""),  # not all of torchrun's variables: not under torchrun
])
def test_interrupted_line_tags_the_global_rank_under_torchrun(monkeypatch, capsys, env, tag):
    from torchlr import launch, terminal
    for name in terminal.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(launch, "_said", [])
    launch._say_interrupted()
    assert capsys.readouterr().err == f"torchlr: {tag}interrupted\n"


def test_a_submodule_whose_own_import_fails_is_not_called_missing(tmp_path, monkeypatch):
    # Its missing dependency is named, not hidden behind "has no attribute".
    (tmp_path / "zz_broken_dep.py").write_text("import zz_no_such_module_here\n")
    monkeypatch.setattr(torchlr, "__path__", [*torchlr.__path__, str(tmp_path)])
    try:
        with pytest.raises(ModuleNotFoundError) as info:
            getattr(torchlr, "zz_broken_dep")  # noqa: B009  (the lazy attribute lookup)
        assert info.value.name == "zz_no_such_module_here"
    finally:
        sys.modules.pop("torchlr.zz_broken_dep", None)


def test_dir_lists_public_names_before_they_are_loaded():
    code = ("import torchlr, sys; names = dir(torchlr); "
            "assert 'fit' in names and 'load_data' in names, names; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120)
