"""Throughput of every stage of training, measured side by side in one run.

    python benchmarks/throughput.py                  # full seed network, ~6 min on 2 cores
    python benchmarks/throughput.py --json out.json  # also write the figures as JSON
    python benchmarks/throughput.py --quick          # reduced network and sizes: a check
    python benchmarks/throughput.py --device cuda    # GPU rows: AMP + channels_last, compile

Each figure is the median of --repeats timed repeats after a warm-up. Rows:
augmentation (the reference's per-image pipeline as the baseline; train.py's uint8
hand-over per core and through the DataLoader with the default worker count; the batched
--aug-on-device pipeline), the network's raw training step and evaluation at batch 128,
the real training loop end to end (DataLoader, CutMix, clipping, schedule, progress bar,
metrics; with either augmentation) as a fraction of the raw step, the machine's fp32
matmul rate and the network's FLOPs per image (so the step's share of the arithmetic
limit), a profile of where the step's operator time goes, and peak memory.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import train  # noqa: E402
from config import Config  # noqa: E402
from model import ResNet  # noqa: E402
from runtime import default_workers, make_runtime, pick_device  # noqa: E402

SPEC = data.DATASETS["cifar100"]


def median_time(fn, repeats, warmup=1):
    """Median wall seconds of fn() over `repeats` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
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
    return len(images) / median_time(one_epoch, repeats)


def aug_batched(images, device, batch, repeats):
    """data.augment_batch (--aug-on-device): the same distribution, whole batches, torch ops."""
    x = torch.from_numpy(images).to(device)
    mean, std = (torch.tensor(SPEC[k], device=device) for k in ("mean", "std"))

    def run():
        for i in range(0, len(x), batch):
            data.augment_batch(x[i:i + batch], i, mean, std)
    return len(images) / median_time(run, repeats)


# -----------------------------------------------------------------------------
# Network

def make_net(args, device, channels_last, compile_=False):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = ResNet(tuple(args.blocks), args.width, 100).to(device, memory_format=fmt)
    return (torch.compile(net) if compile_ else net), fmt


def raw_step(args, device, channels_last, amp, compile_=False):
    """Forward + backward + clipping + SGD step on random tensors, images/s."""
    net, fmt = make_net(args, device, channels_last, compile_)
    cfg = Config(cutmix_prob=0.0)
    opt, sched = train.make_optimizer(net, cfg, steps_per_epoch=10**6)
    rt = make_runtime(device, amp, channels_last, SPEC["mean"], SPEC["std"])
    scaler = torch.amp.GradScaler("cuda", enabled=rt.amp)
    x = torch.randn(args.batch, 3, 32, 32, device=device).to(memory_format=fmt)
    y = torch.randint(0, 100, (args.batch,), device=device)
    rng = np.random.default_rng(0)
    step = lambda: train.train_step(net, x, y, opt, sched, scaler, rt, cfg, rng)  # noqa: E731
    return args.batch / median_time(step, args.repeats, warmup=2 if compile_ else 1)


@torch.no_grad()
def eval_rate(args, device, channels_last, amp):
    net, fmt = make_net(args, device, channels_last)
    net.eval()
    rt = make_runtime(device, amp, channels_last, SPEC["mean"], SPEC["std"])
    x = torch.randn(args.eval_batch, 3, 32, 32, device=device).to(memory_format=fmt)

    def forward():
        with rt.autocast():
            net(x)
    return args.eval_batch / median_time(forward, args.repeats)


