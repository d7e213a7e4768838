"""Train the enhanced ResNet34 on CIFAR-100 with the reference recipe.

    python train.py            # full run: downloads CIFAR-100 into ./data, up to 200 epochs
    python train.py --smoke    # offline demo: generated data, tiny network, 2 epochs, < 1 min
    python train.py --resume auto   # continue an interrupted run (or start one)
    python train.py --evaluate checkpoints/best_model.pt --tta   # test-set report only
    torchrun --standalone --nproc_per_node=4 train.py            # 4 GPUs, same recipe

Reproduces the reference: 30,032,292 parameters, SGD+Nesterov with OneCycleLR (max 0.1),
CutMix on 30% of batches, label smoothing 0.1, AMP fp16 on CUDA, channels_last; the
reference reached 75.14% test accuracy after 166 epochs in ~1.8 h on a Colab T4 and
stopped early at its 75% target. Every setting is a flag: `python train.py --help`.

Outputs (under --out-dir): checkpoints/, training_logs.md, training_metrics_from_ckpt/,
gradcam_outputs/.
"""
import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from machinery.stops import quiet_ctrl_c

quiet_ctrl_c(__name__)  # before torch loads (seconds): a Ctrl-C there is one line, not a traceback

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from machinery import data, lr_range, tensorboard_events
from machinery.checkpoint_files import (CheckpointError, init_from_checkpoint, load_checkpoint,
                                        save_checkpoint)
from machinery.checkpointing import (CheckpointWriter, adopt_reference, claim_files,
                                     history_keys, is_reference, make_checkpoint, pick_resume,
                                     replay_schedule, restore, resumed_line, retention,
                                     saved_lr_mismatch, save_epoch_checkpoints, settings_line,
                                     to_host, why_not_resumable)
from machinery.config import SMOKE_SIZES, Config, UserError, parse_args, resolve_config
from machinery.evaluation import evaluate_checkpoint, final_test, finish
from machinery.failures import (Crashed, Diverged, GracefulStop, StateLost, StepFailed, Stopped,
                                changing_state, check_finite, describe, one_line, report, stop_at_once)
from machinery.logs import (changed_settings, log, log_epoch, log_model_summary, open_table,
                            setup_logging, start_epoch_table, table_file)
from machinery.metrics import LiveMetrics, write_metrics
from machinery.progress import Tally, new_progress, timed  # noqa: F401 -- (train.new_progress & co.)
from machinery.run_folder import busy as busy_folder, claim, folder_of, resumed_here
from machinery.runlock import holding_out_dir
from machinery.runtime import (CHANNELS_LAST_OFF, INPUT_BOUND, BufferSnapshot, Runtime,  # noqa: F401
                               TrainingNetwork, accumulation, channels_last_crashes,
                               check_distributed, check_input, default_workers, env_rank,
                               evaluate, fresh_gradients, init_distributed, make_runtime)
from machinery.workers import chosen_workers
from model import ResNet, count_parameters, model_from_checkpoint

CIFAR100_CLASSES = data.CIFAR100_CLASSES  # the reference's README points its users here


# -----------------------------------------------------------------------------
# CutMix


def cutmix(x, y, rng, alpha, prob):
    """CutMix on a fraction `prob` of the batches: (x, y, y, 1.0) for a batch left alone."""
    if rng.random() >= prob:
        return x, y, y, 1.0
    return paste_box(x, y, rng, alpha)


