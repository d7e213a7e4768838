"""What a sweep costs beyond its training, and the epochs its pruning saves.

    python benchmarks/sweep_overhead.py                       # 8 smoke-sized trials, CPU
    python benchmarks/sweep_overhead.py --trials 12 --epochs 6 --json sweep.json

One study of --trials trials on generated data (`--smoke`'s reduced network), a random
--max-lr from 1e-4 to 2 so that some trials are hopeless, median pruning. Per trial it
prints the wall time, the time of train.py's own process, and the difference: the sweep's
bookkeeping (Optuna's asks, reports and tells on the SQLite study, the folder's lock). The
start of a train.py process (Python, torch, the data's first read) is measured apart
(`python train.py --help`, three times, the median), and so is rebuilding report.md. For
the study: the epochs a full search would have run, the epochs it ran, the share saved.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def process_start():
    """Median seconds of `python train.py --help`: Python, torch and the repo imported."""
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"],
                       capture_output=True, check=True)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    import optuna
    import sweep
    from machinery import sweep_report
    from machinery.sweep_trials import Plan, read_curve
    work = tempfile.mkdtemp(prefix="sweep-bench-")
    fixed = ["--smoke", "--data-dir", os.path.join(work, "data"), "--epochs", str(args.epochs),
             "--val-split", "500", "--gradcam-images", "0", "--tensorboard", "off"]
    t0 = time.monotonic()
    code = sweep.main(["--study", "bench", "--trials", str(args.trials), "--sampler", "random",
                       "--sampler-seed", "0", "--space", "max_lr=1e-4:2:log", "--pruner", "median",
                       "--sweeps-dir", work, "--", *fixed])
    total = time.monotonic() - t0
    if code != 0:
        sys.exit(f"the sweep failed ({code}); its folder: {work}")
    folder = os.path.join(work, "bench")
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{folder}/study.db")
    start = process_start()
    plan = Plan(fixed, folder, args.trials, "val_acc", lambda t: {})
    t1 = time.monotonic()
    sweep_report.write_report(study, plan)
    report_s = time.monotonic() - t1
    rows = []
    for t in study.trials:
        ran = len(read_curve(os.path.join(folder, f"trial_{t.number}"), "val_acc"))
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     "max_lr": t.params.get("max_lr"), "epochs": ran,
                     "seconds": t.user_attrs.get("seconds", 0.0),
                     "train_s": t.user_attrs.get("train_s", 0.0)})
    print(f"{'trial':>5} {'state':>9} {'max_lr':>8} {'epochs':>6} {'wall s':>7} {'train.py s':>10} "
          f"{'bookkeeping s':>13}")
    for r in rows:
        print(f"{r['trial']:>5} {r['state']:>9} {r['max_lr']:>8.3g} {r['epochs']:>6} "
              f"{r['seconds']:>7.1f} {r['train_s']:>10.1f} {r['seconds'] - r['train_s']:>13.2f}")
    book = statistics.mean(r["seconds"] - r["train_s"] for r in rows)
    wall = statistics.mean(r["seconds"] for r in rows)
    planned, ran = args.epochs * len(rows), sum(r["epochs"] for r in rows)
    summary = {"trials": len(rows), "epochs_per_trial": args.epochs, "study_s": total,
               "mean_trial_s": wall, "mean_bookkeeping_s": book, "process_start_s": start,
               "report_s": report_s,
               "overhead_share": (book + start + report_s) / wall if wall else None,
               "epochs_planned": planned, "epochs_run": ran,
               "epochs_saved_share": 1 - ran / planned if planned else None,
               "pruned": sum(r["state"] == "pruned" for r in rows), "rows": rows}
    print(f"\nper trial: {wall:.1f} s in all; bookkeeping {book:.2f} s, a train.py process's start "
          f"{start:.1f} s, report.md {report_s:.2f} s: {100 * summary['overhead_share']:.1f}% of a trial")
    print(f"pruning: {summary['pruned']} of {len(rows)} trials pruned; {ran} of {planned} epochs run "
          f"({100 * summary['epochs_saved_share']:.0f}% saved); the study took {total:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(f"(its folder, to look at: {folder})")


if __name__ == "__main__":
    main()
