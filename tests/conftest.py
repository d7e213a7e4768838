import contextlib
import fcntl
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    # `python -m pytest -m "not slow"`: the edit-test loop (CONTRIBUTING.md)
    config.addinivalue_line("markers", "slow: trains, or starts processes, for more than a "
                                       "few seconds")
    config.addinivalue_line("markers", "pictures: this test's runs, and the processes it starts, draw "
                                       "their figures (see quick_pictures)")
    config.addinivalue_line("markers", "fresh_python: the processes this test starts import "
                                       "everything themselves (see zygote)")
    config.option.loadscopereorder = False  # (pytest-xdist 3.6+: LONGEST_FIRST's order, not its own)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `pytest -n 2`: each worker, and every process it starts, computes on one thread,
        # so that two workers share the cores instead of both asking for all of them
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch
        torch.set_num_threads(1)


# The files that take longest, first: `-n 2 --dist loadfile` hands a file to whichever
# process is free, and a long file handed out last kept one core busy for minutes after
# the other had finished. (xdist's own order, most tests first, handed the PostgreSQL
# sweep test, 3 tests and over a minute, out among the last.) `--durations` shows the
# order to keep here.
LONGEST_FIRST = ["test_sweep.py", "test_ddp.py", "test_sweep_concurrency.py", "test_notebook.py",
                 "test_resilience.py", "test_elastic.py", "test_speed.py", "test_hostile_export.py",
                 "test_app.py", "test_hostile_app.py", "test_tensorboard.py", "test_runlock.py",
                 "test_protocol.py", "test_cli.py"]


def pytest_collection_modifyitems(items):
    for item in items:  # (a test that reads the smoke run waits for it to train: 35 s)
        if "smoke_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # (stable: the rest as found)


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory):
    """The per-user cache folder (imagefolder.user_cache) of every test and the scripts it
    runs: a temporary one, never the machine's ~/.cache."""
    path = str(tmp_path_factory.mktemp("user-cache"))
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = path
    yield path
    if before is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session", autouse=True)
def zygote(tmp_path_factory):
    """The processes the tests start find tests/hooks on PYTHONPATH, and those that run one
    of the repo's scripts are forked from this pytest process's zygote, which has imported
    torch once (tests/zygote.py: 6 s of CPU saved a process). Two servers, for ranks 0 and
    1 of a torchrun job (ranks differ in their string-hash seed; the others use the first).
    A test marked fresh_python, or every test with TESTS_FRESH_PYTHON=1, starts each
    Python from scratch. Yields [(socket, server process, its log)] or None."""
    hooks = os.path.join(ROOT, "tests", "hooks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", hooks, prepend=os.pathsep)
        if os.environ.get("TESTS_FRESH_PYTHON"):
            yield None
            return
        folder = tempfile.mkdtemp(prefix="zygote-")  # (a socket's name: 107 bytes at most)
        env = {k: v for k, v in os.environ.items() if k not in ("QUICK_PICTURES", "TEST_ZYGOTE")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(ROOT, "tests"),
                                                         os.environ.get("PYTHONPATH")]))
        servers = []
        for rank in (0, 1):
            where = os.path.join(folder, f"rank{rank}")
            log = tmp_path_factory.getbasetemp() / f"zygote{rank}.log"  # (pytest keeps its last 3)
            with open(log, "w") as f:
                servers.append((where, subprocess.Popen(
                    [sys.executable, "-c", f"import zygote; zygote.serve({where!r})"],
                    cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT), log))
        mp.setenv("TEST_ZYGOTE", os.pathsep.join(where for where, _, _ in servers))
        try:
            yield servers
        finally:
            for _, server, _ in servers:
                server.terminate()
                server.wait()
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def fresh_python(request, zygote, monkeypatch):
    """A `fresh_python` test's processes start Python from scratch (zygote)."""
    if zygote and request.node.get_closest_marker("fresh_python"):
        monkeypatch.delenv("TEST_ZYGOTE")


