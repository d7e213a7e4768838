"""A sweep's trials: each an ordinary `train.py` run in its own folder, watched epoch by
epoch, pruned, and never lost or counted twice, however many workers and machines share
the study.

    study = open_study(name, storage_url, sampler, pruner)
    worker = Worker(study, plan, index=0)   # plan: what a trial runs (Plan)
    worker.run()                            # trials until the study has plan.total

Counting. A study holds `total` trials that count: complete, pruned, running or waiting
(a retry queued). A worker asks for a trial only while fewer count; if several asked at
once, the lowest numbers count and the others are marked failed ("surplus") at once,
before they train. Failed trials never count.

Nothing lost. A trial's process gets SIGTERM when its worker dies (Linux), so it saves
where it stands. A trial left running by a worker that is gone (its pid, on this host; on
other hosts: no heartbeat for GRACE_S, with RDB storage) is marked failed and queued
again with the same settings once, by whichever worker looks next; the retry trains in
the first attempt's folder with --resume auto, so it goes on from its last checkpoint.
"""
import contextlib
import csv
import inspect
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import optuna
from optuna.trial import TrialState

from .config import UserError
from .own_files import process_started
from .runlock import holding_out_dir
from .sweep_space import TrialsFailing, as_flags

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
HEARTBEAT_S = 30  # how often a worker says it is alive (RDB storage)
GRACE_S = 180  # a trial without a heartbeat for this long is another machine's lost one
POLL_S = 1.0  # how often a worker reads its trial's metrics
RETRIES = 3  # a trial lost this many times is left failed
FAILS_IN_A_ROW = 3  # a worker whose trials fail this many times in a row stops: bad settings
UNCLAIMED_S = 60  # a running trial with no worker named after this long was lost at its start
METRICS = os.path.join("training_metrics_from_ckpt", "metrics_from_ckpt.csv")


def retry_callback(limit=RETRIES):
    """Optuna's callback that queues a lost trial again (renamed in Optuna 4.9); without a
    limit for a trial the user stopped (Ctrl-C as often as they like: it goes on)."""
    cls = (getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
           or optuna.storages.RetryFailedTrialCallback)
    return cls(max_retry=limit)


def open_storage(url):
    """Optuna storage for a URL: a database (sqlite:///..., postgresql://..., mysql://...)
    with heartbeats, or journal:PATH (Optuna's journal file). One line if it cannot open."""
    if url.split("?")[0] in ("sqlite://", "sqlite:///:memory:"):
        raise UserError(f"--storage {url}: an in-memory database lives and dies with one "
                        f"process, and a sweep's workers and restarts share it; give a file "
                        f"(sqlite:///sweep.db)")
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    on_stale = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
                else "failed_trial_callback")
    try:
        if url.startswith("journal:"):  # journal:PATH or journal:///absolute/path
            from optuna.storages.journal import JournalFileBackend, JournalStorage
            path = url[len("journal:"):]
            return JournalStorage(JournalFileBackend(path[2:] if path.startswith("//") else path))
        return at_once(lambda: optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            engine_kwargs=_engine_kwargs(url), **{on_stale: retry_callback()}))
    except ImportError as e:
        scheme = url.split(":")[0]
        raise UserError(f"--storage {url}: the database driver for {scheme} is missing"
                        f"{f' ({e.name})' if e.name else ''}; "
                        f"{DRIVERS.get(scheme.split('+')[0], 'pip install it')}") from None
    except Exception as e:  # noqa: BLE001 -- SQLAlchemy's and the drivers' errors vary
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot open --storage {url}: {why}") from None


# what a database says when several processes make the same tables or study at once
RACES = ("already exists", "duplicate", "unique constraint", "uniqueviolation", "locked",
         "deadlock", "integrityerror", "no such table")


def at_once(make, attempts=8):
    """make(), again after a moment while it fails as processes starting at once fail:
    workers of a cluster started together on a fresh database all create Optuna's tables
    (PostgreSQL: UniqueViolation on pg_type) and the study (IntegrityError), and SQLite
    shows one of them half-made tables. A moment later the other's are whole; any other
    error (a wrong password, no server) is raised at once."""
    import random
    for attempt in range(attempts):
        try:
            return make()
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 -- SQLAlchemy's and the drivers' errors vary
            text = f"{type(e).__name__} {e}".lower()
            if attempt == attempts - 1 or not any(r in text for r in RACES):
                raise
            time.sleep(random.uniform(0.2, 0.6) * (attempt + 1))


