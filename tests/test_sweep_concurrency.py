"""Sweep workers that start together: threads asking at the same moment, and processes on
a fresh PostgreSQL database (a throwaway server in a temporary folder, skipped with the
reason where PostgreSQL is not installed). Each queued trial must go to one worker, and
every process must join the one study."""
import fcntl
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT
from machinery import sweep_trials

HELD_S = 1.5  # how long an asker waits at the barrier for a second one


def test_workers_asking_at_the_same_moment_each_take_their_own_trial(tmp_path, monkeypatch):
    """Two threads ask at once, each held inside Optuna's ask (where it reads the queue,
    before it marks the trial running) until the other arrives. Unserialised, both get
    there, read the same queued trial, and on SQLite (which ignores Optuna's row lock)
    both may run it. Serialised, the first waits alone and the barrier never fills; and
    while one asks, the machine-wide file lock is held, so other processes wait too."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=sweep_trials.open_storage(url), direction="maximize")
    for x in (1, 2):
        study.enqueue_trial({"x": x})
    lock_path = sweep_trials.ask_lock_path(url, str(tmp_path))
    inside, start = threading.Barrier(2, timeout=HELD_S), threading.Barrier(2)
    together, file_free = [], []
    real = study._storage.get_all_trials

    def held(*args, **kwargs):
        if kwargs.get("states") == (TrialState.WAITING,):  # Optuna popping its queue
            with open(lock_path, "a") as f:  # another process's view of the file lock
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    file_free.append(True)
                except BlockingIOError:
                    pass
            try:
                inside.wait()
                together.append(True)
            except threading.BrokenBarrierError:
                pass
        return real(*args, **kwargs)
    monkeypatch.setattr(study._storage, "get_all_trials", held)
    taken = []

    def ask():
        start.wait()
        trial = sweep_trials.take(study, lock_path)
        taken.append((trial.number, trial.params["x"] if "x" in trial.params else
                      study._storage.get_trial(trial._trial_id).system_attrs["fixed_params"]["x"]))
    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not together, "two asks were inside Optuna's ask at once"
    assert not file_free, "the machine-wide ask lock was not held while asking"
    assert sorted(taken) == [(0, 1), (1, 2)]


def _postgres_bin():
    """The folder of PostgreSQL's server programs (Debian keeps them off the PATH), or None."""
    import glob
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    return os.path.dirname(versions[-1]) if versions else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server in a temporary folder (run as the `postgres` user when
    the suite runs as root, which initdb refuses), listening on 127.0.0.1 only; yields
    (the URL of a fresh database, its port), and stops the server."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("the psycopg driver is missing (pip install -r requirements-dev.txt)")
    import pathlib
    import tempfile
    # (not under pytest's tmp_path, whose parents only root may enter)
    top = pathlib.Path(tempfile.mkdtemp(prefix="sweep_pg_"))
    folder = top / "pg"
    folder.mkdir()
    as_user = []
    if os.geteuid() == 0:
        import pwd
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(top, 0o755)
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = str(folder / "data"), _free_port()
    subprocess.run([*as_user, os.path.join(bin_dir, "initdb"), "-D", data, "-U", "postgres",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_user, os.path.join(bin_dir, "pg_ctl"), "-D", data, "-w", "-l",
                    str(folder / "log"), "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.slow
def test_sweeps_started_together_on_a_fresh_postgresql_database_join_one_study(
        postgres, tiny_data, tmp_path):
    """Three machines' sweeps (three folders) start at the same instant on a database with
    no tables yet, as a cluster's scheduler starts them: once the second died creating
    Optuna's tables (UniqueViolation on pg_type); now each joins the one study, and the
    study's three cells are each trained once."""
    fixed = ["--dataset", "cifar100", "--data-dir", tiny_data, "--blocks", "1", "1", "1", "1",
             "--width", "16", "--batch-size", "32", "--num-workers", "0", "--gradcam-images", "0",
             "--tensorboard", "off", "--val-split", "100", "--epochs", "1"]
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "sweep.py"), "--study", "pg", "--sampler", "grid",
         "--space", "dropout=0.1,0.2,0.3", "--storage", postgres,
         "--sweeps-dir", str(tmp_path / f"machine{i}"), "--", *fixed],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1")) for i in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    study = optuna.load_study(study_name="pg", storage=postgres)
    trials = study.get_trials()
    assert sorted(t.params["dropout"] for t in trials if t.state == TrialState.COMPLETE) == [0.1, 0.2, 0.3]
    # machines that queue at the same instant may each queue a cell; the twins are failed,
    # noted, before anyone asks (drop_twins), so none trains and none is left queued
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.FAIL and "a twin of trial" in t.user_attrs.get("note", "")
               for t in others), [(t.number, t.state, t.user_attrs.get("note")) for t in trials]


def test_cells_queued_by_two_machines_at_once_are_each_trained_once(tmp_path):
    """Found by the hostile pass: two machines with their own --sweeps-dir (so their own
    folder locks) sharing one database each queued every cell; three cells trained twice,
    three never, and the same command again trained nothing."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=sweep_trials.open_storage(url), direction="maximize")
    for machine in ("a", "b"):  # each queues the grid, as queue_cells does
        for x in (1, 2, 3):
            study.enqueue_trial({"x": x})
    lock = sweep_trials.ask_lock_path(url, str(tmp_path))
    taken = []
    for _ in range(3):
        trial = sweep_trials.take(study, lock)
        taken.append(study._storage.get_trial(trial._trial_id).system_attrs["fixed_params"]["x"])
    assert sorted(taken) == [1, 2, 3]
    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.WAITING) == 0
    twins = [t for t in trials if t.state == TrialState.FAIL]
    assert len(twins) == 3 and all("a twin of trial" in t.user_attrs["note"] for t in twins)
