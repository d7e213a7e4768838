"""TensorBoard: the event files a run writes, read back with tensorboard's own readers."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import torch

from machinery import tensorboard_events
import train
from conftest import ROOT, run_script, train_here

pytest.importorskip("tensorboard")  # requirements-dev.txt installs it for the tests
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

STEPS = 32  # --smoke: 2,000 images in batches of 64, 2 epochs
EPOCH_TAGS = ["train/loss", "train/accuracy", "test/loss", "test/accuracy", "test/top5", "lr",
              "speed/images_per_s", "speed/epoch_seconds"]


def runs(out):
    """The run folders under <out>/tensorboard, oldest first (named by start time)."""
    return sorted(p for p in (out / "tensorboard").iterdir() if p.is_dir())


def events(folder):
    """A run's events through TensorBoard's Python loader; `folder`: the run's folder, or
    an output folder holding one run."""
    if (folder / "tensorboard").is_dir():
        (folder,) = runs(folder)
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
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


@pytest.fixture(scope="module")
def resumable_data(tmp_path_factory):
    """768 CIFAR-10-format images: 24 steps of 32 an epoch, so an epoch has a running-loss
    point (every SYNC_EVERY = 20 steps) and the stop below falls after the second one."""
    from machinery import data
    root = tmp_path_factory.mktemp("tb-data")
    data.write_synthetic_dataset(str(root), "cifar10", n_train=768, n_test=64, seed=4)
    return root


@pytest.mark.slow
def test_each_run_is_its_own_and_a_resume_continues_its_curves_in_both_loaders(resumable_data,
                                                                              tmp_path):
    steps = 24
    flags = ["--smoke", "--dataset", "cifar10", "--data-dir", resumable_data, "--batch-size",
             "32", "--gradcam-images", "0"]  # --smoke: a fresh run replaces the one before
    straight = tmp_path / "straight"
    assert train_here(*flags, "--out-dir", straight).returncode == 0
    out = tmp_path / "run"
    first = train_here(*flags, "--out-dir", out, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    # a second fresh run, stopped in epoch 1 after step 46 overall: its running loss at
    # step 44 is on disk...
    stopped = run_script("tests/faulty_run.py", "step:46:TERM", *flags, "--out-dir", out)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    one, two = runs(out)
    assert [s for s, _ in curve(events(two), "train/running_loss")] == [20, steps + 20]
    # ...and it goes on from the end of epoch 0, before it: those events are redone
    resumed = train_here("--resume", out / "checkpoints" / "checkpoint_epoch_0.pt", *flags,
                         "--out-dir", out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert runs(out) == [one, two]  # the resumed run kept its own folder
    acc, ref = events(two), events(straight)
    for tag in EPOCH_TAGS[:-2] + ["train/running_loss"]:  # the speed differs from run to run
        got = [s for s, _ in curve(acc, tag)]
        assert got == sorted(set(got)) == [s for s, _ in curve(ref, tag)], tag
        assert [v for _, v in curve(acc, tag)] == [v for _, v in curve(ref, tag)], tag  # bitwise
    assert [s for s, _ in curve(events(one), "test/accuracy")] == [steps]
    # TensorBoard's default loader, the fast one, shows each run's points once
    served = fast_loader_steps(out / "tensorboard", ["test/accuracy", "train/running_loss"],
                               expect={one.name: 1 + 1, two.name: 2 + 2})
    assert served == {one.name: {"test/accuracy": [steps], "train/running_loss": [20]},
                      two.name: {"test/accuracy": [steps, 2 * steps],
                                 "train/running_loss": [20, steps + 20]}}


def fast_loader_steps(logdir, tags, expect, timeout=90):
    """{run: {tag: steps}} as `tensorboard --load_fast=true` serves them over HTTP, once it
    serves `expect[run]` points in all for each run (it loads in the background)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                               "--load_fast=true", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    served, deadline = {}, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                served = {run: {tag: [p[1] for p in _get(port, f"/data/plugin/scalars/scalars?"
                                                     f"{urllib.parse.urlencode(dict(run=run, tag=tag))}")]
                                for tag in tags} for run in expect}
                if all(sum(map(len, served[r].values())) >= n for r, n in expect.items()):
                    return served
            except (OSError, ValueError):  # not listening yet, or that run not loaded yet
                pass
            assert server.poll() is None, server.stderr.read()[-2000:]
            time.sleep(0.5)
        return served
    finally:
        server.kill()
        server.wait()


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def test_events_that_cannot_be_written_warn_once_and_training_goes_on(resumable_data, tmp_path,
                                                                       monkeypatch, capsys):
    from torch.utils.tensorboard import SummaryWriter

    def full(*a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    assert train.main(["--smoke", "--dataset", "cifar10", "--data-dir", str(resumable_data),
                       "--epochs", "1", "--gradcam-images", "0", "--out-dir", str(tmp_path)]) == 0
    said = [ln for ln in capsys.readouterr().out.splitlines() if "TensorBoard events" in ln]
    (folder,) = runs(tmp_path)
    assert said == [f"warning: cannot write TensorBoard events to {folder} "
                    f"(OSError: [Errno 28] No space left on device); training goes on without them"]
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_asking_for_tensorboard_without_the_package_is_one_line(resumable_data, tmp_path,
                                                                monkeypatch, capsys):
    absent = ModuleNotFoundError("No module named 'tensorboard'", name="tensorboard")
    monkeypatch.setattr(tensorboard_events, "import_problem", lambda: absent)
    assert train.main(["--smoke", "--tensorboard", "on", "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --tensorboard on needs the tensorboard package: pip install tensorboard"]
    assert train.main(["--smoke", "--dataset", "cifar10", "--data-dir", str(resumable_data),
                       "--epochs", "1", "--gradcam-images", "0",
                       "--out-dir", str(tmp_path)]) == 0  # auto: without it, no events
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.slow
def test_a_broken_tensorboard_install_is_one_warning_and_the_run_completes(resumable_data,
                                                                           tmp_path):
    """protobuf's version clash (common in Colab and conda) makes `import tensorboard` raise
    TypeError, not ImportError: under --tensorboard auto that must not stop a run."""
    fake = tmp_path / "site" / "tensorboard"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise TypeError("Descriptors cannot be created directly.\\nIf this call came from '
        'a _pb2.py file, your generated code is out of date")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--smoke", "--dataset",
                           "cifar10", "--data-dir", str(resumable_data), "--epochs", "1",
                           "--gradcam-images", "0", "--out-dir", str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "TensorBoard" in ln]
    assert said == ["warning: TensorBoard cannot be imported (TypeError: Descriptors cannot be "
                    "created directly.); training goes on without its events (--tensorboard off "
                    "silences this)"]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "run" / "tensorboard").exists()