def loop_rate(args, device, workers, aug_on_device=False):
    """train.train_epoch, unchanged, over generated data: images/s of the whole loop."""
    n = args.batch * args.loop_steps
    with tempfile.TemporaryDirectory() as root:
        data.write_synthetic_dataset(root, "cifar100", n_train=n, n_test=10)
        x, y, xt, yt, _ = data.load_dataset(root, "cifar100", download=False)
    cfg = Config(batch_size=args.batch, blocks=list(args.blocks), width=args.width,
                 aug_on_device=aug_on_device)
    rt = make_runtime(device, cfg.amp, cfg.channels_last, SPEC["mean"], SPEC["std"])
    loader, _ = data.make_loaders(x, y, xt, yt, SPEC["mean"], args.batch, 10, workers,
                                  pin_memory=device.type == "cuda", raw=aug_on_device)
    net, _ = make_net(args, device, rt.memory_format == torch.channels_last)
    opt, sched = train.make_optimizer(net, cfg, train.steps_per_epoch(loader) * 50)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.amp)
    epoch = iter(range(10**6))

    def one_epoch():
        train.train_epoch(net, loader, opt, sched, scaler, rt, cfg, next(epoch),
                          train.new_progress())
    return n / median_time(one_epoch, args.repeats)


STEP_PARTS = (  # where a training step's time goes, by operator name
    ("convolutions", ("conv",)),
    ("batch norm", ("batch_norm",)),
    ("optimizer and clipping", ("sgd", "foreach", "norm")),
)


def step_breakdown(args, device):
    """Share of one raw training step's operator time per kind of operator (profiler)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler's CPU-only ERROR line quiet
    from torch.profiler import ProfilerActivity, profile
    net, fmt = make_net(args, device, True)
    cfg = Config(cutmix_prob=0.0)
    opt, sched = train.make_optimizer(net, cfg, steps_per_epoch=10**6)
    rt = make_runtime(device, device.type == "cuda", True, SPEC["mean"], SPEC["std"])
    scaler = torch.amp.GradScaler("cuda", enabled=rt.amp)
    x = torch.randn(args.batch, 3, 32, 32, device=device).to(memory_format=fmt)
    y = torch.randint(0, 100, (args.batch,), device=device)
    step = lambda: train.train_step(net, x, y, opt, sched, scaler, rt, cfg, np.random.default_rng(0))  # noqa: E731
    step()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        step()
        sync()
    times = {}
    for e in prof.key_averages():
        t = e.self_device_time_total if cuda else e.self_cpu_time_total
        part = next((label for label, keys in STEP_PARTS if any(k in e.key.lower() for k in keys)),
                    "everything else")
        times[part] = times.get(part, 0) + t
    total = sum(times.values()) or 1
    return {part: t / total for part, t in sorted(times.items(), key=lambda kv: -kv[1])}


# -----------------------------------------------------------------------------
# Arithmetic limit and memory

def matmul_gflops(device, repeats, size=4096):
    """fp32 matrix multiply rate, measured first, before anything else loads the machine:
    the best of several repeats, as the machine's attainable arithmetic limit."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
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


# -----------------------------------------------------------------------------
# Main

