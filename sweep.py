"""Choose a recipe for your data: hyperparameter sweeps on Optuna, each trial an ordinary run.

    pip install -r requirements-sweep.txt
    python sweep.py --study lr --trials 20 --space max_lr=0.02:0.4:log \\
        --space cutmix_prob=0:0.6 --space dropout=0.1,0.3,0.5 \\
        -- --dataset folder --data-dir photos --epochs 15 --val-split 500
    python sweep.py --study stem --sampler grid --seeds 3 \\
        --space stem_pool=false,true -- --epochs 30 --val-split 5000   # an ablation

The flags after `--` are every trial's fixed training flags (python train.py --help); the
--space flags vary. Each trial trains in sweeps/<study>/trial_<n>/ (checkpoints, metrics,
Grad-CAM, its own trial.log), is pruned on its per-epoch validation accuracy, and the
study lives in sweeps/<study>/study.db (or --storage: start the same command on several
machines to share one study). Ctrl-C stops after saving; the same command goes on.
sweeps/<study>/report.md is rebuilt after every trial. docs/choosing-a-recipe.md says more.
"""
import importlib.util
import itertools
import os
import re
import signal
import sys
import threading
import urllib.parse

from machinery.stops import quiet_ctrl_c

quiet_ctrl_c(__name__)  # before torch loads (seconds): a Ctrl-C there is one line, not a traceback

from machinery.config import Parser, UserError, parse_args, resolve_config
from machinery.sweep_space import TrialsFailing


class SweepParser(Parser):
    def error(self, message):  # one line instead of a screenful of usage
        raise UserError(f"{message} (see python sweep.py --help)")


def build_parser():
    p = SweepParser(description=__doc__.split("\n")[0], allow_abbrev=False,
               usage="python sweep.py --study NAME [options] -- TRAINING FLAGS")
    p.add_argument("--study", required=True, help="the study's name (its folder under --sweeps-dir)")
    p.add_argument("--trials", type=int, default=None,
                   help="trials in the study, over every worker and machine (grid: every "
                        "combination times --seeds, by default)")
    p.add_argument("--sampler", choices=("tpe", "grid", "random"), default="tpe",
                   help="tpe (default): Optuna's TPE; grid: every combination of choices "
                        "(ablations); random")
    p.add_argument("--space", action="append", default=[], metavar="FLAG=SPEC",
                   help="a training flag and its values: low:high, low:high:log or a,b,c "
                        "(repeat for more flags), or a YAML file of them")
    p.add_argument("--seeds", type=int, default=1,
                   help="grid: run every combination with this many seeds (--seed, --seed+1, ...)")
    p.add_argument("--repeat-best", type=int, default=0, metavar="N",
                   help="once the study is done, train the best settings with N more seeds and "
                        "report mean ± std")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default=None,
                   help="stop hopeless trials by their per-epoch accuracy (default: median; "
                        "none for grid sweeps, whose every cell should finish)")
    p.add_argument("--workers", type=int, default=1,
                   help="trials trained at once on this machine: one per GPU (on the CPU, "
                        "they share its cores)")
    p.add_argument("--storage", default=None,
                   help="where the study lives: a database URL Optuna takes (sqlite:///f.db, "
                        "postgresql://..., mysql://...) or journal:PATH (default: "
                        "sqlite in the study's folder)")
    p.add_argument("--sweeps-dir", default="sweeps", help="the studies' folders (default: sweeps)")
    p.add_argument("--sampler-seed", type=int, default=None,
                   help="the sampler's seed, for a search one machine repeats exactly "
                        "(default: none, so that machines joining a study do not propose the "
                        "same settings)")
    return p


TRAIN_MODES = ("resume", "archive", "metrics_from_ckpt", "evaluate", "find_lr")


