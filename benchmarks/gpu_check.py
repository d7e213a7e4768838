"""The GPU check: the figures that decide this repo's GPU defaults, and whether the fast
step modes train as eager does, on one CUDA GPU, inside a time budget.

    bash benchmarks/gpu_check.sh [--json PATH] [--budget SECONDS]
    bash benchmarks/gpu_check.sh --dry-run     # the rows and the budget, on any machine

The rows, most decisive first, are listed by --dry-run with what each is expected to take
on an H100/H200. Every figure is printed as it is taken and the JSON is rewritten after
every row, so a check cut short keeps what it measured. A row that does not fit in what
is left of the budget is skipped (later, smaller rows may still run); one that overruns
it is stopped by an alarm, and the check ends there. The default budget, 340 s, leaves
room for the machine's start-up in a 10-minute command and a 15-minute GPU window.
"""
import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from machinery import own_files  # noqa: E402 -- the standard library only: no torch needed

TOOL = "benchmarks/gpu_check.py"  # what its --json figures say wrote them
BUDGET = 340  # seconds
STEPS = 20  # steps compared between graphs and eager
ACCUM_STEPS = 5  # steps of --accum-steps 2 compared between graphs and eager
SYNC_STEPS = 15  # real-loop steps run with device waits made errors (fewer than SYNC_EVERY)


@dataclass
class Row:
    name: str
    estimate: float  # seconds on an H100/H200
    take: Callable  # take(ctx) -> dict of figures


class BudgetSpent(BaseException):
    """The alarm: the check's time is up. A BaseException, as KeyboardInterrupt is, so that
    the loop's own handlers (which turn any Exception into a failed step) let it through."""


def run_rows(rows, budget, json_path, ctx=None, header=None, say=print):
    """Take the rows in order within `budget` seconds, writing the JSON after each.
    Returns the results dict (also in the file)."""
    t0 = time.monotonic()
    res = {**(header or {}), "budget_s": budget, "rows": [], "complete": False}

    def on_alarm(signum, frame):
        raise BudgetSpent()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        for row in rows:
            left = budget - (time.monotonic() - t0)
            entry = {"name": row.name, "estimate_s": row.estimate}
            if row.estimate > left:
                entry["status"] = f"skipped: {left:.0f}s of the budget left"
                say(f"{row.name}: skipped ({left:.0f}s left, it takes about {row.estimate:.0f}s)")
                res["rows"].append(entry)
                continue
            start = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, left)
            try:
                entry.update(row.take(ctx), status="done")
            except BudgetSpent:
                entry["status"] = "stopped: the budget ran out during this row"
            except Exception as e:  # one row failing says so and the check goes on
                entry["status"] = f"failed: {type(e).__name__}: {str(e).strip()[:300]}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            entry["seconds"] = time.monotonic() - start
            res["rows"].append(entry)
            say(f"{row.name}: {describe(entry)}")
            res["elapsed_s"] = time.monotonic() - t0
            write_json(res, json_path)
            if entry["status"].startswith("stopped"):
                break
        else:
            res["complete"] = True
    finally:
        signal.signal(signal.SIGALRM, previous)
    res["elapsed_s"] = time.monotonic() - t0
    write_json(res, json_path)
    return res


def describe(entry):
    figures = {k: v for k, v in entry.items() if k not in ("name", "estimate_s", "status", "seconds")}
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in figures.items())
    return f"{shown} ({entry['seconds']:.0f}s)" if entry["status"] == "done" else entry["status"]


def write_json(res, path):
    if path:
        own_files.write_json(path, res, TOOL)


# -----------------------------------------------------------------------------
# The rows (they run on CUDA; see throughput.py for the pieces)

class Context:
    """What the rows share: the benchmark's settings, the device, trainers made so far.
    quick and alias (step modes to run instead, e.g. eager for graphs) let the CPU tests
    rehearse every row's code without a GPU."""

    def __init__(self, throughput, device, quick=False, alias=None):
        self.tp, self.device, self.alias = throughput, device, alias or {}
        self.args = throughput.parse_args(["--device", device.type] + ["--quick"] * quick)
        self.args.train_epochs = 1 if quick else 2
        self.trainers, self.root = {}, tempfile.mkdtemp(prefix="gpu_check_")
        self.loop_arrays = None
        self.workers = 0 if quick else throughput.default_workers()

    def new_trainer(self, mode, channels_last=True, **kw):
        return self.tp.Trainer(self.args, self.device, self.alias.get(mode, mode), "auto",
                               channels_last, **kw)

    def trainer(self, mode, channels_last=True, keep=False):
        key = (mode, channels_last)
        if key in self.trainers:
            return self.trainers[key]
        t = self.new_trainer(mode, channels_last)
        if keep:
            self.trainers[key] = t
        return t

    def arrays(self):
        if self.loop_arrays is None:
            data = self.tp.data
            root = os.path.join(self.root, "loop")
            steps = max(self.args.loop_steps, SYNC_STEPS)
            data.write_synthetic_dataset(root, "cifar100", n_train=self.args.batch * steps,
                                         n_test=10)
            x, y, xt, yt, _ = data.load_dataset(root, "cifar100", download=False)
            self.loop_arrays = (x, y, xt, yt)
        return self.loop_arrays