DRIVERS = {"postgresql": "pip install psycopg2-binary (or psycopg[binary], and write "
                         "postgresql+psycopg://...)",
           "postgres": "pip install psycopg2-binary",
           "mysql": "pip install pymysql, and write mysql+pymysql://..."}  # (SQLAlchemy's defaults)


def _engine_kwargs(url):
    # SQLite: workers of one machine write to one file; wait for each other's writes
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None


_ASKING = threading.Lock()  # one ask at a time in this process, whatever its studies


def ask_lock_path(url, folder):
    """The file every process of this machine takes before it asks: beside a SQLite
    database (whose file is what the processes share), else in the study's folder."""
    if url.startswith("sqlite:///"):
        return urllib.parse.unquote(url[len("sqlite:///"):].split("?")[0]) + ".ask.lock"
    return os.path.join(folder, ".ask.lock")


@contextlib.contextmanager
def file_lock(path):
    """An exclusive lock on a file, held by every process of this machine in turn."""
    with open(path, "a") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # (Windows: the thread lock still serialises one process)
            pass
        yield


def take(study, lock_path):
    """study.ask(), one asker at a time: the threads of this process and, through a file
    lock, every process of this machine. Optuna hands a queued trial (a grid's cell, a
    retry, a seed) to the first asker by `SELECT ... FOR UPDATE`, which SQLite ignores:
    two workers asking at once got the same trial and trained it twice, one of them
    refused by the folder's lock. PostgreSQL and MySQL honour the row lock, and journal
    storage replays its log in order, so machines sharing those need no more than this."""
    with _ASKING, file_lock(lock_path):
        drop_twins(study)
        return study.ask()


def drop_twins(study):
    """Fail the queued twins of a queued cell (a grid's cell, a repeat's seed): machines
    that start together, each with its own --sweeps-dir (so its own folder lock), may
    each queue every cell. Per cell the trial kept is one that is running or done, else
    the lowest-numbered; its queued twins are failed, noted, before anyone asks."""
    import json
    cells = {}
    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.FAIL and "fixed_params" in t.system_attrs:
            key = json.dumps(t.system_attrs["fixed_params"], sort_keys=True, default=str)
            cells.setdefault(key, []).append(t)
    for twins in cells.values():
        if len(twins) < 2:
            continue
        keep = min(twins, key=lambda t: (t.state == TrialState.WAITING, t.number))
        for t in twins:
            if t is keep or t.state != TrialState.WAITING:
                continue
            try:
                study._storage.set_trial_user_attr(t._trial_id, "note", f"a twin of trial "
                                                   f"{keep.number}, queued by two machines at once")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another machine dropped it first


def root_of(trial):
    """The number of a trial's first attempt, whose folder its retries train in."""
    attrs = (trial.system_attrs if isinstance(trial, optuna.trial.FrozenTrial) else
             trial.study._storage.get_trial_system_attrs(trial._trial_id))
    history = attrs.get("retry_history") or []
    return history[0] if history else trial.number


def counted(study):
    return study.get_trials(deepcopy=False, states=COUNTED)


