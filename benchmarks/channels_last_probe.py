"""Where channels_last crashes this CPU's torch: train steps of a reduced network at each
width and batch size, each in a child process, so a native crash (segfault, "free():
invalid next size") is an exit code in a table and not the end of the probe.

    python benchmarks/channels_last_probe.py                      # widths 8 12 16 24, batches 1-64
    python benchmarks/channels_last_probe.py --widths 8 --batches 1 32 --size 64 --json p.json

A child runs every batch size of one width in turn, printing each that survived; where it
dies, the batch it was on is run again alone, in a fresh child, to say whether it was that
batch (a heap corrupted earlier may fail later). runtime.channels_last_crashes keeps
train.py's runs out of what this finds (docs/performance.md has the figures).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import sys, torch
sys.path.insert(0, {root!r})
from model import ResNet
width, size, steps, fmt = {width}, {size}, {steps}, torch.{fmt}
torch.manual_seed(0)
net = ResNet((1, 1, 1, 1), width, 10).to(memory_format=fmt)
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
for batch in {batches}:
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    for _ in range(steps):  # the training step, then the evaluation's forward
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.inference_mode():
        net.eval()(x)
    net.train()
    print(batch, flush=True)
"""


def run_child(width, batches, args, fmt="channels_last"):
    """(the batches that survived, the exit code): one child for these batches."""
    code = CHILD.format(root=ROOT, width=width, size=args.size, steps=args.steps, fmt=fmt,
                        batches=list(batches))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    done = [int(line) for line in proc.stdout.split() if line.isdigit()]
    return done, proc.returncode


def probe_width(width, args):
    """{batch: exit code of the child that ran it alone, or 0}: every batch, in as few
    children as the crashes allow."""
    results, todo = {}, list(range(args.batches[0], args.batches[1] + 1))
    while todo:
        done, rc = run_child(width, todo, args)
        results.update({b: 0 for b in done})
        todo = todo[len(done):]
        if rc == 0 or not todo:
            break
        batch, todo = todo[0], todo[1:]
        results[batch] = run_child(width, [batch], args)[1]  # alone: was it this batch?
        if results[batch] == 0:
            results[batch] = f"0 alone, {rc} after others"
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[8, 12, 16, 24])
    p.add_argument("--batches", type=int, nargs=2, default=[1, 64], metavar=("FIRST", "LAST"))
    p.add_argument("--size", type=int, default=32, help="image size in px (32)")
    p.add_argument("--steps", type=int, default=2, help="train steps per batch size (2)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each child (2)")
    p.add_argument("--json", help="write the table here too")
    args = p.parse_args(argv)
    import torch
    isa = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, CPU capability {isa}, {args.size} px, channels_last, "
          f"{args.steps} train steps + one evaluation forward per batch size", flush=True)
    table = {}
    for width in args.widths:
        t0 = time.perf_counter()
        results = probe_width(width, args)
        bad = {b: c for b, c in results.items() if c != 0}
        table[width] = {str(b): c for b, c in results.items()}
        shown = ", ".join(f"{b} ({c})" for b, c in bad.items()) or "none"
        print(f"width {width:3d}: {len(results) - len(bad)}/{len(results)} batch sizes ran; "
              f"crashed at: {shown}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "isa": isa, "size": args.size,
                       "widths": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
