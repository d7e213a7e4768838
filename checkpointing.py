"""What a checkpoint holds, how a run is restored from one, and the background writer
that puts an epoch's files on disk while training goes on.

Files are written atomically (model.save_checkpoint), hold plain types only (so
torch.load(weights_only=True) reads them), and carry the run's config, its history and
everything needed to continue from the exact step.
"""
import dataclasses
import os
import threading

import torch

from model import (CheckpointError, check_model_args, model_args_from_state_dict,
                   position_of, prune_periodic, save_checkpoint)


def history_keys(cfg):
    """The per-epoch history a checkpoint holds, its evaluation columns named after the
    images they measure: test_* as in the reference, val_* with --val-split."""
    s = cfg.eval_split
    return ("train_losses", f"{s}_losses", "train_acc", f"{s}_acc", f"{s}_top5", "lrs")


def make_checkpoint(model, opt, sched, scaler, cfg, hist, extra, position, progress=None):
    """Everything needed to resume or to use the model, in plain types (weights_only loads).

    position: {"epoch", "step"} where training continues; progress: the running sums of
    an epoch interrupted part-way (None at an epoch's end).
    """
    done, s = bool(hist["train_acc"]), cfg.eval_split
    return {
        "epoch": len(hist["train_acc"]) - 1,  # the last completed epoch (-1: none yet)
        "position": dict(position),
        "progress": dict(progress) if progress else None,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "scheduler_state_dict": sched.state_dict(),
        "scaler_state_dict": scaler.state_dict(),
        f"{s}_loss": hist[f"{s}_losses"][-1] if done else None,
        f"{s}_accuracy": hist[f"{s}_acc"][-1] if done else None,
        "best_accuracy": max(hist[f"{s}_acc"]) if done else None,
        **{k: list(v) for k, v in hist.items()},
        "config": dataclasses.asdict(cfg),
        **extra,  # model_args, class_names, mean, std
    }


def save_epoch_checkpoints(ckpt, folder, cfg, is_best):
    """last.pt, best_model.pt when the epoch is the best so far, and every save_every
    epochs checkpoint_epoch_N.pt (the oldest pruned to keep_checkpoints)."""
    os.makedirs(folder, exist_ok=True)
    epoch = ckpt["epoch"]
    save_checkpoint(ckpt, os.path.join(folder, "last.pt"))
    if is_best:
        save_checkpoint(ckpt, os.path.join(folder, "best_model.pt"))
    if (epoch + 1) % cfg.save_every == 0:  # named by the log's 0-based epoch number
        save_checkpoint(ckpt, os.path.join(folder, f"checkpoint_epoch_{epoch}.pt"))
        prune_periodic(folder, cfg.keep_checkpoints)


RESUME_KEYS = {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
               "scaler_state_dict", "config", "train_losses", "train_acc", "lrs"}


def restore(ckpt, model, opt, sched, scaler, cfg, expected_args):
    """Load a resumed run's state into freshly built objects.

    Returns (history, position (epoch, step), progress inside that epoch or None).
    """
    check_model_args(model_args_from_state_dict(ckpt["model_state_dict"]), expected_args,
                     "the checkpoint holds weights")
    try:
        model.load_state_dict(ckpt["model_state_dict"])
        opt.load_state_dict(ckpt["optimizer_state_dict"])
        sched.load_state_dict(ckpt["scheduler_state_dict"])
        if ckpt["scaler_state_dict"]:  # empty when saved without fp16 (a disabled scaler)
            scaler.load_state_dict(ckpt["scaler_state_dict"])
        for group in opt.param_groups:  # loading restored the saved values: keep what
            # --resume-force may change, and the fused kernel (older checkpoints had none)
            group.update(weight_decay=cfg.weight_decay, fused=True, foreach=None)
        hist = {k: list(ckpt[k]) for k in history_keys(cfg)}
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot resume from this checkpoint: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:150]}") from None
    return hist, position_of(ckpt), ckpt.get("progress")


class CheckpointWriter:
    """Writes checkpoint files in a background thread while training goes on: an epoch's
    files are ~240 MB each for the seed network (0.2-0.5 s apiece on the CI machine's disk,
    against ~3 s for a whole epoch at the H200 target), and torch.save leaves the
    interpreter free meanwhile (measured: no stall of the training thread).
    One write at a time, in order. wait() before reading the files or saving otherwise;
    a failed write's error (a full disk, say) comes out of the next wait()."""

    def __init__(self):
        self._thread, self._error = None, None

    def submit(self, fn, *args):
        """Run fn(*args) in the background once the previous write is done. Tensors in the
        arguments must not be live ones (see to_host)."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="checkpoints")
        self._thread.start()  # not a daemon: the interpreter waits for it on the way out

    def _run(self, fn, args):
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 -- raised again in the training thread
            self._error = e

    def wait(self):
        """Block until the files are on disk; raise the error of a failed write."""
        self.join()
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def join(self):
        """Block until the files are on disk (a failure stays for wait() to raise)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def to_host(obj):
    """A copy of a checkpoint whose tensors are on the CPU and no longer the live ones:
    the weights change under the writer otherwise (on the CPU too, in place)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj)
    return obj
