"""One run per output folder: a second train.py on a folder in use refuses in one line."""
import errno
import fcntl
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

from machinery import config, runlock
from conftest import ROOT, train_here
from test_ddp import torchrun


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """--smoke's flags on 640 CIFAR-10-format images (10 steps an epoch): a run that takes
    a few seconds, to be held, killed and locked out."""
    from machinery import data
    root = tmp_path_factory.mktemp("lock-data")
    data.write_synthetic_dataset(str(root), "cifar10", n_train=640, n_test=64, seed=6)
    return ["--smoke", "--dataset", "cifar10", "--data-dir", str(root), "--gradcam-images", "0"]


def _start(*args, stderr):
    """train.py in the background; its stdout (the epoch lines) is read as it comes."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)


def _wait_for(proc, text, path, timeout=120):
    """Read proc's stdout until a line holds `text`, then wait for `path` to exist."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if text in line:
            break
        assert time.monotonic() < deadline, f"no '{text}' in time"
    else:
        pytest.fail(f"the run ended before '{text}' (exit {proc.wait()})")
    while not os.path.exists(path):
        assert time.monotonic() < deadline and proc.poll() is None, f"no {path}"
        time.sleep(0.05)


def _refusal(out_dir, pid):
    return re.compile(rf"error: {re.escape(str(out_dir))} is in use by another run \(pid {pid} "
                      rf"on host {re.escape(socket.gethostname())}, started "
                      rf"\d{{4}}-\d\d-\d\d \d\d:\d\d\); wait for it, stop it, or use another "
                      rf"--out-dir")


@pytest.mark.slow
@pytest.mark.fresh_python  # (the lock names the run's own pid)
def test_a_second_run_is_refused_while_the_first_trains_which_goes_on_unharmed(small, tmp_path):
    out = tmp_path / "run"
    with open(tmp_path / "first.err", "w") as err:
        first = _start(*small, "--epochs", "3", "--out-dir", out, stderr=err)
        try:
            _wait_for(first, "epoch   0/2", out / "checkpoints" / "last.pt")
            os.kill(first.pid, signal.SIGSTOP)  # held mid-run, lock and all
            for extra in ([], ["--resume", "auto"]):
                second = train_here(*small, "--epochs", "3", *extra, "--out-dir", out)
                lines = second.stderr.strip().splitlines()
                assert second.returncode == 2 and len(lines) == 1, second.stderr
                assert _refusal(out, first.pid).fullmatch(lines[0]), lines[0]
            # reading commands keep working during a live run
            evaluated = train_here("--evaluate", out / "checkpoints" / "last.pt",
                                   "--out-dir", tmp_path / "eval")
            assert evaluated.returncode == 0, evaluated.stderr[-2000:]
            assert "plain: top-1" in evaluated.stdout
        finally:
            os.kill(first.pid, signal.SIGCONT)
        first.stdout.read()
        assert first.wait(timeout=300) == 0, (tmp_path / "first.err").read_text()[-2000:]
    log = (out / "training_logs.md").read_text()
    assert log.count("### Run started") == 1
    assert [log.count(f"\n| {e} |") for e in range(3)] == [1, 1, 1]


@pytest.mark.slow
@pytest.mark.fresh_python  # (the lock names the run's own pid)
def test_a_run_killed_with_sigkill_leaves_no_stale_lock(small, tmp_path):
    out = tmp_path / "run"
    first = _start(*small, "--out-dir", out, stderr=subprocess.DEVNULL)
    try:
        _wait_for(first, "epoch   0/1", out / "checkpoints" / "last.pt")
    finally:
        first.kill()
        first.wait()
    assert f'"pid": {first.pid}' in (out / "checkpoints" / "run.lock").read_text()
    resumed = train_here("--resume", "auto", "--gradcam-images", "0", "--out-dir", out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "--resume auto: continuing" in resumed.stdout and "epoch   1/1" in resumed.stdout


@pytest.mark.slow
@pytest.mark.fresh_python  # (the lock names the run's own pid)
def test_a_torchrun_job_is_refused_promptly_on_a_folder_in_use(small, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom machinery import runlock\n"
         f"with runlock.holding_out_dir({str(out)!r}):\n"
         "    print('held', flush=True)\n    time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        proc = torchrun(*small, "--num-workers", "0", "--out-dir", out, timeout=120)
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    assert re.search(r"error \(rank 0\): .* is in use by another run \(pid " + str(holder.pid),
                     proc.stderr), proc.stderr[-2000:]
    assert "epoch" not in proc.stdout  # nobody trained
    assert took < 60, took  # rank 1 did not wait for rank 0 forever


def test_where_the_file_system_has_no_locks_the_run_warns_once_and_goes_on(tmp_path, monkeypatch):
    def no_locks(f, how):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    said = []
    with runlock.holding_out_dir(str(tmp_path), warn=said.append):
        ran = True
    assert ran and said == [f"warning: {tmp_path}: this file system does not support locks "
                            f"(No locks available), so nothing stops a second run on the same "
                            f"folder"]


def test_without_fcntl_as_on_windows_the_lock_module_imports_and_still_locks(tmp_path, monkeypatch):
    """Windows has no fcntl: runlock then locks through msvcrt (here a stand-in that takes
    the same kernel lock, and fails as msvcrt.locking does, with EACCES)."""
    taken = []

    def locking(fd, mode, nbytes):
        assert nbytes == 1 and os.lseek(fd, 0, os.SEEK_CUR) == runlock.WINDOWS_BYTE
        try:
            flock(fd, lock_ex | lock_nb if mode == msvcrt.LK_NBLCK else lock_un)
        except BlockingIOError:
            raise OSError(errno.EACCES, "Permission denied") from None
        taken.append(mode)
    flock, lock_ex, lock_nb, lock_un = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN
    msvcrt = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0, locking=locking)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl now fails
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    windows = importlib.reload(runlock)
    try:
        with windows.holding_out_dir(str(tmp_path)):
            with pytest.raises(config.UserError, match=r"is in use by another run \(pid "
                                                        rf"{os.getpid()} on host"):
                with windows.holding_out_dir(str(tmp_path)):
                    pass
        with windows.holding_out_dir(str(tmp_path)):  # released: free again
            pass
        assert taken == [msvcrt.LK_NBLCK, msvcrt.LK_UNLCK] * 2
    finally:
        monkeypatch.undo()
        importlib.reload(runlock)
