"""sweep.py: studies on Optuna whose trials are train.py runs. Workers sharing one SQLite
study, a worker killed mid-trial, pruning, a grid's spread over seeds, --repeat-best, and
the bad input that must stop before anything trains. Trials train a tiny network on a
generated CIFAR-format data set for an epoch or a few."""
import importlib.util
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

import sweep
from conftest import ROOT
from machinery import sweep_space
from machinery.config import UserError
from machinery.sweep_trials import Plan, Worker, read_curve

TINY = ["--blocks", "1", "1", "1", "1", "--width", "8", "--batch-size", "32",
        "--num-workers", "0", "--gradcam-images", "0", "--tensorboard", "off", "--val-split", "100"]


SMOKE = ["--", "--smoke"]  # fixed flags for a study that trains nothing: no data to check


def _fixed(data, epochs):
    return ["--dataset", "cifar100", "--data-dir", data, *TINY, "--epochs", str(epochs)]


def _command(*args):
    return [sys.executable, os.path.join(ROOT, "sweep.py"), *map(str, args)]


def _study(folder, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / name / 'study.db'}")


def _runs_started(run_folder):
    with open(os.path.join(run_folder, "training_logs.md")) as f:
        return f.read().count("### Run started")


@pytest.mark.slow
def test_two_sweeps_share_one_grid_each_cell_trained_once_and_report_mean_std(tiny_data, tmp_path):
    cmd = _command("--study", "grid", "--sampler", "grid", "--seeds", "2",
                   "--space", "stem_pool=false,true", "--sweeps-dir", tmp_path, "--",
                   *_fixed(tiny_data, 1))
    # two commands at once on one SQLite study: two machines' workers, as far as it can tell
    procs = [subprocess.Popen(cmd + extra, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for extra in ([], [])]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = _study(tmp_path, "grid").get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    cells = sorted((t.params["stem_pool"], t.params["seed"]) for t in done)
    assert cells == [(False, 1), (False, 2), (True, 1), (True, 2)]  # each cell once
    assert all(t.state == TrialState.COMPLETE or t.user_attrs.get("surplus") for t in trials)
    folders = [tmp_path / "grid" / t.user_attrs["folder"] for t in done]
    assert len(set(folders)) == 4 and all(_runs_started(f) == 1 for f in folders)
    report = (tmp_path / "grid" / "report.md").read_text()
    assert "## Each setting over seeds" in report
    for setting in ("stem_pool=False", "stem_pool=True"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {setting} |"))
        assert " ± " in row and "(n=2)" in row
    for picture in ("history.png", "curves.png"):  # (drawn: test_sweep_scoring)
        assert (tmp_path / "grid" / picture).is_file()


@pytest.mark.slow
def test_a_worker_killed_mid_trial_then_the_same_command_finishes_the_study(tiny_data, tmp_path):
    cmd = _command("--study", "k", "--trials", "1", "--sampler", "random", "--sampler-seed", "0",
                   "--space", "max_lr=0.05:0.2:log", "--sweeps-dir", tmp_path, "--",
                   *_fixed(tiny_data, 3))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "k" / "trial_0"
    deadline = time.monotonic() + 300
    while not read_curve(first, "val_acc"):  # killed once its first epoch is saved
        assert proc.poll() is None and time.monotonic() < deadline, "the first epoch never came"
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "its worker is gone; queued again" in again.stdout
    trials = _study(tmp_path, "k").get_trials()
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "FAIL"]  # the lost attempt, and the one that counts
    lost = next(t for t in trials if t.state == TrialState.FAIL)
    retry = next(t for t in trials if t.state == TrialState.COMPLETE
                 and t.user_attrs["folder"] == "trial_0")
    assert retry.params == lost.params and retry.user_attrs["folder"] == "trial_0"
    log = (first / "training_logs.md").read_text()
    assert "resumed from" in log  # it went on from its checkpoint, not from scratch
    assert len(read_curve(first, "val_acc")) == 3
    report = (tmp_path / "k" / "report.md").read_text()
    assert "| 1 | trial_0 | complete |" in report
    lost_row = next(line for line in report.splitlines() if line.startswith("| 0 | trial_0 |"))
    assert "went on as trial 1" in lost_row  # (once: the retry's score and epochs, twice)


@pytest.mark.slow
def test_repeat_best_trains_the_best_settings_with_new_seeds_and_reports_the_spread(tiny_data,
                                                                                   tmp_path):
    proc = subprocess.run(_command("--study", "r", "--trials", "1", "--space", "dropout=0.1,0.2",
                                   "--repeat-best", "2", "--sweeps-dir", tmp_path, "--",
                                   *_fixed(tiny_data, 1)), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    best = _study(tmp_path, "r").best_trial.params
    key = sweep.settings_key(best)  # (a repeat per best settings, in the study's own database)
    again = optuna.load_study(study_name=f"r.repeat-best.{key}",
                              storage=f"sqlite:///{tmp_path / 'r' / 'study.db'}").get_trials()
    assert sorted(t.params["seed"] for t in again) == [2, 3]  # new seeds, not the search's 1
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["best"] == best for t in again)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## The best settings over seeds (--repeat-best)" in report
    assert "(n=2) | 2, 3 |" in report
    assert all((tmp_path / "r" / f"repeat_best_{key}_{n}" / "checkpoints" / "last.pt").exists()
               for n in (0, 1))
    # (more seeds later: test_sweep_scoring, with stand-in runs)


@pytest.mark.slow
def test_ctrl_c_stops_after_saving_and_queues_the_trial_again(tiny_data, tmp_path):
    cmd = _command("--study", "c", "--trials", "1", "--space", "max_lr=0.05:0.2:log",
                   "--sweeps-dir", tmp_path, "--", *_fixed(tiny_data, 200))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not read_curve(tmp_path / "c" / "trial_0", "val_acc"):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "stopped: the trials in progress saved where they were; the same command goes on" in err
    assert (tmp_path / "c" / "trial_0" / "checkpoints" / "last.pt").exists()
    states = [t.state for t in _study(tmp_path, "c").get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]  # queued, to go on from last.pt


@pytest.mark.slow
def test_a_pruned_trial_stops_within_an_epoch_of_the_decision(tiny_data, tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=1000.0))  # hopeless
    plan = Plan(_fixed(tiny_data, 30), str(tmp_path), 1, "val_acc", lambda t: {})
    said = []
    Worker(study, plan, say=said.append).run()
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED, said
    decided = int(trial.user_attrs["note"].rsplit(" ", 1)[1])  # "pruned after epoch N"
    assert len(read_curve(tmp_path / "trial_0", "val_acc")) <= decided + 2 < 30
    assert "SIGTERM" in (tmp_path / "trial_0" / "trial.log").read_text()  # it saved and left


