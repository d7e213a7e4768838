"""Throughput of every stage of training, measured side by side in one run.

    python benchmarks/throughput.py                  # full seed network (docs/performance.md)
    python benchmarks/throughput.py --device cuda --modes eager,graphs,compile --train-epochs 2
    python benchmarks/throughput.py --json out.json  # also write the figures as JSON
    python benchmarks/throughput.py --quick          # reduced network and sizes: a check

Each figure is the median of --repeats timed repeats after a warm-up. Rows:
augmentation (the reference's per-image pipeline as the baseline; train.py's uint8
hand-over per core and through the DataLoader with the default worker count; the batched
--aug-on-device pipeline); per step mode (eager, graphs, compile), precision and memory
format, the raw training step (train.train_step on one batch: forward, loss, backward,
clipping, SGD) and the time its mode took to get ready (capture, compile); evaluation;
the real training loop (train.train_epoch unchanged: DataLoader, CutMix, clipping,
schedule, progress bar) over whole epochs of generated data, per step mode and with
--aug-on-device; with --train-epochs, `python train.py` itself per step mode on generated
data. On CUDA a repeat of the raw step is --steps steps (50), and every row gives the
share of the time the GPU was busy (nvidia-smi); the real loop's rows also give its
steady state, without the loader's refill at each epoch's start. Under the table: the
machine's matmul rate in the step's dtype and the network's FLOPs per image (the step's
share of that limit), where an eager step's kernel time goes by kind of work, the SGD
update's time (fused kernel against the per-tensor loop), and peak memory.
"""
import argparse
import contextlib
import dataclasses
import gc
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from machinery import data, own_files  # noqa: E402
import train  # noqa: E402
from machinery.config import Config  # noqa: E402
from gpu_busy import GpuBusy, breakdown, nvidia_smi_id  # noqa: E402
from model import ResNet  # noqa: E402
from machinery.runtime import (DTYPES, TrainingNetwork, default_workers, has_native_bf16,  # noqa: E402
                     make_runtime, pick_device)

TOOL = "benchmarks/throughput.py"  # what its --json figures say wrote them

SPEC = data.DATASETS["cifar100"]


def median_time(fn, repeats, warmup=1):
    """Median wall seconds of fn() over `repeats` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_busy(device):
    """GpuBusy for a CUDA device; on others a stand-in whose fraction is None."""
    if device.type == "cuda":  # by PCI bus id: CUDA_VISIBLE_DEVICES renumbers torch's indices
        return GpuBusy(nvidia_smi_id(device))
    return contextlib.nullcontext(argparse.Namespace(fraction=None))


def busy_share(device, fn, seconds):
    """The GPU's busy share while fn() runs again and again for about `seconds`: long
    enough for nvidia-smi's samples to mean something (None on other devices)."""
    if device.type != "cuda":
        return None
    with gpu_busy(device) as busy:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            fn()
        sync()
    return busy.fraction


# -----------------------------------------------------------------------------
# Augmentation

def aug_per_core(images, transform, repeats):
    """An albumentations pipeline per image, as a DataLoader worker runs it, in this one
    process (= one core)."""
    ds = data.CIFARDataset(images, np.zeros(len(images), np.int64), transform, augment=True)
    items = [(0, i) for i in range(len(images))]
    return len(images) / median_time(lambda: ds.__getitems__(items), repeats)


def aug_loader(images, batch, workers, repeats):
    """The same pipeline through the training DataLoader (workers, batching, collation)."""
    loader, _ = data.make_loaders(images, np.zeros(len(images), np.int64), images[:1],
                                  np.zeros(1, np.int64), SPEC["mean"], batch, batch,
                                  num_workers=workers)
    epoch = iter(range(10**6))

    def one_epoch():
        loader.batch_sampler.set_epoch(next(epoch))
        for _ in loader:
            pass
    try:
        return len(images) / median_time(one_epoch, repeats)
    finally:
        data.shutdown_workers(loader)


