"""Checkpoint files: reading them safely, writing them atomically, telling which network
a file's weights are of (this repo's, its older key names, the reference's), and a run's
checkpoint folder (its periodic files, the newest good one).

Below the network in the house: it knows the network only by its state dict's key names
and shapes and the `model_args` dict a checkpoint stores, so model.py (which builds the
network from those) can use it, and nothing in the package imports model.py. Not merged into
checkpointing.py: that module knows a training run (its Config, its schedule) and pulls in
the data pipeline, and loading a model for inference should need neither.

    ckpt = load_checkpoint("checkpoints/best_model.pt")   # weights_only: runs nothing
    save_checkpoint(ckpt, "copy.pt")                       # temp file, fsync, rename
"""
import contextlib
import os
import pickle
import re
import textwrap
import zipfile
from collections import OrderedDict

import torch

from . import cifar
from .own_files import writer_alive

# The seed network's shape (model.SEED_BLOCKS / SEED_WIDTH), named "ResNet34" in messages
# as the reference names it; tests/test_model.py checks the two agree.
RESNET34_SHAPE = ([5, 5, 5, 5], 64)


# -----------------------------------------------------------------------------
# Files: safe loading, atomic saving

class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, unsafe or of another network."""


@contextlib.contextmanager
def atomic_path(path, replaces_checkpoint=False):
    """Yield a temporary name beside `path`; move it into place only once writing succeeded,
    so a crash mid-write leaves the previous file, never a truncated one.

    Only a checkpoint replaces a checkpoint (replaces_checkpoint): a picture, table or
    report pointed at one is refused before anything is written, so no tool can write
    over a checkpoint by a wrong name."""
    if not replaces_checkpoint and is_checkpoint_file(path):
        raise CheckpointError(f"refusing to write {path}: it is a checkpoint, and this "
                              f"writes another kind of file; choose another name or folder")
    remove_dead_temporaries(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # name the file the user knows, not the temporary one
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_dead_temporaries(path):
    """The `<name>.tmp<pid>` files beside `path` that a killed writer left (a table, a
    checkpoint of 229 MB): those whose process is gone. A live writer's stays."""
    folder, name = os.path.split(os.path.abspath(path))
    mine = re.compile(re.escape(name) + r"\.tmp(\d+)")
    with contextlib.suppress(OSError):
        for old in os.listdir(folder):
            found, tmp = mine.fullmatch(old), os.path.join(folder, old)
            if found and int(found.group(1)) != os.getpid() and os.path.isfile(tmp) \
                    and not os.path.islink(tmp) and not writer_alive(int(found.group(1)), tmp):
                os.remove(tmp)


def save_checkpoint(ckpt, path):
    with atomic_path(path, replaces_checkpoint=True) as tmp:
        torch.save(ckpt, tmp)


# What torch.save's older format (before 1.6, or _use_new_zipfile_serialization=False)
# starts with: pickle protocol 2 and torch's magic number, a long of 10 bytes
LEGACY_START = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _legacy(path):
    try:
        with open(path, "rb") as f:
            return f.read(len(LEGACY_START)) == LEGACY_START
    except OSError:
        return False


def is_checkpoint_file(path):
    """Whether `path` is a file torch.save wrote (a zip archive holding a data.pkl, or the
    older format)."""
    if not os.path.isfile(path):
        return False
    if _legacy(path):
        return True
    if not zipfile.is_zipfile(path):
        return False
    with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as z:
        return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    return False


def peek_checkpoint(path):
    """A checkpoint's contents with its tensors mapped from the file, not read (a 230 MB
    file opens in milliseconds), to look at its keys; None for a file that is not a
    readable checkpoint. Never for the weights' use: load_checkpoint checks far more."""
    if not is_checkpoint_file(path):
        return None
    try:  # (mmap: zip archives only)
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=not _legacy(path))
    except Exception:  # noqa: BLE001 -- any unreadable file is simply "not a checkpoint" here
        return None
    return ckpt if isinstance(ckpt, dict) else None


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint safely: weights_only=True, so a file cannot run code when loaded.
    map_location: where its tensors go (a file saved on a GPU loads on the CPU)."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint (its checkpoints/best_model.pt?)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path) and not _legacy(path):  # (zip archives since torch 1.6)
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint, "
                              f"or corrupt or truncated")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any object that is not a tensor or plain Python value
        raise CheckpointError(f"refusing to load {path}: {_refused_global(e)}, and a "
                              f"checkpoint holds only tensors and plain values; nothing in it "
                              f"was run") from None
    except Exception as e:  # zip/EOF/runtime errors all mean the same thing to a user
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or truncated file "
                              f"({type(e).__name__})") from None
    if _is_state_dict(ckpt):  # torch.save(model.state_dict()), the tutorials' habit
        ckpt = {"model_state_dict": ckpt, "bare_state_dict": True}
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint (no 'model_state_dict')")
    ckpt["model_state_dict"] = upgrade_state_dict(ckpt["model_state_dict"])
    if ckpt.get("bare_state_dict"):
        model_args_from_state_dict(ckpt["model_state_dict"], source=path)  # or one line
    return ckpt


