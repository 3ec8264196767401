"""Atomic writes: whole or nothing, the usual modes, links and special files written through."""

import errno
import os
import shlex
import stat
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from torchlr.atomic import write_atomic


def write_text(path, text="new\n"):
    write_atomic(path, lambda f: f.write(text), text=True)


def test_a_symlink_is_written_through(tmp_path):
    real, link = tmp_path / "real.csv", tmp_path / "link.csv"
    real.write_text("old\n")
    link.symlink_to(real)
    write_text(link)
    assert link.is_symlink() and real.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "real.csv"]


def test_a_fifo_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the writer never blocks
    try:
        write_text(fifo)
        replaced = not stat.S_ISFIFO(os.stat(fifo).st_mode)
        if not replaced:
            got.append(os.read(fd, 100))
    finally:
        os.close(fd)
    assert not replaced and got == [b"new\n"]


def test_a_name_near_the_length_limit_still_saves(tmp_path):
    path = tmp_path / ("m" * 250 + ".csv")  # 254 bytes: a longer temporary name would fail
    write_text(path)
    assert path.read_text() == "new\n" and len(list(tmp_path.iterdir())) == 1


def test_a_full_disk_names_the_target_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "out.csv"
    path.write_text("old\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match=r"Cannot write .*out.csv: No space left"):
        write_text(path)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_device_written_in_place_names_the_target(tmp_path):
    # /dev/full is written into, not replaced: its ENOSPC was a bare "[Errno 28] No space
    # left on device", naming neither the flag nor the path.
    with pytest.raises(OSError, match="Cannot write /dev/full: No space left") as info:
        write_atomic("/dev/full", lambda f: f.write(b"x" * 65536))
    assert info.value.errno == errno.ENOSPC
    model = tmp_path / "m.pt"
    run = [sys.executable, "-m", "torchlr"]
    subprocess.run([*run, "train", "--epochs", "1", "--save", str(model), "--no-tensorboard",
                    "--quiet"], check=True, capture_output=True, cwd=tmp_path)
    (tmp_path / "d.csv").write_text("x1,x2\n1,2\n")
    done = subprocess.run([*run, "predict", "--model", str(model), "--data", "d.csv",
                           "--output", "/dev/full"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "torchlr: error: Cannot write /dev/full: No space left on device\n"


def test_an_interrupt_while_filling_leaves_nothing(tmp_path):
    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "x.pt", interrupted)
    assert list(tmp_path.iterdir()) == []


WRITE_STDOUT = ("from torchlr.atomic import write_atomic; "
                "write_atomic('/dev/stdout', lambda f: f.write('new\\n'), text=True)")


def test_dev_stdout_goes_where_the_shell_sent_it(tmp_path):
    # It resolved to a 'pipe:[N]' name that does not exist, or to the file of a `>> log`
    # redirection, which was then replaced: its earlier lines were lost.
    log = tmp_path / "log.txt"
    log.write_text("previous\n")
    with open(log, "a") as appended:
        subprocess.run([sys.executable, "-c", WRITE_STDOUT], stdout=appended, check=True,
                       cwd=REPO_ROOT, timeout=60)
    assert log.read_text() == "previous\nnew\n"
    piped = subprocess.run([sys.executable, "-c", WRITE_STDOUT], capture_output=True,
                           text=True, check=True, cwd=REPO_ROOT, timeout=60)
    assert piped.stdout == "new\n"


def test_dev_stdout_redirected_with_gt_keeps_its_place_among_other_writes(tmp_path):
    # A new open of /dev/stdout on a `>` file has an offset of its own: the shell's next
    # line, written at the old offset, overwrote the start of what was written.
    out = tmp_path / "out.txt"
    script = (f"{{ echo l1; echo l2; {shlex.quote(sys.executable)} -c "
              f"{shlex.quote(WRITE_STDOUT)}; echo after; }} > {shlex.quote(str(out))}")
    subprocess.run(["bash", "-c", script], check=True, cwd=REPO_ROOT, timeout=60)
    assert out.read_text() == "l1\nl2\nnew\nafter\n"
    # And after what Python itself printed but still buffered, before what it prints next.
    code = f"print('before'); {WRITE_STDOUT}; print('after')"
    with open(out, "w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, cwd=REPO_ROOT,
                       timeout=60)
    assert out.read_text() == "before\nnew\nafter\n"


def test_own_descriptors_are_written_through_and_others_opened(tmp_path):
    from torchlr.atomic import own_descriptor

    with open(tmp_path / "a.txt", "w") as f:
        fd = f.fileno()
        f.write("x")
        f.flush()
        for name in (f"/dev/fd/{fd}", f"/proc/self/fd/{fd}", f"/proc/{os.getpid()}/fd/{fd}"):
            assert own_descriptor(name) == fd
        write_atomic(f"/dev/fd/{fd}", lambda g: g.write(b"yz"))
        assert os.lseek(fd, 0, os.SEEK_CUR) == 3  # our descriptor moved past what was written
    assert (tmp_path / "a.txt").read_text() == "xyz"
    assert own_descriptor("/dev/stdout") == 1 and own_descriptor("/dev/stderr") == 2
    assert own_descriptor(f"/proc/{os.getpid() + 1}/fd/1") is None  # another process's
    assert own_descriptor("/dev/fd/999") is None  # not open here
    assert own_descriptor(str(tmp_path / "a.txt")) is None


def test_a_regular_file_under_dev_is_replaced_not_appended(tmp_path):
    from torchlr.atomic import writes_in_place

    assert writes_in_place("/dev/stdout") and writes_in_place("/dev/fd/1")
    assert writes_in_place("/proc/self/fd/1") and writes_in_place("/dev/null")
    shm = "/dev/shm"
    if not os.path.isdir(shm) or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    path = os.path.join(shm, f"torchlr-test-{os.getpid()}.csv")
    try:
        write_text(path, "first\n")
        write_text(path, "second\n")
        assert not writes_in_place(path)
        with open(path) as f:
            assert f.read() == "second\n"
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_a_device_or_fifo_path_is_checked_as_itself(tmp_path):
    # Written in place, so its own permission decides, whatever its folder takes.
    from torchlr.validation import check_writable_file

    assert check_writable_file("output", "/dev/null") == "/dev/null"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert check_writable_file("output", fifo) == str(fifo)


def test_missing_folders_are_made(tmp_path):
    path = tmp_path / "new" / "deeper" / "out.csv"
    write_text(path)
    assert path.read_text() == "new\n" and os.listdir(path.parent) == ["out.csv"]


def test_a_folder_that_cannot_be_made_names_the_target(tmp_path):
    (tmp_path / "afile").write_text("")  # a file where a folder would have to be
    with pytest.raises(OSError, match=r"Cannot write .*afile/out\.csv: "):
        write_text(tmp_path / "afile" / "out.csv")
    assert os.listdir(tmp_path) == ["afile"]


def test_every_byte_reaches_the_file_before_it_is_synced(tmp_path, monkeypatch):
    # fsync writes what the file holds, not what Python still buffers: synced before the
    # flush, a checkpoint renamed into place could be short after a power cut.
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(tmp_path / "f.bin", lambda f: f.write(b"x" * 100))
    write_atomic(tmp_path / "f.txt", lambda f: f.write("y" * 50), text=True)
    assert synced == [100, 50]


# Tests below kill mutants that a mutation run found alive in atomic.py.

def test_rewriting_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old\n")
    os.chmod(path, 0o600)
    old = os.umask(0o022)
    try:
        write_atomic(path, lambda f: f.write("new\n"), text=True)
    finally:
        os.umask(old)
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_dev_stdout_comes_after_what_python_buffered_even_when_buffered(tmp_path):
    # With PYTHONUNBUFFERED set (as some shells and CI do), nothing is buffered to test.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    code = ("from torchlr.atomic import write_atomic; print('before'); "
            "write_atomic('/dev/stdout', lambda f: f.write('new\\n'), text=True); "
            "print('after')")
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, cwd=REPO_ROOT,
                       env=env, timeout=60)
    assert out.read_text() == "before\nnew\nafter\n"


def test_another_process_descriptor_is_appended_to_not_truncated(tmp_path):
    # /proc/<shell>/fd/1 opened for a `>> log`: opened with "w", the log lost its start.
    out = tmp_path / "log.txt"
    out.write_text("previous\n")
    code = ("import sys; from torchlr.atomic import write_atomic; "
            "write_atomic(sys.argv[1], lambda f: f.write('new\\n'), text=True)")
    script = (f"{{ echo l1; {shlex.quote(sys.executable)} -c {shlex.quote(code)} "
              f"/proc/$$/fd/1; echo after; }} >> {shlex.quote(str(out))}")
    subprocess.run(["bash", "-c", script], check=True, cwd=REPO_ROOT, timeout=60)
    assert out.read_text() == "previous\nl1\nnew\nafter\n"