@pytest.mark.parametrize("args, said", [
    (["--trials", "2", "--space", "nosuch=1:2"], "nosuch is not a training flag"),
    (["--trials", "2", "--space", "max-lrr=0.1:0.2"], "did you mean max_lr?"),
    (["--trials", "2", "--space", "max_lr=0.5:0.1"], "the range is empty"),
    (["--trials", "2", "--space", "max_lr=0:0.1:log"], "a log range must start above 0"),
    (["--trials", "2", "--space", "dropout=0:1"], "--space dropout: 1.0 cannot train"),
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--storage", "sqlite:////no/such/dir/s.db"],
     "cannot open --storage sqlite:////no/such/dir/s.db"),
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--seeds", "2"], "--seeds is for grid"),
    (["--sampler", "grid", "--space", "max_lr=0.1:0.2"], "--sampler grid needs choices"),
    (["--space", "max_lr=0.1:0.2"], "--trials is needed with --sampler tpe"),
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--", "--out-dir", "x"],
     "--out-dir is each trial's own"),
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--", "--epochs", "none"],
     "in the training flags after --"),
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--", "--resume", "auto"],
     "--resume is not a sweep's training flag"),
    (["--trials", "2", "--space", "epochs=2,3", "--", "--epochs", "4"],
     "--epochs is both in --space and in the fixed training flags"),
    # found by the hostile pass: each once trained (or looped on failing trials)
    (["--sampler", "grid", "--space", "precision=fp64,fp32"], "argument --precision: invalid choice"),
    (["--sampler", "grid", "--space", "val_split=0,500"], "val_split changes what the trials are scored on"),
    (["--sampler", "grid", "--space", "smoke=true,false"], "smoke changes what the trials are scored on"),
    (["--trials", "2", "--space", "{yaml}dup.yaml"], "'dropout' is given twice"),
    (["--trials", "2", "--space", "{yaml}lgo.yaml"], "'lgo' is neither"),
    (["--trials", "2", "--space", "{yaml}maybe.yaml"], "log is true or false"),
    (["--trials", "2", "--space", "max_lr=1e-3:inf"], "'inf' is not a finite number"),
    (["--trials", "2", "--space", "max_lr=-inf:1"], "'-inf' is not a finite number"),
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--storage", "sqlite:///:memory:"],
     "an in-memory database lives and dies with one process"),
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--storage", ""], "--storage '': give"),
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--storage", "mysql://u:p@127.0.0.1:1/db"],
     "the database driver for mysql is missing; pip install pymysql"),
    # the rules of a study's name, all of them (once only its characters were named)
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--study", "_x"], "the first a letter or digit"),
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--study", "x" * 101], "1 to 100 characters"),
    # an integer range once was checked at its ends only: 5, 7, 9 failed as trials
    (["--trials", "2", "--space", "accum_steps=1:12", "--", "--smoke", "--batch-size", "12"],
     "5, 7, 8, 9, 10, 11 (6 of the range's 12 values) cannot train"),
    # once three trials were launched (and failed) before the sweep stopped
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--", "--dataset", "folder", "--data-dir",
      "{tmp}/nowhere"], "in the training flags after --: "),
    (["--trials", "2", "--space", "max_lr=0.1:0.2", "--", "--dataset", "folder", "--data-dir",
      "{tmp}"], "has no train/ folder"),
])
def test_bad_input_is_one_line_before_anything_is_made(args, said, tmp_path, capsys):
    (tmp_path / "dup.yaml").write_text("dropout: [0.1, 0.3]\ndropout: [0.5]\n")
    (tmp_path / "lgo.yaml").write_text("max_lr: {low: 0.1, high: 0.3, lgo: true}\n")
    (tmp_path / "maybe.yaml").write_text("max_lr: {low: 0.1, high: 0.3, log: maybe}\n")
    args = [a.format(yaml=f"{tmp_path}/", tmp=tmp_path) for a in args]
    args += [] if "--" in args else ["--", "--smoke"]  # (no data to check: generated)
    assert sweep.main(["--study", "s", "--sweeps-dir", str(tmp_path / "sw"), *args]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sw").exists()


def test_without_optuna_the_command_names_the_pip_command(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "optuna" else real(n, *a))
    assert sweep.main(["--study", "s", "--trials", "1", "--space", "max_lr=0.1:0.2"]) == 2
    assert "pip install -r requirements-sweep.txt" in capsys.readouterr().err


def test_a_space_from_flags_and_yaml_gives_each_trial_its_flags(tmp_path):
    spec = tmp_path / "space.yaml"
    spec.write_text("weight_decay: 1e-5:1e-3:log\nblocks: ['5 5 5 5', '3 4 6 3']\n"
                    "cutmix_prob: {low: 0, high: 0.6}\nsave_every: 1:4\n")
    dims = {d.name: d for d in sweep_space.parse_space(["stem_pool=true,false", str(spec)])}
    assert (dims["weight_decay"].kind, dims["weight_decay"].log) == ("float", True)
    assert dims["blocks"].choices == ("5 5 5 5", "3 4 6 3")
    assert (dims["cutmix_prob"].low, dims["cutmix_prob"].high) == (0.0, 0.6)
    assert dims["save_every"].kind == "int"
    sweep_space.check_space(list(dims.values()), {"epochs": 3})
    flags = sweep_space.as_flags({"blocks": "3 4 6 3", "stem_pool": False, "max_lr": 0.25,
                                  "save_every": 2})
    assert flags == ["--blocks", "3", "4", "6", "3", "--no-stem-pool", "--max-lr", "0.25",
                     "--save-every", "2"]
    with pytest.raises(UserError, match="blocks=1 2: '1 2' is not 4 whole numbers"):
        sweep_space.parse_space(["blocks=1 2"])


def test_a_second_command_with_other_settings_is_refused(tmp_path, capsys):
    base = ["--study", "s", "--sweeps-dir", str(tmp_path), "--trials", "1"]
    study, _, _ = sweep.make_plan(*sweep.read_command(base + ["--space", "max_lr=0.1:0.2", *SMOKE]),
                                  say=print)
    assert study.user_attrs["settings"]["space"] == ["max_lr=0.1:0.2"]
    assert sweep.main(base + ["--space", "max_lr=0.1:0.3", *SMOKE]) == 2
    assert "study s was started with other space" in capsys.readouterr().err


def test_a_study_folder_holds_only_its_own_study(tmp_path, capsys):
    """A folder with a user's own report.md (or study.db) is not taken over; a new study
    (its study.db deleted, or another --storage) never trains in, and reports over, an
    earlier study's trial folders. Both one line, before anything trains."""
    base = ["--trials", "1", "--space", "max_lr=0.1:0.2", "--sweeps-dir", str(tmp_path), *SMOKE]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my own notes\n")
    assert sweep.main(["--study", "mine", *base]) == 2
    assert "holds files sweep.py did not write (report.md)" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "mine")) == ["report.md"]  # no study.db made in it
    sweep.make_plan(*sweep.read_command(["--study", "old", *base]), say=print)
    (tmp_path / "old" / "trial_0").mkdir()  # (its trial, trained)
    os.remove(tmp_path / "old" / "study.db")
    assert sweep.main(["--study", "old", *base]) == 2
    assert "holds the trial folders of another study (trial_0" in capsys.readouterr().err


