"""Does the range test's suggestion hold? The test, a grid of max LRs, and a run at the
suggestion, all with the same training flags, in one table.

    python benchmarks/range_test.py --data-dir ../shared/data/cifar10-dev --dataset folder \
        --blocks 1 1 1 1 --width 16 --batch-size 64 --epochs 3

Every flag this script does not know goes to `train.py` as it is, for the range test and
for every run alike (`--target-accuracy 0` is added unless given: a run stopped at a target
scores by luck). It runs, in --work (a temporary folder unless given):
  1. `train.py --find-lr` and reads its curve (lr_find/lr_find.csv); the suggestion is
     computed here by machinery/lr_range.suggest, so a changed rule is measured on the
     same curve;
  2. one run per --grid LR (default: 7 points from 0.01 to 3, half a decade apart);
  3. one run at the suggestion, when there is one.
Each run's score is its best accuracy over its epochs (val_acc with --val-split, else
test_acc), as sweep.py scores a trial. A run whose folder already holds a finished run of
the same command is read, not trained again: a rerun with a changed rule trains only the
new suggestion. The table ends with the rule's check: is the suggestion within 3x of the
grid's best LR, or its run within 3 points of the grid's best score?
"""
import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from machinery import lr_range  # noqa: E402  (after the path: run as a script)

GRID = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
METRICS = os.path.join("training_metrics_from_ckpt", "metrics_from_ckpt.csv")


def train(argv, folder, quiet=True):
    """Run `train.py argv --out-dir folder` unless the folder holds a finished run of the
    same argv; returns the seconds it took (None when read)."""
    stamp = os.path.join(folder, "benchmark_command.json")
    if os.path.exists(stamp) and json.load(open(stamp)) == argv:
        return None
    os.makedirs(folder, exist_ok=True)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *argv, "--out-dir", folder],
                       capture_output=quiet, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout or "").strip().splitlines()[-1:] if quiet else ["see above"]
        sys.exit(f"train.py {shlex.join(argv)} failed ({r.returncode}): {tail[0] if tail else ''}")
    with open(stamp, "w") as f:
        json.dump(argv, f)
    return time.monotonic() - t0


def best_score(folder):
    """(column, best value over the run's epochs) from its metrics table."""
    with open(os.path.join(folder, METRICS), newline="") as f:
        rows = list(csv.DictReader(f))
    column = "val_acc" if "val_acc" in rows[0] else "test_acc"
    return column, max(float(r[column]) for r in rows if r[column] not in ("", "nan"))


def read_curve(folder):
    with open(os.path.join(folder, lr_range.FOLDER, "lr_find.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    curve = {k: [float(r[k]) for r in rows] for k in ("lr", "loss", "ema")}
    stamp = json.load(open(os.path.join(folder, "benchmark_stopped.json")))
    return {**curve, **stamp}


def range_test(flags, folder):
    """The curve of `train.py --find-lr flags`, and whether it blew up (read from its output)."""
    stamp = os.path.join(folder, "benchmark_stopped.json")
    argv = [*flags, "--find-lr"]
    if not (os.path.exists(stamp) and os.path.exists(os.path.join(folder, "benchmark_command.json"))
            and json.load(open(os.path.join(folder, "benchmark_command.json"))) == argv):
        os.makedirs(folder, exist_ok=True)
        r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *argv, "--out-dir", folder],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"the range test failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
        line = next((s for s in r.stdout.splitlines() if s.startswith("range test:")), "")
        stopped = line.split("stopped because ", 1)[-1]
        with open(stamp, "w") as f:
            json.dump({"stopped": stopped, "blew_up": "ramp ended" not in stopped}, f)
        with open(os.path.join(folder, "benchmark_command.json"), "w") as f:
            json.dump(argv, f)
    return read_curve(folder)


def table(rows, pick, best):
    """The markdown table: each LR's score, the suggestion's marked."""
    lines = ["| --max-lr | " + " | ".join(f"{lr:g}" + (" (suggested)" if s else "")
                                         for lr, _, s in rows) + " |",
             "|---|" + "---|" * len(rows),
             f"| best {best} | " + " | ".join(f"{v:.2f}" for _, v, _ in rows) + " |"]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="every other flag goes to train.py")
    p.add_argument("--grid", type=float, nargs="+", default=GRID, metavar="LR",
                   help=f"max LRs to train (default: {' '.join(map(str, GRID))})")
    p.add_argument("--work", default=None, help="folder for the runs (default: a temporary one); "
                   "finished runs of the same command in it are read, not trained again")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    own, flags = p.parse_known_args(argv)
    if not any(f.split("=")[0] == "--target-accuracy" for f in flags):
        flags += ["--target-accuracy", "0"]
    work = own.work or tempfile.mkdtemp(prefix="range_test_")
    print(f"runs in {work}; train.py flags: {shlex.join(flags)}", flush=True)

    t0 = time.monotonic()
    curve = range_test(flags, os.path.join(work, "find_lr"))
    pick = lr_range.suggest(curve)
    print(f"range test: {len(curve['lr'])} steps, stopped because {curve['stopped']}", flush=True)
    if pick["lr"] is None:
        print(f"no suggestion: {pick['why']}")
    else:
        print(f"suggested --max-lr {pick['lr']:.2g}" + (f" ({pick['trust']})" if pick.get("trust") else ""))

    scores, seconds = {}, {}
    lrs = sorted(set(own.grid) | ({float(f"{pick['lr']:.2g}")} if pick["lr"] else set()))
    for lr in lrs:
        folder = os.path.join(work, f"max_lr_{lr:g}")
        seconds[lr] = train([*flags, "--max-lr", f"{lr:g}"], folder)
        column, scores[lr] = best_score(folder)
        took = f"{seconds[lr]:.0f} s" if seconds[lr] is not None else "read"
        print(f"  --max-lr {lr:g}: best {column} {scores[lr]:.2f} ({took})", flush=True)

    grid = {lr: scores[lr] for lr in own.grid}
    best_lr = max(grid, key=grid.get)
    rows = [(lr, scores[lr], pick["lr"] is not None and lr == float(f"{pick['lr']:.2g}")) for lr in lrs]
    print()
    print(table(rows, pick, column))
    result = {"flags": flags, "grid": grid, "best_lr": best_lr, "best": grid[best_lr],
              "suggested": pick["lr"], "trust": pick.get("trust"), "why": pick.get("why"),
              "minutes": round((time.monotonic() - t0) / 60, 1)}
    if pick["lr"] is not None:
        s = float(f"{pick['lr']:.2g}")
        ratio = max(s / best_lr, best_lr / s)
        gap = grid[best_lr] - scores[s]
        result.update(suggested_score=scores[s], ratio=ratio, gap=gap, holds=ratio <= 3 or gap <= 3)
        print(f"\nthe grid's best: --max-lr {best_lr:g} ({grid[best_lr]:.2f}); the suggestion "
              f"{s:g} is {ratio:.1f}x from it and {gap:+.2f} points below it: "
              f"{'holds' if result['holds'] else 'DOES NOT HOLD'} (within 3x or 3 points)")
    print(f"{result['minutes']} minutes")
    if own.json:
        with open(own.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