def measure(args):
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    limit = matmul_gflops(device, args.repeats) * 1e9
    workers = default_workers()
    images = np.random.default_rng(0).integers(0, 256, (args.aug_images, 32, 32, 3), np.uint8)
    rows = []  # (name, images/s, note)
    reference = data.reference_transform(SPEC["mean"], SPEC["std"])
    seed_way = aug_per_core(images, reference, args.repeats)
    rows.append(("augmentation, the reference's way (+ Normalize, ToTensorV2), 1 core",
                 seed_way, "baseline"))
    per_core = aug_per_core(images, data.train_transform(SPEC["mean"]), args.repeats)
    rows.append(("augmentation, uint8 hand-over (as train.py), 1 core", per_core,
                 f"{per_core / seed_way:.2f}x the baseline"))
    loader = aug_loader(images, args.batch, workers, args.repeats)
    rows.append((f"augmentation through the DataLoader, {workers} workers", loader,
                 f"{loader / per_core:.2f}x one core"))
    batched = aug_batched(images, device, args.batch, args.repeats)
    same = (f"{batched / loader:.1f}x the DataLoader on the same {workers} cores" if not cuda
            else f"{batched / loader:.1f}x the DataLoader's {workers} CPU workers")
    rows.append((f"augmentation batched on {device.type} (--aug-on-device), batch {args.batch}",
                 batched, same))
    fwd = flops_per_image(args)
    train_flops = 3 * fwd  # backward costs about twice the forward pass
    variants = [("fp32", False, False), ("fp32 channels_last", True, False)]
    if cuda:
        variants = [("AMP", False, True), ("AMP channels_last", True, True)]
    step = {}
    for label, cl, amp in variants:
        step[label] = raw_step(args, device, cl, amp)
        rows.append((f"raw train step, batch {args.batch}, {label}", step[label],
                     f"{step[label] * train_flops / limit:.2f} of the fp32 matmul rate"))
    if args.compile:
        rate = raw_step(args, device, True, cuda, compile_=True)
        rows.append((f"raw train step, {variants[1][0]}, torch.compile", rate,
                     f"{rate / step[variants[1][0]]:.2f}x without"))
    best_label = max(step, key=step.get)
    cl_best = "channels_last" in best_label
    ev = eval_rate(args, device, cl_best, cuda)
    rows.append((f"evaluation, batch {args.eval_batch}, {best_label}", ev,
                 f"{ev / step[best_label]:.2f}x the train step"))
    same = variants[1][0]  # what train.py runs
    for on_device in (False, True):
        loop = loop_rate(args, device, workers if cuda else 0, on_device)
        how = "--aug-on-device" if on_device else "albumentations"
        rows.append((f"real training loop ({args.loop_steps} steps, {how}, CutMix, clip, bar)",
                     loop, f"{loop / step[same]:.2f} of the raw {same} step"))
    return {
        "device": str(device), "cpu": cpu_name(), "cores": workers, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "network": {"blocks": list(args.blocks), "width": args.width,
                    "forward_gflops_per_image": fwd / 1e9},
        "matmul_fp32_gflops": limit / 1e9, "peak_memory_mb": peak_memory_mb(device),
        "step_breakdown": step_breakdown(args, device),
        "rows": [{"name": n, "images_per_s": r, "note": note} for n, r, note in rows],
    }


def print_table(res):
    gpu = f" ({res['gpu']})" if res["gpu"] else ""
    print(f"\n{res['cpu']} | {res['cores']} usable cores | device {res['device']}{gpu} | "
          f"torch {res['torch']}")
    net = res["network"]
    print(f"network blocks {net['blocks']} width {net['width']}: "
          f"{net['forward_gflops_per_image']:.3f} GFLOP forward per image; "
          f"fp32 matmul {res['matmul_fp32_gflops']:.1f} GFLOP/s; "
          f"peak memory {res['peak_memory_mb']:.0f} MB\n")
    width = max(len(r["name"]) for r in res["rows"])
    print(f"| {'stage':<{width}} | images/s | note |")
    print(f"|{'-' * (width + 2)}|---------:|------|")
    for r in res["rows"]:
        print(f"| {r['name']:<{width}} | {r['images_per_s']:8.1f} | {r['note']} |")
    parts = ", ".join(f"{part} {share:.0%}" for part, share in res["step_breakdown"].items())
    print(f"\nwhere a raw train step's operator time goes: {parts}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per figure")
    p.add_argument("--quick", action="store_true",
                   help="reduced network and sizes: checks the script, not the machine")
    p.add_argument("--compile", action="store_true",
                   help="also time the step under torch.compile (on the CPU: minutes to compile)")
    args = p.parse_args(argv)
    args.blocks, args.width, args.batch = (5, 5, 5, 5), 64, 128
    args.eval_batch, args.aug_images, args.loop_steps = 512, 2048, 4
    if args.quick:
        args.blocks, args.width, args.batch = (1, 1, 1, 1), 8, 32
        args.eval_batch, args.aug_images, args.loop_steps, args.repeats = 64, 256, 2, 1
    res = measure(args)
    print_table(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