def test_a_space_file_edited_since_is_another_space(tmp_path, capsys):
    spec = tmp_path / "space.yaml"
    spec.write_text("dropout: [0.1]\n")
    base = ["--study", "y", "--trials", "1", "--space", str(spec), "--sweeps-dir", str(tmp_path), *SMOKE]
    sweep.make_plan(*sweep.read_command(base), say=print)
    spec.write_text("max_lr: [0.05]\n")
    assert sweep.main(base) == 2
    assert "study y was started with other space" in capsys.readouterr().err


def test_a_trial_lost_before_its_worker_named_itself_is_queued_again(tmp_path, monkeypatch):
    """kill -9 between Optuna's ask and the worker's name on the trial: once, the trial
    stayed running for ever and the same command finished without training it."""
    from machinery import sweep_trials
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    study.ask()  # running, no worker named
    sweep_trials.recover_lost(study, say=lambda line: None)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]  # (a minute's grace)
    monkeypatch.setattr(sweep_trials, "UNCLAIMED_S", 0)
    sweep_trials.recover_lost(study, say=lambda line: None)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


@pytest.mark.slow
def test_trials_that_keep_failing_stop_the_sweep_and_a_grids_failed_cell_stays_failed(
        tiny_data, tmp_path, capsys, monkeypatch):
    """Settings that cannot train (a device the machine lacks) once made new trials for ever;
    now three failures in a row stop the worker, in one line. A grid's failed cell is not
    replaced by a second run of a finished one."""
    no_gpu = [*_fixed(tiny_data, 1), "--device", "cuda"]  # (the data is checked before trials)
    assert sweep.main(["--study", "f", "--trials", "5", "--space", "dropout=0.1,0.2",
                       "--sweeps-dir", str(tmp_path), "--", *no_gpu]) == 1
    err = capsys.readouterr().err
    assert "3 trials in a row failed (trials 0, 1, 2)" in err and "cuda" in err.lower()
    assert len(_study(tmp_path, "f").get_trials()) == 3
    # a grid whose first cell cannot train (no GPU here): the other trains once, no more;
    # the same command again tries the failed cell again (its cause may be fixed), only it.
    # (Stand-in runs: train.py's own failure is the one above.)
    from test_sweep_scoring import _fake_children
    seen = _fake_children(monkeypatch, tmp_path, epochs=1, sleep=0, fails_with="cuda")
    grid = ["--study", "g", "--sampler", "grid", "--space", "device=cuda,cpu",
            "--sweeps-dir", str(tmp_path), "--", *_fixed(tiny_data, 1)]
    assert sweep.main(grid) == 0
    trials = _study(tmp_path, "g").get_trials()
    assert sorted((t.params.get("device"), t.state.name) for t in trials) == [
        ("cpu", "COMPLETE"), ("cuda", "FAIL")]
    assert sweep.main(grid) == 0
    trials = _study(tmp_path, "g").get_trials()
    assert sorted((t.params.get("device"), t.state.name) for t in trials) == [
        ("cpu", "COMPLETE"), ("cuda", "FAIL"), ("cuda", "FAIL")]
    assert len(seen) == 3  # the cpu cell ran once


