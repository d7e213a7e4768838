"""The ablation sweeps' results as tables: docs/ablations.csv (a row per trial, with the
`python train.py ...` command that reproduces it) and, printed, docs/ablations.md's tables
(mean ± std over seeds, the difference from the seed's recipe, a verdict).

    bash benchmarks/ablations.sh sweeps                          # the runs (about 1.5 h, 2 cores)
    python benchmarks/ablations_table.py --sweeps-dir sweeps --csv docs/ablations.csv
    python benchmarks/ablations_table.py --sweeps-dir sweeps --rerun 3 17   # rows' commands again

The verdict's rule: a setting's mean differs from the seed's recipe's by more than twice
their pooled standard deviation (sqrt of the mean of the two variances, over seeds): the
claim *holds* where the seed's setting is the better, *does not hold* where the other is;
otherwise *not resolved at this scale*.
"""
import argparse
import csv
import glob
import math
import os
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SEED_RECIPE = {"stem_pool": False, "blocks": "5 5 5 5", "dropout": 0.3, "cutmix_prob": 0.3,
               "label_smoothing": 0.1}  # the seed's settings, each claim's reference row
CLAIMS = {"maxpool": "the max-pool removed from the stem", "blocks": "[5, 5, 5, 5] blocks",
          "dropout": "dropout 0.3", "cutmix": "CutMix on 30% of batches",
          "label_smoothing": "label smoothing 0.1", "seeds": "the seed's recipe, 5 seeds"}
COLUMNS = ["dataset", "claim", "setting", "seed", "score_name", "score", "epochs", "seconds",
           "command"]


def flags_of(values):
    """Training flags for a dict of Config values (lists as numbers with spaces)."""
    from machinery.sweep_space import as_flags
    out = []
    for name, value in values.items():
        if isinstance(value, (list, tuple)):
            out += ["--" + name.replace("_", "-"), *map(str, value)]
        else:
            out += as_flags({name: value})
    return out


