"""A sweep's report: sweeps/<study>/report.md and its pictures, rebuilt from the study's
storage and the trials' folders whenever a trial ends (so it is current while the sweep
runs, and after a crash).

    write_report(study, plan, repeats=None)   # -> the report's path

It holds the table of trials (settings, best score, epochs run, pruned or not, time), the
best settings and the command that trains them, the parameters' importances (Optuna's
fANOVA), the optimization history, every trial's curve on one plot, each setting's mean
± std over seeds (a grid with --seeds) and the best settings' spread over seeds
(--repeat-best).
"""
import os
import shlex
import statistics

from optuna.trial import TrialState

from .checkpoint_files import atomic_path
from .metrics import new_figure, save_figure
from .sweep_space import as_flags
from .sweep_trials import read_curve, root_of

STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
          TrialState.FAIL: "failed", TrialState.RUNNING: "running", TrialState.WAITING: "queued"}


def shown(study):
    """The trials a reader needs: all but the surplus ones, which never trained."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]


def mean_std(values):
    values = list(values)
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f} (one run)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def _minutes(seconds):
    return f"{seconds / 60:.1f} min" if seconds else "–"


def _params(p):
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def trial_rows(study, plan):
    """One dict per shown trial: number, folder, state, params, best, epochs, seconds, note."""
    rows, trials = [], shown(study)
    last = {}  # each folder's latest attempt: the folder's curve is its (a retry goes on there)
    for t in trials:
        last[root_of(t)] = max(last.get(root_of(t), t.number), t.number)
    for t in trials:
        folder = os.path.join(plan.folder, f"{plan.prefix}_{root_of(t)}")
        retried = last[root_of(t)] != t.number
        curve = [] if retried else read_curve(folder, plan.metric)
        note = t.user_attrs.get("note", "")
        rows.append({"number": t.number, "folder": os.path.basename(folder),
                     "state": STATES.get(t.state, t.state.name.lower()), "params": t.params,
                     "best": t.value if t.state == TrialState.COMPLETE else
                     max((v for _, v in curve), default=None),
                     "epochs": len(curve), "seconds": t.user_attrs.get("seconds", 0.0),
                     "note": f"{note}; went on as trial {last[root_of(t)]}" if retried else note,
                     "curve": curve})
    return rows


def by_setting(rows):
    """{settings without the seed: [best of each complete run]}: a grid's spread over seeds."""
    groups = {}
    for r in rows:
        if r["state"] == "complete":
            key = _params({k: v for k, v in r["params"].items() if k != "seed"})
            groups.setdefault(key, []).append(r["best"])
    return groups