def raw_step(mode, channels_last=True, matmul=False):
    def take(ctx):
        import torch
        t = ctx.trainer(mode, channels_last, keep=channels_last and mode != "compile")
        out = {}
        if matmul:  # the step held against a matmul in its own dtype
            dtype = ctx.tp.DTYPES[t.rt.precision] or torch.float32
            gflops = ctx.tp.matmul_gflops(ctx.device, 3, dtype=dtype)
            out.update(precision=t.rt.precision, matmul_gflops=gflops)
        rate, busy = ctx.tp.step_rate(ctx.args, t)
        out.update(images_per_s=rate, gpu_busy=busy, ready_s=t.ready)
        if matmul:
            fwd = ctx.tp.flops_per_image(ctx.args)
            out["share_of_matmul_rate"] = rate * 3 * fwd / (gflops * 1e9)
        del t  # a trainer not kept for later rows: its GPU memory goes now
        ctx.tp.free_gpu_memory()
        return out
    return take


def losses_agree(ctx):
    """Graphs against eager, same seed, same batch, dropout off so that only the arithmetic
    can differ: the first STEPS steps' losses; a second eager run gives the noise floor."""
    def losses(mode):
        t = ctx.new_trainer(mode, dropout=0.0)
        out = [t.step()[0] for _ in range(STEPS)]
        del t
        ctx.tp.free_gpu_memory()
        return [float(v) / ctx.args.batch for v in out]
    eager, again, graphs = losses("eager"), losses("eager"), losses("graphs")
    rel = lambda a, b: max(abs(u - v) / abs(v) for u, v in zip(a, b))  # noqa: E731
    diff, noise = rel(graphs, eager), rel(again, eager)
    # the bound: 2% of eager's loss at every step, or three times eager's own spread
    return {"first_losses_eager": eager[:3], "first_losses_graphs": graphs[:3],
            "max_rel_diff": diff, "eager_noise": noise, "agree": diff <= max(0.02, 3 * noise)}


def accumulation_adds_up(ctx):
    """--accum-steps 2 under CUDA graphs against eager, whose micro-batches add up (the CPU
    tests show it): the parameters' change over ACCUM_STEPS steps, dropout off. A graphed
    backward hands over its static buffers (pytorch/pytorch#181723); were they taken as the
    gradients, the change would be far off. A second eager run gives the noise floor."""
    import torch

    def change(mode):
        t = ctx.new_trainer(mode, dropout=0.0, accum=2)
        before = [p.detach().clone() for p in t.net.parameters()]
        for _ in range(ACCUM_STEPS):
            t.step()
        delta = torch.cat([(p.detach() - b).flatten().float()
                           for p, b in zip(t.net.parameters(), before)])
        del t
        ctx.tp.free_gpu_memory()
        return delta
    eager, again, graphs = change("eager"), change("eager"), change("graphs")
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    diff, noise = rel(graphs, eager), rel(again, eager)
    return {"rel_diff": diff, "eager_noise": noise, "adds_up": diff <= max(0.02, 3 * noise)}


def no_waits(ctx):
    """SYNC_STEPS real-loop steps in graphs mode with every device wait an error
    (torch.cuda.set_sync_debug_mode): the batch's way to the device and the whole step.
    (The CPU tests only see .item() and its kin, not .cpu(), masks or nonzero.)"""
    import torch
    tp, t = ctx.tp, ctx.trainer("graphs", keep=True)
    x, y, xt, yt = ctx.arrays()
    n = ctx.args.batch * SYNC_STEPS
    loader, _ = tp.data.make_loaders(x[:n], y[:n], xt, yt, tp.SPEC["mean"], ctx.args.batch, 10,
                                     ctx.workers, pin_memory=ctx.device.type == "cuda")
    real_step, real_batch = tp.train.train_step, t.rt.batch

    def strict(fn):
        def run(*a):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return fn(*a)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return run
    tp.train.train_step, t.rt.batch = strict(real_step), strict(real_batch)
    cfg = dataclasses.replace(t.cfg, cutmix_prob=0.3)
    try:
        tp.train.train_epoch(t.model, loader, t.opt, t.sched, t.scaler, t.rt, cfg, 0,
                             tp.train.new_progress())
        waited = None
    except Exception as e:  # train_epoch wraps the step's error: the cause says where
        cause = getattr(e, "cause", e)
        waited = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0][:200]}"
    finally:
        tp.train.train_step, t.rt.batch = real_step, real_batch
        tp.data.shutdown_workers(loader)
    return {"steps": SYNC_STEPS, "waits_for_the_device": waited or "none"}


