"""Metrics as data first (CSV/NPZ), then pictures drawn from the same numbers.

    python train.py --metrics-from-ckpt checkpoints/last.pt   # history: metrics_from_ckpt.*,
                                                              # metrics_overview.png, 4 plots,
                                                              # learning_rate.png
    python train.py --evaluate checkpoints/best_model.pt      # per_class_accuracy.csv,
                                                              # confusion_matrix.png
Both write into training_metrics_from_ckpt/; training brings the history files up to
date after every epoch (LiveMetrics).
"""
import csv
import os
import time

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .checkpoint_files import CheckpointError, atomic_path


# Figures use matplotlib's object API: no global pyplot state, no display needed.
def new_figure(figsize):
    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig, path, dpi=110):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


# (CSV column, history and NPZ key): the NPZ keeps the reference's names (its own
# metrics_from_ckpt.npz: epochs, train_losses, test_losses, train_acc, test_acc; lrs as
# its training_metrics/ writer names them), the CSV its columns. With --val-split the
# per-epoch evaluation is of held-out validation images, and is named so everywhere.
COLUMNS = [("epoch", "epochs"), ("train_loss", "train_losses"), ("test_loss", "test_losses"),
           ("val_loss", "val_losses"), ("train_acc", "train_acc"), ("test_acc", "test_acc"),
           ("val_acc", "val_acc"), ("lr", "lrs")]


def panels(cols):
    """(column, title, y label) of each of the four plots, for the columns at hand."""
    split, name = ("val", "Validation") if "val_acc" in cols else ("test", "Test")
    return [("train_loss", "Training loss", "loss"), (f"{split}_loss", f"{name} loss", "loss"),
            ("train_acc", "Training accuracy", "accuracy (%)"),
            (f"{split}_acc", f"{name} accuracy", "accuracy (%)")]


def metric_columns(ckpt):
    """{column: per-epoch values} from a checkpoint's history, checked."""
    split = "val" if "val_acc" in ckpt else "test"
    wanted = [(c, k) for c, k in COLUMNS if c in ("train_loss", "train_acc", "lr")
              or c.startswith(split)]
    missing = [k for c, k in wanted if k not in ckpt and c != "lr"]
    if missing:
        raise CheckpointError(f"the checkpoint has no training history ({missing[0]})")
    epochs = len(ckpt["train_acc"])
    if not epochs:
        raise CheckpointError("the checkpoint was saved before its first epoch ended: "
                              "no metrics to draw yet")
    cols = {"epoch": list(range(epochs))}
    cols.update({c: list(ckpt.get(k) or [float("nan")] * epochs) for c, k in wanted})
    return cols


def write_metrics(ckpt, folder, plots=True):
    """metrics_from_ckpt.csv/.npz and (plots=True) the six plots, drawn from the NPZ just
    written. Every file is replaced atomically: a reader never sees half of one."""
    cols = metric_columns(ckpt)
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, "metrics_from_ckpt.csv")) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows(zip(*cols.values()))
    npz = os.path.join(folder, "metrics_from_ckpt.npz")
    key = dict(COLUMNS)
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:  # int64 epochs, float64 values, as the reference's file
            np.savez(f, **{key[c]: np.asarray(v) for c, v in cols.items()})
    if plots:
        smoke = (ckpt.get("config") or {}).get("smoke")
        draw_metrics(read_metrics(npz), folder, " (smoke run on generated data)" if smoke else "")
    return folder


def read_metrics(path):
    """{CSV column: values} from a metrics_from_ckpt.npz: this repo's, the reference's, or
    one written before this repo took the reference's key names (keyed by column)."""
    with np.load(path) as f:
        return {c: f[k] if k in f else f[c] for c, k in COLUMNS if k in f or c in f}


def draw_metrics(cols, folder, note=""):
    overview = new_figure(figsize=(12, 8))
    for i, (name, title, ylabel) in enumerate(panels(cols)):
        _plot(overview.add_subplot(2, 2, i + 1), cols["epoch"], cols[name], title, ylabel)
        single = new_figure(figsize=(6, 4))
        _plot(single.add_subplot(), cols["epoch"], cols[name], title + note, ylabel)
        save_figure(single, os.path.join(folder, f"{name}.png"))
    overview.suptitle(f"Training metrics{note}")
    save_figure(overview, os.path.join(folder, "metrics_overview.png"))
    lr = new_figure(figsize=(6, 4))
    _plot(lr.add_subplot(), cols["epoch"], cols["lr"], "Learning rate" + note,
          "learning rate at the epoch's end")
    save_figure(lr, os.path.join(folder, "learning_rate.png"))