def aug_batched(images, device, batch, repeats):
    """data.augment_batch (--aug-on-device): the same distribution, whole batches, torch ops."""
    x = torch.from_numpy(images).to(device)
    mean, std = (torch.tensor(SPEC[k], device=device) for k in ("mean", "std"))

    def run():
        for i in range(0, len(x), batch):
            data.augment_batch(x[i:i + batch], i, mean, std)
    return len(images) / median_time(run, repeats)


# -----------------------------------------------------------------------------
# Network: the training step per step mode, precision and memory format

class Trainer:
    """A network, optimizer and schedule as train.py builds them, run through
    TrainingNetwork in one step mode; step() is train.train_step on one fixed batch."""

    def __init__(self, args, device, mode="eager", precision="auto", channels_last=True,
                 dropout=0.3, accum=1):
        self.cfg = Config(cutmix_prob=0.0, blocks=list(args.blocks), width=args.width,
                          batch_size=args.batch, precision=precision, step_mode=mode,
                          channels_last=channels_last, dropout=dropout, accum_steps=accum)
        self.rt = make_runtime(device, precision, channels_last, SPEC["mean"], SPEC["std"],
                               step_mode=mode)
        torch.manual_seed(0)
        self.net = ResNet(tuple(args.blocks), args.width, 100, dropout).to(
            device, memory_format=self.rt.memory_format)
        self.model = TrainingNetwork(self.net, self.rt.step_mode)
        with self.rt.autocast():  # as train.py: the fast version first, on a synthetic batch
            self.model.prepare(self.rt.example_batch(args.batch // accum))  # a micro-batch
        self.opt, self.sched = train.make_optimizer(self.net, self.cfg, steps_per_epoch=10**6)
        self.scaler = self.rt.grad_scaler()
        self.x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(
            memory_format=self.rt.memory_format)
        self.y = torch.randint(0, 100, (args.batch,), device=device)
        self.rng = np.random.default_rng(0)

    def step(self):
        self.model.train()
        return train.train_step(self.model, self.x, self.y, self.opt, self.sched, self.scaler,
                                self.rt, self.cfg, self.rng)

    @property
    def ready(self):
        """Seconds the step mode took to get ready (capture, compile); None in eager mode,
        "failed" where it fell back to eager."""
        if self.model.mode != self.rt.step_mode:
            return "failed"
        return self.model.ready_in


def step_rate(args, trainer):
    """(images/s, GPU busy share) of the raw training step; a repeat is args.steps steps,
    after an untimed one that makes the step mode ready."""
    def steps():
        for _ in range(args.steps):
            trainer.step()
    rate = args.batch * args.steps / median_time(steps, args.repeats)
    return rate, busy_share(trainer.rt.device, trainer.step, args.busy_seconds)


@torch.no_grad()
def eval_rate(args, trainer):
    net, rt = trainer.net.eval(), trainer.rt
    x = torch.randn(args.eval_batch, 3, 32, 32, device=rt.device).contiguous(
        memory_format=rt.memory_format)

    def forward():
        with rt.autocast():
            net(x)
    return args.eval_batch / median_time(forward, args.repeats)


def free_gpu_memory():
    """Give back the memory of trainers no longer referenced: make_graphed_callables leaves
    a reference cycle, so its graphs' memory pool goes only once the cycle is collected."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def loop_rate(args, trainer, arrays, workers, aug_on_device=False, steady=None):
    """train.train_epoch, unchanged, over whole epochs of generated data: (images/s of the
    median epoch, the GPU's busy share over the timed epochs). steady: a list that gets
    the median epoch's rate from its 10th step on, without the loader's refill at the
    epoch's start (timed from when the host issued that step to the epoch's end)."""
    x, y, xt, yt = arrays
    rt = trainer.rt
    cfg = dataclasses.replace(trainer.cfg, aug_on_device=aug_on_device, cutmix_prob=0.3)
    loader, _ = data.make_loaders(x, y, xt, yt, SPEC["mean"], args.batch, 10, workers,
                                  pin_memory=rt.device.type == "cuda", raw=aug_on_device)
    epoch, issued, rates = iter(range(10**6)), [], []
    skip = min(10, train.steps_per_epoch(loader) // 2)

    def one_epoch():
        issued.clear()
        real = train.train_step

        def step(*a):
            issued.append(time.perf_counter())
            return real(*a)
        train.train_step = step
        try:
            train.train_epoch(trainer.model, loader, trainer.opt, trainer.sched, trainer.scaler,
                              rt, cfg, next(epoch), train.new_progress())
        finally:
            train.train_step = real
        sync()
        n = len(issued) - skip  # full batches only make this an approximation at the end
        rates.append(n * args.batch / (time.perf_counter() - issued[skip]))
    try:
        one_epoch()  # warm-up: the workers start, the step mode gets ready
        rates.clear()
        with gpu_busy(rt.device) as busy:
            seconds = median_time(one_epoch, args.repeats, warmup=0)
    finally:
        data.shutdown_workers(loader)
    if steady is not None:
        steady.append(statistics.median(rates))
    return len(x) / seconds, busy.fraction


def step_breakdown(args, device):
    """Share of an eager training step's kernel time (on the CPU: operator time) per
    kind of work. Eager, because a CUDA graph's replay hides its kernels' names."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler's CPU-only ERROR line quiet
    from torch.profiler import ProfilerActivity, profile
    trainer = Trainer(args, device, "eager")
    trainer.step()
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        trainer.step()
        sync()
    times = {e.key: (e.self_device_time_total if cuda else e.self_cpu_time_total)
             for e in prof.key_averages()}
    return breakdown({k: t for k, t in times.items() if t > 0})


# -----------------------------------------------------------------------------
# train.py itself, per step mode

EPOCH_LINE = re.compile(r"epoch +(\d+)/\d+ \| train loss ([\d.]+) acc +([\d.]+)% \| \w+ loss "
                        r"([\d.]+) acc +([\d.]+)%.*\| ([\d.]+)s, ([\d,]+) img/s")
READY_LINE = re.compile(r"step mode \w+: ready in ([\d.]+)s")


def parse_train_log(text):
    """train.py's console lines -> {epochs: [...], ready_s, fell_back}."""
    epochs = [{"epoch": int(m[1]), "train_loss": float(m[2]), "train_acc": float(m[3]),
               "eval_loss": float(m[4]), "eval_acc": float(m[5]), "seconds": float(m[6]),
               "images_per_s": float(m[7].replace(",", ""))} for m in EPOCH_LINE.finditer(text)]
    ready = READY_LINE.search(text)
    return {"epochs": epochs, "ready_s": float(ready[1]) if ready else None,
            "fell_back": "continuing in eager mode" in text}


def train_runs(args, device, modes, root):
    """`python train.py` for --train-epochs epochs per step mode, on the same generated data
    with the same seed: whole-epoch images/s (training, evaluation, saving) and the
    curves, which should agree across modes within run-to-run noise. Eager runs twice:
    the difference between those two is that noise (cuDNN's kernels are not bitwise
    deterministic on a GPU; on the CPU the two are identical)."""
    write_train_data(args, root)
    runs = {}
    for label in [modes[0], f"{modes[0]}, again"] + modes[1:]:
        runs[label] = train_run(args, device, label.split(",")[0], root,
                                os.path.join(root, f"run_{len(runs)}"))
    return runs


def write_train_data(args, root):
    data.write_synthetic_dataset(root, "cifar100", n_train=args.train_images,
                                 n_test=args.train_images // 10)


def train_run(args, device, mode, root, out, timeout=None):
    """One `python train.py` run on the data in root: its epoch lines parsed, exit, time."""
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", root,
           "--no-download", "--epochs", str(args.train_epochs), "--target-accuracy", "0",
           "--gradcam-images", "0", "--step-mode", mode, "--device", str(device),
           "--out-dir", out, "--blocks", *map(str, args.blocks), "--width", str(args.width)]
    if args.quick:
        cmd += ["--batch-size", str(args.batch), "--num-workers", "0"]
    timeout = timeout or args.train_timeout
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, code = proc.stdout, proc.returncode
        error = (proc.stderr.strip().splitlines() or ["?"])[-1] if code else None
    except subprocess.TimeoutExpired as e:
        text, code, error = e.stdout or "", -1, f"still running after {timeout:.0f}s"
        text = text.decode() if isinstance(text, bytes) else text
    run = parse_train_log(text)
    run.update(exit=code, wall_s=time.perf_counter() - t0, error=error)
    print(f"  train.py --step-mode {mode}: exit {code} after {run['wall_s']:.0f}s",
          file=sys.stderr, flush=True)
    return run


# -----------------------------------------------------------------------------
# Arithmetic limit and memory

def matmul_gflops(device, repeats, size=4096, dtype=torch.float32):
    """Matrix multiply rate in `dtype` (the step's: a bf16 step is held against a bf16
    matmul), measured first, before anything else loads the machine: the best of several
    repeats, as the machine's attainable arithmetic limit."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = min(median_time(lambda: a @ b, 1, warmup=0) for _ in range(max(repeats, 5)))
    return 2 * size**3 / best / 1e9


def flops_per_image(args):
    """Forward FLOPs of one 32x32 image (multiply and add counted as 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    net = ResNet(tuple(args.blocks), args.width, 100).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 3, 32, 32))
    return counter.get_total_flops()


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def sgd_step_ms(args, device):
    """Milliseconds of one SGD update (Nesterov momentum, weight decay) of the network's
    parameters: {"fused": train.py's one-kernel SGD, "loop": PyTorch's per-tensor loop}."""
    net = ResNet(tuple(args.blocks), args.width, 100).to(device)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    times = {}
    for name, kind in (("fused", {"fused": True}), ("loop", {"foreach": False})):
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                              weight_decay=5e-4, **kind)
        times[name] = 1000 * median_time(opt.step, args.repeats)
    return times