def study_rows(db):
    """(rows, wall seconds, dataset) of one study's complete trials."""
    import dataclasses

    import optuna
    from machinery.config import Config
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = os.path.basename(os.path.dirname(db))
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    given = study.user_attrs["settings"]["fixed"]  # (what the sweep's command gave after --)
    fixed = {**dataclasses.asdict(Config()), **given}
    dataset = os.path.basename(fixed["data_dir"].rstrip("/")) or fixed["data_dir"]
    claim = name.split("-", 1)[1] if "-" in name else name
    metric = "val_acc" if fixed.get("val_split") else "test_acc"
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    target = [] if "target_accuracy" in given else ["--target-accuracy", "0"]  # (as sweep.py)
    rows = []
    for t in sorted(done, key=lambda t: t.number):
        setting = {k: v for k, v in t.params.items() if k != "seed"}
        command = ["python", "train.py", *flags_of(given), *target, *flags_of(t.params)]
        rows.append({"dataset": dataset, "claim": claim,
                     "setting": ", ".join(f"{k}={v}" for k, v in setting.items()),
                     "seed": t.params.get("seed", fixed.get("seed", 1)), "score_name": metric,
                     "score": round(t.value, 2), "epochs": fixed["epochs"],
                     "seconds": round(t.user_attrs.get("seconds", 0.0)),
                     "command": shlex.join(command)})
    starts = [t.datetime_start for t in done if t.datetime_start]
    ends = [t.datetime_complete for t in done if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    return rows, wall, dataset


def mean_std(values):
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def verdict(diff, pooled, seed_better):
    if diff == 0 or abs(diff) <= 2 * pooled:  # (no spread at all and a gap: resolved)
        return "not resolved at this scale"
    return "holds" if seed_better else "does not hold"


def claim_table(rows, claim):
    """Markdown rows for one claim on one data set: each setting's mean ± std, its
    difference from the seed's recipe, the verdict."""
    groups = {}
    for r in rows:
        groups.setdefault(r["setting"], []).append(r["score"])
    key = next(iter(rows[0]["setting"].split("=")))
    reference = f"{key}={SEED_RECIPE[key]}" if key in SEED_RECIPE else rows[0]["setting"]
    label = CLAIMS.get(claim, claim)
    if reference not in groups:  # (another grid: nothing of the seed's to compare with)
        return [f"| {label} | {setting} | {mean_std(v)[0]:.2f} ± {mean_std(v)[1]:.2f} | {len(v)} | | "
                f"no row of the seed's setting ({reference}) to compare with |"
                for setting, v in groups.items()]
    base_m, base_s = mean_std(groups[reference])
    lines = []
    for setting, scores in groups.items():
        m, s = mean_std(scores)
        if setting == reference:
            lines.append(f"| {label} | {setting} (seed's) | {m:.2f} ± {s:.2f} | {len(scores)} | | |")
            continue
        diff, pooled = m - base_m, math.sqrt((s ** 2 + base_s ** 2) / 2)
        few = min(len(scores), len(groups.get(reference, []))) < 2  # (no spread to judge by)
        lines.append(f"| {label} | {setting} | {m:.2f} ± {s:.2f} | {len(scores)} | "
                     f"{diff:+.2f} (2σ {2 * pooled:.2f}) | "
                     f"{'too few seeds to judge' if few else verdict(diff, pooled, diff < 0)} |")
    return lines


def rerun(row, out):
    """A row's command again, in a folder of its own: its best score."""
    import torch
    argv = shlex.split(row["command"])[1:] + ["--out-dir", out]
    subprocess.run([sys.executable, *argv[0:1], *argv[1:]], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = torch.load(os.path.join(out, "checkpoints", "last.pt"), weights_only=True)
    return max(ckpt["val_acc" if row["score_name"] == "val_acc" else "test_acc"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweeps-dir", default="sweeps")
    p.add_argument("--csv", help="write every trial's row here (docs/ablations.csv)")
    p.add_argument("--rerun", type=int, nargs="*", default=[],
                   help="run these rows' commands again (numbered from 1, the CSV's order)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.sweeps_dir):
        print(f"error: --sweeps-dir {args.sweeps_dir}: no such folder", file=sys.stderr)
        return 2
    rows, walls = [], {}
    for db in sorted(glob.glob(os.path.join(args.sweeps_dir, "*", "study.db"))):
        try:
            found, wall, dataset = study_rows(db)
        except Exception as e:  # noqa: BLE001 -- not a sweep's study: said, the others go on
            print(f"warning: {db}: not a sweep.py study ({type(e).__name__}: {e}); skipped",
                  file=sys.stderr)
            continue
        rows += found
        walls.setdefault(dataset, []).append((os.path.basename(os.path.dirname(db)), wall))
    if not rows:
        print(f"no finished trials under {args.sweeps_dir}/*/study.db", file=sys.stderr)
        return 1
    bad = [n for n in args.rerun if not 1 <= n <= len(rows)]
    if bad:
        print(f"error: --rerun {bad[0]}: rows are numbered 1 to {len(rows)}", file=sys.stderr)
        return 2
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(rows)
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        score = "/".join(sorted({r["score_name"] for r in mine}))
        print(f"\n### {dataset}\n")
        print(f"| claim | setting | {score}, mean ± std | seeds | difference from the seed's (twice the pooled std) | verdict |")
        print("|---|---|---|---|---|---|")
        claims = list(CLAIMS) + sorted({r["claim"] for r in mine} - set(CLAIMS))
        for claim in claims:
            theirs = [r for r in mine if r["claim"] == claim]
            if theirs:
                print("\n".join(claim_table(theirs, claim)))
        times = ", ".join(f"{study} {wall / 60:.0f} min" for study, wall in walls[dataset])
        print(f"\nWall time per sweep: {times}.")
    for n in args.rerun:
        row = rows[n - 1]
        with tempfile.TemporaryDirectory() as out:
            again = rerun(row, out)
        print(f"row {n} ({row['dataset']}, {row['setting']}, seed {row['seed']}): "
              f"{row['score']:.2f} in the sweep, {again:.2f} again ({again - row['score']:+.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