def read_command(argv):
    """(the sweep's own options, the trials' fixed training flags as given and as parsed)."""
    own, fixed = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)
    try:
        explicit, modes = parse_args(fixed)
    except UserError as e:
        raise UserError(f"in the training flags after --: {e}") from None
    used = [m for m in TRAIN_MODES if modes[m]]
    if used:
        raise UserError(f"--{used[0].replace('_', '-')} is not a sweep's training flag: "
                        f"each trial is a new run")
    if "out_dir" in explicit:
        raise UserError("--out-dir is each trial's own (sweeps/<study>/trial_<n>/): "
                        "use --sweeps-dir to move them")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", args.study):
        raise UserError(f"--study {args.study!r}: 1 to 100 characters, letters, digits, '_', "
                        f"'.' and '-', the first a letter or digit (it names a folder)")
    for name, least in (("trials", 1), ("seeds", 1), ("workers", 1), ("repeat_best", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise UserError(f"--{name.replace('_', '-')} must be at least {least} (got {value})")
    if args.storage is not None and not args.storage.strip():
        raise UserError("--storage '': give a database URL or journal:PATH (or leave it out: "
                        "SQLite in the study's folder)")
    if args.trials is None and args.sampler != "grid":
        raise UserError(f"--trials is needed with --sampler {args.sampler}")
    if args.seeds > 1 and args.sampler != "grid":
        raise UserError("--seeds is for grid sweeps; --repeat-best N gives the best settings' "
                        "spread over seeds")
    return args, fixed, explicit


def make_plan(args, fixed, explicit, say):
    """(the study, the Plan every trial follows), checked before anything trains."""
    from machinery import sweep_space, sweep_trials
    import optuna
    cfg = resolve_config(explicit)  # the fixed flags alone are a valid run
    dims = sweep_space.parse_space(args.space)
    sweep_space.check_space(dims, explicit)
    if args.seeds > 1 and any(d.name == "seed" for d in dims):
        raise UserError("--seeds and --space seed=... both set the seed: give one")
    grid = sweep_space.grid(dims, args.seeds, cfg.seed) if args.sampler == "grid" else None
    if not dims and not grid:
        raise UserError("nothing to sweep: give --space FLAG=SPEC (e.g. max_lr=0.02:0.4:log)")
    size = 1
    for values in (grid or {}).values():
        size *= len(values)
    total = min(args.trials or size, size) if grid else args.trials
    if grid and args.trials and args.trials > size:
        say(f"the grid has {size} cells: --trials {args.trials} is cut to {size}")
    folder = os.path.join(args.sweeps_dir, args.study)
    url = args.storage or "sqlite:///" + urllib.parse.quote(  # (a ? or % in the folder's name)
        os.path.abspath(os.path.join(folder, "study.db")))
    storage = sweep_trials.open_storage(url) if args.storage else None  # (before any folder)
    folder_data = check_data(cfg, say)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make {folder}: {e.strerror}") from None
    mark = sweep_folder(folder)  # (before a default study.db is made in it)
    storage = storage or sweep_trials.open_storage(url)
    # a grid's cells are queued up front (below) rather than drawn by Optuna's GridSampler,
    # which lets two workers that ask at once draw the same cell
    sampler = (optuna.samplers.TPESampler(seed=args.sampler_seed) if args.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=args.sampler_seed))
    pruner = args.pruner or ("none" if grid else "median")
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(1, cfg.epochs),
              "none": optuna.pruners.NopPruner}[pruner]()
    study = sweep_trials.at_once(lambda: optuna.create_study(
        study_name=args.study, storage=storage, sampler=sampler, pruner=pruner,
        direction="maximize", load_if_exists=True))
    if args.sampler_seed is not None and study.trials:
        # a study continued with its seed: the sampler's random stream goes on from the
        # trials it has (seeded as at the start, it would propose the same settings again)
        study.sampler = type(sampler)(seed=args.sampler_seed + len(study.trials))
    same_study(study, {"fixed": fixed_settings(explicit), "space": [d.spec for d in dims],
                       "sampler": args.sampler, "seeds": args.seeds})  # (the space as read: a YAML file edited since differs)
    claim_folder(study, folder, mark)
    if grid:
        queue_cells(study, grid, folder, total)

    def params_of(trial):  # (a queued cell's or retry's values come back as queued)
        params = sweep_space.suggest(trial, dims)
        if grid and "seed" in grid:
            params["seed"] = trial.suggest_categorical("seed", grid["seed"])
        return params
    return study, sweep_trials.Plan(trial_argv(fixed, explicit), folder, total,
                                    metric_name(cfg, folder_data), params_of,
                                    queued=bool(grid), ask_lock=sweep_trials.ask_lock_path(url, folder),
                                    epochs=lambda params: int(params.get("epochs", cfg.epochs)),
                                    storage_url=url), url


