"""train.py's run folder under hostile input (issue: hostile input, its review): where a
resumed run goes on, what a finished run resumed elsewhere leaves, what a failed start
moves, and flags that were taken for others. One row per case, in this process."""
import os
import shutil

import pytest
import torch

from conftest import train_here


def flags(data, out, *more):
    return ["--data-dir", data, "--blocks", "1", "1", "1", "1", "--width", "8", "--epochs", "2",
            "--batch-size", "100", "--num-workers", "0", "--gradcam-images", "0",
            "--target-accuracy", "0", "--save-every", "1", "--out-dir", out, *more]


@pytest.fixture(scope="module")
def done(tiny_data, tmp_path_factory):
    """A finished 2-epoch run (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("done") / "run"
    assert train_here(*flags(tiny_data, out)).returncode == 0
    return out


def test_a_file_resumed_from_another_folder_goes_on_in_its_own(done, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(done, run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the checkpoint's own --out-dir is another folder's path
    proc = train_here("--resume", run / "checkpoints" / "checkpoint_epoch_0.pt")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.listdir(elsewhere) == []
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and os.path.samefile(last["config"]["out_dir"], run)


def test_a_finished_run_resumed_into_a_new_folder_leaves_where_it_stands(done, tmp_path):
    new = tmp_path / "new"
    proc = train_here("--resume", done / "checkpoints" / "last.pt", "--out-dir", new)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.load(new / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    proc = train_here("--resume", "auto", "--out-dir", new)
    assert proc.returncode == 0 and "starting fresh" not in proc.stdout
    assert "epoch   0/1" not in proc.stdout and "epoch   1/1" not in proc.stdout  # nothing retrained


def test_archive_moves_nothing_when_the_log_cannot_be_opened(done, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(done, run)
    os.remove(run / "training_logs.md")
    os.mkdir(run / "training_logs.md")  # (a folder where the log goes)
    before = sorted(os.listdir(run / "checkpoints"))
    proc = train_here(*flags(tiny_data, run, "--archive"))
    assert proc.returncode == 1 and "training_logs.md" in proc.stderr
    assert sorted(os.listdir(run / "checkpoints")) == before


REFUSED = [  # (case, flags, the line says)
    ("an abbreviated flag", ["--epoch", "3"], "unrecognized arguments: --epoch 3"),
    ("an empty --out-dir", ["--out-dir", ""], "--out-dir"),
]


@pytest.mark.parametrize("case, more, says", REFUSED, ids=[r[0] for r in REFUSED])
def test_flags_that_would_be_taken_for_others_are_one_line(tiny_data, tmp_path, case, more, says):
    proc = train_here(*flags(tiny_data, tmp_path / "run"), *more)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run" / "checkpoints")


def test_the_logs_settings_line_reads_back_in_a_shell():
    """'settings that differ' (the log, training_logs.md) as one would type them: a path
    with a space or a quote is quoted, so the line pasted into a shell gives the same run."""
    import shlex
    from machinery.config import Config, parse_args
    from machinery.logs import changed_settings
    cfg = Config(out_dir="exp 1", data_dir="it's $HOME", blocks=[3, 4, 6, 3], smoke=True)
    line = changed_settings(cfg)
    assert "--out-dir 'exp 1'" in line
    again, _ = parse_args(shlex.split(line))
    assert (again["out_dir"], again["data_dir"], again["blocks"]) == ("exp 1", "it's $HOME", [3, 4, 6, 3])


def test_an_epoch_without_a_step_is_one_line_not_onecycles_error():
    """Fewer training images than torchrun processes: every rank's epoch has no step.
    OneCycleLR's 'Expected positive integer total_steps' became a crash log in the run's
    folder; now it is the user's line."""
    import train
    from machinery.config import Config, UserError
    with pytest.raises(UserError, match="fewer than the processes"):
        train.make_optimizer(torch.nn.Linear(2, 2), Config(), 0)


@pytest.mark.slow
def test_a_range_test_in_a_finished_runs_folder_says_its_command_needs_archive(done, tmp_path,
                                                                             monkeypatch):
    """The command the range test prints would be refused in a folder that holds another
    (not --smoke) run: the test says so, and how, under the command."""
    from machinery import lr_range
    out = tmp_path / "run"
    shutil.copytree(done, out)
    data_dir = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["config"]["data_dir"]
    pick = {"lr": 0.01, "floor": 0.1, "rule": "(a valley made to order)", "valley": (0, 1)}
    monkeypatch.setattr(lr_range, "suggest", lambda curve: pick)  # (whatever the tiny curve)
    proc = train_here(*flags(data_dir, out), "--find-lr", "--find-lr-steps", "20")
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = proc.stdout.split("train with: ", 1)[1].splitlines()
    assert "--max-lr 0.01" in said[0]
    assert "holds another run's checkpoints" in said[1] and "add --archive" in said[1]
