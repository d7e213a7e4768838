"""`train.py --find-lr`, the learning-rate range test: its stop rule and suggestion on
curves made to order, and the command on generated data: its files, its determinism, and
the run folder it leaves as it found it."""
import csv
import hashlib
import math
import os
import shutil

import numpy as np
import pytest

from conftest import train_here
from machinery import lr_range

TINY = ["--blocks", "1", "1", "1", "1", "--width", "8", "--batch-size", "32",
        "--num-workers", "0"]



def test_the_test_stops_once_the_smoothed_loss_passes_four_times_its_best():
    ramp = lr_range.Ramp(1e-6, 10, 300)
    # falls from 5 to 1 over 150 steps, then grows by 10% a step
    loss = [5 - 4 * min(k, 150) / 150 for k in range(300)]
    for k in range(151, 300):
        loss[k] = loss[k - 1] * 1.1
    curve = lr_range.record(iter(loss), ramp, disable=True)
    ema, n = curve["ema"], len(curve["ema"])
    assert n < 300 and "passed 4x its best" in curve["stopped"]
    assert ema[-1] > 4 * min(ema) and ema[-2] <= 4 * min(ema[:-1])  # at the first crossing
    assert curve["lr"][-1] == pytest.approx(ramp.lr(n - 1))
    # a loss that is not finite ends the test at once, and is not recorded
    curve = lr_range.record(iter([3.0] * 20 + [math.nan] + [3.0] * 50), ramp, disable=True)
    assert len(curve["loss"]) == 20 and "not finite" in curve["stopped"]
    # a single early spike (the first steps of a fresh network) does not stop it
    curve = lr_range.record(iter([3.0, 40.0] + [3.0] * 100), lr_range.Ramp(1e-6, 1, 100),
                            disable=True)
    assert len(curve["loss"]) == 100 and "ramp ended" in curve["stopped"]


def test_the_suggestion_is_where_the_loss_climbs_back_past_its_floor_whatever_the_noise():
    """The rule measured on real photos (docs/choosing-a-recipe.md): the longest fall's
    floor, then the LR where the loss has climbed back half that fall. "Floor / 10" (once
    the rule) cost 15 to 20 points there."""
    rng = np.random.default_rng(0)
    ramp, n = lr_range.Ramp(1e-7, 10, 200), 200
    k = np.arange(n)
    # flat at 4.6, a fall to 2 between steps 100 and 160, then a blow-up; noise all along,
    # an early spike, and an early dip far below the valley floor, wide enough to pass the
    # smoothing (its minimum is the curve's: a rule that takes the minimum is fooled)
    loss = np.where(k < 100, 4.6, np.where(k < 160, 4.6 - 2.6 * (k - 100) / 60,
                                           2.0 * 1.04 ** (k - 160)))
    loss = loss * (1 + 0.03 * rng.standard_normal(n))
    loss[20:30], loss[12] = 0.5, 30.0
    curve = {"lr": [ramp.lr(i) for i in k], "loss": list(loss), "ema": list(loss)}
    pick = lr_range.suggest(curve)
    first, last = pick["valley"]
    assert 150 <= last <= 170 and 95 <= first <= 115, pick["valley"]  # the fall, not the plateau
    assert pick["floor"] == curve["lr"][last]
    # climbed back to 3.3 (2 + half of 2.6): 2 * 1.04 ** 13 at step 173
    assert 168 <= pick["edge"] <= 178 and pick["lr"] == curve["lr"][pick["edge"]]
    assert "climbed back 50%" in pick["rule"] and pick["trust"] is None
    # noise around a flat line is no valley
    flat = dict(curve, loss=list(4.6 * (1 + 0.01 * rng.standard_normal(n))))
    assert lr_range.suggest(flat)["lr"] is None
    # a fall of 3% in noise as large: a suggestion, called rough
    small = 4.6 - 0.14 * np.clip((k - 100) / 60, 0, 1) + 0.1 * np.clip((k - 160) / 20, 0, 2)
    small = small + 0.02 * rng.standard_normal(n)
    pick = lr_range.suggest(dict(curve, loss=list(small)))
    assert pick["lr"] is not None and pick["trust"].startswith("rough: the loss fell only")
    text = lr_range.summary(curve | {"stopped": "x"}, pick, ("a.csv", "a.png"), [])
    assert "(rough: the loss fell only" in text and "try a decade around it" in text


