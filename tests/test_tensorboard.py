"""TensorBoard: the event files a run writes, read back with tensorboard's own reader."""
import pytest
import torch

import tensorboard_events
import train
from conftest import run_script

pytest.importorskip("tensorboard")  # requirements-dev.txt installs it for the tests
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

STEPS = 32  # --smoke: 2,000 images in batches of 64, 2 epochs
EPOCH_TAGS = ["train/loss", "train/accuracy", "test/loss", "test/accuracy", "test/top5", "lr",
              "speed/images_per_s", "speed/epoch_seconds"]


def events(out):
    acc = EventAccumulator(str(out / "tensorboard"),
                           size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def curve(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_a_run_writes_its_curves_its_pictures_and_its_settings(smoke_run):
    out, proc = smoke_run
    acc = events(out)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    for tag in EPOCH_TAGS:  # once per epoch, at the optimizer step that ends it
        assert [s for s, _ in curve(acc, tag) if s % STEPS == 0] == [STEPS, 2 * STEPS], tag
    assert [v for _, v in curve(acc, "test/accuracy")] == pytest.approx(ckpt["test_acc"])
    assert [v for _, v in curve(acc, "train/loss")] == pytest.approx(ckpt["train_losses"])
    assert [s for s, _ in curve(acc, "train/running_loss")] == [20, STEPS + 20]  # sync points
    assert sorted(acc.Tags()["images"]) == ["gradcam", "test/confusion_matrix"]
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    assert curve(acc, "hparam/best_test_accuracy")[0][1] == pytest.approx(ckpt["best_accuracy"])
    assert f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}" in proc.stdout


def test_a_resumed_run_continues_the_same_curves_without_gaps_or_repeats(smoke_run, tmp_path):
    straight, _ = smoke_run
    flags = ["--smoke", "--gradcam-images", "0", "--out-dir", tmp_path]
    # stopped in epoch 1 after step 55 overall: its running loss at step 52 is on disk...
    stopped = run_script("tests/faulty_run.py", "step:55:TERM", *flags)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert [s for s, _ in curve(events(tmp_path), "train/running_loss")] == [20, STEPS + 20]
    # ...and the run goes on from the end of epoch 0, before it: those events are redone
    resumed = run_script("train.py", "--resume", tmp_path / "checkpoints" / "checkpoint_epoch_0.pt",
                         *flags)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    acc, ref = events(tmp_path), events(straight)
    for tag in EPOCH_TAGS[:-2] + ["train/running_loss"]:  # the speed differs from run to run
        steps = [s for s, _ in curve(acc, tag)]
        assert steps == sorted(set(steps)) == [s for s, _ in curve(ref, tag)], tag
        assert [v for _, v in curve(acc, tag)] == [v for _, v in curve(ref, tag)], tag  # bitwise


def test_a_fresh_run_in_the_same_folder_hides_the_earlier_ones_events(smoke_run, tmp_path):
    first = run_script("train.py", "--smoke", "--epochs", "1", "--gradcam-images", "0",
                       "--out-dir", tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_script("train.py", "--smoke", "--epochs", "1", "--max-lr", "0.05",
                       "--gradcam-images", "0", "--out-dir", tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    acc = events(tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert curve(acc, "test/accuracy") == [(STEPS, pytest.approx(last["test_acc"][0]))]


def test_events_that_cannot_be_written_warn_once_and_training_goes_on(tmp_path, monkeypatch,
                                                                       capsys):
    from torch.utils.tensorboard import SummaryWriter

    def full(*a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    assert train.main(["--smoke", "--epochs", "1", "--gradcam-images", "0",
                       "--out-dir", str(tmp_path)]) == 0
    said = [ln for ln in capsys.readouterr().out.splitlines() if "TensorBoard events" in ln]
    assert said == [f"warning: cannot write TensorBoard events to {tmp_path / 'tensorboard'} "
                    f"(OSError: [Errno 28] No space left on device); training goes on without them"]
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_asking_for_tensorboard_without_the_package_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tensorboard_events, "available", lambda: False)
    assert train.main(["--smoke", "--tensorboard", "on", "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --tensorboard on needs the tensorboard package: pip install tensorboard"]
    assert train.main(["--smoke", "--epochs", "1", "--gradcam-images", "0",
                       "--out-dir", str(tmp_path)]) == 0  # auto: without it, no events
    assert not (tmp_path / "tensorboard").exists()