def paste_box(x, y, rng, alpha):
    """Paste a random box from a shuffled copy of the batch into each image.

    x: (N, C, H, W); rng: numpy Generator. Returns (x, y_a, y_b, lam) where lam is the
    fraction of each image that is still its own: the box is clipped at the border, so
    lam is recomputed from the box actually pasted rather than taken from Beta(alpha, alpha).
    """
    H, W = x.shape[-2:]
    cut = math.sqrt(1.0 - rng.beta(alpha, alpha))
    cy, cx = rng.integers(H), rng.integers(W)
    h, w = int(H * cut), int(W * cut)
    y0, y1 = max(cy - h // 2, 0), min(cy + h // 2, H)
    x0, x1 = max(cx - w // 2, 0), min(cx + w // 2, W)
    perm = data.to_device(rng.permutation(len(x)), x.device, np.int64)  # without waiting
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    return x, y, y[perm], 1.0 - (y1 - y0) * (x1 - x0) / (H * W)


# -----------------------------------------------------------------------------
# Model, optimizer, schedule


def make_optimizer(model, cfg, steps_per_epoch):
    """SGD + Nesterov with OneCycleLR. The fused SGD kernel updates every tensor in one
    pass (2.2x the per-tensor loop's speed on the CI machine's CPU: docs/performance.md)
    and can skip a step on the device, so no step waits for the host to read whether the
    gradients were finite."""
    opt = make_sgd(model, cfg, cfg.max_lr / cfg.div_factor)
    total = cfg.epochs * steps_per_epoch
    if steps_per_epoch == 0:  # (torchrun: each rank needs an image of every step)
        raise UserError("the training images are fewer than the processes: an epoch has no "
                        "step; run fewer processes, or bring more images")
    if abs(cfg.pct_start * total - 1) < 1e-9:  # OneCycleLR divides by zero on this exact size
        raise UserError(f"--pct-start {cfg.pct_start} leaves a warm-up of one step; change "
                        f"--epochs or --pct-start")
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.max_lr, total_steps=total, pct_start=cfg.pct_start,
        anneal_strategy="cos", div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)
    return opt, sched


def make_sgd(model, cfg, lr):
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay, fused=True)
    if cfg.momentum > 0:
        # Zero buffers behave exactly like SGD's first step (buffer = gradient); without
        # them a skipped first step (a non-finite gradient: common under AMP, whose loss
        # scale starts high) leaves the fused kernel's new buffers uninitialised.
        for p in params:
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return opt


def step_unless(opt, skip):
    """opt.step(), skipped on the device where `skip` (a 0-dim bool tensor) is true, so the
    host never has to read it. Fused optimizers take the flag the way GradScaler hands it
    to them under AMP: as the attribute found_inf."""
    opt.found_inf = skip.float()
    try:
        opt.step()
    finally:
        del opt.found_inf


# -----------------------------------------------------------------------------
# Train


SYNC_EVERY = 20  # steps between reads of device values (progress bar, divergence check)


def train_step(model, x, y, opt, sched, scaler, rt, cfg, rng):
    """One optimizer step with CutMix that never waits for the device.

    With --accum-steps K the batch runs as K micro-batches, each with its own CutMix draw
    (from the step's keyed rng, in turn) and its loss weighted by its share of the batch,
    so the summed gradient is the whole batch's; clipping, the loss scaler and the update
    then happen once, as for K = 1. Under DDP the gradients are averaged over the ranks
    once, after the last micro-batch.

    Returns device tensors: (summed loss, lambda-weighted correct count, whether the loss
    was non-finite). A step whose gradients are not finite leaves weights and momentum
    untouched: under AMP the GradScaler skips it, in fp32 the fused SGD is told to.
    The schedule advances either way, so it stays tied to the batch count.
    """
    if cfg.accum_steps > 1:
        fresh_gradients(opt)
    else:
        opt.zero_grad(set_to_none=True)  # the backward's gradient becomes .grad as it is
    micro = list(zip(x.chunk(cfg.accum_steps), y.chunk(cfg.accum_steps)))
    sums = []
    for i, (xm, ym) in enumerate(micro):
        with no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext():
            sums.append(micro_step(model, xm, ym, scaler, rt, cfg, rng, len(xm) / len(x)))
    loss_sum, correct, bad = (torch.stack(t).sum(0) for t in zip(*sums))
    scaler.unscale_(opt)  # clip the true gradient, not the loss-scaled one (no-op in fp32)
    # The norm is taken even without clipping (max_norm inf): it says on the device whether
    # the gradient, already summed over all ranks, is finite, so every rank skips together.
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                          cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    with changing_state():  # weights, momentum, loss scale, schedule: a failure here is fatal
        if scaler.is_enabled():
            scaler.step(opt)  # skips non-finite gradients itself (and lowers the loss scale)
            scaler.update()
        else:
            step_unless(opt, ~torch.isfinite(norm))
        sched.step()
    bad = bad > 0
    return torch.where(bad, 0.0, loss_sum), correct, bad


def micro_step(model, x, y, scaler, rt, cfg, rng, share):
    """Forward and backward of one (micro-)batch, its loss weighted by its share of the
    step's batch. Returns (loss x images, correct count, 1.0 if the loss was non-finite)."""
    mixed = rng.random() < cfg.cutmix_prob  # the same draw as cutmix()'s gate
    x, ya, yb, lam = paste_box(x, y, rng, cfg.cutmix_alpha) if mixed else (x, y, y, 1.0)
    # As the reference's code: CutMix's mixed targets are soft already, so label smoothing
    # applies to the other batches only (--cutmix-label-smoothing: to both)
    eps = cfg.label_smoothing if not mixed or cfg.cutmix_label_smoothing else 0.0
    with rt.autocast():
        out = model(x)
        loss = F.cross_entropy(out, ya, label_smoothing=eps)
        if mixed:
            loss = lam * loss + (1 - lam) * F.cross_entropy(out, yb, label_smoothing=eps)
    scaler.scale(loss * share).backward()  # share 1.0 (no accumulation) is exact
    loss = loss.detach().float()
    pred = out.detach().argmax(1)
    correct = lam * (pred == ya).sum() + (1 - lam) * (pred == yb).sum()
    return loss * len(x), correct.float(), (~torch.isfinite(loss)).float()