def _is_state_dict(obj):
    return (isinstance(obj, dict) and bool(obj) and "model_state_dict" not in obj
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()))


def _refused_global(error):
    """'it asks for posix.system' from torch's several-paragraph weights_only refusal."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    if found:
        return f"it asks for {found.group(1)}"
    line = next((ln for ln in str(error).splitlines() if "global" in ln.lower()), "")
    return textwrap.shorten(line, 120, placeholder=" ...") or "it holds objects of other kinds"


# -----------------------------------------------------------------------------
# Which network a state dict holds: key names, shapes, and what a file lacks

def network_name(args):
    """'ResNet34 (100 classes)' or 'ResNet(blocks=[1, 1, 1, 1], width=16) (10 classes)'."""
    shape = ("ResNet34" if (list(args["blocks"]), args["width"]) == RESNET34_SHAPE
             else f"ResNet(blocks={list(args['blocks'])}, width={args['width']})")
    pool = ", stem max-pool" if args.get("stem_pool") else ""
    return f"{shape} ({args['num_classes']} classes{pool})"


# This repo's checkpoints before the reference's names were adopted called the projection
# branch `shortcut`; `downsample` is the reference's (and torchvision's) name.
_OLD_NAME = re.compile(r"(^|\.)shortcut(\.|$)")
# What wrappers put before every key of a network saved through them: DDP (`module.`) and
# torch.compile (`_orig_mod.`), in either order.
_WRAPPED = re.compile(r"^(?:(?:module|_orig_mod)\.)+")


def _key(k):
    return _OLD_NAME.sub(r"\1downsample\2", _WRAPPED.sub("", k))


def upgrade_state_dict(state):
    """The state dict with today's key names: this repo's older ones (`shortcut`) and the
    prefixes of a wrapped network (`module.`, `_orig_mod.`) replaced; the one place that
    knows them. Returned as it is when it has none."""
    if all(_key(k) == k for k in state):
        return state
    new = OrderedDict((_key(k), v) for k, v in state.items())
    meta = getattr(state, "_metadata", None)  # per-module versions (BatchNorm reads its own)
    if meta is not None:
        new._metadata = OrderedDict((_key(k), v) for k, v in meta.items())
    return new


def load_weights(model, state, source="the checkpoint"):
    """model.load_state_dict(state), or one line naming what does not fit, e.g. "the
    checkpoint's weights do not fit ResNet34 (100 classes): 2 missing (layer1.0.conv1.weight,
    layer1.0.bn1.weight), 1 unexpected (classifier.weight)". The weights may be in any
    memory format or on any device: they are copied into the model's own tensors."""
    state, own = upgrade_state_dict(state), model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [f"{k} {tuple(state[k].shape)} there, {tuple(own[k].shape)} here"
               for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [f"{len(keys)} {what} ({_first(keys)})" for keys, what in
                ((missing, "missing"), (unexpected, "unexpected"), (resized, "of another shape"))
                if keys]
    if problems:
        name = network_name(model.model_args) if hasattr(model, "model_args") else type(model).__name__
        raise CheckpointError(f"{source}'s weights do not fit {name}: {', '.join(problems)}")
    model.load_state_dict(state)


def _first(items, n=3):
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def model_args_from_state_dict(state_dict, source="the checkpoint"):
    """Infer blocks/width/classes from tensor shapes, for checkpoints that do not store them."""
    lacks = [k for k in ("conv1.weight", "fc.weight") if k not in state_dict]
    if lacks:
        raise CheckpointError(f"{source} has no {' or '.join(lacks)}: not this repo's ResNet "
                              f"(its keys begin: {_first(list(state_dict)) or 'none'})")
    try:
        width = state_dict["conv1.weight"].shape[0]
        num_classes = state_dict["fc.weight"].shape[0]
        blocks = [len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")})
                  for i in range(1, 5)]
    except (AttributeError, IndexError):
        raise CheckpointError(f"{source}'s weights are not of this project's ResNet") from None
    return {"blocks": blocks, "width": int(width), "num_classes": int(num_classes),
            "dropout": 0.3, "block_dropout": 0.0}  # the reference's (dropout has no weights)


def check_model_args(found, expected, source="a checkpoint"):
    """Raise naming the first difference, e.g. '(num_classes is 10 there, expected 100)'."""
    for key in ("num_classes", "blocks", "width"):
        if key in expected and list(_as_list(found[key])) != list(_as_list(expected[key])):
            raise CheckpointError(f"{source} of another network ({key} is "
                                  f"{found[key]} there, expected {expected[key]})")


def _as_list(v):
    return v if isinstance(v, (list, tuple)) else [v]


def dataset_of(ckpt):
    """The data set a checkpoint was trained on: its config's, or for a file without one
    (the reference's) the CIFAR data set with as many classes; None if there is none."""
    name = (ckpt.get("config") or {}).get("dataset")
    if name:
        return name
    classes = model_args_from_state_dict(ckpt["model_state_dict"])["num_classes"]
    return next((n for n, names in cifar.CLASS_NAMES.items() if len(names) == classes), None)


def fill_metadata(ckpt):
    """Complete, in place, a checkpoint without the network's arguments, class names or
    normalisation (the reference's files hold weights, optimizer and history only): the
    shape from the weights; names and mean/std of the CIFAR data set with that many
    classes (numbered names and CIFAR-100's statistics for other counts).
    The image size goes in too: --image-size's, or 32 (CIFAR's) for files older than it.
    Returns one line saying what was assumed, or None when nothing was missing."""
    ckpt.setdefault("image_size", int((ckpt.get("config") or {}).get("image_size", 32)))
    missing = [k for k in ("model_args", "class_names", "mean", "std") if k not in ckpt]
    if not missing:
        return None
    args = ckpt.setdefault("model_args", model_args_from_state_dict(ckpt["model_state_dict"]))
    name = dataset_of(ckpt)
    name = name if name in cifar.DATASETS else None  # an image folder's come with its files
    spec = cifar.DATASETS[name or "cifar100"]
    names = cifar.CLASS_NAMES[name] if name else [f"class_{i}" for i in range(args["num_classes"])]
    if "class_names" in missing:
        ckpt["class_names"], ckpt["names_assumed"] = list(names), True  # (a card says so)
    ckpt.setdefault("mean", list(spec["mean"]))
    ckpt.setdefault("std", list(spec["std"]))
    said = {"model_args": "network arguments", "class_names": "class names", "mean": "mean/std",
            "std": "mean/std"}
    lacks = list(dict.fromkeys(said[k] for k in missing))
    lacks = ", ".join(lacks[:-1]) + " or " + lacks[-1] if len(lacks) > 1 else lacks[0]
    using = (f"{name.upper().replace('CIFAR', 'CIFAR-')}'s class names and statistics" if name
             else "numbered class names and CIFAR-100's statistics")
    what = ("weights only (a bare state dict)" if ckpt.get("bare_state_dict") else
            f"no {lacks} (a checkpoint of the reference repo?)")
    return f"it holds {what}: using {using}, and {network_name(args)} as its weights' shapes say"



def init_from_checkpoint(model, path):
    """--init-from: a checkpoint's weights (this repo's or the reference's) in a freshly
    built network, for a new run. Where the class counts differ the classifier keeps its
    fresh weights; any other difference is a CheckpointError. Returns the line to log."""
    ckpt = load_checkpoint(path)
    state = dict(upgrade_state_dict(ckpt["model_state_dict"]))
    found, own = model_args_from_state_dict(state), model.model_args
    for key in ("blocks", "width"):
        if list(_as_list(found[key])) != list(_as_list(own[key])):
            raise CheckpointError(
                f"--init-from {path} holds {network_name(found)}, this run builds "
                f"{network_name(own)}; give the same --blocks and --width, or another checkpoint")
    line = f"initial weights from {path} (after epoch {ckpt.get('epoch', '?')})"
    if found["num_classes"] != own["num_classes"]:
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("fc.")})
        line += (f", except the classifier: {found['num_classes']} classes there, "
                 f"{own['num_classes']} here, so it starts from fresh weights")
    load_weights(model, state, f"--init-from {path}")
    return line


