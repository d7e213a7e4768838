"""tests/zygote.py, the suite's shortcut past `import torch` in the processes it starts: what
a test sees of a handed-over process (output, exit code, signals, its death) must be what
it would see of a fresh Python, or the tests that rely on it test something else."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

PROBE = os.path.join(ROOT, "tests", "zygote_probe.py")


def _start(*args, **kw):
    return subprocess.Popen([sys.executable, PROBE, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _said(proc):
    return json.loads(proc.stdout.readline())


@pytest.fixture
def server(zygote):
    """The session's zygote, listening (it imports torch first), and alive: one that died
    mid-session would leave every later test on fresh Pythons without a word."""
    if not zygote:
        pytest.skip("TESTS_FRESH_PYTHON: no zygote")
    deadline = time.monotonic() + 120
    for where, proc, log in zygote:
        while not os.path.exists(where) and proc.poll() is None:
            assert time.monotonic() < deadline, "the zygote never listened"
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
    return zygote[0]


def test_a_handed_over_run_has_the_streams_folder_arguments_and_exit_code_of_its_own(server, tmp_path):
    # (importing cv2 sets LD_LIBRARY_PATH in os.environ: every later process carries it)
    env = dict(os.environ, PROBE="set", LD_LIBRARY_PATH=str(tmp_path))
    proc = _start("exit:3", "x y", cwd=tmp_path, env=env)
    said = _said(proc)
    out, err = proc.communicate(timeout=60)
    assert said["pid"] != proc.pid and said["torch"], server[2].read_text()[-3000:]  # (handed over)
    assert said["argv"] == [PROBE, "exit:3", "x y"] and said["cwd"] == str(tmp_path)
    assert said["env"] == "set" and said["path0"] == os.path.dirname(PROBE)
    assert (proc.returncode, out, err) == (3, "", "to stderr\n")


def _fresh(*args, **kw):
    env = {k: v for k, v in os.environ.items() if k != "TEST_ZYGOTE"}
    return subprocess.run([sys.executable, PROBE, *args], capture_output=True, env=env, **kw)


@pytest.mark.parametrize("what", ["ctrl_c", "undecodable", "exit:0"])
def test_a_handed_over_run_ends_and_writes_as_a_fresh_python(server, what):
    """An unhandled Ctrl-C still runs atexit and flushes stdout, then ends by SIGINT; a
    file name that is not UTF-8 prints under the same error handler."""
    proc = subprocess.Popen([sys.executable, PROBE, what], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    fresh = _fresh(what, timeout=60)
    said, *out = out.decode(errors="replace").splitlines()
    assert json.loads(said)["pid"] != proc.pid  # (handed over)
    assert (proc.returncode, out) == (fresh.returncode, fresh.stdout.decode(errors="replace").splitlines()[1:])
    assert err.splitlines()[-1:] == fresh.stderr.splitlines()[-1:]


def test_a_signal_that_comes_before_the_copy_has_its_handlers_waits_for_them(server):
    """The server holds these signals back (it is in the pytest process's group); its copy
    sets Python's handlers, then takes what its stand-in forwarded meanwhile."""
    paused = server[1]
    paused.send_signal(signal.SIGSTOP)  # (the stand-in's SIGINT is kept until the copy exists)
    try:
        proc = _start("wait")
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
    finally:
        paused.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, (out, err)
    assert out == ""  # (it came before the script's first line, as it can in a fresh Python)


def test_each_rank_has_a_server_of_its_own_and_so_its_own_string_hash_seed(server):
    seeds = []
    for rank in ("0", "1", "2"):
        proc = _start("exit:0", env=dict(os.environ, RANK=rank))
        said = _said(proc)
        proc.communicate(timeout=60)
        seeds.append(said["hash"])
        assert (said["pid"] != proc.pid) == (rank != "2")  # (a third rank: a fresh Python)
    assert len(set(seeds)) == 3


@pytest.mark.parametrize("env", [{"PYTHONPATH": "/somewhere/else"}, {"PYTHONHASHSEED": "0"}])
def test_what_the_server_cannot_be_runs_on_its_own(server, env):
    """Modules of its own ahead of the server's, a setting Python reads as it starts."""
    env = dict(os.environ, **env)
    if "PYTHONPATH" in env and env["PYTHONPATH"] == "/somewhere/else":
        env["PYTHONPATH"] = os.pathsep.join([os.environ["PYTHONPATH"], "/somewhere/else"])
    proc = _start("exit:0", env=env)
    said = _said(proc)
    proc.communicate(timeout=60)
    assert said["pid"] == proc.pid and not said["torch"]


def test_an_exception_ends_as_python_ends_it(server):
    proc = _start("raise")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.rstrip().endswith("RuntimeError: as asked"), err


@pytest.mark.parametrize("name", ["KILL", "SEGV"])
def test_a_run_that_dies_of_a_signal_shows_that_signal(server, name):
    proc = _start(f"signal:{name}")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -getattr(signal, "SIG" + name)
    assert len(out.splitlines()) == 1 and err == "to stderr\n", err  # (its copy ran it, once)


def test_signals_reach_the_run_and_it_dies_with_its_stand_in(server):
    proc = _start("wait")
    said = _said(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    proc = _start("wait")
    copy = _said(proc)["pid"]
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{copy}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert said["pid"] != copy and not os.path.exists(f"/proc/{copy}")  # (reaped: gone)


@pytest.mark.fresh_python
def test_a_fresh_python_test_starts_from_scratch(server):
    proc = _start("exit:0")
    said = _said(proc)
    proc.communicate(timeout=60)
    assert said["pid"] == proc.pid and not said["torch"]