def test_a_ramp_that_ends_before_the_loss_turns_back_up_gives_no_suggestion():
    """Found by the hostile pass: a floor, then a ramp's end before the loss climbed back,
    once suggested --lr-end itself, "where training turns unstable"."""
    ramp = lr_range.Ramp(1e-3, 0.08, 60)
    loss = [5 - k / 12 for k in range(40)] + [5 - 39 / 12 + 0.01 * k for k in range(20)]
    pick = lr_range.suggest(lr_range.record(iter(loss), ramp, disable=True))
    assert pick["lr"] is None and "had not turned back up" in pick["why"]
    assert "raise --lr-end" in pick["why"]
    # the same, then a blow-up before it climbed back half-way: the last LR measured
    curve = lr_range.record(iter(loss[:50] + [math.nan]), ramp, disable=True)
    pick = lr_range.suggest(curve)
    assert pick["lr"] == curve["lr"][-1] and "blew up by" in pick["rule"]


def test_a_blow_up_at_the_ramps_start_asks_for_a_lower_start():
    """It once said "narrow the ramp (a lower --lr-end)", and for a loss rising from a high
    start "widen it": only a lower --lr-start helps either."""
    ramp = lr_range.Ramp(1, 10, 100)
    curve = lr_range.record(iter([3.0] * 4 + [math.nan]), ramp, disable=True)
    assert "lower --lr-start" in lr_range.suggest(curve)["why"]
    rising = lr_range.record(iter([3.0 * 1.01 ** k for k in range(100)]), ramp, disable=True)
    assert "only rose from the ramp's start" in lr_range.suggest(rising)["why"]
    assert "lower --lr-start" in lr_range.suggest(rising)["why"]


def test_the_suggested_command_keeps_the_users_flags_and_drops_the_tests_own():
    argv = ["--dataset", "folder", "--data-dir", "my photos", "--find-lr", "--lr-start=1e-6",
            "--lr-end", "3", "--find-lr-steps", "100", "--max-lr", "0.5", "--epochs", "30"]
    line = lr_range.training_command(argv, 0.0234)
    assert line == "python train.py --dataset folder --data-dir 'my photos' --epochs 30 --max-lr 0.023"


def _files(folder, skip):
    """{relative path: sha256} of every file under folder but `skip`."""
    out = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != skip]
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(),
                                                      os.stat(path).st_mtime_ns)
    return out