# -----------------------------------------------------------------------------
# Main

def step_variants(device, modes):
    """(mode, precision, channels_last) of the raw-step rows: both memory formats for
    every precision the device has; compile (minutes per variant) in the default only."""
    precisions = ["fp32"] if device.type != "cuda" else ["fp16"] + ["bf16"] * has_native_bf16(device)
    return [(mode, p, cl) for mode in modes for p in precisions for cl in (False, True)
            if mode != "compile" or (cl and p == precisions[-1])]


def augmentation_rows(args, device, workers):
    images = np.random.default_rng(0).integers(0, 256, (args.aug_images, 32, 32, 3), np.uint8)
    reference = data.reference_transform(SPEC["mean"], SPEC["std"])
    seed_way = aug_per_core(images, reference, args.repeats)
    per_core = aug_per_core(images, data.train_transform(SPEC["mean"]), args.repeats)
    loader = aug_loader(images, args.batch, workers, args.repeats)
    batched = aug_batched(images, device, args.batch, args.repeats)
    where = "on the same" if device.type == "cpu" else "with its"
    return [
        row("augmentation, the reference's way (+ Normalize, ToTensorV2), 1 core", seed_way,
            note="baseline"),
        row("augmentation, uint8 hand-over (as train.py), 1 core", per_core,
            note=f"{per_core / seed_way:.2f}x the baseline"),
        row(f"augmentation through the DataLoader, {workers} workers", loader,
            note=f"{loader / per_core:.2f}x one core"),
        row(f"augmentation batched on {device.type} (--aug-on-device), batch {args.batch}",
            batched, note=f"{batched / loader:.1f}x the DataLoader {where} {workers} cores"),
    ]