def folder_lock(folder):
    """The study folder's lock: workers starting at once on one machine take turns."""
    from machinery import sweep_trials
    return sweep_trials.file_lock(os.path.join(folder, ".queue.lock"))


def queue_cells(study, grid, folder, total):
    """The grid's first `total` cells (all, by default) queued once, however many workers
    start at once; a cell whose every trial failed is queued again (the command run again
    after its cause was fixed trains it)."""
    from optuna.trial import TrialState
    with folder_lock(folder):
        taken = [dict(t.params, **t.system_attrs.get("fixed_params", {}))
                 for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]
        for cell in itertools.islice(itertools.product(*grid.values()), total):
            params = dict(zip(grid, cell))
            if not any(all(t.get(k) == v for k, v in params.items()) for t in taken):
                study.enqueue_trial(params)


MARK = "sweep.json"  # a study folder's: which study made it
OURS = {MARK, ".queue.lock", ".ask.lock", "study.db", "study.db-journal", "study.db.ask.lock"}


def sweep_folder(folder):
    """The study folder's mark ({"sweep": id}), made now in a folder that holds nothing,
    or one line where the folder holds files sweep.py did not write (their report.md,
    their study.db would be replaced): checked before anything is made in it."""
    import json
    import uuid
    path = os.path.join(folder, MARK)

    def read():
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a sweep's mark ({e}); move it away") from None
    mark = read()
    if mark is None:
        theirs = sorted(set(os.listdir(folder)) - OURS)
        if theirs or os.path.exists(os.path.join(folder, "study.db")):
            raise UserError(f"{folder} holds files sweep.py did not write ({', '.join(theirs[:3]) or 'study.db'}"
                            f"{', ...' if len(theirs) > 3 else ''}); choose another --study or "
                            f"--sweeps-dir, or move them away")
        with folder_lock(folder):  # (two workers starting at once: one mark)
            mark = read()
            if mark is None:
                mark = {"sweep": uuid.uuid4().hex}
                with open(path, "w") as f:
                    json.dump(mark, f)
    return mark


def claim_folder(study, folder, mark):
    """The study and its folder belong together: a new study (its database deleted, or
    another --storage) never trains in, and reports over, an earlier study's trial folders;
    a machine joining with a fresh folder of its own takes the study's mark."""
    import json
    with folder_lock(folder):
        known = study.user_attrs.get("sweep")
        trials = [n for n in os.listdir(folder) if re.fullmatch(r"(trial|repeat_best(_[0-9a-f]+)?)_\d+", n)]
        if known == mark["sweep"]:
            return
        if trials:
            raise UserError(f"{folder} holds the trial folders of another study ({trials[0]}, "
                            f"...): its database was deleted, or another --storage names it; "
                            f"move them away, or choose another --study or --sweeps-dir")
        if known is None:
            study.set_user_attr("sweep", mark["sweep"])
        else:
            with open(os.path.join(folder, MARK), "w") as f:
                json.dump({"sweep": known}, f)


