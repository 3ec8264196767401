"""Ctrl-C and SIGTERM land between writes, never inside one: nothing logged or saved is lost."""

import contextlib
import os
import queue
import signal
import threading

import pytest
import torch
from conftest import chapter_data
from tensorboard.plugins.hparams import api_pb2
from test_tensorboard import hparams_data, read_run, scalars

import torchlr
import torchlr.run
from torchlr.cli import main
from torchlr.interrupts import Terminated, held, raise_interrupt, signal_again


@pytest.fixture(autouse=True)
def _python_handles_sigint():
    # A suite started in the background may ignore SIGINT; these tests need Python's handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_inside_held_is_raised_after_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_with_the_clis_handler_is_held_too_and_nested_blocks_wait_for_the_outer():
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        done = []
        with pytest.raises(Terminated):
            with held():
                with held():
                    os.kill(os.getpid(), signal.SIGTERM)
                    done.append("inner")
                done.append("outer")
        assert done == ["inner", "outer"]
        assert signal.getsignal(signal.SIGTERM) is raise_interrupt
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_held_in_another_thread_runs_the_block_as_it_is():
    ran = []
    thread = threading.Thread(target=lambda: ran.append(held().__enter__() is None))
    thread.start()
    thread.join()
    assert ran == [True]


@pytest.mark.timeout(60)
def test_ctrl_c_while_tensorboard_queues_an_event_keeps_it_and_ends_the_run(tmp_path,
                                                                           monkeypatch):
    # Raised inside the writer's queue.put, Ctrl-C lost the event; raised after put took its
    # lock, it left the lock taken and closing the run waited forever.
    real_put, puts = queue.Queue.put, []

    def put(self, item, *args, **kwargs):
        puts.append(item)
        if len(puts) == 8:  # mid-epoch: a loss/train point
            os.kill(os.getpid(), signal.SIGINT)
        return real_put(self, item, *args, **kwargs)

    monkeypatch.setattr(queue.Queue, "put", put)
    X, y = chapter_data()
    with pytest.raises(KeyboardInterrupt) as info:
        torchlr.fit(X, y, device="cpu", logdir=tmp_path)
    monkeypatch.undo()
    run_dir = info.value.run_dir
    (events,) = [os.path.join(run_dir, name) for name in os.listdir(run_dir)]
    with open(events, "rb") as f:
        assert puts[7] in f.read()  # the event being queued when Ctrl-C came was written
    acc = read_run(run_dir)
    steps, _ = scalars(acc, "loss/train")
    assert steps and steps == list(range(50, 50 * len(steps) + 1, 50))
    end = hparams_data(acc)["_hparams_/session_end_info"].session_end_info
    assert end.status == api_pb2.Status.Value("STATUS_FAILURE")


def test_a_ctrl_c_while_an_epoch_is_logged_leaves_its_validation_with_it(tmp_path,
                                                                        monkeypatch):
    # loss/epoch and loss/val were two writes: a Ctrl-C held back by the first acted
    # before the second, and the run showed epoch 2's training loss beside epoch 1's
    # validation numbers, while the checkpoint held epoch 1.
    from torch.utils.tensorboard import SummaryWriter

    real_add_scalar = SummaryWriter.add_scalar

    def add_scalar_with_ctrl_c(self, tag, value, step, *args, **kwargs):
        if (tag, step) == ("loss/epoch", 2):
            os.kill(os.getpid(), signal.SIGINT)  # inside the epoch's write: held back
        return real_add_scalar(self, tag, value, step, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar_with_ctrl_c)
    X, y = chapter_data()
    with pytest.raises(KeyboardInterrupt) as info:
        torchlr.fit(X, y, num_epochs=4, val_fraction=0.2, device="cpu", logdir=tmp_path,
                    save=tmp_path / "c.pt")
    acc = read_run(info.value.run_dir)
    for tag in ("loss/epoch", "loss/val", "r2/val"):
        assert scalars(acc, tag)[0] == [1, 2], tag
    # Held back until the epoch was saved too: the checkpoint holds what TensorBoard shows,
    # so the resumed run logs epoch 2 nowhere again (it did, when the save came after).
    assert (info.value.saved_epoch, torch.load(tmp_path / "c.pt", weights_only=True)["epoch"]
            ) == (2, 2)
    monkeypatch.undo()
    resumed = torchlr.fit(X, y, num_epochs=4, val_fraction=0.2, device="cpu",
                          logdir=tmp_path, resume=tmp_path / "c.pt")
    for tag in ("loss/epoch", "loss/val", "r2/val"):
        assert scalars(read_run(resumed.run_dir), tag)[0] == [3, 4], tag