def row(name, rate, busy=None, ready=None, note=""):
    """One table row; also said at once on stderr, so a run cut short still shows its figures."""
    busy_text = f", GPU busy {busy:.0%}" if isinstance(busy, float) else ""
    print(f"  {name}: {rate:,.1f} images/s{busy_text}", file=sys.stderr, flush=True)
    return {"name": name, "images_per_s": rate, "gpu_busy": busy, "ready_s": ready, "note": note}


def network_rows(args, device, modes, workers, arrays):
    """Raw step per variant, evaluation, and the real loop per step mode."""
    rows, eager = [], {}
    default = step_variants(device, ["eager"])[-1][1]  # the precision train.py picks
    loops = {}
    for mode, precision, cl in step_variants(device, modes):
        trainer = Trainer(args, device, mode, precision, cl)
        rate, busy = step_rate(args, trainer)
        fmt = "channels_last" if cl else "NCHW"
        eager.setdefault((precision, cl), rate)
        rows.append(row(f"raw train step, {mode}, {precision} {fmt}, batch {args.batch}", rate,
                        busy, trainer.ready, f"{rate / eager[(precision, cl)]:.2f}x eager"))
        if precision == default and cl:
            loops[mode] = trainer  # goes on to the loop rows, already made ready
        else:
            del trainer  # its graphs' memory pool with it
            free_gpu_memory()
    first = loops[modes[0]]
    ev = eval_rate(args, first)
    rows.append(row(f"evaluation, batch {args.eval_batch}, {default} channels_last", ev,
                    note=f"{ev / eager[(default, True)]:.2f}x the eager train step"))
    for mode, trainer in loops.items():
        steady = []
        rate, busy = loop_rate(args, trainer, arrays, workers, steady=steady)
        rows.append(row(f"real training loop, {mode} ({args.loop_steps} steps/epoch, "
                        f"albumentations, CutMix)", rate, busy, trainer.ready,
                        f"{rate / eager[(default, True)]:.2f}x the raw eager step; steady "
                        f"state {steady[0]:,.0f}/s"))
    fast = loops[modes[-1]]
    steady = []
    rate, busy = loop_rate(args, fast, arrays, workers, aug_on_device=True, steady=steady)
    rows.append(row(f"real training loop, {modes[-1]}, --aug-on-device", rate, busy, fast.ready,
                    f"{rate / eager[(default, True)]:.2f}x the raw eager step; steady "
                    f"state {steady[0]:,.0f}/s"))
    return rows


