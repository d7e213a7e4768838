import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    # `python -m pytest -m "not slow"`: the edit-test loop (CONTRIBUTING.md)
    config.addinivalue_line("markers", "slow: trains, or starts processes, for more than a "
                                       "few seconds")


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


def run_script(script, *args, cwd=None, timeout=600):
    """Run one of the repo's scripts as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One `python train.py --smoke` run shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("smoke")
    proc = run_script("train.py", "--smoke", "--out-dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small generated CIFAR-100 data set on disk, in the real file format."""
    from machinery import data
    root = tmp_path_factory.mktemp("cifar")
    data.write_synthetic_dataset(str(root), "cifar100", n_train=300, n_test=100, seed=3)
    return str(root)
