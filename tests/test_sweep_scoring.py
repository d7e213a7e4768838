"""What a sweep's trial is scored on, and what makes two commands one study: trials run
every epoch (no target accuracy stops them), a trial that trained every epoch is complete,
the score is named by the split it was measured on, fixed flags are compared as parsed,
every value of an integer range is checked, and a continued seeded search proposes new
settings. Most run no training: a stand-in child writes the metrics a run would."""
import os
import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

import sweep
from machinery import sweep_trials
from machinery.sweep_trials import Plan, Worker

# a stand-in for train.py: writes every epoch's metrics at once, then stays alive a while
# (as a run does for its final test and Grad-CAM) and exits 0
FAKE_RUN = textwrap.dedent("""
    import os, sys, time
    out = sys.argv[sys.argv.index("--out-dir") + 1]
    os.makedirs(os.path.join(out, "training_metrics_from_ckpt"), exist_ok=True)
    rows = ["epoch,val_acc"] + [f"{e},{10 + e}" for e in range(EPOCHS)]
    with open(os.path.join(out, "training_metrics_from_ckpt", "metrics_from_ckpt.csv"), "w") as f:
        f.write("\\n".join(rows) + "\\n")
    time.sleep(SLEEP)
""")


def _fake_children(monkeypatch, tmp_path, epochs, sleep=3, fails_with=None):
    """train.py's children replaced by FAKE_RUN; a child whose flags hold fails_with fails
    at once, as a run refused in one line does. Returns the commands, as started."""
    script = tmp_path / "fake_run.py"
    fail = (f"if {fails_with!r} in sys.argv:\n    sys.exit('error: cannot run on {fails_with}')\n"
            if fails_with else "")
    script.write_text("import sys\n" + fail + FAKE_RUN.replace("EPOCHS", str(epochs))
                      .replace("SLEEP", str(sleep)))
    real = subprocess.Popen
    seen = []

    def popen(cmd, **kwargs):
        seen.append(cmd)
        return real([sys.executable, str(script), *cmd[2:]], **kwargs)
    monkeypatch.setattr(sweep_trials.subprocess, "Popen", popen)
    monkeypatch.setattr(sweep_trials, "POLL_S", 0.1)  # (a stand-in's epochs come at once)
    return seen


def test_a_trial_that_trained_every_epoch_is_complete_not_pruned(tmp_path, monkeypatch):
    """The pruner decided on the last epoch while the run did its final test: the trial
    had trained every epoch, yet counted as pruned and dropped out of Best."""
    _fake_children(monkeypatch, tmp_path, epochs=3)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=1000.0))  # hopeless
    plan = Plan([], str(tmp_path), 1, "val_acc", lambda t: {}, epochs=lambda params: 3)
    said = []
    Worker(study, plan, say=said.append).run()
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == 12.0, said


def test_trials_run_every_epoch_unless_the_fixed_flags_give_a_target(tmp_path):
    args = ["--study", "t", "--trials", "2", "--space", "dropout=0.1:0.3",
            "--sweeps-dir", str(tmp_path), "--", "--smoke", "--epochs", "3"]
    _, plan, _ = sweep.make_plan(*sweep.read_command(args), say=print)
    assert plan.fixed_argv[-2:] == ["--target-accuracy", "0"]
    _, plan, _ = sweep.make_plan(*sweep.read_command(
        ["--study", "u", *args[2:], "--target-accuracy", "60"]), say=print)
    assert plan.fixed_argv.count("--target-accuracy") == 1 and plan.fixed_argv[-1] == "60"