class LiveMetrics:
    """training_metrics_from_ckpt/ brought up to date after every epoch, so the curves
    grow while a run trains. The tables cost milliseconds and are written every time;
    the plots once there are two epochs to join (one point is no curve), and then only
    when the last redraw took at most `share` of the time since the one before, so
    matplotlib never costs a fast GPU's short epochs more than that. finish() draws the
    end of the run, unless the last update drew those very epochs already."""

    def __init__(self, folder, share=0.02):
        self.folder, self.share = folder, share
        self.cost, self.last = 0.0, time.monotonic()
        self.drawn = 0  # epochs in the plots on disk

    def update(self, ckpt):
        """Returns whether the plots were redrawn."""
        t0, epochs = time.monotonic(), len(ckpt["train_acc"])
        plots = epochs >= 2 and self.cost <= self.share * (t0 - self.last)
        write_metrics(ckpt, self.folder, plots)
        if plots:
            self.last, self.drawn = time.monotonic(), epochs
            self.cost = self.last - t0
        return plots

    def finish(self, ckpt):
        """The run's final tables and plots (the plots only where they are not drawn yet)."""
        return write_metrics(ckpt, self.folder, plots=self.drawn != len(ckpt["train_acc"]))


def _plot(ax, x, y, title, ylabel):
    ax.plot(x, y, marker="o" if len(x) < 30 else None)
    if "accuracy" in ylabel:
        i = int(np.argmax(y))
        ax.annotate(f"best {y[i]:.2f}%", (x[i], y[i]), textcoords="offset points",
                    xytext=(-40, -15))
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    if 0 < len(x) <= 10:  # each epoch its tick (one epoch's locator gave -0.06, -0.045, ...)
        ax.set_xticks(list(x))
        ax.set_xlim(min(x) - 0.5, max(x) + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


# -----------------------------------------------------------------------------
# Evaluation report (train.py --evaluate)

def confusion_matrix(pred, labels, num_classes):
    """counts[true, predicted], int64 (C, C)."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels, pred), 1)
    return counts


def write_evaluation_report(pred, labels, class_names, folder, groups=None, top=10):
    """per_class_accuracy.csv and confusion_matrix.png; returns the figures to print.

    pred, labels: int arrays (N,); groups: {superclass: [class names]} to order and
    box the matrix by (CIFAR-100's 20 superclasses), or None.
    """
    os.makedirs(folder, exist_ok=True)
    # a class folder's name that is not UTF-8 (caf\xe9/, from an old Windows zip): as ls shows it
    class_names = [os.fsencode(n).decode("utf-8", "backslashreplace") for n in class_names]
    groups = {g: [os.fsencode(n).decode("utf-8", "backslashreplace") for n in names]
              for g, names in groups.items()} if groups else groups
    counts = confusion_matrix(pred, labels, len(class_names))
    images = counts.sum(1)
    acc = 100 * np.diag(counts) / np.maximum(images, 1)
    group_of = {n: g for g, names in (groups or {}).items() for n in names}
    with atomic_path(os.path.join(folder, "per_class_accuracy.csv")) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", "superclass", "images", "correct", "accuracy"])
            for i, name in enumerate(class_names):
                w.writerow([name, group_of.get(name, ""), images[i], counts[i, i], f"{acc[i]:.2f}"])
    off = counts.copy()
    np.fill_diagonal(off, 0)
    worst_pairs = np.argsort(off, axis=None)[::-1][:top]
    pairs = [(class_names[t], class_names[p], int(off[t, p]))
             for t, p in zip(*np.unravel_index(worst_pairs, off.shape)) if off[t, p] > 0]
    plot_confusion(counts, class_names, groups, os.path.join(folder, "confusion_matrix.png"))
    ranked = sorted(zip(acc.tolist(), class_names), reverse=True)
    return {"per_class": acc, "best": ranked[:top], "worst": ranked[::-1][:top], "pairs": pairs}


def plot_confusion(counts, class_names, groups, path):
    """Row-normalised matrix; with groups, classes are ordered by group and groups boxed."""
    from matplotlib.colors import PowerNorm
    n = len(class_names)
    order, bounds, centres = list(range(n)), [], []
    if groups and all(c in {m for g in groups.values() for m in g} for c in class_names):
        index = {c: i for i, c in enumerate(class_names)}
        order = [index[c] for g in sorted(groups) for c in groups[g]]
        edges = np.cumsum([0] + [len(groups[g]) for g in sorted(groups)])
        bounds, centres = edges[1:-1], (edges[:-1] + edges[1:]) / 2 - 0.5
    rows = counts[order][:, order].astype(float)
    rows /= np.maximum(rows.sum(1, keepdims=True), 1)
    size = max(6.0, n * 0.15)
    fig = new_figure(figsize=(size, size))
    ax = fig.add_subplot()
    # a square-root colour scale, so the small confusions stay visible beside the diagonal
    im = ax.imshow(rows, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    for b in bounds:
        ax.axhline(b - 0.5, color="tab:red", lw=0.6)
        ax.axvline(b - 0.5, color="tab:red", lw=0.6)
    names = [class_names[i] for i in order]
    font = 9 if n <= 20 else 5
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set(xlabel="predicted class", ylabel="true class")
    if len(centres):
        top = ax.secondary_xaxis("top")
        top.set_xticks(centres, sorted(groups), rotation=90, fontsize=6)
    fig.colorbar(im, ax=ax, shrink=0.6, label="fraction of the true class's test images")
    fig.suptitle("Confusion matrix (rows: true class)")
    save_figure(fig, path)
    return path
