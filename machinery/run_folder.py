"""Whose checkpoints are in a run's folder, so that a run never overwrites or deletes what
another run wrote.

Every checkpoint a run writes carries the run's id (`run_id`: made when a run starts, kept
by every resume of it). Before a run writes anything, claim() looks at
<out-dir>/checkpoints/:

  - a fresh run needs a folder without checkpoints; a resumed run one whose last.pt and
    best_model.pt (the files it overwrites at every epoch) are its own;
  - another run's files are refused in one line that says what they are and the ways on
    (--resume auto, another --out-dir, or --archive to move them aside);
  - a --smoke run's are demo files: they are replaced, said in one line.

A run prunes a checkpoint_epoch_N.pt only when the file itself says it is the run's
(its_own), and only files it wrote into this folder. Files of the reference repo and of
this repo before run ids existed carry no id: they are never pruned, and a run continued
from them in their own folder takes its folder's id-less files as its own, as before.
"""
import datetime
import os
import shutil
import uuid

from .checkpoint_files import atomic_path, peek_checkpoint, periodic_checkpoints
from .config import UserError

ARCHIVE = "archive"  # <out-dir>/checkpoints/archive/<time>/: files moved aside by --archive


def new_run_id():
    return uuid.uuid4().hex[:16]


def run_id_of(path):
    """The id of the run that wrote a checkpoint file; None for the reference's files, this
    repo's from before run ids, and files that cannot be read."""
    return (peek_checkpoint(path) or {}).get("run_id")


def its_own(path, run_id):
    """Whether the file at `path` says it was written by the run `run_id`."""
    return run_id is not None and os.path.isfile(path) and run_id_of(path) == run_id


def checkpoint_files(folder):
    """last.pt, best_model.pt and the checkpoint_epoch_N.pt files present in `folder`."""
    if not os.path.isdir(folder):
        return []
    named = [os.path.join(folder, n) for n in ("last.pt", "best_model.pt")]
    return [p for p in named if os.path.isfile(p)] + periodic_checkpoints(folder)


def describe(paths):
    """What a set of checkpoint files holds, from the one furthest into training: data set,
    epochs done, best accuracy."""
    ckpts = [c for c in map(peek_checkpoint, paths) if c and "train_acc" in c]
    if not ckpts:
        return f"{len(paths)} file{'s' * (len(paths) != 1)} that cannot be read as checkpoints"
    ckpt = max(ckpts, key=lambda c: len(c["train_acc"]))
    cfg = ckpt.get("config") or {}
    done, total = len(ckpt["train_acc"]), cfg.get("epochs")
    what = [cfg.get("dataset", "cifar100") + (" --smoke" if cfg.get("smoke") else ""),
            f"{done} of {total} epochs" if total else f"{done} epochs"]
    split = "val" if cfg.get("val_split") or "val_acc" in ckpt else "test"
    accs = ckpt.get(f"{split}_acc") or []
    if accs:
        best = max(range(len(accs)), key=accs.__getitem__)
        what.append(f"best {split} accuracy {accs[best]:.2f}% at epoch {best}")
    return ", ".join(what)


def claim(out_dir, resumed=None, resumed_here=False, archive=False, say=print):
    """Make <out-dir>/checkpoints/ safe for a run to write into, before it writes anything.

    resumed: the checkpoint the run continues (None: a fresh run); resumed_here: whether
    that file lies in this folder. Another run's files that the run would overwrite are
    moved to checkpoints/archive/<time>/ with `archive`, replaced if they are a --smoke
    run's, and otherwise refused (UserError) with what they hold and the ways on.
    """
    folder = os.path.join(out_dir, "checkpoints")
    others = in_the_way(folder, resumed, resumed_here)
    if not others:
        return
    if archive:
        aside = move_aside(folder, others)
        say(f"--archive: {len(others)} checkpoint file{'s' * (len(others) != 1)} of another "
            f"run ({describe([os.path.join(aside, os.path.basename(p)) for p in others])}) "
            f"moved to {aside}")
    elif _smoke_only(others):
        for path in others:
            os.remove(path)  # each one read first: a --smoke run's demo file
        say(f"replaced the --smoke demo run's checkpoints in {folder}")
    else:
        raise UserError(f"{folder} holds another run's checkpoints ({describe(others)}); "
                        f"continue that run with --resume auto, train in another --out-dir, "
                        f"or move its files aside with --archive")