def no_sync(model):
    """DDP's no_sync (no gradient all-reduce in this backward pass), for every micro-batch
    of a step but the last; nothing to do without DDP."""
    ddp = getattr(model, "net", model)  # (TrainingNetwork holds DDP(net) under torchrun)
    if isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
        return ddp.no_sync()
    return contextlib.nullcontext()


def augment_on_device(x, y, rt, cfg, key):
    """--aug-on-device: uint8 batch -> augmented, normalised batch, computed on the device."""
    seed = data.stream_seed(key[0], data.AUG_STREAM, *key[1:])
    x, _ = data.augment_batch(x.to(rt.device, non_blocking=True), seed, rt.mean, rt.std)
    return x.contiguous(memory_format=rt.memory_format), y.to(rt.device, non_blocking=True)


def steps_per_epoch(loader):
    """Steps in a whole epoch (len(loader) shrinks while an epoch is resumed part-way)."""
    return loader.batch_sampler.steps


def train_epoch(model, loader, opt, sched, scaler, rt, cfg, epoch, progress, stop=None,
                report=None):
    """Train from progress["step"] to the end of the epoch, or until `stop` is set.

    Every random choice is keyed by (seed, epoch, step), so starting at step k gives
    exactly the steps an uninterrupted epoch would have run from k on. No step waits for
    the device: the Tally's sums are read every SYNC_EVERY steps and at the end. Returns
    the updated progress; progress["step"] == steps_per_epoch(loader) once the epoch is
    complete. A failure raises StepFailed (see failed_step). report(steps done in the
    epoch, running train loss, lr) is called on rank 0 at those reads (TensorBoard).
    """
    model.train()
    p, dist = dict(progress), rt.dist
    loader.batch_sampler.set_epoch(epoch, start_step=p["step"])
    tally, kept = Tally(p, dist, rt.device), BufferSnapshot(model)
    bar = tqdm(timed(loader, p), desc=f"epoch {epoch}/{cfg.epochs - 1}", initial=p["step"],
               total=steps_per_epoch(loader), leave=False, dynamic_ncols=True,
               disable=not dist.main)
    try:
        for step, (x, y) in enumerate(bar, start=p["step"]):
            key = (cfg.seed, epoch, step, dist.rank)  # each rank its own, reproducible stream
            loss_sum, correct, bad, n = keyed_step(model, x, y, opt, sched, scaler, rt, cfg, key)
            with changing_state():  # the step is counted together with its update
                tally.add(loss_sum, correct, bad, n)
                p["step"] = step + 1
                kept.take()
            signalled = stop is not None and stop.signum is not None
            if dist.world == 1 and signalled:
                break  # one process: stop right after this step
            if (step + 1) % SYNC_EVERY == 0:
                # under torchrun a signal may reach one rank only: all stop after the same step
                longest, signalled = dist.all_max(torch.stack(
                    [tally.streak[1], torch.tensor(float(signalled), device=rt.device)])).tolist()
                check_finite(longest, epoch, step)
                if dist.main:
                    loss, acc = tally.sums.tolist()  # this rank's share: enough for a progress bar
                    bar.set_postfix(loss=f"{loss / tally.seen:.3f}", lr=f"{sched.get_last_lr()[0]:.5f}",
                                    acc=f"{100 * acc / tally.seen:.1f}%")
                    if report:
                        report(step + 1, loss / tally.seen, sched.get_last_lr()[0])
                if signalled:
                    break
    except Diverged:
        raise
    except Exception as e:
        raise failed_step(e, p, tally, kept, dist) from e
    finally:
        bar.close()
    p, longest = tally.settle(p, dist)
    check_finite(longest, epoch, p["step"] - 1)
    return p


