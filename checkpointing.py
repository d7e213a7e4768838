"""What a checkpoint holds, how a run is restored from one, and the background writer
that puts an epoch's files on disk while training goes on.

Files are written atomically (model.save_checkpoint), hold plain types only (so
torch.load(weights_only=True) reads them), and carry the run's config, its history and
everything needed to continue from the exact step.
"""
import dataclasses
import os
import threading
import warnings

import torch

from config import Config
from model import (CheckpointError, check_model_args, dataset_of, fill_metadata, load_weights,
                   model_args_from_state_dict, position_of, prune_periodic, save_checkpoint)


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
# What the reference repo's train.py saves (its README lists them): no config, scheduler,
# scaler, learning rates, class names or normalisation.
REFERENCE_KEYS = {"epoch", "model_state_dict", "optimizer_state_dict", "train_losses",
                  "test_losses", "train_acc", "test_acc"}


def is_reference(ckpt):
    """Whether a checkpoint is one the reference repo's own train.py wrote."""
    return "config" not in ckpt and REFERENCE_KEYS <= ckpt.keys()


def why_not_resumable(ckpt):
    """None for a checkpoint a run can continue from (this repo's, or the reference's);
    otherwise what it lacks."""
    if is_reference(ckpt):
        return None
    if "config" not in ckpt:
        return ("it has no run config (weights only?); --init-from starts a new run from "
                "its weights")
    missing = sorted(RESUME_KEYS - ckpt.keys())
    return f"no {missing[0]}" if missing else None


def adopt_reference(ckpt):
    """A reference checkpoint in this repo's format, to continue its run here: the
    reference recipe (this repo's defaults) for the network its weights hold, its history,
    and no scheduler state, which restore() rebuilds by replaying the schedule."""
    epochs = len(ckpt["train_acc"])
    if ckpt["epoch"] != epochs - 1 or not all(len(ckpt[k]) == epochs for k in REFERENCE_KEYS
                                               if k.endswith(("_losses", "_acc"))):
        raise CheckpointError(f"the checkpoint says epoch {ckpt['epoch']} but holds "
                              f"{epochs} epochs of history: it cannot be continued")
    dataset = dataset_of(ckpt)
    if dataset is None:
        raise CheckpointError("a reference checkpoint of neither 100 nor 10 classes: which "
                              "CIFAR data set it trained on is unknown")
    adopted = dict(ckpt)
    fill_metadata(adopted)  # model_args, class_names, mean, std
    args = adopted["model_args"]
    config = {**dataclasses.asdict(Config()), "dataset": dataset, "blocks": list(args["blocks"]),
              "width": args["width"]}
    adopted.update(config=config, position={"epoch": epochs, "step": 0}, progress=None,
                   scheduler_state_dict=None, scaler_state_dict={}, lrs=None,
                   test_top5=[float("nan")] * epochs, best_accuracy=max(ckpt["test_acc"]))
    return adopted


def restore(ckpt, model, opt, sched, scaler, cfg, expected_args, steps_per_epoch):
    """Load a resumed run's state into freshly built objects. A checkpoint without
    scheduler state (the reference's, see adopt_reference) gets the fresh schedule
    replayed to its position, and its history the learning rates of that replay.

    Returns (history, position (epoch, step), progress inside that epoch or None).
    """
    check_model_args(model_args_from_state_dict(ckpt["model_state_dict"]), expected_args,
                     "the checkpoint holds weights")
    epoch, step = position_of(ckpt)
    # the schedule's ends come from this run's config (equal to the saved run's: FIXED)
    ends = [{k: g[k] for k in ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
             if k in g} for g in opt.param_groups]
    try:
        load_weights(model, ckpt["model_state_dict"])
        opt.load_state_dict(ckpt["optimizer_state_dict"])
        for group, end in zip(opt.param_groups, ends):  # loading restored the saved values:
            # keep what --resume-force may change, and the fused kernel (older files had none)
            group.update(end, weight_decay=cfg.weight_decay, fused=True, foreach=None)
        _match_layouts(opt)
        hist = {k: list(ckpt[k] or []) for k in history_keys(cfg)}
        if ckpt["scheduler_state_dict"] is None:
            hist["lrs"] = replay_schedule(sched, epoch, steps_per_epoch)
        else:
            sched.load_state_dict(ckpt["scheduler_state_dict"])
        if ckpt["scaler_state_dict"]:  # empty when saved without fp16 (a disabled scaler)
            scaler.load_state_dict(ckpt["scaler_state_dict"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot resume from this checkpoint: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:150]}") from None
    return hist, (epoch, step), ckpt.get("progress")


def replay_schedule(sched, epochs, steps_per_epoch):
    """Step a schedule through `epochs` whole epochs without training, as a run would have
    stepped it; returns the LR after each epoch, as the history's lrs holds it."""
    if epochs * steps_per_epoch > sched.total_steps:
        raise ValueError(f"{epochs} epochs of {steps_per_epoch} steps are more than the "
                         f"schedule's {sched.total_steps} steps")
    lrs = []
    with warnings.catch_warnings():  # "scheduler stepped before the optimizer": that is the point
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epochs):
            for _ in range(steps_per_epoch):
                sched.step()
            lrs.append(sched.get_last_lr()[0])
    return lrs


def _match_layouts(opt):
    """Momentum buffers saved in another memory format than the weights have now
    (channels_last from a CUDA run resumed in NCHW, say) take the weights' layout, as
    a fresh buffer would: the fused SGD kernel updates them side by side."""
    for group in opt.param_groups:
        for p in group["params"]:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None and buf.stride() != p.stride():
                opt.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)


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
