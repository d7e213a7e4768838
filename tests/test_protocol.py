"""--val-split (a held-out validation protocol), live metrics after every epoch, a quiet start."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from machinery import data, evaluation, metrics
import train
from conftest import ROOT, run_script, train_here


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    """400 training images (4 per class) and 150 test images: distinct sizes to tell apart."""
    root = str(tmp_path_factory.mktemp("cifar_split"))
    data.write_synthetic_dataset(root, "cifar100", n_train=400, n_test=150, seed=5)
    return root


def small_run(data_dir, out_dir, *extra):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--blocks", "1", "1", "1", "1",
            "--width", "8", "--batch-size", "50", "--num-workers", "0", "--gradcam-images", "0",
            *map(str, extra)]


def test_the_validation_split_is_stratified_keyed_and_disjoint():
    labels = np.repeat(np.arange(10), 30)
    np.random.default_rng(0).shuffle(labels)
    kept, held = data.split_validation(labels, 50, seed=1, num_classes=10)
    assert np.bincount(labels[held], minlength=10).tolist() == [5] * 10  # the same per class
    assert not set(kept) & set(held) and len(kept) + len(held) == len(labels)
    again, _ = data.split_validation(labels, 50, seed=1, num_classes=10)
    other = data.split_validation(labels, 50, seed=2, num_classes=10)[1]
    assert np.array_equal(kept, again) and not np.array_equal(held, other)
    with pytest.raises(data.DataError, match="multiple of the 10 classes"):
        data.split_validation(labels, 55, seed=1, num_classes=10)
    with pytest.raises(data.DataError, match="has only 30 training images"):
        data.split_validation(labels, 300, seed=1, num_classes=10)


def test_val_split_picks_and_stops_on_validation_and_tests_once_at_the_end(
        split_data, tmp_path, monkeypatch, capsys):
    evaluated = []  # the size of every image set evaluated, in order
    real = train.evaluate

    def evaluate(net, loader, rt):
        evaluated.append(len(loader.dataset))
        return real(net, loader, rt)
    monkeypatch.setattr(train, "evaluate", evaluate)  # after every epoch
    monkeypatch.setattr(evaluation, "evaluate", evaluate)  # the end of the run
    code = train.main(small_run(split_data, tmp_path, "--epochs", "6", "--val-split", "200",
                                "--target-accuracy", "3"))
    assert code == 0
    out = capsys.readouterr().out
    assert "200 train / 200 validation (held out) images" in out
    # validation after every epoch; the 150 test images once, after the last one
    assert evaluated[-1] == 150 and set(evaluated[:-1]) == {200}
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert "test_acc" not in ckpt and len(ckpt["val_acc"]) == len(evaluated) - 1
    # the early stop is the validation accuracy's: the first epoch at or above the target
    assert len(ckpt["val_acc"]) < 6 and ckpt["val_acc"][-1] >= 3
    assert all(a < 3 for a in ckpt["val_acc"][:-1])
    assert "val accuracy" in out and "reached the target" in out
    best = torch.load(tmp_path / "checkpoints" / "best_model.pt", weights_only=True)
    assert best["test_of_epoch"] == best["epoch"] == int(np.argmax(ckpt["val_acc"]))
    assert ckpt["test_accuracy"] == best["test_accuracy"] and ckpt["test_images"] == 150
    line = (f"test set, evaluated once, with the best model by validation accuracy (epoch "
            f"{best['epoch']}): top-1 {best['test_accuracy']:.2f}%")
    assert line in out
    log = (tmp_path / "training_logs.md").read_text()
    assert "| Epoch | Train Acc | Val Acc | Val Loss | LR | Status |" in log
    assert "**Test set, evaluated once" in log
    rows = list(csv.DictReader(open(tmp_path / "training_metrics_from_ckpt" / "metrics_from_ckpt.csv")))
    assert [float(r["val_acc"]) for r in rows] == ckpt["val_acc"]
    assert (tmp_path / "training_metrics_from_ckpt" / "val_acc.png").is_file()


@pytest.mark.slow
def test_val_split_is_fixed_on_resume_and_the_resumed_run_is_bit_identical(split_data, tmp_path,
                                                                          capsys):
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    flags = ["--epochs", "2", "--val-split", "200"]
    assert train_here(*small_run(split_data, straight, *flags)).returncode == 0
    proc = run_script("tests/faulty_run.py", "step:6:INT", *small_run(split_data, parts, *flags))
    assert proc.returncode == 130  # epoch 1 (4 steps per epoch), step 2
    last = parts / "checkpoints" / "last.pt"
    assert train.main(["--resume", str(last), "--val-split", "100"]) == 2
    assert "--val-split 100 differs" in capsys.readouterr().err
    proc = train_here("--resume", "auto", "--out-dir", parts)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (straight, parts))
    assert a["val_acc"] == b["val_acc"] and a["test_accuracy"] == b["test_accuracy"]
    assert all(torch.equal(v, b["model_state_dict"][k]) for k, v in a["model_state_dict"].items())
    assert train.main(["--evaluate", str(last)]) == 0  # a test-set report, as for any checkpoint
    assert "on 150 cifar100 test images" in capsys.readouterr().out


@pytest.mark.slow
def test_metrics_are_written_after_every_epoch_and_a_resumed_run_continues_them(
        split_data, tmp_path):
    flags = small_run(split_data, tmp_path, "--epochs", "3")
    folder = tmp_path / "training_metrics_from_ckpt"
    proc = train_here(*flags, fault="raise:18")  # a crash in epoch 2, step 1 (8 an epoch)
    assert proc.returncode == 1
    rows = list(csv.DictReader(open(folder / "metrics_from_ckpt.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]  # written live: the run never finished
    assert (folder / "metrics_overview.png").is_file() and (folder / "learning_rate.png").is_file()
    assert train.main(["--resume", "auto", *flags]) == 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    rows = list(csv.DictReader(open(folder / "metrics_from_ckpt.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert [float(r["test_acc"]) for r in rows] == ckpt["test_acc"]


def test_a_failure_of_the_live_metrics_warns_and_training_goes_on(split_data, tmp_path,
                                                                  monkeypatch, capsys):
    def broken(self, ckpt):
        raise RuntimeError("no fonts (injected)")
    monkeypatch.setattr(metrics.LiveMetrics, "update", broken)
    assert train.main(small_run(split_data, tmp_path, "--epochs", "2")) == 0
    out = capsys.readouterr().out
    assert out.count("could not update training_metrics_from_ckpt/ (RuntimeError: no fonts "
                     "(injected)); training goes on") == 2
    assert (tmp_path / "training_metrics_from_ckpt" / "metrics_overview.png").is_file()  # at the end


def test_live_plots_are_redrawn_only_when_cheap_next_to_the_epochs(tmp_path):
    ckpt = {"train_losses": [2.0], "test_losses": [1.9], "train_acc": [10.0], "test_acc": [12.0],
            "lrs": [0.1]}
    live = metrics.LiveMetrics(str(tmp_path), share=0.02)
    assert not live.update(ckpt)  # one epoch: a table, no curve yet
    assert not (tmp_path / "metrics_overview.png").exists()
    ckpt = {k: v * 2 for k, v in ckpt.items()}
    assert live.update(ckpt)  # the second epoch draws
    drawn = os.path.getmtime(tmp_path / "metrics_overview.png")
    ckpt = {k: v * 3 for k, v in ckpt.items()}
    assert not live.update(ckpt)  # an epoch far shorter than 50x the drawing: tables only
    assert len(list(csv.DictReader(open(tmp_path / "metrics_from_ckpt.csv")))) == 6
    assert os.path.getmtime(tmp_path / "metrics_overview.png") == drawn
    live.finish(ckpt)  # the end of the run draws what the plots lack...
    assert os.path.getmtime(tmp_path / "metrics_overview.png") > drawn
    live.last -= 50 * live.cost + 1  # as if a long epoch had passed
    assert live.update(ckpt)
    drawn = os.path.getmtime(tmp_path / "metrics_overview.png")
    live.finish(ckpt)  # ...and nothing the last update drew
    assert os.path.getmtime(tmp_path / "metrics_overview.png") == drawn


def test_importing_the_data_pipeline_makes_no_network_call(tmp_path):
    code = ("import socket\n"
            "def refuse(*a, **k):\n"
            "    raise SystemExit('network call at import')\n"
            "socket.socket.connect = refuse\n"
            "socket.create_connection = refuse\n"
            "socket.getaddrinfo = refuse\n"
            "from machinery import data\n"
            "print('imported')\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.stdout.strip() == "imported", proc.stderr[-2000:]
    assert "albumentations" not in proc.stderr.lower()  # no update warning either


@pytest.mark.parametrize("epochs", [1, 2, 7, 40])
def test_the_curves_tick_whole_epochs_only(epochs):
    """The fifth review: a one-epoch run's curves ticked -0.06, -0.045, ... 0.06."""
    import matplotlib
    matplotlib.use("Agg")
    fig = metrics.new_figure((6, 4))
    ax = fig.add_subplot()
    metrics._plot(ax, list(range(epochs)), [float(i) for i in range(epochs)], "t", "accuracy (%)")
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() and t >= 0 for t in ticks), ticks
    if epochs <= 10:  # a short run: each epoch its tick, none past the last
        assert ticks == list(range(epochs))