@pytest.mark.slow
@pytest.mark.pictures  # (its plot: drawn)
def test_a_range_test_in_a_trained_runs_folder_writes_only_lr_find(smoke_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)  # (copy2: the times kept, so a rewrite shows)
    before = _files(out, skip="lr_find")
    proc = train_here("--smoke", "--find-lr", "--find-lr-steps", "40", "--out-dir", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _files(out, skip="lr_find") == before  # no checkpoint, lock, metric or log touched
    with open(out / "lr_find" / "lr_find.csv") as f:
        rows = list(csv.DictReader(f))
    assert 20 <= len(rows) <= 40 and list(rows[0]) == ["step", "lr", "loss", "ema", "centred"]
    assert float(rows[0]["lr"]) == pytest.approx(1e-7)
    lrs = [float(r["lr"]) for r in rows]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # one step per rate, rising
    assert (out / "lr_find" / "lr_find.png").stat().st_size > 10_000
    said = proc.stdout
    assert "range test: " in said and ("suggested --max-lr" in said or "no suggestion" in said)
    if "suggested" in said:
        assert f"train with: python train.py --smoke --out-dir {out} --max-lr" in said


@pytest.mark.slow
def test_the_same_seed_gives_the_same_curve_across_epochs_with_accumulation(tiny_data, tmp_path):
    args = ["--dataset", "cifar100", "--data-dir", tiny_data, *TINY, "--accum-steps", "2",
            "--find-lr", "--find-lr-steps", "25", "--lr-start", "1e-4", "--lr-end", "1"]
    curves = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        proc = train_here(*args, "--seed", seed, "--out-dir", tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-2000:]
        curves.append((tmp_path / name / "lr_find" / "lr_find.csv").read_text())
    assert len(curves[0].splitlines()) == 26  # 25 steps: 300 images in batches of 32 -> 3 epochs
    assert curves[0] == curves[1]
    assert curves[0] != curves[2]


@pytest.mark.parametrize("flags, said", [
    (["--find-lr", "--lr-start", "1", "--lr-end", "0.1"], "--lr-end 0.1 must be above --lr-start 1"),
    (["--find-lr", "--lr-start", "0"], "must be positive"),
    (["--find-lr", "--find-lr-steps", "3"], "--find-lr-steps must be at least 20"),
    (["--find-lr", "--resume", "auto"], "--find-lr runs alone: leave out --resume"),
    (["--find-lr", "--lr-end", "inf"], "must be positive and finite"),  # (once: --max-lr inf)
    (["--find-lr", "--lr-start", "1e-320", "--lr-end", "1e308"], "is no ramp a float can hold"),
    (["--find-lr", "--find-lr-steps", "10" * 12], "--find-lr-steps must be at most 100,000"),
    (["--lr-start", "1e-5"], "--lr-start is a flag of --find-lr"),  # (once: a 200-epoch run)
    (["--find-lr-steps", "30"], "--find-lr-steps is a flag of --find-lr"),
    (["--tta"], "--tta is a flag of --evaluate"),
])
def test_bad_range_flags_are_one_line_before_anything_is_made(flags, said, tmp_path):
    proc = train_here("--smoke", *flags, "--out-dir", tmp_path / "out")
    assert proc.returncode == 2
    assert said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_steps_loss_that_blew_up_ends_the_test_it_is_not_a_zero(tiny_data, tmp_path):
    """Training counts a non-finite step as skipped (loss 0); the range test must see it as
    the blow-up it is, not as a loss of 0 that drags the curve down into a suggestion of
    1e13 (a review found exactly that)."""
    proc = train_here("--dataset", "cifar100", "--data-dir", tiny_data, *TINY, "--grad-clip", "0",
                      "--find-lr", "--find-lr-steps", "20", "--lr-start", "1e-3", "--lr-end", "1e60",
                      "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # (which of the two blow-up rules sees it first varies with the threads' float sums)
    assert ("stopped because the loss was not finite" in proc.stdout or
            "stopped because the smoothed loss passed 4x its best" in proc.stdout), proc.stdout
    with open(tmp_path / "lr_find" / "lr_find.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) < 20 and all(float(r["loss"]) > 1 for r in rows)  # no zeros recorded
    if "suggested --max-lr" in proc.stdout:  # (a blow-up's zeros once gave 2.3e+13)
        assert float(proc.stdout.split("suggested --max-lr ")[1].split()[0]) < 1


def test_no_floor_is_claimed_for_a_curve_still_falling_at_the_ramps_end():
    ramp = lr_range.Ramp(1e-3, 1e-2, 60)
    curve = lr_range.record(iter([5 - k / 30 for k in range(60)]), ramp, disable=True)
    pick = lr_range.suggest(curve)
    assert pick["lr"] is None and "still falling when the ramp ended" in pick["why"]
    # the same curve, then a blow-up: its floor is measured, and the edge past it
    curve = lr_range.record(iter([5 - k / 30 for k in range(50)] + [50.0] * 10), ramp, disable=True)
    pick = lr_range.suggest(curve)
    assert pick["floor"] <= pick["lr"] <= curve["lr"][-1]


def test_the_printed_command_starts_as_the_test_did(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/opt/repo/train.py"])
    assert lr_range.launcher(1) == "python /opt/repo/train.py"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert lr_range.launcher(2) == "torchrun --standalone --nproc_per_node=2 /opt/repo/train.py"
    assert lr_range.launcher(4).startswith("torchrun <the flags")  # two machines: not guessed


def test_a_file_name_held_by_a_folder_is_one_line_before_the_work(tmp_path, monkeypatch):
    (tmp_path / "lr_find" / "lr_find.csv").mkdir(parents=True)
    monkeypatch.setattr(lr_range, "record", lambda *a, **k: pytest.fail("the test ran"))
    proc = train_here("--smoke", "--find-lr", "--out-dir", tmp_path)
    assert proc.returncode == 2 and "lr_find.csv is a folder" in proc.stderr


@pytest.mark.parametrize("signum", [2, 15])
def test_a_stopped_test_says_so_and_leaves_no_folder(tmp_path, monkeypatch, signum):
    """Ctrl-C or SIGTERM during the test: one line ("stopped by ..."), exit 128 + signal,
    and the lr_find/ it made is gone (its files are written only at the end)."""
    import signal
    def stopped(*a, **k):
        os.kill(os.getpid(), signum)
        pytest.fail("the signal did not stop the test")
    monkeypatch.setattr(lr_range, "record", stopped)
    proc = train_here("--smoke", "--find-lr", "--out-dir", tmp_path)
    assert proc.returncode == 128 + signum
    assert f"stopped by {signal.Signals(signum).name}: the range test wrote nothing" in proc.stderr
    assert not (tmp_path / "lr_find").exists()
    # an --out-dir that was not there: the folders made for it go too (not the data's)
    proc = train_here("--dataset", "cifar100", "--data-dir", tmp_path / "nodata", "--no-download",
                      "--find-lr", "--out-dir", tmp_path / "deep" / "x")
    assert proc.returncode == 2 and not (tmp_path / "deep").exists()
    proc = train_here("--find-lr", "--smoke", "--out-dir", tmp_path / "deep" / "x")
    # (and its generated data: once data/smoke stayed, while it said it wrote nothing)
    assert proc.returncode == 128 + signum and not (tmp_path / "deep").exists()