def ctrl_c_after_saving(monkeypatch, epoch):
    """Make the user press Ctrl-C the moment the checkpoint of `epoch` is written."""
    real_save = torchlr.run.save_checkpoint

    def save_then_ctrl_c(path, state):
        real_save(path, state)
        if state["epoch"] == epoch:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(torchlr.run, "save_checkpoint", save_then_ctrl_c)


def test_an_interrupt_right_after_a_save_leaves_nothing_unlogged(tmp_path, monkeypatch):
    # The checkpoint was written before the epoch was logged: Ctrl-C between the two, and
    # the resumed run (from the epoch after) never logged that epoch anywhere.
    ctrl_c_after_saving(monkeypatch, epoch=2)
    X, y = chapter_data()
    options = dict(num_epochs=4, device="cpu", logdir=tmp_path / "tb", save=tmp_path / "c.pt",
                   true_w=(2.0, -3.4), true_b=4.2)
    with pytest.raises(KeyboardInterrupt) as info:
        torchlr.fit(X, y, **options)
    assert (info.value.saved_to, info.value.saved_epoch) == (str(tmp_path / "c.pt"), 2)
    monkeypatch.undo()
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 2
    resumed = torchlr.fit(X, y, resume=tmp_path / "c.pt", **options)
    straight = torchlr.fit(X, y, **{**options, "logdir": None, "save": None})
    logged = {}
    for run_dir in (info.value.run_dir, resumed.run_dir):
        for tag in ("loss/epoch", "error/w"):
            steps, values = scalars(read_run(run_dir), tag)
            logged.setdefault(tag, []).extend(zip(steps, values))
    assert [step for step, _ in logged["loss/epoch"]] == [1, 2, 3, 4]
    assert [step for step, _ in logged["error/w"]] == [1, 2, 3, 4]
    assert [value for _, value in logged["loss/epoch"]] == straight.losses


def test_the_cli_says_which_epoch_the_checkpoint_holds(tmp_path, monkeypatch, capsys):
    ctrl_c_after_saving(monkeypatch, epoch=2)
    save = tmp_path / "c.pt"
    assert main(["train", "--epochs", "4", "--save", str(save), "--logdir",
                 str(tmp_path / "tb")]) == 130
    out, err = capsys.readouterr()
    (run_dir,) = os.listdir(tmp_path / "tb")
    assert err.splitlines()[-1] == (f"torchlr: interrupted; {save} holds epoch 2; the "
                                    f"TensorBoard run so far is in {tmp_path / 'tb' / run_dir}")
    # Logged and saved before it was printed: the second epoch's line never came.
    assert [line.split(",")[0] for line in out.splitlines()] == ["epoch 1"]


@pytest.mark.parametrize("where", ["early stopping's restore", "the fit's figure",
                                   "closing the run", "the results' lines", "--plot"])