def measure(args):
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    default = step_variants(device, ["eager"])[-1][1]  # the precision train.py picks
    dtype = DTYPES[default] or torch.float32
    limit = matmul_gflops(device, args.repeats, dtype=dtype) * 1e9
    workers = default_workers()
    rows = augmentation_rows(args, device, workers)
    with tempfile.TemporaryDirectory() as root:
        data.write_synthetic_dataset(root, "cifar100", n_train=args.batch * args.loop_steps,
                                     n_test=10)
        x, y, xt, yt, _ = data.load_dataset(root, "cifar100", download=False)
    rows += network_rows(args, device, args.modes, workers if cuda else 0, (x, y, xt, yt))
    fwd = flops_per_image(args)
    step = [r for r in rows if r["name"].startswith("raw train step, eager")][-1]  # channels_last
    res = {
        "device": str(device), "cpu": cpu_name(), "cores": workers, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "network": {"blocks": list(args.blocks), "width": args.width,
                    "forward_gflops_per_image": fwd / 1e9},
        "matmul_gflops": limit / 1e9, "matmul_dtype": str(dtype).replace("torch.", ""),
        "peak_memory_mb": peak_memory_mb(device),
        "eager_step_share_of_matmul_rate": step["images_per_s"] * 3 * fwd / limit,
        "step_breakdown": step_breakdown(args, device),
        "sgd_step_ms": sgd_step_ms(args, device),
        "rows": rows,
    }
    if args.train_epochs:
        with tempfile.TemporaryDirectory() as root:
            res["train_runs"] = train_runs(args, device, args.modes, root)
    return res