@pytest.fixture(scope="session", autouse=True)
def quick_pictures(zygote):
    """Runs write a 1-pixel PNG where a figure goes, at its name and atomically as the real
    one (tests/quick_pictures.py): drawing was a quarter of a test run's time, and most
    tests look at checkpoints, logs and tables. In the tests' own processes every module
    holding metrics.save_figure gets the placeholder here (those imported later take it
    from metrics); the processes they start do it themselves (tests/hooks on PYTHONPATH,
    QUICK_PICTURES set). A test marked `pictures` draws for real, in its own process and
    in those it starts, and so does the session's smoke run. Yields (real, placeholder)."""
    import quick_pictures as quick

    from machinery import metrics
    real, placeholder = metrics.save_figure, quick.placeholder_for(metrics)
    with pytest.MonkeyPatch.context() as mp:
        quick.swap(real, placeholder, mp.setattr)
        mp.setenv("QUICK_PICTURES", "1")
        yield real, placeholder


@pytest.fixture(autouse=True)
def real_pictures(request, quick_pictures, monkeypatch):
    """A `pictures` test's runs draw their figures (quick_pictures)."""
    if request.node.get_closest_marker("pictures"):
        import quick_pictures as quick
        real, placeholder = quick_pictures
        quick.swap(placeholder, real, monkeypatch.setattr)
        monkeypatch.delenv("QUICK_PICTURES")


def run_script(script, *args, cwd=None, timeout=600, env=None):
    """Run one of the repo's scripts as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def run_here(script, *args, fault="none"):
    """`python SCRIPT ARGS` as SCRIPT's main(ARGS) in the test's own process: the same code
    and output, without the seconds of starting Python and torch. fault: one of
    faulty_run's, installed for this run only (not those that end the process: a signal,
    SIGKILL or a hang needs a process of its own). Returns a CompletedProcess."""
    import faulty_run
    module = importlib.import_module(script[:-len(".py")])
    args = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with faulty_run.injected(fault), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(args)
        except SystemExit as e:  # argparse's --help, say
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def train_here(*args, fault="none"):
    """run_here("train.py", ...)."""
    return run_here("train.py", *args, fault=fault)


def made_once(tmp_path_factory, name, make):
    """make(folder) run once per test session, also when pytest-xdist shares the tests out
    among processes: the first to come makes it under a lock, the others wait and reuse
    it. make returns what the tests need to know besides the folder, as plain JSON types.
    Returns (folder, that)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above every worker's own
    folder, made = root / f"once-{name}", root / f"once-{name}.json"
    with open(root / f"once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed try left
            folder.mkdir()
            made.write_text(json.dumps(make(folder)))
    return folder, json.loads(made.read_text())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One `python train.py --smoke` run shared by the tests that inspect its outputs."""
    def make(out):
        env = {k: v for k, v in os.environ.items() if k != "QUICK_PICTURES"}  # (its figures: real)
        proc = run_script("train.py", "--smoke", "--out-dir", out, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [proc.args, proc.returncode, proc.stdout, proc.stderr]
    out, proc = made_once(tmp_path_factory, "smoke", make)
    return out, subprocess.CompletedProcess(*proc)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small generated CIFAR-100 data set on disk, in the real file format."""
    from machinery import data
    root = tmp_path_factory.mktemp("cifar")
    data.write_synthetic_dataset(str(root), "cifar100", n_train=300, n_test=100, seed=3)
    return str(root)


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """Pictures as people have them: a JPEG photo large enough for the reduced decode, and
    16 distinct small ones for the concurrent requests."""
    import numpy as np
    from PIL import Image
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    big = folder / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).resize(
        (800, 600), Image.BICUBIC).save(big, quality=90)
    many = []
    for i in range(16):
        many.append(folder / f"{i}.png")
        Image.fromarray(np.full((32, 32, 3), rng.integers(0, 256, 3), np.uint8)).save(many[-1])
    return big, many


@pytest.fixture(scope="session")
def page(smoke_run, photos, tmp_path_factory):
    """app.py on the smoke run's best model, one for the session's page tests, with an
    example from a folder a user keeps secrets in: (url, checkpoint, that folder)."""
    import shutil
    from pages import serve, stop
    best = smoke_run[0] / "checkpoints" / "best_model.pt"
    home = tmp_path_factory.mktemp("home")
    (home / ".env").write_text("API_KEY=not-for-visitors\n")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_rsa").write_text("PRIVATE KEY\n")
    shutil.copy(photos[0], home / "cat.jpg")
    proc, url = serve([sys.executable, os.path.join(ROOT, "app.py"), "--checkpoint", str(best),
                       "--examples", str(home / "cat.jpg")], cwd=ROOT)
    yield url, best, home
    stop(proc)
