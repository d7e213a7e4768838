"""A run must survive being killed anywhere and come back bit-identical (issue: resilience).

Kills and signals need a process of their own (tests/faulty_run.py); every other fault is
injected into a run in the test's own process (conftest.train_here), which is the same
code without seconds of start-up. The two are bit-identical (the reference runs here)."""
import os
import shutil
import signal

import pytest
import torch

from conftest import run_script, train_here

# 256 images at batch 32: 8 steps per epoch, 3 epochs, a checkpoint every epoch. CIFAR-10's
# format: what is tested here does not depend on the classes, and 100 of them cost each
# finished run a second of drawing its confusion matrix.
EPOCHS, STEPS = 3, 8


def flags(data_dir, out_dir, *extra):
    return ["--dataset", "cifar10", "--data-dir", data_dir, "--out-dir", out_dir,
            "--blocks", "1", "1", "1", "1", "--width", "8", "--epochs", str(EPOCHS),
            "--batch-size", "32", "--num-workers", "0", "--save-every", "1",
            "--keep-checkpoints", "2", "--gradcam-images", "0", "--target-accuracy", "0", *extra]


def faulty(fault, *args):
    """A run in a process of its own, for the faults that end it (kills, signals)."""
    return run_script("tests/faulty_run.py", fault, *args)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from machinery import data
    root = str(tmp_path_factory.mktemp("cifar_small"))
    data.write_synthetic_dataset(root, "cifar10", n_train=256, n_test=64, seed=7)
    return root


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory):
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("reference")
    proc = train_here(*flags(small_data, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def reference_accumulated(small_data, tmp_path_factory):
    """The same run with --accum-steps 2 (micro-batches of 16), never interrupted."""
    out = tmp_path_factory.mktemp("reference-accum")
    proc = train_here(*flags(small_data, out, *ACCUM))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "as 2 micro-batches of 16: BatchNorm sees those" in proc.stdout
    return out


ACCUM = ("--accum-steps", "2")


def load(out, name="last.pt"):
    return torch.load(os.path.join(out, "checkpoints", name), weights_only=True)


def assert_same_run(a, b):
    for k, v in a["model_state_dict"].items():
        assert torch.equal(v, b["model_state_dict"][k]), k
    for k in ["train_losses", "test_losses", "train_acc", "test_acc", "test_top5", "lrs"]:
        assert a[k] == b[k], k
    sa, sb = a["optimizer_state_dict"]["state"], b["optimizer_state_dict"]["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


@pytest.mark.slow
def test_killed_anywhere_and_resumed_each_time_ends_bit_identical(small_data, reference,
                                                                  reference_accumulated, tmp_path):
    # with gradient accumulation, whose micro-batches a kill may fall between
    # Counted per process: steps since that process started, checkpoint files it wrote.
    faults = ["step:3:KILL",   # epoch 0, before any checkpoint exists
              "write:2",       # half-way through writing a checkpoint file
              "step:5:INT",    # Ctrl-C mid-epoch: saves the position inside the epoch
              "rename:1",      # checkpoint written but not yet renamed into place
              "step:6:TERM",   # preemption mid-epoch
              "micro:7:KILL",  # between the two micro-batches of a step (--accum-steps 2)
              "step:4:KILL"]
    kills = []
    for fault in faults:
        proc = faulty(fault, *flags(small_data, tmp_path, "--resume", "auto", *ACCUM))
        kills.append((fault, proc.returncode))
        if proc.returncode == 0:
            break
    while proc.returncode != 0:  # finish the run
        proc = train_here(*flags(small_data, tmp_path, "--resume", "auto", *ACCUM))
        assert proc.returncode in (0,), proc.stderr[-2000:]
    codes = dict(kills)
    assert codes["step:3:KILL"] == -signal.SIGKILL and codes["step:5:INT"] == 130
    assert codes["step:6:TERM"] == 143 and codes["micro:7:KILL"] == -signal.SIGKILL
    assert_same_run(load(reference_accumulated), load(tmp_path))
    assert load(reference_accumulated)["lrs"] == load(reference)["lrs"]  # the same schedule
    leftovers = [f for f in os.listdir(tmp_path / "checkpoints") if ".tmp" in f]
    assert not any(f.endswith(".pt") for f in leftovers)  # temporary names never look final


@pytest.mark.slow
def test_a_signal_saves_a_resumable_position_and_prints_the_command(small_data, reference,
                                                                   tmp_path):
    # (Ctrl-C's SIGINT takes the same path: its exit status is asserted above)
    proc = faulty("step:11:TERM", *flags(small_data, tmp_path))  # epoch 1, step 3
    assert proc.returncode == 143, proc.stderr[-2000:]
    last = os.path.join(tmp_path, "checkpoints", "last.pt")
    assert f"continue with: python train.py --resume {last}" in proc.stderr
    ckpt = load(tmp_path)
    assert ckpt["position"] == {"epoch": 1, "step": 3} and ckpt["epoch"] == 0
    proc = train_here("--resume", last, "--gradcam-images", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resumed from {last}" in proc.stdout and "epoch   0/2" not in proc.stdout
    assert_same_run(load(reference), load(tmp_path))
    assert (load(reference)["scheduler_state_dict"]["last_epoch"] ==
            load(tmp_path)["scheduler_state_dict"]["last_epoch"] == EPOCHS * STEPS)


@pytest.mark.slow
def test_auto_resume_skips_a_truncated_checkpoint(small_data, reference, tmp_path):
    shutil.copytree(reference / "checkpoints", tmp_path / "checkpoints")
    for name in ("checkpoint_epoch_2.pt", "best_model.pt"):  # as if killed in epoch 2
        os.remove(tmp_path / "checkpoints" / name)
    last = tmp_path / "checkpoints" / "last.pt"
    blob = last.read_bytes()
    last.write_bytes(blob[: len(blob) // 3])
    proc = train_here(*flags(small_data, tmp_path, "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipping cannot read checkpoint {last}" in proc.stderr
    assert "checkpoint_epoch_1.pt" in proc.stdout  # the newest good one: after epoch 1
    assert_same_run(load(reference), load(tmp_path))


@pytest.mark.slow  # (a whole run: 12 s)
def test_auto_resume_without_checkpoints_starts_fresh(small_data, tmp_path):
    proc = train_here(*flags(small_data, tmp_path, "--resume", "auto", "--epochs", "1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no checkpoint yet, starting fresh" in proc.stdout


def test_retention_keeps_exactly_k_periodic_checkpoints(reference):
    names = sorted(f for f in os.listdir(reference / "checkpoints") if f.endswith(".pt"))
    assert names == ["best_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "last.pt"]


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(small_data, tmp_path):
    # NaN from step 10 (epoch 1): 20 bad steps in a row end the run in epoch 3 of 4.
    proc = train_here(*flags(small_data, tmp_path, "--epochs", "4"), fault="nan:10")
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: the loss was not finite for 20 steps in a row")
    ckpt = load(tmp_path)
    assert ckpt["position"] == {"epoch": 1, "step": 0}  # saved after epoch 0, not after 1 or 2
    assert all(torch.isfinite(v.float()).all() for v in ckpt["model_state_dict"].values())


def test_recipe_change_on_resume_needs_force_and_schedule_changes_are_refused(small_data,
                                                                             reference, tmp_path):
    last = str(reference / "checkpoints" / "last.pt")
    proc = train_here("--resume", last, "--cutmix-prob", "0.1", "--out-dir", tmp_path)
    assert proc.returncode == 2 and "--resume-force" in proc.stderr
    proc = train_here("--resume", last, "--max-lr", "0.5", "--resume-force", "--out-dir", tmp_path)
    assert proc.returncode == 2 and "fixed by the checkpoint" in proc.stderr


@pytest.mark.slow
def test_disk_full_during_a_save_is_one_line_and_keeps_the_previous_files(small_data, tmp_path):
    # writes per epoch: last.pt, best_model.pt (when better), checkpoint_epoch_N.pt
    proc = train_here(*flags(small_data, tmp_path), fault="full:4")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == f"error: No space left on device: {tmp_path / 'checkpoints' / 'last.pt'}"
    folder = tmp_path / "checkpoints"
    assert not [f for f in os.listdir(folder) if ".tmp" in f]  # the partial file is removed
    assert load(tmp_path)["position"] == {"epoch": 1, "step": 0}  # epoch 0's, intact
    proc = train_here(*flags(small_data, tmp_path, "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_resuming_a_checkpoint_whose_weights_are_another_network_names_the_difference(
        reference, tmp_path):
    ckpt = load(reference)
    from model import ResNet
    ckpt["model_state_dict"] = ResNet((1, 1, 1, 1), 16, 10).state_dict()  # width 16, not 8
    path = str(tmp_path / "foreign.pt")
    torch.save(ckpt, path)
    proc = train_here("--resume", path, "--out-dir", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: the checkpoint holds weights of another network (width is 16 there, expected 8)"]


# Crashes that are not the user's fault (issue: crashes). Faults are counted per process:
# step 12 is epoch 1, step 3 (8 steps per epoch); the single test batch of 64 images
# makes evaluation call 2 the one after epoch 1.
CRASHES = [
    # fault, workers, the line begins with, position saved in last.pt
    ("worker:12", 2, "error: a data-loading worker was killed (out of memory?); saved epoch 1 "
                     "at step 3/8", {"epoch": 1, "step": 3}),
    ("image:100", 2, "error: a data-loading worker failed: ValueError: image 100 cannot be "
                     "decoded (injected); saved epoch 0 at step", None),
    ("oom:forward:12", 0, "error: out of memory on cpu (", {"epoch": 1, "step": 3}),
    ("oom:backward:12", 0, "error: out of memory on cpu (", {"epoch": 1, "step": 3}),
    ("oom:eval:2", 0, "error: out of memory on cpu (", {"epoch": 1, "step": 8}),
    ("raise:12", 0, "error: RuntimeError: a bug (injected); saved epoch 1 at step 3/8",
     {"epoch": 1, "step": 3}),
]


def crash_lines(proc):
    """stderr's lines less the progress bars (tqdm redraws them with carriage returns)."""
    lines = proc.stderr.replace("\r", "\n").splitlines()
    return [ln for ln in lines if ln.strip() and not ln.startswith("epoch ")]


@pytest.mark.parametrize("fault, workers, begins, position", CRASHES,
                         ids=[c[0] for c in CRASHES])
def test_a_crash_exits_in_one_line_keeps_the_last_step_and_resumes_bit_identical(
        small_data, reference, tmp_path, fault, workers, begins, position):
    proc = train_here(*flags(small_data, tmp_path, "--num-workers", workers), fault=fault)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert crash_lines(proc) == [crash_lines(proc)[-1]], "more than the one error line"
    line = crash_lines(proc)[-1]
    assert line.startswith(begins), line
    assert line.endswith(f"traceback in {tmp_path / 'crash.log'}")
    assert "Traceback (most recent call last)" in (tmp_path / "crash.log").read_text()
    saved = load(tmp_path)["position"]
    if position:
        assert saved == position
    assert f"saved epoch {saved['epoch']} at step {saved['step']}/{STEPS}" in line
    proc = train_here(*flags(small_data, tmp_path, "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_run(load(reference), load(tmp_path))


def test_a_failure_while_updating_keeps_the_previous_checkpoint(small_data, reference, tmp_path):
    proc = train_here(*flags(small_data, tmp_path), fault="update:12")  # epoch 1, after step 3's update
    assert proc.returncode == 1
    line = crash_lines(proc)[-1]
    assert line.startswith("error: RuntimeError: failure after the weights changed (injected); "
                           "not saved (it failed while updating the weights)"), line
    assert load(tmp_path)["position"] == {"epoch": 1, "step": 0}  # epoch 0's, untouched
    proc = train_here(*flags(small_data, tmp_path, "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_run(load(reference), load(tmp_path))


def test_debug_prints_the_traceback_as_well(small_data, tmp_path):
    proc = train_here(*flags(small_data, tmp_path, "--epochs", "1", "--debug"), fault="raise:3")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: RuntimeError: a bug (injected)")


def test_evaluate_ends_in_one_line_when_evaluation_runs_out_of_memory(reference, tmp_path):
    proc = train_here("--evaluate", reference / "checkpoints" / "last.pt", "--out-dir", tmp_path,
                      "--num-workers", "2", fault="oom:collect:1")
    assert proc.returncode == 1
    [line] = crash_lines(proc)
    assert line.startswith("error: out of memory on cpu (") and line.endswith(
        f"while evaluating batches of 512 (add --eval-batch-size 256); traceback in "
        f"{tmp_path / 'crash.log'}")