def evaluation(ctx):
    return {"images_per_s": ctx.tp.eval_rate(ctx.args, ctx.trainer("eager", keep=True))}


def real_loop(mode):
    def take(ctx):
        steady = []
        rate, busy = ctx.tp.loop_rate(ctx.args, ctx.trainer(mode, keep=True), ctx.arrays(),
                                      ctx.workers, steady=steady)
        return {"images_per_s": rate, "steady_images_per_s": steady[0], "gpu_busy": busy}
    return take


def train_py(mode, label):
    def take(ctx):
        root = os.path.join(ctx.root, "train_data")
        if not os.path.isdir(root):
            ctx.tp.write_train_data(ctx.args, root)
        run = ctx.tp.train_run(ctx.args, ctx.device, ctx.alias.get(mode, mode), root,
                               os.path.join(ctx.root, label))
        if run["exit"] or not run["epochs"]:
            raise RuntimeError(f"exit {run['exit']}: {run['error']}")
        last = run["epochs"][-1]
        return {"images_per_s": [e["images_per_s"] for e in run["epochs"]],
                "ready_s": run["ready_s"], "fell_back": run["fell_back"],
                "train_loss": last["train_loss"], "test_loss": last["eval_loss"],
                "test_acc": last["eval_acc"], "wall_s": run["wall_s"]}
    return take


def plan():
    p = "auto precision"
    return [
        Row(f"raw step, eager, {p}, channels_last (+ matmul in its dtype)", 15, raw_step("eager", matmul=True)),
        Row(f"raw step, graphs, {p}, channels_last", 15, raw_step("graphs")),
        Row(f"graphs against eager: losses of the first {STEPS} steps", 15, losses_agree),
        Row(f"--accum-steps 2, graphs against eager: the parameters' change over {ACCUM_STEPS} steps",
            10, accumulation_adds_up),
        Row(f"no waits for the device: {SYNC_STEPS} real-loop steps, graphs, sync debug mode", 15, no_waits),
        Row(f"raw step, eager, {p}, NCHW", 10, raw_step("eager", channels_last=False)),
        Row("evaluation, batch 512", 5, evaluation),
        Row("real loop, eager, 12,800 images/epoch", 20, real_loop("eager")),
        Row("real loop, graphs, 12,800 images/epoch", 20, real_loop("graphs")),
        Row("train.py, 2 epochs, eager", 35, train_py("eager", "eager")),
        Row("train.py, 2 epochs, graphs", 35, train_py("graphs", "graphs")),
        Row("train.py, 2 epochs, eager again (the run-to-run noise)", 35, train_py("eager", "eager_again")),
        Row(f"raw step, compile (reduce-overhead), {p}, channels_last", 110, raw_step("compile")),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="PATH", default="gpu_check.json",
                   help="where the figures go, rewritten after every row (default gpu_check.json)")
    p.add_argument("--budget", type=float, default=BUDGET,
                   help=f"seconds for all rows (default {BUDGET})")
    p.add_argument("--dry-run", action="store_true", help="print the rows and the budget only")
    p.add_argument("--force", action="store_true", help="replace a --json file this did not write")
    args = p.parse_args(argv)
    refused = own_files.refused_json(args.json, TOOL, args.force)
    if refused and not args.dry_run:
        p.error(refused)
    rows = plan()
    if args.dry_run:
        for row in rows:
            print(f"{row.estimate:5.0f}s  {row.name}")
        print(f"budget {args.budget:.0f} (rows {sum(r.estimate for r in rows):.0f}s in all, on an H100/H200)")
        return 0
    try:
        import torch
    except Exception as e:  # not the same thing as a machine without a GPU
        print(f"gpu_check: torch cannot be imported ({type(e).__name__}: {e}); install "
              f"requirements.txt first", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a "
              "machine with an NVIDIA GPU", file=sys.stderr)
        return 1
    sys.path.insert(0, HERE)
    import throughput
    device = torch.device("cuda")
    header = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "capability": list(torch.cuda.get_device_capability(device))}
    print(f"gpu_check on {header['gpu']} (compute capability {header['capability']}), torch "
          f"{header['torch']}, budget {args.budget:.0f}s, figures in {args.json}", flush=True)
    res = run_rows(rows, args.budget, args.json, Context(throughput, device), header,
                   say=lambda line: print(line, flush=True))
    done = sum(r["status"] == "done" for r in res["rows"])
    print(f"{done} of {len(rows)} rows in {res['elapsed_s']:.0f}s; {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
