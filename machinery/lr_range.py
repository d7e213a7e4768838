"""The learning-rate range test (`train.py --find-lr`): train with a learning rate that
grows exponentially from --lr-start to --lr-end, one step each, record the loss, stop once
it blows up, and suggest a --max-lr for the OneCycle schedule.

    ramp = Ramp(1e-7, 10, 200)        # sched = LambdaLR(opt, ramp.factor) drives the LR
    curve = record(steps, ramp, say)  # steps: (lr, mean loss of each step) as it trains
    pick = suggest(curve)             # the valley, its floor, the suggestion, the rule
    write(curve, pick, folder)        # lr_find.csv and lr_find.png

The rule. The raw loss is noisy (CutMix mixes 30% of the batches, a batch is 128 images),
so the curve is smoothed twice: an exponential moving average (EMA) while it runs, for the
stop rule, which can only look back; and a centred running median then mean once it is
complete, for the suggestion, which should not lag behind the LR it names. The valley is
the longest descending run of the centred curve (its longest decreasing subsequence, so a
few noisy points inside a long fall do not cut it short and an early spike or dip, which
no long fall passes through, cannot be it); its last point is the floor, where the loss
stops falling. The suggestion is the LR past the floor where the loss has climbed back
half of its fall: where training turns unstable, Smith's maximum for a one-cycle schedule.
Measured on real photos (docs/choosing-a-recipe.md), it lies within 2x of the best LR of a
grid, where "floor / 10" (fastai's heuristic for Adam) cost 15 to 20 points: the loss of
a range test lags its LR, and OneCycle stays near its peak only briefly.
"""
import contextlib
import csv
import itertools
import math
import os
import shlex
import shutil
import sys

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint_files import atomic_path
from .metrics import new_figure, save_figure

STOP_FACTOR = 4.0  # stop once the smoothed loss passes this many times its best
EMA_BETA = 0.98  # the stop rule's smoothing (bias-corrected, as the loss starts at zero weight)
FIRST_CHECK = 10  # steps before the stop rule may fire: the EMA needs a few to settle
MIN_FALL = 0.02  # a valley whose loss falls by less than this share is no valley
FLAT = 0.05  # a fall of less than this share gives a suggestion called rough
NOISY = 0.5  # noise above this share of the fall: the same
RISE = 0.5  # the edge: past the floor, where the loss has climbed back this share of its fall
FOLDER = "lr_find"
MAX_STEPS = 100_000  # (a test of minutes, not days; more steps would round the ramp away)


class Ramp:
    """An exponential ramp: step k trains at start * (end / start) ** (k / (steps - 1))."""

    def __init__(self, start, end, steps):
        self.start, self.end, self.steps = start, end, steps
        self.problem = check(start, end, steps)  # one line for the user, or None
        self.ratio = (end / start) ** (1 / max(steps - 1, 1)) if not self.problem else 1.0

    def factor(self, k):  # LambdaLR's multiplier of the start LR after k scheduler steps
        return self.ratio ** k

    def lr(self, k):
        return self.start * self.factor(k)


def check(start, end, steps):
    """One-line reasons the flags cannot make a ramp, or None."""
    if not (start > 0 and end > 0 and math.isfinite(start) and math.isfinite(end)):
        return f"--lr-start and --lr-end must be positive and finite (got {start:g}, {end:g})"
    if end <= start:
        return f"--lr-end {end:g} must be above --lr-start {start:g}"
    if steps < 20:
        return f"--find-lr-steps must be at least 20 (got {steps}): a curve needs points"
    if steps > MAX_STEPS:
        return f"--find-lr-steps must be at most {MAX_STEPS:,} (got {steps:,}); a few hundred is the usual"
    if not math.isfinite(end / start) or (end / start) ** (1 / (steps - 1)) <= 1:
        return (f"--lr-start {start:g} to --lr-end {end:g} over {steps} steps is no ramp a float "
                f"can hold; narrow it")
    return None