def test_the_same_fixed_flags_written_otherwise_are_the_same_study(tmp_path, capsys):
    base = ["--study", "s", "--trials", "2", "--space", "dropout=0.1:0.3", "--sweeps-dir", str(tmp_path)]
    sweep.make_plan(*sweep.read_command([*base, "--", "--smoke", "--epochs", "3", "--data-dir",
                                         "photos/", "--max-lr=0.2"]), say=print)
    sweep.make_plan(*sweep.read_command([*base, "--", "--max-lr", "0.2", "--data-dir", "photos",
                                         "--epochs", "3", "--smoke"]), say=print)  # one study
    with pytest.raises(sweep.UserError, match=r"other fixed \(--max-lr 0.2 there, 0.3 here\)"):
        sweep.make_plan(*sweep.read_command([*base, "--", "--max-lr", "0.3", "--data-dir", "photos",
                                             "--epochs", "3", "--smoke"]), say=print)


@pytest.mark.parametrize("url, command", [
    ("journal:sweeps/j.log", "optuna-dashboard sweeps/j.log"),
    ("journal:///abs/j.log", "optuna-dashboard /abs/j.log"),
    ("sqlite:///s.db", "optuna-dashboard sqlite:///s.db"),
    ("postgresql+psycopg://me:secret@host/db", "optuna-dashboard 'postgresql+psycopg://me:***@host/db'"),
])
def test_the_dashboard_hint_is_a_command_for_the_storage(url, command):
    """`optuna-dashboard journal:PATH` fails: the dashboard takes a journal as its file."""
    from machinery.sweep_report import dashboard_command
    assert dashboard_command(url) == command


def test_a_study_scored_on_the_test_set_says_so_in_its_report(tmp_path, monkeypatch):
    _fake_children(monkeypatch, tmp_path, epochs=1, sleep=0)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    plan = Plan([], str(tmp_path), 1, "test_acc", lambda t: {}, epochs=lambda params: 1)
    Worker(study, plan, say=lambda line: None).run()
    from machinery.sweep_report import write_report
    assert "Scored on the test set" in open(write_report(study, plan)).read()
    plan.metric = "val_acc"
    assert "Scored on the test set" not in open(write_report(study, plan)).read()


@pytest.mark.slow
@pytest.mark.pictures  # (the report's pictures: drawn)
def test_the_report_draws_the_history_and_every_trials_curve(tmp_path, monkeypatch):
    """(test_sweep's real sweeps write placeholders: this is where the pictures are looked at)"""
    from PIL import Image
    from machinery.sweep_report import write_report
    _fake_children(monkeypatch, tmp_path, epochs=3, sleep=0)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    plan = Plan([], str(tmp_path), 2, "val_acc",
                lambda t: {"max_lr": t.suggest_float("max_lr", 0.01, 1.0, log=True)},
                epochs=lambda params: 3)
    Worker(study, plan, say=lambda line: None).run()
    write_report(study, plan)
    for picture in ("history.png", "curves.png"):
        with Image.open(tmp_path / picture) as im:
            assert im.width > 300 and im.height > 200, picture
        assert (tmp_path / picture).stat().st_size > 5000, picture


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_seeded_study_continued_proposes_settings_it_has_not_tried(tmp_path, sampler):
    """After a Ctrl-C, or with a larger --trials, the same --sampler-seed once proposed the
    very settings of the study's first trials again."""
    command = ["--study", "s", "--trials", "6", "--sampler", sampler, "--sampler-seed", "5",
               "--space", "max_lr=0.001:1:log", "--sweeps-dir", str(tmp_path), "--", "--smoke"]
    proposed = []
    for _ in range(2):  # the command, stopped after 3 trials, then run again
        study, plan, _ = sweep.make_plan(*sweep.read_command(command), say=print)
        for _ in range(3):
            trial = study.ask()
            proposed.append(plan.params_of(trial)["max_lr"])
            study.tell(trial, 50.0)
    assert len(set(proposed)) == 6, proposed


