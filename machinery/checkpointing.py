"""What a checkpoint holds, how a run is restored from one, and the background writer
that puts an epoch's files on disk while training goes on.

Files are written atomically (checkpoint_files.save_checkpoint), hold plain types only (so
torch.load(weights_only=True) reads them), and carry the run's config, its history and
everything needed to continue from the exact step.
"""
import dataclasses
import math
import os
import sys
import threading
import warnings

import torch

from .checkpoint_files import (CheckpointError, check_model_args, dataset_of, fill_metadata,
                               find_latest_checkpoint, load_checkpoint, load_weights,
                               model_args_from_state_dict, position_of, save_checkpoint)
from .config import RECIPE, Config
from . import tensorboard_events
from .logs import log
from .run_folder import (carry_best, its_own, new_run_id, others_periodic, resumed_here,
                         run_id_of)


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


def save_epoch_checkpoints(ckpt, folder, cfg, is_best, remove=(), periodic=True):
    """last.pt, best_model.pt when the epoch is the best so far (or the folder has none: a
    run resumed into a new folder whose best could not be carried over), and every
    save_every epochs checkpoint_epoch_N.pt (unless `periodic` is False: the name holds
    another run's file); then those of the periodic files retention() dropped (`remove`)
    that say they are this run's own."""
    os.makedirs(folder, exist_ok=True)
    epoch = ckpt["epoch"]
    save_checkpoint(ckpt, os.path.join(folder, "last.pt"))
    best = os.path.join(folder, "best_model.pt")
    if is_best or not os.path.isfile(best):
        save_checkpoint(ckpt, best)
    if periodic and (epoch + 1) % cfg.save_every == 0:
        save_checkpoint(ckpt, os.path.join(folder, periodic_name(epoch)))
    for name in remove:
        path = os.path.join(folder, name)
        if its_own(path, ckpt["run_id"]):  # read before it goes: never another run's file
            os.remove(path)


def periodic_name(epoch):
    return f"checkpoint_epoch_{epoch}.pt"  # named by the log's 0-based epoch number


def retention(own, epoch, cfg, folder, run_id):
    """The periodic files a run keeps once epoch `epoch`'s files are written, those it
    removes, and another run's file that holds this epoch's name (None, or its path: then
    the run does not write that file). `own` lists the checkpoint_epoch_N.pt files the run
    wrote into this folder (its checkpoints carry the list, so a resumed run knows them);
    only those are ever pruned to --keep-checkpoints, each after it says it is the run's.
    Files it did not write (the reference's, another run's, a user's copies) are never
    touched: returns (own, remove, taken)."""
    own = list(own)
    if (epoch + 1) % cfg.save_every:
        return own, [], None
    name = periodic_name(epoch)
    taken = os.path.join(folder, name)
    if os.path.exists(taken) and name not in own and not its_own(taken, run_id):
        return own, [], taken
    own = [n for n in own if n != name] + [name]
    keep = cfg.keep_checkpoints
    return (own[-keep:], own[:-keep], None) if keep else (own, [], None)


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


def pick_resume(resume, out_dir, say=True):
    """(path, checkpoint) to continue from; 'auto' searches out_dir/checkpoints for the
    newest good one (saying which, and why it passed over the others, when `say`)."""
    if resume != "auto":
        return resume, load_checkpoint(resume) if resume else None
    folder = os.path.join(out_dir, "checkpoints")
    lead = run_id_of(os.path.join(folder, "last.pt"))  # the run that last trained here

    def refuse(ckpt):
        if lead and ckpt.get("run_id") not in (None, lead):
            return "it is another run's (not the run of last.pt)"
        return why_not_resumable(ckpt)
    path, ckpt, skipped = find_latest_checkpoint(folder, refuse)
    if say:
        for reason in skipped:
            print(f"skipping {reason}", file=sys.stderr)
        print(f"--resume auto: {'continuing ' + path if path else 'no checkpoint yet, starting fresh'}")
    return path, ckpt


# What a reference checkpoint says of its run's config: the data set and network (from
# the weights), and what its repo cannot do at all (no --val-split, --smoke, --init-from,
# --accum-steps).
KNOWN_OF_A_REFERENCE_RUN = {"dataset", "blocks", "width", "val_split", "smoke", "init_from",
                            "image_size", "accum_steps"}  # (CIFAR: 32 px; no accumulation)