@contextlib.contextmanager
def own_folder(folder, error=ValueError, scratch=()):
    """The test's folder, made, or one line (`error`) on why it cannot hold the test's
    files, before any work. A test stopped inside removes the folder again if it made it
    and nothing was written (its files are written only at the end), and each `scratch`
    folder that was not there before (a --smoke test's generated data in a new out-dir)."""
    made = folder  # the outermost folder this makes (an --out-dir that was not there too)
    while not os.path.lexists(os.path.dirname(os.path.abspath(made))) and made != os.path.dirname(made):
        made = os.path.dirname(os.path.abspath(made))
    made = made if not os.path.lexists(made) else None
    scratch = [p for p in scratch if p and not os.path.lexists(p)]
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise error(f"cannot make {folder}: {e.strerror}") from None
    for name in ("lr_find.csv", "lr_find.png"):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise error(f"{path} is a folder, where the range test writes a file; move it away")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"cannot write to {folder}")
    try:
        yield folder
    except BaseException:
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)
            _remove_empty(os.path.dirname(os.path.abspath(path)), made)
        _remove_empty(os.path.abspath(folder), made)
        raise


def _remove_empty(path, made):
    """Empty folders only, innermost first, up to the outermost that own_folder made."""
    while made:
        try:
            os.rmdir(path)
        except OSError:
            return
        if path == os.path.abspath(made):
            return
        path = os.path.dirname(path)


def launcher(world):
    """How the test was started, for the command it prints: `python train.py` (as the
    script was named), or torchrun with as many processes on one machine."""
    script = sys.argv[0] if os.path.basename(sys.argv[0]) == "train.py" else "train.py"
    if world > 1:
        if int(os.environ.get("LOCAL_WORLD_SIZE", world)) == world:  # all on this machine
            return f"torchrun --standalone --nproc_per_node={world} {shlex.quote(script)}"
        return f"torchrun <the flags this test ran with> {shlex.quote(script)}"
    return f"python {shlex.quote(script)}"


def losses(loader, step, dist):
    """Each step's mean loss over every process's images, epoch after epoch, for as long
    as it is asked: step(x, y, epoch, k) trains on a batch and returns (summed loss, images).
    The mean is the same on every rank, so every rank stops at the same step."""
    for epoch in itertools.count():
        loader.batch_sampler.set_epoch(epoch)
        for k, (x, y) in enumerate(loader):
            loss_sum, n = step(x, y, epoch, k)
            total = dist.all_sum(torch.stack([loss_sum.float(), torch.full_like(loss_sum, n).float()]))
            yield (total[0] / total[1]).item()


def record(losses, ramp, disable=False):
    """Consume `losses` (an iterator of each step's loss, trained at ramp.lr(k) for step k)
    until the ramp ends, the loss is not finite, or the EMA passes STOP_FACTOR times its
    best. Returns {"lr", "loss", "ema": lists, "stopped": why the test ended}."""
    curve = {"lr": [], "loss": [], "ema": [], "stopped": f"the ramp ended at {ramp.end:g}",
             "blew_up": False}
    with tqdm(total=ramp.steps, desc="range test", leave=False, dynamic_ncols=True,
              disable=disable) as bar:  # (closed on a stop too: its line is not left behind)
        return _record(losses, ramp, curve, bar)


def _record(losses, ramp, curve, bar):
    avg, best = 0.0, math.inf
    for k, loss in enumerate(losses):
        if k >= ramp.steps:
            break
        bar.update()
        if not math.isfinite(loss):
            curve["stopped"] = f"the loss was not finite at LR {ramp.lr(k):.3g}"
            curve["blew_up"] = True
            break
        avg = EMA_BETA * avg + (1 - EMA_BETA) * loss
        ema = avg / (1 - EMA_BETA ** (k + 1))
        for key, v in zip(("lr", "loss", "ema"), (ramp.lr(k), loss, ema)):
            curve[key].append(v)
        best = min(best, ema)
        bar.set_postfix(lr=f"{ramp.lr(k):.2e}", loss=f"{ema:.3f}")
        if k >= FIRST_CHECK and ema > STOP_FACTOR * best:
            curve["stopped"] = (f"the smoothed loss passed {STOP_FACTOR:g}x its best at LR "
                                f"{ramp.lr(k):.3g}")
            curve["blew_up"] = True
            break
    return curve