def same_study(study, settings):
    """A study is started once with its settings: a second command with others is refused
    (its trials would not be comparable)."""
    saved = study.user_attrs.get("settings")
    if saved is not None and isinstance(saved.get("fixed"), list):  # (recorded as text before)
        try:
            saved = {**saved, "fixed": fixed_settings(parse_args(saved["fixed"])[0])}
        except UserError:
            pass
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        differ = next(k for k in settings if saved.get(k) != settings[k])
        was = saved.get(differ)
        if differ == "fixed" and isinstance(was, dict):  # the flags that differ, not all
            now = settings[differ]
            was = "; ".join(f"--{k.replace('_', '-')} {was.get(k, '(not given)')} there, "
                            f"{now.get(k, '(not given)')} here"
                            for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k))
        raise UserError(f"study {study.study_name} was started with other {differ} "
                        f"({was}); give the same, or another --study")


PATHS = ("data_dir", "cache_dir", "labels", "init_from")  # one folder however it is written


def fixed_settings(explicit):
    """The fixed training flags as a study records them: parsed, so that the same flags in
    another order, `--max-lr=0.1` and `--max-lr 0.1`, or `photos/` and `photos` are one
    study; as JSON holds them (a study's attributes are JSON)."""
    import json
    norm = {k: os.path.normpath(v) if k in PATHS and v else v for k, v in sorted(explicit.items())}
    return json.loads(json.dumps(norm))


def trial_argv(fixed, explicit):
    """Every trial's fixed flags: as given, and --target-accuracy 0 unless given (a trial
    stopped at 75% would be scored at the epoch it got there, not its best, and easy data
    would rank by luck)."""
    return fixed if "target_accuracy" in explicit else [*fixed, "--target-accuracy", "0"]


def check_data(cfg, say):
    """The trials' data, checked (and CIFAR downloaded, a folder decoded into its cache)
    once, before any trial: a missing --data-dir is one line now, not three failed trials,
    and the workers do not download or decode the same files at once. Returns the image
    folder (None for CIFAR)."""
    from machinery import data
    if cfg.smoke:
        return None  # (each trial writes its generated data in its own folder)
    try:
        folder = data.open_folder(cfg)
        data.check_protocol(cfg, folder)
        say(f"checking the data in {cfg.data_dir} (read once for every trial)")
        data.ensure_dataset(cfg.data_dir, cfg.dataset, cfg.download, folder)
    except data.DataError as e:
        raise UserError(f"in the training flags after --: {e}") from None
    return folder


def metric_name(cfg, folder=None):
    """What trials are scored on: the validation images (--val-split, or a val/ folder)."""
    return "val_acc" if cfg.val_split or (folder is not None and folder.has("val")) else "test_acc"


def run_workers(study, plan, n, say, stop):
    """n Worker threads (one per GPU where there are GPUs); the report after each trial."""
    from machinery import sweep_report, sweep_trials
    import torch
    gpus = torch.cuda.device_count()
    threads = None if gpus or n == 1 else max(1, (os.cpu_count() or 1) // n)
    lock = threading.Lock()

    def reported():
        with lock:
            sweep_report.write_report(study, plan)
    workers = [sweep_trials.Worker(study, plan, gpu=i % gpus if gpus else None, threads=threads,
                                   say=say, stop=stop, after_trial=reported) for i in range(n)]
    errors = []

    def work(w):
        try:
            w.run()
        except Exception as e:  # noqa: BLE001 -- said once, the other workers go on
            errors.append(e)
            stop.set()
    pool = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    for t in pool:
        t.start()
    while any(t.is_alive() for t in pool):
        for t in pool:
            t.join(0.2)
    if errors:
        raise errors[0]


def repeat_best(args, study, plan, url, say, stop):
    """The best settings with --repeat-best more seeds, as a study of their own (so several
    workers and machines share them and an interrupted one goes on). A study that was
    extended since and has a new best gets a new repeat (study and folders named after
    its settings); the earlier ones stay, and stay in the report. Returns every repeat of
    the study (repeats_of), or None when the search is not done."""
    from machinery import sweep_trials
    import optuna
    from optuna.trial import TrialState
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        say("--repeat-best waits for the trials still running elsewhere: run this command again")
        return None
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    best = {k: v for k, v in max(done, key=lambda t: t.value).params.items() if k != "seed"}
    base = resolve_config(parse_args(plan.fixed_argv)[0]).seed
    seeds = [base + 1 + i for i in range(args.repeat_best)]
    key = settings_key(best)
    again = sweep_trials.at_once(lambda: optuna.create_study(
        study_name=f"{args.study}.repeat-best.{key}", storage=sweep_trials.open_storage(url),
        direction="maximize", load_if_exists=True))
    same_study(again, {"best": best})  # (more seeds later: those run, the others are kept)
    with folder_lock(plan.folder):
        for s in seeds:
            again.enqueue_trial({"seed": s}, user_attrs={"best": best}, skip_if_exists=True)
    rplan = sweep_trials.Plan(plan.fixed_argv, plan.folder, len(seeds), plan.metric,
                              lambda t: {**t.user_attrs["best"], "seed": t.suggest_int("seed", 0, 2**31 - 1)},
                              prefix=f"repeat_best_{key}", queued=True, ask_lock=plan.ask_lock,
                              epochs=plan.epochs, storage_url=plan.storage_url)
    say(f"--repeat-best: {_settings(best)} with seeds {', '.join(map(str, seeds))}")
    run_workers(again, rplan, args.workers, say, stop)
    return repeats_of(study, current=best, seeds=seeds)


def settings_key(params):
    """A short name for a set of settings (a repeat's study and folders)."""
    import hashlib
    import json
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]