def importances(study):
    """{param: importance} by fANOVA, or a sentence saying why there are none yet."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = {k for t in done for k in t.params if len({str(u.params.get(k)) for u in done}) > 1}
    if len(done) < 3 or not varied:
        return "needs at least 3 complete trials whose settings differ"
    import warnings
    import optuna
    try:
        with warnings.catch_warnings():  # its notes on ties among few trials
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study, params=sorted(varied))
    except (RuntimeError, ValueError) as e:
        return f"not computed: {e}"


def dashboard_command(url):
    """optuna-dashboard's command for the study's storage: a journal is given as its file,
    a database by its URL (a password in it left out of the report)."""
    import re
    import shlex
    if not url:
        return "optuna-dashboard <storage URL>"
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        return f"optuna-dashboard {shlex.quote(path[2:] if path.startswith('//') else path)}"
    shown = re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)
    return f"optuna-dashboard {shlex.quote(shown)}"


def write_report(study, plan, repeats=None):
    rows = trial_rows(study, plan)
    os.makedirs(plan.folder, exist_ok=True)
    pictures = {"history": draw_history(rows, plan), "curves": draw_curves(rows, plan)}
    imp = importances(study)
    if isinstance(imp, dict):
        pictures["importances"] = draw_importances(imp, plan)
    lines = [f"# Sweep `{study.study_name}`", "",
             f"Score: the best `{plan.metric}` over a trial's epochs (higher is better). "
             f"Each trial is a run folder under `{plan.folder}/`: evaluate, explain or export "
             f"it like any run. Trials that count: {len(rows) - sum(r['state'] == 'failed' for r in rows)} "
             f"of {plan.total}.", ""]
    if plan.metric == "test_acc":
        lines += ["**Scored on the test set**: there were no validation images (no "
                  "`--val-split`, no `val/` folder), so the search picks what suits the test "
                  "pictures, and the best score overstates what new pictures get. Hold some "
                  "training images out with `--val-split N` to score on those instead.", ""]
    complete = [r for r in rows if r["state"] == "complete"]
    if complete:
        best = max(complete, key=lambda r: r["best"])
        command = "python train.py " + " ".join(  # (pasted into a shell: 'my photos' stays one)
            map(shlex.quote, [*plan.fixed_argv, *as_flags(best["params"])]))
        lines += ["## Best", "", f"Trial {best['number']} (`{best['folder']}/`): "
                  f"{plan.metric} {best['best']:.2f} with {_params(best['params']) or 'the fixed flags'}.",
                  "", "```bash", command, "```", ""]
    if repeats:
        lines += ["## The best settings over seeds (--repeat-best)", "",
                  "Each over new seeds; the search's own trial left out (it was picked for "
                  "being high). A study extended since with a new best repeats that one too.", "",
                  f"| settings | {plan.metric}: mean ± std | seeds |", "|---|---|---|"]
        for r in repeats:
            mark = " (the best now)" if r.get("current") else ""
            lines.append(f"| {_params(r['best'] or {}) or 'the fixed flags'}{mark} | "
                         f"{mean_std(r['values'])} | {', '.join(map(str, r['seeds']))} |")
        lines.append("")
    groups = by_setting(rows)
    if any(len(v) > 1 for v in groups.values()):
        lines += ["## Each setting over seeds", "", f"| setting | {plan.metric}: mean ± std |",
                  "|---|---|"] + [f"| {k or '(fixed flags)'} | {mean_std(v)} |"
                                  for k, v in sorted(groups.items())] + [""]
    lines += ["## Trials", "", "| trial | folder | state | settings | best | epochs | time | note |",
              "|---:|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        best = f"{r['best']:.2f}" if r["best"] is not None else "–"
        lines.append(f"| {r['number']} | {r['folder']} | {r['state']} | {_params(r['params'])} | "
                     f"{best} | {r['epochs']} | {_minutes(r['seconds'])} | {r['note'][:80]} |")
    lines += ["", "## Parameter importances", ""]
    lines += ([f"- {k}: {v:.2f}" for k, v in imp.items()] if isinstance(imp, dict) else [imp])
    lines += [""] + [f"![{k}]({os.path.basename(v)})" for k, v in pictures.items()] + [""]
    lines += [f"Live view: `{dashboard_command(plan.storage_url)}` (pip install optuna-dashboard)."]
    path = os.path.join(plan.folder, "report.md")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return path


def draw_history(rows, plan):
    fig = new_figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    best, running = None, []
    for r in rows:
        if r["best"] is None:
            continue
        done = r["state"] == "complete"
        ax.scatter(r["number"], r["best"], color="tab:blue" if done else "0.6", s=22,
                   marker="o" if done else "x")
        if done:
            best = r["best"] if best is None else max(best, r["best"])
            running.append((r["number"], best))
    if running:
        ax.step(*zip(*running), where="post", color="tab:red", label="best so far")
        ax.legend(loc="lower right")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best {plan.metric} (%)")
    ax.set_title("Optimization history (x: pruned or unfinished)")
    ax.grid(alpha=0.3)
    path = os.path.join(plan.folder, "history.png")
    save_figure(fig, path)
    return path


def draw_curves(rows, plan):
    fig = new_figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for r in rows:
        if r["curve"]:
            epochs, values = zip(*r["curve"])
            ax.plot(epochs, values, lw=1, ls="-" if r["state"] == "complete" else "--",
                    label=f"trial {r['number']}" if len(rows) <= 12 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{plan.metric} (%)")
    ax.set_title("Every trial's curve (dashed: pruned or unfinished)")
    ax.grid(alpha=0.3)
    if any(r["curve"] for r in rows) and len(rows) <= 12:
        ax.legend(fontsize=7, ncol=2)
    path = os.path.join(plan.folder, "curves.png")
    save_figure(fig, path)
    return path


def draw_importances(imp, plan):
    fig = new_figure(figsize=(6, 0.5 + 0.4 * len(imp)))
    ax = fig.add_subplot()
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title("Which settings mattered")
    path = os.path.join(plan.folder, "importances.png")
    save_figure(fig, path)
    return path