def test_a_ctrl_c_after_the_last_epoch_names_the_checkpoint(tmp_path, monkeypatch, capsys,
                                                             where):
    # Drawing plot/fit takes a second (matplotlib's import): a Ctrl-C then said only where
    # the TensorBoard run was, though the checkpoint held every epoch. So did one while the
    # best epoch was put back, or while the run's files were closed.
    import torchlr.cli
    import torchlr.plots
    import torchlr.tensorboard

    owner, name = {"early stopping's restore": (torchlr.run.RunState, "finish"),
                   "the fit's figure": (torchlr.tensorboard.RunWriter, "finish"),
                   "closing the run": (torchlr.tensorboard.RunWriter, "_end"),
                   "the results' lines": (torchlr.cli, "_report"),
                   "--plot": (torchlr.plots, "save_figure")}[where]
    real = getattr(owner, name)

    def then_ctrl_c(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(owner, name, then_ctrl_c)
    save, plot = tmp_path / "c.pt", tmp_path / "loss.png"
    assert main(["train", "--epochs", "3", "--save", str(save), "--logdir",
                 str(tmp_path / "tb"), "--plot", str(plot), "--val-fraction", "0.2",
                 "--early-stopping", "5"]) == 130
    (run_dir,) = os.listdir(tmp_path / "tb")
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"torchlr: interrupted; {save} holds epoch 3; the TensorBoard run so far is in "
        f"{tmp_path / 'tb' / run_dir}")
    assert torch.load(save, weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("wrapper", ["class", "import"])
@pytest.mark.parametrize("exc, code, word", [(KeyboardInterrupt, 130, "interrupted"),
                                             (Terminated, 143, "terminated")])
def test_a_ctrl_c_that_python_wraps_is_said_as_one(tmp_path, monkeypatch, capsys, exc, code,
                                                   word, wrapper):
    # Python 3.11 wraps what a descriptor's __set_name__ raises, as a class is made, in a
    # RuntimeError, and what a compiled module's initialization raises in an ImportError: a
    # Ctrl-C while matplotlib's import made its classes or its ft2font printed that error's
    # traceback and ended with status 1.
    import torchlr.plots

    class Descriptor:
        def __set_name__(self, owner, name):
            raise exc  # where the signal's handler ran

    def broken_first(*args, **kwargs):
        if wrapper == "class":
            type("Made", (), {"field": Descriptor()})
        raise ImportError("initialization failed") from exc()  # as a compiled module's is

    monkeypatch.setattr(torchlr.plots, "save_figure", broken_first)
    save = tmp_path / "c.pt"
    assert main(["train", "--epochs", "2", "--save", str(save), "--no-tensorboard",
                 "--plot", str(tmp_path / "loss.png")]) == code
    assert capsys.readouterr().err.splitlines()[-1] == f"torchlr: {word}; {save} holds epoch 2"


@pytest.mark.parametrize("outer", [False, True])
def test_unbroken_holds_back_a_second_ctrl_c_too(outer):
    # A compiled module's import broken by a second Ctrl-C inside held() was left half made,
    # and the interpreter's end crashed on it: inside unbroken() every signal waits.
    from torchlr.interrupts import unbroken

    reached = []
    with pytest.raises(KeyboardInterrupt):
        with held() if outer else contextlib.nullcontext():
            with unbroken():
                for _ in range(3):
                    signal.raise_signal(signal.SIGINT)
                reached.append("the block's end")
            reached.append("after unbroken")
            if outer:  # held() again: a second press acts at once
                signal.raise_signal(signal.SIGINT)
                reached.append("after a press in held() alone")
    assert reached == ["the block's end", "after unbroken"][:2 if outer else 1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_bug_while_a_ctrl_c_is_handled_keeps_its_traceback(monkeypatch):
    import torchlr.cli

    def fails_in_cleanup(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("a bug in the cleanup")  # noqa: B904 (its context, not its cause)

    monkeypatch.setattr(torchlr.cli, "_report", fails_in_cleanup)
    with pytest.raises(RuntimeError, match="a bug in the cleanup"):
        main(["train", "--epochs", "1", "--no-tensorboard"])


def test_console_ignores_signals_once_main_is_done(monkeypatch):
    import torchlr.cli as cli

    monkeypatch.setattr(cli, "main", lambda: 130)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as info:
            cli.console()
        assert info.value.code == 130
        for signum in (signal.SIGINT, signal.SIGTERM):
            assert signal.getsignal(signum) is signal.SIG_IGN
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("ignored", [signal.SIGINT, signal.SIGTERM])
def test_console_leaves_a_signal_the_parent_ignored_ignored(monkeypatch, ignored):
    # nohup ignores SIGINT, a job manager may ignore SIGTERM: the run must not stop on it.
    # launch left an ignored SIGTERM so while torch was imported, console then caught it.
    import torchlr.cli as cli

    during = {}

    def main():
        during.update({s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)})
        return 0

    monkeypatch.setattr(cli, "main", main)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(ignored, signal.SIG_IGN)
        with pytest.raises(SystemExit):
            cli.console()
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    other = signal.SIGTERM if ignored == signal.SIGINT else signal.SIGINT
    assert during == {ignored: signal.SIG_IGN, other: raise_interrupt}


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
def test_a_signal_raised_in_a_weakref_callback_still_ends_the_run(tmp_path, monkeypatch,
                                                                   capsys, signum, code, word):
    # A signal landing while the garbage collector ran a weakref callback raised there, where
    # Python only printed "Exception ignored in ..." and went on: a run interrupted after
    # its last epoch line ended as if it had not been, with status 0.
    import gc
    import sys
    import time
    import weakref

    import torchlr.cli as cli

    class Thing:
        pass

    def callback(ref):
        os.kill(os.getpid(), signum)  # the handler raises here, inside the collector

    real_finish = torchlr.run.RunState.finish
    reached = []

    def finish_then_collect(self, model):
        thing = Thing()
        self._ref = weakref.ref(thing, callback)
        del thing
        gc.collect()
        for _ in range(1000):  # what is left to do: the signal, sent again, lands here
            time.sleep(0.01)  # (not in one long sleep: it may come before it, when the
            # other thread takes the lock on the interpreter, and Python acts on a signal
            # only between two lines)
        reached.append("after the collection")
        return real_finish(self, model)

    monkeypatch.setattr(torchlr.run.RunState, "finish", finish_then_collect)
    save = tmp_path / "c.pt"
    monkeypatch.setattr(sys, "argv", ["torchlr", "train", "--epochs", "2", "--save", str(save),
                                      "--no-tensorboard"])
    hook = sys.unraisablehook
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as info:
            cli.console()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    assert info.value.code == code
    assert sys.unraisablehook is hook  # put back
    assert reached == []  # ended there, as a signal outside the collector does
    assert capsys.readouterr().err == f"torchlr: {word}; {save} holds epoch 2\n"


@pytest.mark.parametrize("caught_by", ["main", "console"])
def test_a_ctrl_c_out_of_an_exec_still_ends_with_130(tmp_path, caught_by):
    # CPython notes a KeyboardInterrupt that leaves an exec() of a string (dataclasses run
    # theirs so) and kills a `python -m` process with SIGINT at its end while the note
    # stands: after the command's line and status 130, a death by signal (-2).
    import subprocess
    import sys

    (tmp_path / "run_cli.py").write_text(f"""\
import os, signal, time
import torchlr.cli as cli

def main():
    try:
        exec("os.kill(os.getpid(), signal.SIGINT)\\ntime.sleep(5)")
    except KeyboardInterrupt:
        if {caught_by == "main"}:
            cli.say("torchlr: interrupted")  # as main says it, and returns 130
            return 130
        raise

cli.main = main
cli.console()
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run([sys.executable, "-m", "run_cli"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (130, "torchlr: interrupted\n")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("first", ["SIGINT", "SIGTERM"])
def test_a_ctrl_c_and_a_sigterm_due_in_one_collection_still_end_the_run(tmp_path, first):
    # Both signals come while the collector runs C code; the first handler Python runs
    # raises in a weakref callback (printed only), the second as sys.unraisablehook starts
    # (printed only, too): the run went on to its end and status 0.
    import subprocess
    import sys

    second = "SIGTERM" if first == "SIGINT" else "SIGINT"
    (tmp_path / "run_cli.py").write_text(f"""\
import signal, threading, time, weakref
import torchlr.cli as cli

BOTH = {{signal.SIGINT, signal.SIGTERM}}

class Thing:
    pass

def callback(ref):
    # Both held back in this thread, then let through at once. To this thread: one sent to
    # the process could go to another of its threads (torch's), which does not hold it back.
    signal.pthread_sigmask(signal.SIG_BLOCK, BOTH)
    signal.pthread_kill(threading.get_ident(), signal.{first})
    signal.pthread_kill(threading.get_ident(), signal.{second})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BOTH)

def main():
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing  # the callback runs, as the collector would run it
    for _ in range(1000):
        time.sleep(0.01)
    print("ran on to the end")
    return 0

cli.main = main
cli.console()
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run([sys.executable, "-m", "run_cli"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=100)
    # Python runs due handlers in signal-number order: SIGINT's raises in the callback and
    # SIGTERM's in the hook; both are sent again and the last acted on says how it ended.
    assert (done.returncode, done.stdout) in [(130, ""), (143, "")], done
    assert done.stderr in ("torchlr: interrupted\n", "torchlr: terminated\n"), done.stderr


def test_other_unraisable_errors_are_shown_as_before(monkeypatch):

    shown = []
    signal_again(shown.append, unraisable := type("U", (), {"exc_type": OSError})())
    assert shown == [unraisable]


@pytest.mark.parametrize("exc, code, word", [(KeyboardInterrupt, 130, "interrupted"),
                                             (Terminated, 143, "terminated")])
def test_a_signal_before_mains_own_handling_is_said_by_console(monkeypatch, capsys, exc, code,
                                                                word):
    # One that comes while main builds its parser, before its try: console says it.
    import torchlr.cli as cli

    def main():
        raise exc

    monkeypatch.setattr(cli, "main", main)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as info:
            cli.console()
        assert info.value.code == code
        assert capsys.readouterr().err == f"torchlr: {word}\n"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("signum, delay, usage_error", [
    (signal.SIGINT, 0.0, False), (signal.SIGINT, 0.05, False), (signal.SIGTERM, 0.2, False),
    (signal.SIGTERM, 0.05, True),  # main ended by argparse's SystemExit
])
def test_a_signal_after_the_last_line_leaves_the_status_as_it_was(tmp_path, signum, delay,
                                                                  usage_error):
    # Python's shutdown resets handlers written in Python to the system's default, and
    # torch's takes about half a second more: a Ctrl-C or SIGTERM 50 ms after a finished
    # run's last line killed the process (status 130 or 143), and one at once could print
    # a traceback. Only a real process shows it.
    import subprocess
    import sys
    import time

    argv = ["--lr", "abc"] if usage_error else ["--epochs", "1", "--no-tensorboard"]
    process = subprocess.Popen([sys.executable, "-m", "torchlr", "train", *argv],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    stream, last = ((process.stderr, "torchlr: error:") if usage_error else
                    (process.stdout, "Error in estimating b"))
    lines = []
    while not lines or not lines[-1].startswith(last):  # its last line
        line = stream.readline()
        assert line, lines
        lines.append(line)
    time.sleep(delay)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert (process.returncode, out, err) == ((2, "", "") if usage_error else (0, "", ""))


@pytest.mark.parametrize("depth", [1, 2])  # 2: a held() block inside another
def test_a_second_ctrl_c_inside_held_acts_at_once_and_handlers_come_back(depth):
    # A write that hangs (a FIFO nobody reads, a stalled network file system) must still
    # stop: the first Ctrl-C waits for the block, the second does not.
    reached = []
    with pytest.raises(KeyboardInterrupt), contextlib.ExitStack() as blocks:
        for _ in range(depth):
            blocks.enter_context(held())
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after the first")
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after the second")
    assert reached == ["after the first"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupt_while_the_block_raises_is_not_dropped():
    with pytest.raises(KeyboardInterrupt) as info:
        with held():
            os.kill(os.getpid(), signal.SIGINT)
            raise OSError("disk full")
    assert isinstance(info.value.__context__, OSError)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_held_acts_on_the_first_signal_that_came():
    import time
    old = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            with held():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        assert type(info.value) is Terminated
    finally:
        signal.signal(signal.SIGTERM, old)


def test_held_leaves_an_ignored_sigint_ignored():
    # Under nohup: a handler of held()'s own would call SIG_IGN on a Ctrl-C, a TypeError in
    # the middle of a checkpoint's write.
    import time
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with held():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)
