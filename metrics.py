"""Training metrics from a checkpoint's history: CSV and NPZ first, plots drawn from them.

    python train.py --metrics-from-ckpt checkpoints/last.pt    # rebuilds the folder below

writes training_metrics_from_ckpt/{metrics_from_ckpt.csv, metrics_from_ckpt.npz,
metrics_overview.png, train_loss.png, test_loss.png, train_acc.png, test_acc.png}.
"""
import csv
import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from model import CheckpointError, atomic_path


# Figures use matplotlib's object API: no global pyplot state, no display needed.
def new_figure(figsize):
    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig, path, dpi=110):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


PANELS = [("train_loss", "train_losses", "Training loss", "loss"),
          ("test_loss", "test_losses", "Test loss", "loss"),
          ("train_acc", "train_acc", "Training accuracy", "accuracy (%)"),
          ("test_acc", "test_acc", "Test accuracy", "accuracy (%)")]


def write_metrics(ckpt, folder):
    """metrics_from_ckpt.csv/.npz and the five plots, all from a checkpoint's history."""
    missing = [key for _, key, _, _ in PANELS if key not in ckpt]
    if missing:
        raise CheckpointError(f"the checkpoint has no training history ({missing[0]})")
    if not ckpt["test_acc"]:
        raise CheckpointError("the checkpoint was saved before its first epoch ended: "
                              "no metrics to draw yet")
    os.makedirs(folder, exist_ok=True)
    cols = {"epoch": list(range(len(ckpt["test_acc"])))}
    cols.update({name: list(ckpt[key]) for name, key, _, _ in PANELS})
    cols["lr"] = list(ckpt.get("lrs") or [float("nan")] * len(cols["epoch"]))
    with atomic_path(os.path.join(folder, "metrics_from_ckpt.csv")) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows(zip(*cols.values()))
    with atomic_path(os.path.join(folder, "metrics_from_ckpt.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in cols.items()})
    note = " (smoke run on generated data)" if ckpt.get("config", {}).get("smoke") else ""
    overview = new_figure(figsize=(12, 8))
    for i, (name, _, title, ylabel) in enumerate(PANELS):
        _plot(overview.add_subplot(2, 2, i + 1), cols["epoch"], cols[name], title, ylabel)
        single = new_figure(figsize=(6, 4))
        _plot(single.add_subplot(), cols["epoch"], cols[name], title + note, ylabel)
        save_figure(single, os.path.join(folder, f"{name}.png"))
    overview.suptitle(f"Training metrics{note}")
    save_figure(overview, os.path.join(folder, "metrics_overview.png"))
    return folder


def _plot(ax, x, y, title, ylabel):
    ax.plot(x, y, marker="o" if len(x) < 30 else None)
    if "acc" in ylabel:
        i = int(np.argmax(y))
        ax.annotate(f"best {y[i]:.2f}%", (x[i], y[i]), textcoords="offset points",
                    xytext=(-40, -15))
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