def keyed_step(model, x, y, opt, sched, scaler, rt, cfg, key):
    """train_step on a loader's batch, every random choice (augmentation on the device,
    dropout, CutMix) drawn from key = (seed, epoch, step, rank). Returns train_step's
    tensors and the batch's size."""
    x, y = augment_on_device(x, y, rt, cfg, key) if cfg.aug_on_device else rt.batch(x, y)
    torch.manual_seed(data.stream_seed(key[0], data.TORCH_STREAM, *key[1:]))  # dropout
    rng = np.random.default_rng([key[0], data.CUTMIX_STREAM, *key[1:]])
    return (*train_step(model, x, y, opt, sched, scaler, rt, cfg, rng), len(x))


def failed_step(e, p, tally, kept, dist):
    """StepFailed for a failure inside the epoch. Fetching a batch, the forward and the
    backward pass change nothing that is saved except the BatchNorm statistics, which are
    restored: the state is then exactly that of the last completed step, p["step"]. A
    failure while updating (StateLost) has no such state; neither has a torchrun job,
    whose ranks can no longer agree on one once one of them failed."""
    if isinstance(e, StateLost) or dist.world > 1:
        return StepFailed(e.__cause__ or e, None)
    kept.restore()
    return StepFailed(e, tally.settle(p, dist)[0])


# -----------------------------------------------------------------------------
# Main


@dataclass
class Run:
    """The objects a training run is made of, built once and passed around together."""
    cfg: Config
    rt: Runtime
    net: torch.nn.Module    # the network itself: what checkpoints hold, what evaluates
    model: torch.nn.Module  # what trains: TrainingNetwork over `net` (or DDP(net), torchrun)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: torch.utils.data.DataLoader
    eval_loader: torch.utils.data.DataLoader  # after each epoch: test or validation images
    extra: dict  # stored in every checkpoint: model_args, class_names, mean, std
    hist: dict  # the per-epoch history (history_keys)
    live: LiveMetrics  # training_metrics_from_ckpt/, brought up to date after each epoch
    workers: int  # the data loaders' worker processes
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # files, in the background
    events: tensorboard_events.Events = field(default_factory=tensorboard_events.Events.off)
    said_input: bool = False  # whether the run has warned that the GPU waits for input

    def checkpoint(self, position, progress=None):
        return make_checkpoint(self.net, self.opt, self.sched, self.scaler, self.cfg,
                               self.hist, self.extra, position, progress)