def centred(loss, window):
    """The curve smoothed without lag: a running median (spikes go) then a running mean,
    both over `window` points centred on each (shorter at the ends)."""
    x, h = np.asarray(loss, float), window // 2
    med = np.array([np.median(x[max(i - h, 0):i + h + 1]) for i in range(len(x))])
    return np.array([med[max(i - h, 0):i + h + 1].mean() for i in range(len(x))])


def longest_descent(y):
    """(first, last) index of the longest strictly decreasing subsequence of y; O(n^2),
    which a few hundred points afford. Ties go to the one that ends later."""
    n = len(y)
    length, prev = [1] * n, [-1] * n
    for i in range(n):
        for j in range(i):
            if y[j] > y[i] and length[j] + 1 > length[i]:
                length[i], prev[i] = length[j] + 1, j
    last = max(range(n), key=lambda i: (length[i], i))
    first = last
    while prev[first] >= 0:
        first = prev[first]
    return first, last


def suggest(curve):
    """{"lr": the suggested --max-lr or None, "why": why none, "floor": the valley floor's
    LR, "valley": (first, last) step of the fall, "edge": the suggestion's step, "smooth":
    the centred curve, "rule": the rule in words, "trust": None, or why the curve is too
    flat or noisy to trust closely}. No suggestion from a curve too short, one that does
    not fall, or one still falling when the ramp ended (its floor is beyond the ramp)."""
    lr, loss = curve["lr"], curve["loss"]
    n = len(loss)
    if n < FIRST_CHECK:  # (only a loss that is not finite stops the test this early)
        return {"lr": None, "why": f"the loss blew up after {n} steps, at LR {lr[-1] if lr else 0:.2g}: "
                                   f"the ramp starts too high; give a lower --lr-start"}
    smooth = centred(loss, window=max(5, n // 20) | 1)
    first, last = longest_descent(smooth)
    fall = smooth[first] - smooth[last]
    if last - first < 3 or fall < MIN_FALL * smooth[first]:
        # no fall to speak of: noise around a flat line has descending stretches too
        if smooth[-1] > smooth[0] * (1 + MIN_FALL):
            return {"lr": None, "smooth": smooth, "why": f"the loss only rose from the ramp's "
                    f"start at LR {lr[0]:.2g}: give a lower --lr-start"}
        return {"lr": None, "smooth": smooth, "why": "the loss did not fall over the ramp; widen "
                "it (a lower --lr-start, a higher --lr-end) or give it more --find-lr-steps"}
    if last == n - 1 and not curve.get("blew_up", True):
        return {"lr": None, "smooth": smooth, "why": f"the loss was still falling when the ramp "
                f"ended at LR {lr[-1]:.2g}: its floor lies beyond; raise --lr-end"}
    # the edge: past the floor, where the loss has climbed back RISE of its fall; if the
    # test stopped sooner, the last step measured where it blew up, and no suggestion where
    # the ramp ended first (the edge lies beyond it)
    edge = next((i for i in range(last, n) if smooth[i] >= smooth[last] + RISE * fall), None)
    if edge is None and not curve.get("blew_up", True):
        return {"lr": None, "smooth": smooth, "why": f"the loss reached its floor at LR "
                f"{lr[last]:.2g} but had not turned back up when the ramp ended at "
                f"{lr[-1]:.2g}: raise --lr-end"}
    climbed = edge is not None
    edge = n - 1 if edge is None else edge
    began = next(i for i in range(first, last + 1) if smooth[i] <= smooth[first] - 0.1 * fall)
    pick = {"lr": lr[edge], "floor": lr[last], "valley": (began, last), "edge": edge,
            "smooth": smooth, "trust": trust(loss, smooth, smooth[first], fall),
            "rule": (f"the smoothed loss falls to its floor at LR {lr[last]:.2g} and "
                     + (f"has climbed back {RISE:.0%} of that fall at {lr[edge]:.2g}"
                        if climbed else f"blew up by {lr[edge]:.2g}, the last LR measured")
                     + "; training turns unstable there, so that is the suggestion")}
    return pick


def trust(loss, smooth, top, fall):
    """None, or why the suggestion is rough: a fall of a few percent, or step-to-step noise
    (the raw loss about the smoothed one, a robust spread) as large as the fall itself."""
    noise = 1.4826 * float(np.median(np.abs(np.asarray(loss, float) - smooth)))
    if fall < FLAT * top:
        return f"rough: the loss fell only {fall / top:.0%} over the ramp"
    if noise > NOISY * fall:
        return f"rough: the steps' noise is {noise / fall:.0%} of the loss's fall"
    return None


def write(curve, pick, folder, title=""):
    """lr_find.csv (every step) and lr_find.png (loss against LR, log axis, the valley and
    the suggestion marked); returns the two paths. Each file replaced atomically."""
    os.makedirs(folder, exist_ok=True)
    table, picture = os.path.join(folder, "lr_find.csv"), os.path.join(folder, "lr_find.png")
    smooth = pick.get("smooth", [float("nan")] * len(curve["lr"]))
    with atomic_path(table) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "lr", "loss", "ema", "centred"])
            for k, row in enumerate(zip(curve["lr"], curve["loss"], curve["ema"], smooth)):
                w.writerow([k, *(f"{v:.6g}" for v in row)])
    fig = new_figure(figsize=(8, 5))
    ax = fig.add_subplot()
    ax.plot(curve["lr"], curve["loss"], color="0.75", lw=0.8, label="loss of each step")
    ax.plot(curve["lr"], curve["ema"], color="tab:blue", lw=1, label="EMA (the stop rule)")
    if "smooth" in pick:
        ax.plot(curve["lr"], smooth, color="tab:orange", lw=1.6, label="centred (the rule reads this)")
    if pick["lr"]:
        first, last = pick["valley"]
        ax.axvspan(curve["lr"][first], curve["lr"][last], color="tab:green", alpha=0.12,
                   label="where the loss falls")
        ax.axvline(pick["floor"], color="tab:green", ls=":", label=f"floor {pick['floor']:.2g}")
        ax.axvline(pick["lr"], color="tab:red", ls="--",
                   label=f"suggested --max-lr {pick['lr']:.2g} (climbed back {RISE:.0%})"
                         + (" rough" if pick.get("trust") else ""))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    finite = [v for v in curve["loss"] if math.isfinite(v)]
    if finite:  # the blow-up at the end would otherwise squash the curve that matters
        ax.set_ylim(min(finite) * 0.95, min(max(finite), STOP_FACTOR * min(curve["ema"])) * 1.05)
    ax.set_title(f"Learning-rate range test{title}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, picture)
    return table, picture


# the flags of the range test itself, and the one its suggestion replaces: (name, takes a value)
OWN_FLAGS = {"--find-lr": False, "--lr-start": True, "--lr-end": True, "--find-lr-steps": True,
             "--max-lr": True}


def training_command(argv, max_lr, launcher="python train.py"):
    """The command line that trains with the suggestion: argv without the range test's own
    flags (as `--flag value` or `--flag=value`), with --max-lr set, started as the test
    was (launcher: `python train.py`, or torchrun's)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in OWN_FLAGS:
            skip = OWN_FLAGS[name] and "=" not in a
            continue
        kept.append(a)
    return f"{launcher} " + " ".join(map(shlex.quote, kept + ["--max-lr", f"{max_lr:.2g}"]))


def summary(curve, pick, files, argv, launcher="python train.py", busy=None):
    """What the user reads at the end: the test, the suggestion, its rule, the next command.
    busy: a line on why that command would not start as it is (the out-dir holds a run)."""
    n = len(curve["lr"])
    span = f" from LR {curve['lr'][0]:.2g} to {curve['lr'][-1]:.2g}" if n else ""
    lines = [f"range test: {n} steps{span}; stopped because {curve['stopped']}",
             f"the curve: {files[1]} (every step: {files[0]})"]
    if pick["lr"] is None:
        lines.append(f"no suggestion: {pick['why']}")
    else:
        lines += [f"suggested --max-lr {pick['lr']:.2g}"
                  + (f" ({pick['trust']}; try a decade around it)" if pick.get("trust") else ""),
                  f"the rule: {pick['rule']}",
                  f"train with: {training_command(argv, pick['lr'], launcher)}"]
        if busy:
            lines.append(busy)
    return "\n".join(lines)