def test_a_trial_the_user_stops_again_and_again_is_queued_every_time(tmp_path):
    """Ctrl-C four times on one trial: Optuna's retry limit (3) once dropped it, and the
    same command then trained nothing."""
    from machinery import sweep_trials
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    trial = study.ask()
    for _ in range(5):
        study.tell(trial, state=TrialState.FAIL)
        sweep_trials.retry_callback(limit=None)(study, study._storage.get_trial(trial._trial_id))
        trial = study.ask()
    assert trial.number == 5 and len(study.get_trials()) == 6


def test_a_worker_in_a_process_not_named_sweep_is_alive(tmp_path):
    """sweep.main() run from a notebook or a wrapper: its process's command line does not
    say 'sweep'; once its live trials were taken for lost and trained twice at once."""
    import socket
    from machinery import sweep_trials
    kernel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
        trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("worker_pid", kernel.pid)
        sweep_trials.recover_lost(study, say=lambda line: None)
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    finally:
        kernel.kill()
        kernel.wait()


def test_a_sweeps_dir_with_a_question_mark_holds_its_own_database(tmp_path):
    folder = tmp_path / "q?mode=ro%41"
    sweep.make_plan(*sweep.read_command(["--study", "s", "--trials", "1", "--space",
                                         "max_lr=0.1:0.2", "--sweeps-dir", str(folder), "--",
                                         "--smoke"]), say=print)
    assert (folder / "s" / "study.db").is_file() and not (tmp_path / "qA").exists()