def fmt(value, spec, unit=""):
    """A table cell: '-' for None, strings as they are."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else format(value, spec) + unit


def print_table(res):
    gpu = f" ({res['gpu']})" if res["gpu"] else ""
    print(f"\n{res['cpu']} | {res['cores']} usable cores | device {res['device']}{gpu} | "
          f"torch {res['torch']}")
    net = res["network"]
    print(f"network blocks {net['blocks']} width {net['width']}: "
          f"{net['forward_gflops_per_image']:.3f} GFLOP forward per image; "
          f"{res['matmul_dtype']} matmul {res['matmul_gflops']:.1f} GFLOP/s (the eager channels_last step runs at "
          f"{res['eager_step_share_of_matmul_rate']:.2f} of it); "
          f"peak memory {res['peak_memory_mb']:.0f} MB\n")
    width = max(len(r["name"]) for r in res["rows"])
    print(f"| {'stage':<{width}} | images/s | GPU busy | ready in | note |")
    print(f"|{'-' * (width + 2)}|---------:|---------:|---------:|------|")
    for r in res["rows"]:
        print(f"| {r['name']:<{width}} | {r['images_per_s']:8.1f} | {fmt(r['gpu_busy'], '.0%'):>8} "
              f"| {fmt(r['ready_s'], '.1f', 's'):>8} | {r['note']} |")
    parts = ", ".join(f"{part} {share:.0%}" for part, share in res["step_breakdown"].items())
    print(f"\nwhere an eager train step's {'kernel' if res['gpu'] else 'operator'} time goes: {parts}")
    sgd = res["sgd_step_ms"]
    print(f"SGD update of the network's parameters: fused kernel {sgd['fused']:.1f} ms, "
          f"per-tensor loop {sgd['loop']:.1f} ms ({sgd['loop'] / sgd['fused']:.1f}x)")
    for mode, run in res.get("train_runs", {}).items():
        if run["exit"] or not run["epochs"]:
            print(f"train.py --step-mode {mode}: exit {run['exit']}: {run['error']}")
            continue
        last = run["epochs"][-1]
        rates = ", ".join(f"{e['images_per_s']:,.0f}" for e in run["epochs"])
        ready = f", ready in {run['ready_s']:.1f}s" if run["ready_s"] is not None else ""
        fell = " (fell back to eager)" if run["fell_back"] else ""
        print(f"train.py --step-mode {mode}{fell}: img/s per whole epoch {rates}{ready}; final "
              f"train loss {last['train_loss']:.4f}, test loss {last['eval_loss']:.4f}, "
              f"test acc {last['eval_acc']:.2f}% ({run['wall_s']:.0f}s in all)")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--modes", default=None,
                   help="step modes to time, comma-separated, eager first (default: eager,graphs "
                        "on CUDA, eager elsewhere; compile adds minutes)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--force", action="store_true", help="replace a --json file this did not write")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per figure")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per timed repeat of the raw step (default: 50 on CUDA, 1 elsewhere)")
    p.add_argument("--train-epochs", type=int, default=0,
                   help="also run train.py this many epochs per step mode on generated data")
    p.add_argument("--quick", action="store_true",
                   help="reduced network and sizes: checks the script, not the machine")
    args = p.parse_args(argv)
    cuda = pick_device(args.device).type == "cuda"
    args.modes = (args.modes or ("eager,graphs" if cuda else "eager")).split(",")
    bad = [m for m in args.modes if m not in ("eager", "graphs", "compile")] or \
        ([] if cuda or "graphs" not in args.modes else ["graphs (needs CUDA)"])
    if bad or args.modes[0] != "eager":
        p.error(f"--modes: {', '.join(bad) or 'eager must come first'}")
    refused = args.json and own_files.refused_json(args.json, TOOL, args.force)
    if refused:
        p.error(refused)
    args.blocks, args.width, args.batch, args.eval_batch = (5, 5, 5, 5), 64, 128, 512
    args.aug_images, args.busy_seconds, args.train_images = 2048, 3.0, 20_480
    args.loop_steps, args.train_timeout = (100 if cuda else 4), 300
    args.steps = args.steps or (50 if cuda else 1)
    if args.quick:
        args.blocks, args.width, args.batch, args.eval_batch = (1, 1, 1, 1), 16, 32, 64
        args.aug_images, args.loop_steps, args.repeats, args.steps = 256, 2, 1, 2
        args.busy_seconds, args.train_images = 0.5, 320
    return args


def main(argv=None):
    args = parse_args(argv)
    res = measure(args)
    print_table(res)
    if args.json:
        own_files.write_json(args.json, res, TOOL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
