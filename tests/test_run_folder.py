"""A run never destroys another run's results: a used --out-dir is refused (or its files
moved aside with --archive, or a --smoke run's replaced), periodic files are pruned only
when they say they are the run's own, and no tool writes over a checkpoint."""
import os
import shutil

import pytest
import torch

import train
from conftest import run_here, train_here
from machinery.checkpoint_files import CheckpointError, atomic_path
from machinery.metrics import save_figure, new_figure
from reference_format import reference_checkpoint, reference_network


def _flags(tiny_data, out, *more):
    return ["--data-dir", tiny_data, "--blocks", "1", "1", "1", "1", "--width", "8",
            "--batch-size", "50", "--num-workers", "0", "--gradcam-images", "0",
            "--target-accuracy", "0", "--save-every", "1", "--out-dir", str(out), *more]


def _bytes(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder)) if f.endswith(".pt")}


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    """A finished 2-epoch run's folder (kept pristine: tests copy it)."""
    out = tmp_path_factory.mktemp("finished")
    assert train.main(_flags(tiny_data, out, "--epochs", "2")) == 0
    return out


@pytest.mark.slow
def test_a_fresh_run_in_a_used_folder_is_refused_and_touches_nothing(finished, tiny_data,
                                                                     tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = _bytes(out / "checkpoints")
    assert sorted(before) == ["best_model.pt", "checkpoint_epoch_0.pt", "checkpoint_epoch_1.pt",
                              "last.pt"]
    capsys.readouterr()
    assert train.main(_flags(tiny_data, out, "--epochs", "1", "--seed", "5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    best = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["test_acc"]
    epoch = max(range(2), key=best.__getitem__)
    assert err == [f"error: {out / 'checkpoints'} holds another run's checkpoints (cifar100, "
                   f"2 of 2 epochs, best test accuracy {best[epoch]:.2f}% at epoch {epoch}); "
                   f"continue that run with --resume auto, train in another --out-dir, or move "
                   f"its files aside with --archive"]
    assert _bytes(out / "checkpoints") == before


@pytest.mark.slow
def test_archive_moves_the_earlier_run_aside_byte_for_byte(finished, tiny_data, tmp_path,
                                                           capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = _bytes(out / "checkpoints")
    assert train.main(_flags(tiny_data, out, "--epochs", "1", "--seed", "5", "--archive")) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("--archive:"))
    aside = line.rsplit(" moved to ", 1)[1]
    assert line.startswith("--archive: 4 checkpoint files of another run (cifar100, 2 of 2 epochs")
    assert os.path.dirname(aside) == str(out / "checkpoints" / "archive")
    assert {f: open(os.path.join(aside, f), "rb").read() for f in os.listdir(aside)} == before
    now = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert now["config"]["seed"] == 5 and len(now["train_acc"]) == 1


@pytest.mark.slow
def test_a_smoke_runs_files_are_replaced_by_the_next_run_without_a_flag(smoke_run, tiny_data,
                                                                        tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0] / "checkpoints", out / "checkpoints")
    assert train.main(_flags(tiny_data, out, "--epochs", "1")) == 0
    assert f"replaced the --smoke demo run's checkpoints in {out / 'checkpoints'}" in \
        capsys.readouterr().out
    names = sorted(f for f in os.listdir(out / "checkpoints") if f.endswith(".pt"))
    assert names == ["best_model.pt", "checkpoint_epoch_0.pt", "last.pt"]  # the smoke's epoch 1 gone
    assert not torch.load(out / "checkpoints" / "last.pt", weights_only=True)["config"]["smoke"]


@pytest.mark.slow
def test_a_run_resumed_into_another_folder_prunes_nothing_that_folder_held(finished, tiny_data,
                                                                           tmp_path, capsys):
    other = tmp_path / "other"  # another run (seed 7): only its checkpoint_epoch_0.pt is left
    assert train.main(_flags(tiny_data, other, "--epochs", "1", "--seed", "7")) == 0
    for name in ("last.pt", "best_model.pt"):
        os.remove(other / "checkpoints" / name)
    theirs = _bytes(other / "checkpoints")
    a = finished / "checkpoints" / "checkpoint_epoch_0.pt"  # run A, which listed its own files
    capsys.readouterr()
    assert train.main(["--resume", str(a), "--epochs", "2", "--keep-checkpoints", "1",
                       "--out-dir", str(other)]) == 0
    out = capsys.readouterr().out
    assert (f"1 checkpoint_epoch_*.pt in {other / 'checkpoints'} were not written by this run: "
            f"they are kept") in out
    after = _bytes(other / "checkpoints")
    assert after["checkpoint_epoch_0.pt"] == theirs["checkpoint_epoch_0.pt"]
    assert sorted(after) == ["best_model.pt", "checkpoint_epoch_0.pt", "checkpoint_epoch_1.pt",
                             "last.pt"]  # a best model, whichever way the accuracy went


@pytest.mark.slow
def test_a_run_resumed_into_another_folder_takes_its_best_model_along(finished, tmp_path):
    src = tmp_path / "src" / "checkpoints"
    os.makedirs(src)
    for name in ("checkpoint_epoch_0.pt", "best_model.pt"):  # after epoch 0: the best so far
        shutil.copy(finished / "checkpoints" / "checkpoint_epoch_0.pt", src / name)
    proc = train_here("--resume", src / "checkpoint_epoch_0.pt", "--out-dir", tmp_path / "dst")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"best_model.pt carried over from {src / 'best_model.pt'}" in proc.stdout
    last, best = (torch.load(tmp_path / "dst" / "checkpoints" / n, weights_only=True)
                  for n in ("last.pt", "best_model.pt"))
    assert best["test_accuracy"] == max(last["test_acc"]) and best["run_id"] == last["run_id"]
    # a best model from later than the resumed epoch is another future's: not carried; with
    # none to carry, the first epoch in the new folder writes one, though epoch 0 (100% here,
    # so that no later epoch beats it) was better
    start = torch.load(src / "checkpoint_epoch_0.pt", weights_only=True)
    torch.save({**start, "test_acc": [100.0]}, src / "checkpoint_epoch_0.pt")
    torch.save({**start, "epoch": 1}, src / "best_model.pt")
    proc = train_here("--resume", src / "checkpoint_epoch_0.pt", "--out-dir", tmp_path / "dst2")
    assert proc.returncode == 0 and "carried over" not in proc.stdout
    best = torch.load(tmp_path / "dst2" / "checkpoints" / "best_model.pt", weights_only=True)
    assert best["epoch"] == 1 and best["run_id"] == start["run_id"]


@pytest.mark.slow
def test_a_continued_reference_run_whose_best_model_is_still_its_file_finishes(tiny_data,
                                                                               tmp_path):
    """The end of the run reads the best model as every tool does: the reference's file has
    no class names or statistics (CIFAR-100's are filled in)."""
    folder = tmp_path / "checkpoints"
    os.makedirs(folder)
    ckpt = reference_checkpoint(reference_network(), 4, steps_per_epoch=3, epochs=6)
    ckpt["test_acc"][-1] = ckpt["test_accuracy"] = 99.0  # stays the best model to the end
    for name in ("checkpoint_epoch_4.pt", "best_model.pt"):
        torch.save(ckpt, folder / name)
    best = (folder / "best_model.pt").read_bytes()
    assert train.main(["--resume", "auto", "--epochs", "6", "--data-dir", tiny_data,
                       "--num-workers", "0", "--gradcam-images", "2", "--target-accuracy", "0",
                       "--out-dir", str(tmp_path)]) == 0
    assert (folder / "best_model.pt").read_bytes() == best
    assert (tmp_path / "training_metrics_from_ckpt" / "per_class_accuracy.csv").is_file()
    assert (tmp_path / "gradcam_outputs" / "gradcam_grid.png").is_file()


def test_no_picture_or_table_is_written_over_a_checkpoint(smoke_run, tmp_path):
    path = tmp_path / "best_model.pt"
    shutil.copy(smoke_run[0] / "checkpoints" / "best_model.pt", path)
    blob = path.read_bytes()
    with pytest.raises(CheckpointError, match="it is a checkpoint"):
        save_figure(new_figure(figsize=(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="it is a checkpoint"):
        with atomic_path(str(path)) as tmp:
            open(tmp, "w").write("epoch,acc\n")
    assert path.read_bytes() == blob and os.listdir(tmp_path) == ["best_model.pt"]


@pytest.mark.slow
def test_export_refuses_to_write_over_its_checkpoint(finished, tmp_path):
    path = tmp_path / "model.pt"
    shutil.copy(finished / "checkpoints" / "best_model.pt", path)
    blob = path.read_bytes()
    proc = run_here("export.py", path, "--format", "pt2", "--out", path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: refusing to write {path}: it is the checkpoint being exported; choose another --out"]
    (tmp_path / "notes.txt").write_text("mine")
    proc = run_here("export.py", path, "--format", "pt2", "--out", tmp_path / "notes.txt")
    assert proc.returncode == 2 and "it exists and is not a .pt2 export" in proc.stderr
    assert path.read_bytes() == blob and (tmp_path / "notes.txt").read_text() == "mine"