def _smoke_only(paths):
    return all(((peek_checkpoint(p) or {}).get("config") or {}).get("smoke") for p in paths)


def busy(out_dir):
    """Why a fresh run would be refused in out_dir as it stands (another run's checkpoints,
    not a --smoke demo's), or None: what claim() would say, without moving anything."""
    folder = os.path.join(out_dir, "checkpoints")
    others = in_the_way(folder, None, False)
    if others and not _smoke_only(others):
        return f"{folder} holds another run's checkpoints ({describe(others)})"
    return None


def in_the_way(folder, resumed, resumed_here):
    """The checkpoint files in `folder` that are not the run's own and that it would
    overwrite: all of them for a fresh run; for a resumed run another run's last.pt and
    best_model.pt (its other periodic files are kept, never overwritten or pruned). In the
    folder it continues from, id-less files are the run's own (written before run ids)."""
    files = checkpoint_files(folder)
    if resumed is None:
        return files
    run_id = resumed.get("run_id")

    def theirs(path):
        other = run_id_of(path)
        return other != run_id and (other is not None or not resumed_here)
    return [p for p in files if os.path.basename(p) in ("last.pt", "best_model.pt") and theirs(p)]


def move_aside(folder, paths):
    """Move `paths` (files in `folder`) into a new folder checkpoints/archive/<time>/;
    returns it. Renames within one file system: nothing is copied, nothing can be lost."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside, n = os.path.join(folder, ARCHIVE, stamp), 1
    while os.path.exists(aside):
        n += 1
        aside = os.path.join(folder, ARCHIVE, f"{stamp}-{n}")
    os.makedirs(aside)
    for path in paths:
        target = os.path.join(aside, os.path.basename(path))
        os.replace(path, target)  # a new, empty folder: nothing there to replace
    return aside


def others_periodic(folder, run_id):
    """The checkpoint_epoch_N.pt files in `folder` that the run `run_id` did not write."""
    if not os.path.isdir(folder):
        return []
    return [p for p in periodic_checkpoints(folder) if not its_own(p, run_id)]


def carry_best(resume_path, resumed, out_dir):
    """A run resumed into another --out-dir takes its best model along: the resumed file's
    folder's best_model.pt is copied in when this folder has none and that file is the
    run's best up to the resumed epoch (its id, its epoch and its accuracy in the resumed
    history all agree). Returns the path copied, or None; without it, the first epoch in
    the new folder writes best_model.pt (save_epoch_checkpoints)."""
    target = os.path.join(out_dir, "checkpoints", "best_model.pt")
    source = os.path.join(os.path.dirname(os.path.abspath(resume_path)), "best_model.pt")
    if os.path.exists(target) or not os.path.isfile(source):
        return None
    best = peek_checkpoint(source) or {}
    split = "val" if "val_acc" in resumed else "test"
    accs, epoch = resumed.get(f"{split}_acc") or [], best.get("epoch", -1)
    if (resumed.get("run_id") is None or best.get("run_id") != resumed["run_id"]
            or not 0 <= epoch < len(accs) or accs[epoch] != best.get(f"{split}_accuracy")
            or max(accs[:epoch + 1]) != accs[epoch]):
        return None
    with atomic_path(target, replaces_checkpoint=True) as tmp:
        shutil.copyfile(source, tmp)
    return source


def folder_of(path):
    """The run folder a checkpoint file lies in: the parent of its checkpoints/ folder,
    relative to here when it is below here; None for a file elsewhere. A run resumed from
    a file goes on in that file's folder, wherever the command is started from (the
    checkpoint's own --out-dir may be a relative path of another working folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) != "checkpoints":
        return None
    run = os.path.dirname(folder)
    near = os.path.relpath(run)
    return run if near.startswith("..") else near


def resumed_here(resume_path, out_dir):
    """Whether the checkpoint a run resumes lies in its own --out-dir's checkpoints/."""
    folder = os.path.join(out_dir, "checkpoints")
    return bool(resume_path) and os.path.isdir(folder) and os.path.samefile(
        os.path.dirname(os.path.abspath(resume_path)), folder)