def _alive_here(trial):
    """False for a running trial whose worker process, on this host, is gone, or whose
    worker was killed between asking for it and naming itself on it."""
    attrs = trial.user_attrs
    if "worker_pid" not in attrs:  # (every worker names itself at once, on any machine)
        started = trial.datetime_start
        return started is None or time.time() - started.timestamp() < UNCLAIMED_S
    if attrs.get("host") != socket.gethostname():
        return True  # another machine's: the heartbeat decides
    pid = int(attrs["worker_pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a pid taken since by a later process is not the worker: one that started after the
    # trial did (whatever its command line: a notebook's kernel runs sweep.main too)
    started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
    return process_started(pid) <= started + 1


def recover_lost(study, say):
    """Fail and requeue (once, whoever looks first) the running trials whose worker is gone."""
    optuna.storages.fail_stale_trials(study)  # other machines', by heartbeat (RDB storage)
    retry = retry_callback()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive_here(t):
            continue
        try:  # (a finished trial's attributes are fixed: the note first)
            study._storage.set_trial_user_attr(t._trial_id, "note", "lost: its worker was gone")
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        retry(study, study._storage.get_trial(t._trial_id))
        say(f"trial {t.number}: its worker is gone; queued again, to go on from its last "
            f"checkpoint in trial_{root_of(t)}/")


class Plan:
    """What every trial of a study runs.

    fixed: the training flags after `--`; dims: the space (sweep_space); folder: the
    study's folder; total: trials that count; metric: the metrics column scored
    ("val_acc" or "test_acc"); params_of(trial): a trial's {name: value}."""

    def __init__(self, fixed_argv, folder, total, metric, params_of, prefix="trial", queued=False,
                 ask_lock=None, epochs=lambda params: None, storage_url=None):
        self.fixed_argv, self.folder, self.total = fixed_argv, folder, total
        self.epochs = epochs  # epochs(params): a trial's epochs (None: unknown)
        self.storage_url = storage_url  # (the report's dashboard command)
        self.ask_lock = ask_lock or os.path.join(folder, ".ask.lock")  # (take())
        self.metric, self.params_of, self.prefix = metric, params_of, prefix
        self.queued = queued  # every trial queued up front (a grid's cells, repeat-best's seeds)

    def trial_folder(self, trial):
        return os.path.join(self.folder, f"{self.prefix}_{root_of(trial)}")


class Worker:
    """Trials, one after another, until the study counts plan.total or `stop` is set.
    gpu: the CUDA device this worker's trials see (None: as the machine has them)."""

    def __init__(self, study, plan, gpu=None, threads=None, say=print, stop=None,
                 after_trial=lambda: None):
        self.study, self.plan, self.gpu, self.threads = study, plan, gpu, threads
        self.say, self.stop = say, stop or threading.Event()
        self.after_trial, self.child, self.failed = after_trial, None, []

    def run(self):
        while not self.stop.is_set():
            self.began = time.monotonic()  # the trial's whole cost, bookkeeping included
            recover_lost(self.study, self.say)
            trials = counted(self.study)
            queued = any(t.state == TrialState.WAITING for t in trials)  # a grid cell, a retry
            if not queued and (len(trials) >= self.plan.total or self.plan.queued):
                return  # (a grid never draws a cell of its own: a failed cell stays failed)
            if len(self.failed) >= FAILS_IN_A_ROW:
                raise TrialsFailing(f"{len(self.failed)} trials in a row failed (trials "
                                    f"{', '.join(map(str, self.failed))}), the last: {self.why}; "
                                    f"fix that, then run the same command again")
            trial = take(self.study, self.plan.ask_lock)
            try:
                if self._surplus(trial):
                    self.study.tell(trial, state=TrialState.FAIL)
                    return
                self._train(trial)
            except optuna.exceptions.UpdateFinishedTrialError:
                # another worker ended this trial meanwhile (it took it for lost): its retry
                # goes on from the same folder; this worker stops its process and goes on
                if self.child is not None and self.child.poll() is None:
                    self.child.send_signal(signal.SIGTERM)
                    self.child.wait()
                self.say(f"trial {trial.number}: ended by another worker; going on")
            self.after_trial()

    def _surplus(self, trial):
        """Whether this trial came after the study's total was reached by others' trials."""
        numbers = sorted(t.number for t in counted(self.study))
        if trial.number in numbers[:self.plan.total]:
            return False
        self.study._storage.set_trial_user_attr(trial._trial_id, "surplus", True)
        return True

    def _train(self, trial):
        params = self.plan.params_of(trial)
        folder = self.plan.trial_folder(trial)
        for k, v in (("host", socket.gethostname()), ("worker_pid", os.getpid()),
                     ("folder", os.path.basename(folder))):
            trial.set_user_attr(k, v)
        os.makedirs(folder, exist_ok=True)
        if not self._wait_free(folder):  # a lost attempt's process still saving, say
            self.say(f"trial {trial.number}: {folder} stays in use by another process; failed")
            self.study.tell(trial, state=TrialState.FAIL)
            return
        argv = [*self.plan.fixed_argv, *as_flags(params), "--out-dir", folder, "--resume", "auto"]
        flags = " ".join(as_flags(params)) or "(the fixed flags only)"
        self.say(f"trial {trial.number} ({os.path.basename(folder)}): {flags}")
        state, value, why = self._watch(trial, argv, folder, self.plan.epochs(params))
        # cumulated over a lost trial's attempts; train_s: train.py's own processes
        for key, spent in (("seconds", time.monotonic() - self.began), ("train_s", self.child_s)):
            trial.set_user_attr(key, trial.user_attrs.get(key, 0) + spent)
        trial.set_user_attr("note", why or "")
        if state == TrialState.FAIL and self.stop.is_set():
            # stopped by the user: requeued so the same command goes on from its checkpoint
            trial.set_user_attr("note", "stopped; queued again")
            self.study.tell(trial, state=TrialState.FAIL)
            retry_callback(limit=None)(self.study, self.study._storage.get_trial(trial._trial_id))
            return
        self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        self.failed, self.why = (self.failed + [trial.number], why) if state == TrialState.FAIL else ([], None)
        self.say(f"trial {trial.number}: {state.name.lower()}"
                 + (f", best {self.plan.metric} {value:.2f}" if value is not None else "")
                 + (f" ({why})" if why else ""))

    def _wait_free(self, folder, patience=60):
        deadline = time.monotonic() + patience
        while True:
            try:
                with holding_out_dir(folder, warn=lambda line: None):
                    return True
            except UserError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.5)

    def _watch(self, trial, argv, folder, epochs=None):
        """Train, report each epoch, prune; returns (state, best value, why). A trial whose
        last epoch is in is not pruned: it has trained all it would, and is complete."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpu)
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
        child_started = time.monotonic()
        with open(os.path.join(folder, "trial.log"), "ab") as log:
            self.child = subprocess.Popen([sys.executable, script, *argv], stdout=log,
                                          stderr=subprocess.STDOUT, env=env,
                                          preexec_fn=_die_with_parent, start_new_session=True)
        reported, pruned, beat, told = set(), False, 0.0, False
        while True:
            done = self.child.poll() is not None
            for epoch, value in read_curve(folder, self.plan.metric):
                if epoch not in reported:
                    reported.add(epoch)
                    trial.report(value, epoch)
            last_in = epochs is not None and reported and max(reported) >= epochs - 1
            if not pruned and reported and not done and not last_in and trial.should_prune():
                pruned = True
            if (pruned or self.stop.is_set()) and not done and not told:
                told = True  # once: a second SIGTERM would stop it without saving
                self.child.send_signal(signal.SIGTERM)  # saves after its current step
            if done:
                break
            if time.monotonic() - beat > HEARTBEAT_S and hasattr(self.study._storage, "record_heartbeat"):
                self.study._storage.record_heartbeat(trial._trial_id)
                beat = time.monotonic()
            time.sleep(POLL_S)
        self.child_s = time.monotonic() - child_started
        rc, curve = self.child.returncode, read_curve(folder, self.plan.metric)
        best = max((v for _, v in curve), default=None)
        if pruned:
            return TrialState.PRUNED, best, f"pruned after epoch {max(reported)}"
        if rc == 0 and best is not None:
            return TrialState.COMPLETE, best, None
        last = _last_line(os.path.join(folder, "trial.log"))
        if "not finite" in last and best is not None:  # diverged: a result, and a poor one
            return TrialState.COMPLETE, best, "diverged"
        return TrialState.FAIL, None, f"train.py exited {rc}: {last[-200:]}"


def _die_with_parent():
    """In the trial's process: SIGTERM when the worker dies (Linux), so a killed sweep's
    trial saves where it is instead of training on unwatched."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def read_curve(folder, metric):
    """[(epoch, value)] of a run folder's metrics CSV so far ([] before its first epoch)."""
    try:
        with open(os.path.join(folder, METRICS), newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    if rows and metric not in rows[0]:  # a folder with val/ scores val_acc, say
        metric = "val_acc" if "val_acc" in rows[0] else "test_acc"
    out = []
    for r in rows:
        try:
            v = float(r[metric])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append((int(r["epoch"]), v))
    return out


def _last_line(path):
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4000))
            lines = [l for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""