# -----------------------------------------------------------------------------
# A run's checkpoint folder: its periodic files, the newest good one

def periodic_checkpoints(folder):
    """checkpoint_epoch_N.pt files, oldest first."""
    found = [(int(m.group(1)), m.group(0)) for m in
             (re.fullmatch(r"checkpoint_epoch_(\d+)\.pt", f) for f in os.listdir(folder)) if m]
    return [os.path.join(folder, name) for _, name in sorted(found)]


def position_of(ckpt):
    """(epoch, step) where a checkpoint continues; older files only know their epoch."""
    pos = ckpt.get("position") or {"epoch": ckpt.get("epoch", -1) + 1, "step": 0}
    return pos["epoch"], pos["step"]


def find_latest_checkpoint(folder, refuse=lambda ckpt: None):
    """The checkpoint furthest into training that loads and that `refuse` accepts
    (refuse(ckpt) -> None, or why it cannot be used).

    Returns (path, checkpoint, skipped): (None, None, ...) when there is none; skipped holds
    a one-line reason for each corrupt, truncated or refused file passed over. last.pt wins ties.
    """
    skipped = []
    if not os.path.isdir(folder):
        return None, None, skipped
    names = ["last.pt"] + [os.path.basename(p) for p in reversed(periodic_checkpoints(folder))]
    names += ["best_model.pt"]
    best, best_path = None, None
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            ckpt = load_checkpoint(path)
            why = refuse(ckpt)
            if why:
                raise CheckpointError(f"{path} cannot be resumed: {why}")
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        if best is None or position_of(ckpt) > position_of(best):
            best, best_path = ckpt, path
    return best_path, best, skipped