def test_repeat_best_follows_a_new_best_and_keeps_the_earlier_repeat(tmp_path, monkeypatch):
    """A study extended after --repeat-best, with a new best: once exit 2 with 'give the
    same' (which the user cannot), and the earlier repeat's folders left the report."""
    import threading
    _fake_children(monkeypatch, tmp_path, epochs=1, sleep=0)
    args, fixed, explicit = sweep.read_command(
        ["--study", "r", "--trials", "3", "--space", "dropout=0.1,0.2,0.3", "--repeat-best", "2",
         "--sweeps-dir", str(tmp_path), "--", "--smoke"])
    study, plan, url = sweep.make_plan(args, fixed, explicit, say=print)

    study.enqueue_trial({"dropout": 0.1})
    trial = study.ask()
    plan.params_of(trial)
    study.tell(trial, 50.0)
    first = sweep.repeat_best(args, study, plan, url, print, threading.Event())
    assert [r["current"] for r in first] == [True] and len(first[0]["values"]) == 2
    study.enqueue_trial({"dropout": 0.3})
    trial = study.ask()
    plan.params_of(trial)
    study.tell(trial, 90.0)  # (dropout 0.3: a new best)
    second = sweep.repeat_best(args, study, plan, url, print, threading.Event())
    assert [r["current"] for r in second] == [True, False]
    assert second[0]["best"] != second[1]["best"] and all(len(r["values"]) == 2 for r in second)
    from machinery.sweep_report import write_report
    report = open(write_report(study, plan, second)).read()
    assert report.count("(n=2)") == 2 and "(the best now)" in report
    folders = sorted(n for n in os.listdir(tmp_path / "r") if n.startswith("repeat_best"))
    assert len(folders) == 4, folders


def test_repeat_best_given_more_seeds_later_trains_only_the_new_ones(tmp_path, monkeypatch):
    """--repeat-best 2, then the same command with --repeat-best 3: one more seed trains,
    the two before are kept (once: refused, after the whole search, with 'give the same')."""
    import threading
    seen = _fake_children(monkeypatch, tmp_path, epochs=1, sleep=0)
    args, fixed, explicit = sweep.read_command(
        ["--study", "m", "--trials", "1", "--space", "dropout=0.1,0.2", "--repeat-best", "2",
         "--sweeps-dir", str(tmp_path), "--", "--smoke"])
    study, plan, url = sweep.make_plan(args, fixed, explicit, say=print)
    trial = study.ask()
    plan.params_of(trial)
    study.tell(trial, 50.0)
    first = sweep.repeat_best(args, study, plan, url, print, threading.Event())
    assert first[0]["seeds"] == [2, 3] and len(seen) == 2
    args.repeat_best = 3
    more = sweep.repeat_best(args, study, plan, url, print, threading.Event())
    assert more[0]["seeds"] == [2, 3, 4] and len(more[0]["values"]) == 3
    assert len(seen) == 3  # the third seed alone trained
    from machinery.sweep_report import write_report
    assert "(n=3) | 2, 3, 4 |" in open(write_report(study, plan, more)).read()


def test_each_claims_space_file_holds_the_seeds_setting_and_every_cell_is_a_valid_run():
    """spaces/*.yaml, the ablations' (docs/ablations.md): each parses, each cell is a run
    train.py accepts, and each holds the seed's own setting, the row it is compared to."""
    import glob

    from conftest import ROOT
    from machinery import config, sweep_space
    seed = config.Config()
    files = sorted(glob.glob(os.path.join(ROOT, "spaces", "*.yaml")))
    assert {os.path.basename(f) for f in files} >= {"maxpool.yaml", "blocks.yaml", "dropout.yaml",
                                                     "cutmix.yaml", "label_smoothing.yaml", "seeds.yaml"}
    for path in files:
        (dim,) = sweep_space.parse_space([path])
        sweep_space.check_space([dim], {})
        ours = getattr(seed, dim.name)
        typed = [sweep_space._typed(dim.name, c) for c in dim.choices]
        assert any(t == ours or (isinstance(t, list) and tuple(t) == tuple(ours)) for t in typed), \
            (path, ours, typed)