def adopt_reference(ckpt):
    """A reference checkpoint in this repo's format, to continue its run here: the network
    its weights hold, its history, and no scheduler state, which restore() rebuilds by
    replaying the schedule. The file holds no recipe: the config is the reference's
    (this repo's defaults) and `assumed` names the settings that the command line may
    give instead, as that run's own (its --epochs, say)."""
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
                   tensorboard_run=None,  # none here yet: a folder of its own
                   assumed=sorted(RECIPE - KNOWN_OF_A_REFERENCE_RUN),
                   scheduler_state_dict=None, scaler_state_dict={}, lrs=None,
                   test_top5=[float("nan")] * epochs, best_accuracy=max(ckpt["test_acc"]))
    return adopted


def resumed_line(path, ckpt, epoch, step, sched):
    """The line a resumed run starts with; for a reference file, what was carried over."""
    if ckpt["scheduler_state_dict"] is not None:
        return f"resumed from {path} at epoch {epoch}, step {step}"
    return (f"resumed the reference repo's {path} at epoch {epoch}: its weights, SGD momentum "
            f"and {epoch} epochs of history carried over, the schedule replayed to step "
            f"{sched.last_epoch:,} (lr {sched.get_last_lr()[0]:.6f}), the loss scale "
            f"afresh; the random streams are this repo's, so the run continues the same "
            f"recipe statistically, not bit for bit")


def settings_line(ckpt, cfg, given):
    """Where a reference run's settings come from: its file holds only the network and
    data set, so each other setting is the command line's or the reference recipe's."""
    def flag(k):
        v, name = getattr(cfg, k), k.replace("_", "-")
        if isinstance(v, bool):
            return f"--{name}" if v else f"--no-{name}"
        return f"--{name} {' '.join(map(str, v)) if isinstance(v, list) else v}"
    line = f"settings: from the file {', '.join(flag(k) for k in ('dataset', 'blocks', 'width'))}"
    for what, keys in (("from the command line", [k for k in ckpt["assumed"] if k in given]),
                       ("assumed, the reference's", [k for k in ckpt["assumed"] if k not in given])):
        if keys:
            line += f"; {what} {', '.join(flag(k) for k in keys)}"
    return line


def saved_lr_mismatch(path, ckpt, sched, cfg):
    """A warning when a reference file's optimizer was at another learning rate than the
    schedule replayed here gives at its step (a mistyped --epochs, say); else None."""
    saved = ckpt["optimizer_state_dict"]["param_groups"][0].get("lr")
    here = sched.get_last_lr()[0]
    if saved is None or math.isclose(saved, here, rel_tol=1e-3):
        return None
    return (f"warning: {path} was saved at lr {saved:.6f}, but this run's schedule (--epochs "
            f"{cfg.epochs}, --batch-size {cfg.batch_size}, --max-lr {cfg.max_lr}, --pct-start "
            f"{cfg.pct_start}) is at lr {here:.6f} there: if the reference run used other "
            f"settings, stop and give them")


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


def claim_files(extra, out, main, resumed, resume_path):
    """The run's id (a resumed run's is its checkpoint's), the periodic files it owns (its
    checkpoint's list, in that checkpoint's own folder only), its TensorBoard folder, and,
    resumed into another folder, its best model carried along; into `extra`, the run's
    checkpoint extras. main: whether this process is the one that writes."""
    resumed = resumed or {}
    extra["run_id"] = resumed.get("run_id") or new_run_id()
    here = resumed_here(resume_path, out)
    extra["own_periodic"] = list(resumed.get("own_periodic", [])) if here else []
    extra["tensorboard_run"] = tensorboard_events.run_name(resumed or None,
                                                           os.path.join(out, "tensorboard"))
    carried = resumed and not here and main and carry_best(resume_path, resumed, out)
    if carried:
        log.info(f"best_model.pt carried over from {carried}")
    others = others_periodic(os.path.join(out, "checkpoints"), extra["run_id"])
    if others and main:
        log.info(f"{len(others)} checkpoint_epoch_*.pt in {os.path.dirname(others[0])} were not "
                 f"written by this run: they are kept (--keep-checkpoints prunes only its own)")