def repeats_of(study, current=None, seeds=None):
    """Every --repeat-best of a study, the current best's first: [{"best": settings,
    "values", "seeds", "current"}] over the seeds each trained (those of this command for
    the current best)."""
    import optuna
    from optuna.trial import TrialState
    names = [n for n in optuna.get_all_study_names(study._storage)
             if n == f"{study.study_name}.repeat-best" or n.startswith(f"{study.study_name}.repeat-best.")]
    out = []
    for name in names:
        again = optuna.load_study(study_name=name, storage=study._storage)
        best = (again.user_attrs.get("settings") or {}).get("best")
        is_current = best == current
        done = [t for t in again.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if not is_current or seeds is None or t.params.get("seed") in seeds]
        if done or is_current:
            out.append({"best": best, "values": [t.value for t in done], "current": is_current,
                        "seeds": sorted(t.params.get("seed") for t in done)})
    return sorted(out, key=lambda r: not r["current"])


def _settings(params):
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def quiet_optuna():
    """Optuna's own chatter off: a line per trial is ours to print; its notes on experimental
    features (heartbeats, retries) and on ask-and-tell with heartbeats are not the user's."""
    import warnings
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    say_lock = threading.Lock()

    def say(line):
        with say_lock:
            print(line, flush=True)
    stop = threading.Event()
    try:
        args, fixed, explicit = read_command(argv)
        if importlib.util.find_spec("optuna") is None:
            raise UserError("sweep.py needs Optuna: pip install -r requirements-sweep.txt")
        quiet_optuna()
        study, plan, url = make_plan(args, fixed, explicit, say)
        if plan.metric != "val_acc":
            say("note: without --val-split the trials are scored on the test set (unless the "
                "data has val/), which the search then overfits; add --val-split N")
        say(f"study {args.study}: {plan.total} trial{'s' * (plan.total != 1)}, {args.sampler} "
            f"sampler, storage {url}")
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            run_workers(study, plan, args.workers, say, stop)
            repeats = None
            if args.repeat_best and not stop.is_set():
                repeats = repeat_best(args, study, plan, url, say, stop)
            repeats = repeats or repeats_of(study)  # (earlier ones, without --repeat-best)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        from machinery import sweep_report
        report = sweep_report.write_report(study, plan, repeats)
        if stop.is_set():
            print("stopped: the trials in progress saved where they were; the same command goes on",
                  file=sys.stderr)
            return 130
        say(f"report: {report}")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrialsFailing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or a lost database: one line, the trials' folders are kept
        print(f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
              f" (the trials' folders and the study are kept; the same command goes on)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