def build_run(cfg, device, dist, images):
    """Data loaders, network, optimizer, schedule and scaler for a config, on this rank;
    images: data.Prepared."""
    (x_train, y_train), (x_eval, y_eval) = images.train, images.evaluated
    mean, std, names, size = images.mean, images.std, images.names, cfg.image_size
    channels_last = cfg.channels_last and not channels_last_crashes(device, cfg.width)
    if channels_last != cfg.channels_last:
        log.warning(CHANNELS_LAST_OFF)
    rt = make_runtime(device, cfg.precision, channels_last, mean, std, dist, cfg.step_mode)
    workers = chosen_workers(cfg.num_workers)
    train_loader, eval_loader = data.make_loaders(
        x_train, y_train, x_eval, y_eval, mean, cfg.batch_size,
        cfg.eval_batch_size, workers, cfg.seed, device.type == "cuda", dist.rank, dist.world,
        raw=cfg.aug_on_device)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    net = ResNet(tuple(cfg.blocks), cfg.width, len(names), cfg.dropout, cfg.block_dropout,
                 cfg.stem_pool)
    if dist.main:
        log_model_summary(net)
    evaluated = (f"{len(x_eval):,} validation (val/)" if cfg.val_folder else
                 f"{len(x_eval):,} validation (held out)" if cfg.val_split else f"{len(x_eval):,} test")
    pixels = "" if size == 32 else f" at {size}x{size} ({(size / 32) ** 2:.2g}x the compute per image of 32 px)"
    log.info(f"data: {cfg.dataset} in {cfg.data_dir}, {len(x_train):,} train / {evaluated} images"
             f"{pixels} | network: {count_parameters(net):,} parameters | device {device}, "
             f"{rt.precision}, step {rt.step_mode} | workers {workers} | "
             f"processes {dist.world} (batch {cfg.batch_size // dist.world} each"
             f"{accumulation(cfg, dist)})")
    log.info(f"settings that differ from the reference: {changed_settings(cfg)}")
    if cfg.sync_bn:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(device, memory_format=rt.memory_format)
    model = net
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    model = TrainingNetwork(model, rt.step_mode)  # `net` (saved, evaluated) stays as it is
    with rt.autocast():  # the fast version, for full batches, before any batch is loaded
        model.prepare(rt.example_batch(cfg.batch_size // dist.world // cfg.accum_steps, size))
    opt, sched = make_optimizer(net, cfg, steps_per_epoch(train_loader))
    scaler = rt.grad_scaler()
    extra = {"model_args": dict(net.model_args), "class_names": list(names),
             "mean": list(mean), "std": list(std), "image_size": size}
    if images.ids:  # a folder's class ids behind the names shown (Tiny ImageNet's wnids)
        extra["class_ids"] = list(images.ids)
    return Run(cfg, rt, net, model, opt, sched, scaler, train_loader, eval_loader, extra,
               {k: [] for k in history_keys(cfg)},
               LiveMetrics(os.path.join(cfg.out_dir, "training_metrics_from_ckpt")), workers)


def train(cfg, resume_ckpt=None, resume_path=None, given=(), claim_folder=None):
    """The whole run: data, model, loop, checkpoints, then metrics and Grad-CAM.
    given: the settings given on the command line (said where a checkpoint lacks them);
    claim_folder: rank 0's run_folder.claim, called once every check before training has
    passed (the data found and read, the network built, the checkpoint restored)."""
    tensorboard_events.wanted(cfg)  # --tensorboard on without the package: say so now
    dist, device = init_distributed(cfg.device)
    check_distributed(cfg, dist, device)
    setup_logging(cfg, resume_path, enabled=dist.main)
    images = data.prepare(cfg, dist, log.info, SMOKE_SIZES)
    cfg.val_folder = images.val_folder  # val/ beside test/: the validation protocol
    run = build_run(cfg, device, dist, images)
    test = images.test
    epoch, step, progress = 0, 0, new_progress()
    if resume_ckpt:
        epoch, step, progress = resume_into(run, resume_ckpt, resume_path, given)
    elif cfg.init_from:
        log.info(init_from_checkpoint(run.net, cfg.init_from))
    log_file = table_file(cfg)  # (a log that cannot be opened: said before the folder is claimed)
    if claim_folder:  # only now may another run's files be moved aside or replaced
        claim_folder()
    open_table(log_file)
    start_epoch_table(cfg)
    claim_files(run.extra, cfg.out_dir, dist.main, resume_ckpt, resume_path)
    run.events = tensorboard_events.for_run(cfg, dist.main, epoch * steps_per_epoch(run.train_loader)
                                            + step, run.extra["tensorboard_run"], log.info, log.warning)
    try:
        with GracefulStop() as stop:
            trained = train_loop(run, epoch, progress, stop)
    except KeyboardInterrupt as e:
        if dist.main:
            print(f"\nstopped at once; continue with: {resume_command(cfg)}", file=sys.stderr)
        e.said = True
        raise
    finally:  # persistent workers would otherwise outlive a failure, and exit could wait on them
        data.shutdown_workers(run.train_loader, run.eval_loader)
        run.writer.join()  # the last epoch's files, complete before anything reads them
        run.events.flush()  # the curves so far, even if training failed
    run.writer.wait()  # (and a failed write is an error)
    last = trained or resume_ckpt
    if not trained and resume_ckpt and dist.main and not resumed_here(resume_path, cfg.out_dir):
        # nothing left to train, in a new folder: its last.pt says where the run stands, or
        # --resume auto there would start again
        save_checkpoint(to_host(run.checkpoint(dict(zip(("epoch", "step"), (epoch, step))))),
                        os.path.join(cfg.out_dir, "checkpoints", "last.pt"))
    if last is None or not run.hist["train_acc"]:
        raise UserError("no epoch has been completed, so there is nothing to report")
    try:
        if cfg.eval_split == "val":
            last = final_test(run, *test, last)
        if dist.main:
            finish(run, last, *test, model_from_checkpoint)
    except Exception as e:  # out of memory in Grad-CAM, say: the training itself is safe
        raise Crashed(e, f"{one_line(e, device=device)}; training finished and its checkpoints "
                         f"are saved; to redo what follows training: {resume_command(cfg)}",
                      cfg.out_dir) from e
    finally:
        run.events.close()
    dist.barrier(patient=True)  # ranks leave together, however long rank 0 took to finish


def resume_into(run, ckpt, path, given):
    """A resumed run's state loaded into `run`, and said; returns (epoch, step, progress)."""
    run.hist, (epoch, step), progress = restore(
        ckpt, run.net, run.opt, run.sched, run.scaler, run.cfg, run.extra["model_args"],
        steps_per_epoch(run.train_loader))
    log.info(resumed_line(path, ckpt, epoch, step, run.sched))
    if ckpt.get("assumed"):  # a reference file: where its settings come from, and a check
        log.info(settings_line(ckpt, run.cfg, given))
        mismatch = saved_lr_mismatch(path, ckpt, run.sched, run.cfg)
        if mismatch:
            log.warning(mismatch)
    return epoch, step, {**new_progress(), **(progress or {})}  # older files lack input_wait


def train_loop(run, epoch, progress, stop):
    """Epochs until the last one, the target accuracy, or a signal. Returns the last checkpoint."""
    cfg, last = run.cfg, None
    steps = steps_per_epoch(run.train_loader)
    clock = (time.monotonic(), epoch)  # for the estimate of the time left
    while epoch < cfg.epochs and not target_reached(run.hist, cfg):
        if stop.signum is not None:  # arrived while evaluating or saving the last epoch
            run.writer.wait()
            raise Stopped(stop.signum, f"saved after epoch {epoch - 1}; continue with: python "
                          f"train.py --resume {os.path.join(cfg.out_dir, 'checkpoints', 'last.pt')}")
        t0, seen, waited = time.monotonic(), progress["seen"], progress["input_wait"]
        done = epoch * steps  # optimizer steps before this epoch: TensorBoard's x axis

        def report(k, loss, lr, done=done):
            run.events.scalars(done + k, {"train/running_loss": loss, "lr": lr})
        try:
            progress = train_epoch(run.model, run.train_loader, run.opt, run.sched, run.scaler,
                                   run.rt, cfg, epoch, progress, stop, report)
            if progress["step"] < steps:  # a signal stopped the epoch part-way
                raise Stopped(stop.signum or signal.SIGTERM,  # or: another rank was signalled
                              save_partial_epoch(run, epoch, progress, steps))
            check_input(run, epoch, progress["input_wait"] - waited, time.monotonic() - t0)
            last = end_epoch(run, epoch, progress, (t0, progress["seen"] - seen), clock)
        except StepFailed as e:
            raise Crashed(e.cause, crash_message(run, epoch, e, steps), cfg.out_dir) from e.cause
        # a streak of non-finite losses carries over into the next epoch
        epoch, progress = epoch + 1, dict(new_progress(), nonfinite=progress["nonfinite"])
    return last


def save_partial_epoch(run, epoch, progress, steps):
    """last.pt for a run stopped inside an epoch; returns the message for the user."""
    path = os.path.join(run.cfg.out_dir, "checkpoints", "last.pt")
    if progress["nonfinite"]:
        return f"not saved (the loss was not finite); the last good checkpoint is {path}"
    run.writer.wait()  # the epoch before's files first: this one must not be overwritten
    if run.rt.dist.main:
        save_checkpoint(run.checkpoint({"epoch": epoch, "step": progress["step"]}, progress), path)
    return (f"saved epoch {epoch} at step {progress['step']}/{steps}; "
            f"continue with: python train.py --resume {path}")


def crash_message(run, epoch, failure, steps):
    """The user's line for a failed step: what happened, what was kept, what to do."""
    cfg = run.cfg
    what, hint = describe(failure.cause, run.rt.device, cfg.batch_size, cfg.eval_batch_size,
                          failure.phase)
    if failure.progress is None:
        why = ("under torchrun only the last checkpoint is consistent" if run.rt.dist.world > 1
               else "it failed while updating the weights")
        kept = f"not saved ({why}); the last checkpoint is kept; continue with: {resume_command(cfg)}"
    else:
        try:
            kept = save_partial_epoch(run, epoch, failure.progress, steps)
        except Exception as e:  # the disk or the device may be what failed
            kept = (f"could not save ({type(e).__name__}: {str(e)[:100]}); the last checkpoint "
                    f"is kept; continue with: {resume_command(cfg)}")
    return f"{what}; {kept}" + (f" ({hint})" if hint else "")


def resume_command(cfg):
    return "python train.py --resume auto" + (f" --out-dir {cfg.out_dir}" if cfg.out_dir != "." else "")


def target_reached(hist, cfg):
    acc = hist[f"{cfg.eval_split}_acc"]  # the validation accuracy with --val-split
    return bool(cfg.target_accuracy and acc and max(acc) >= cfg.target_accuracy)


def end_epoch(run, epoch, progress, started, clock):
    """Evaluate, record, save and log a completed epoch; bring the metric files up to date.
    started: (time.monotonic() at the epoch's start, images trained since);
    clock: (time, epoch) when this process started training. Returns the checkpoint."""
    run.rt.dist.share_buffers(run.net)
    try:
        ev = evaluate(run.net, run.eval_loader, run.rt)
    except Exception as e:  # the epoch's training is complete: that state can be saved as is
        raise StepFailed(e, progress if run.rt.dist.world == 1 else None, "evaluation") from e
    hist, cfg, split = run.hist, run.cfg, run.cfg.eval_split
    is_best = not hist[f"{split}_acc"] or ev["acc"] > max(hist[f"{split}_acc"])
    tr_loss = progress["loss_sum"] / progress["seen"]
    tr_acc = 100 * progress["correct"] / progress["seen"]
    for k, v in zip(history_keys(cfg), (tr_loss, ev["loss"], tr_acc, ev["acc"], ev["top5"],
                                        run.sched.get_last_lr()[0])):
        hist[k].append(v)
    ckpt = run.checkpoint({"epoch": epoch + 1, "step": 0})
    ckpt[f"{split}_images"] = ev["n"]  # every image once, whatever the number of ranks
    if progress["nonfinite"]:  # the model may be ruined: keep the last good files instead
        log.warning(f"epoch {epoch}: loss not finite for the last {progress['nonfinite']} "
                    f"steps; checkpoints not updated")
    elif run.rt.dist.main:  # written while the next epoch trains
        folder = os.path.join(cfg.out_dir, "checkpoints")
        own, remove, taken = retention(run.extra["own_periodic"], epoch, cfg, folder,
                                       run.extra["run_id"])
        if taken:
            log.warning(f"{taken} is another run's: kept, and this epoch's periodic checkpoint "
                        f"is not written (last.pt holds it)")
        run.extra["own_periodic"] = ckpt["own_periodic"] = own
        run.writer.submit(save_epoch_checkpoints, to_host(ckpt), folder, cfg, is_best, remove,
                          not taken)
    if run.rt.dist.main:
        try:
            run.live.update(ckpt)
        except Exception as e:  # the live curves are a convenience: never stop training for them
            log.warning(f"could not update training_metrics_from_ckpt/ ({one_line(e)}); "
                        f"training goes on")
    per_epoch = (time.monotonic() - clock[0]) / (epoch + 1 - clock[1])
    seconds = time.monotonic() - started[0]  # the whole epoch: training, evaluation, saving
    log_epoch(epoch, cfg, tr_loss, tr_acc, ev, hist["lrs"][-1], is_best, seconds, started[1],
              per_epoch * (cfg.epochs - 1 - epoch))
    scalars = {
        "train/loss": tr_loss, "train/accuracy": tr_acc, f"{split}/loss": ev["loss"],
        f"{split}/accuracy": ev["acc"], f"{split}/top5": ev["top5"], "lr": hist["lrs"][-1],
        "speed/images_per_s": started[1] / max(seconds, 1e-9), "speed/epoch_seconds": seconds}
    run.events.scalars(run.sched.last_epoch, {k: v for k, v in scalars.items() if v == v})  # no NaN top-5
    if target_reached(hist, cfg):
        log.info(f"{split} accuracy {ev['acc']:.2f}% reached the target "
                 f"{cfg.target_accuracy}%: stopping early")
    return ckpt


# The reference trained on 50,000 CIFAR images in batches of 128, the last one kept
REFERENCE_STEPS_PER_EPOCH = 391


def with_lrs(ckpt):
    """A checkpoint of the reference (which logs no LR) with the LR after each epoch of
    its schedule added, as this repo's history holds it."""
    if "lrs" in ckpt or "train_acc" not in ckpt:
        return ckpt
    opt, sched = make_optimizer(torch.nn.Linear(1, 1), Config(), REFERENCE_STEPS_PER_EPOCH)
    return {**ckpt, "lrs": replay_schedule(sched, len(ckpt["train_acc"]), REFERENCE_STEPS_PER_EPOCH)}


def find_lr(cfg, modes, argv):
    """--find-lr: the range test (machinery/lr_range.py) with this run's data, augmentation,
    CutMix, precision, step mode, accumulation and processes, on a network made for it and
    thrown away; only <out-dir>/lr_find/ is written, at the end (a stop leaves nothing)."""
    ramp = lr_range.Ramp(modes["lr_start"], modes["lr_end"], modes["find_lr_steps"])
    if ramp.problem:
        raise UserError(ramp.problem)
    folder = os.path.join(cfg.out_dir, lr_range.FOLDER)
    with lr_range.own_folder(folder, UserError, [cfg.data_dir] if cfg.smoke else []), stop_at_once(
            "the range test wrote nothing (its files are written at the end)"):
        return range_test(cfg, ramp, folder, argv)


def range_test(cfg, ramp, folder, argv):
    dist, device = init_distributed(cfg.device)
    check_distributed(cfg, dist, device)
    setup_logging(cfg, enabled=dist.main)  # the console only: training_logs.md is a run's
    run = build_run(cfg, device, dist, data.prepare(cfg, dist, log.info, SMOKE_SIZES))
    if cfg.init_from:
        log.info(init_from_checkpoint(run.net, cfg.init_from))
    opt = make_sgd(run.net, cfg, ramp.start)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, ramp.factor)  # step k trains at ramp.lr(k)
    def step(x, y, epoch, k):  # (summed loss, images) of one step, keyed as training's
        key = (cfg.seed, epoch, k, dist.rank)
        loss_sum, _, bad, n = keyed_step(run.model, x, y, opt, sched, run.scaler, run.rt, cfg, key)
        return torch.where(bad, float("nan"), loss_sum), n  # (training counts it 0: skipped)
    try:
        curve = lr_range.record(lr_range.losses(run.train_loader, step, dist), ramp,
                                disable=not dist.main)
    finally:
        data.shutdown_workers(run.train_loader, run.eval_loader)
    if dist.main:
        pick = lr_range.suggest(curve)
        files = lr_range.write(curve, pick, folder, " (smoke run on generated data)" if cfg.smoke else "")
        busy = busy_folder(cfg.out_dir)
        print(lr_range.summary(curve, pick, files, argv, lr_range.launcher(dist.world), busy and (
            f"note: {busy}: add --archive to move them aside, or train in another --out-dir")))
    dist.barrier(patient=True)
    return 0


def run(args, modes, argv=None):
    out_dir = args.get("out_dir", ".")
    if modes["find_lr"]:
        return find_lr(resolve_config(args), modes, sys.argv[1:] if argv is None else argv)
    if modes["evaluate"]:
        return evaluate_checkpoint(modes["evaluate"], modes["tta"], args, model_from_checkpoint)
    if modes["metrics_from_ckpt"]:
        ckpt = with_lrs(load_checkpoint(modes["metrics_from_ckpt"]))
        print(f"metrics and plots: {write_metrics(ckpt, os.path.join(out_dir, 'training_metrics_from_ckpt'))}")
        return 0
    resume, ckpt = pick_resume(modes["resume"], out_dir, say=env_rank() == 0)
    if ckpt and modes["resume"] != "auto" and "out_dir" not in args and folder_of(resume):
        args = {**args, "out_dir": folder_of(resume)}  # on in the folder the file is in
    why = ckpt and why_not_resumable(ckpt)
    if why:
        raise CheckpointError(f"{resume} cannot be resumed: {why}")
    if ckpt and is_reference(ckpt):
        ckpt = adopt_reference(ckpt)
    cfg = resolve_config(args, ckpt and ckpt["config"], force=modes["resume_force"],
                         assumed=(ckpt or {}).get("assumed", ()))
    try:
        os.makedirs(os.path.join(cfg.out_dir, "checkpoints"), exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to --out-dir {cfg.out_dir}: {e.strerror}") from None
    # one run per folder; under torchrun rank 0 holds the lock for the whole job
    with holding_out_dir(cfg.out_dir) if env_rank() == 0 else contextlib.nullcontext():
        def claim_folder():  # nothing of another run is overwritten (torchrun ends the others)
            claim(cfg.out_dir, ckpt, resumed_here(resume, cfg.out_dir), modes["archive"])
        train(cfg, ckpt, resume, given=set(args), claim_folder=claim_folder if env_rank() == 0 else None)
    return 0


def main(argv=None):
    # under torchrun every rank reports its own failure (torchrun then ends the others)
    error = "error:" if int(os.environ.get("WORLD_SIZE", "1")) == 1 else f"error (rank {env_rank()}):"
    out_dir, debug = ".", False
    try:
        args, modes = parse_args(argv)
        out_dir, debug = args.get("out_dir", "."), modes["debug"]
        if modes["find_lr"]:  # a crash of the range test is reported in its folder, not the run's
            out_dir = os.path.join(out_dir, lr_range.FOLDER)
        return run(args, modes, argv)
    except (UserError, data.DataError, CheckpointError) as e:
        print(f"{error} {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"{error} {e}; the checkpoints saved before are kept", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, unwritable folder, ...: files already saved stay intact
        print(f"{error} {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 1
    except Stopped as e:
        if env_rank() == 0:
            print(f"stopped by {signal.Signals(e.signum).name}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt as e:
        if not getattr(e, "said", False):
            print("stopped before training began: nothing was written", file=sys.stderr)
        return 130
    except Crashed as e:  # what could be kept is saved; the message says what and where
        return report(e.cause, str(e), e.out_dir, error, debug)
    except Exception as e:  # not the user's fault, and nothing to save: one line all the same
        return report(e, one_line(e), out_dir, error, debug)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
