"""Enhanced ResNet34 for 32x32 images (CIFAR-100), and loading it back from a checkpoint.

The seed network is `ResNet34(num_classes=100)`: a 3x3 stride-1 stem with no max-pool (a
32x32 image keeps its full resolution through the first stage), BasicBlocks [5, 5, 5, 5]
at widths 64/128/256/512, global average pool, Dropout(0.3), Linear(512 -> classes).
30,032,292 parameters for 100 classes. `ResNet(blocks, width, ...)` is the same network at
any depth and width, so tests and quick runs use a reduced one through the same code.
The reference repo's names work as its users wrote them (`ResNet34(num_classes, dropout)`,
`get_resnet34`, `BasicBlock(in, out, stride, downsample, dropout)`, `BasicBlock.expansion`)
and its state-dict keys are this network's, so its checkpoints load as they are.

Inference, as in the reference README (its checkpoints or this repo's):

    model = ResNet34(num_classes=100)
    model.load_state_dict(torch.load("checkpoints/best_model.pt")["model_state_dict"])

or, rebuilding whatever network a checkpoint holds from the file alone:

    model, ckpt = model_from_checkpoint("checkpoints/best_model.pt")

or, for predictions on your own pictures (paths, PIL images or uint8 arrays, any size):

    clf = load_classifier("checkpoints/best_model.pt")
    predict(clf, ["cat.jpg"], k=3)   # [[("cat", 0.71), ("tiger", 0.08), ("fox", 0.05)]]
"""
import contextlib
import os
import pickle
import re
import textwrap
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import cifar

SEED_BLOCKS = (5, 5, 5, 5)
SEED_WIDTH = 64


# -----------------------------------------------------------------------------
# Network

class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection: the reference's block, with torchvision's
    names, so the reference's checkpoints load as they are.

    downsample: the projection of the input to the output's shape (1x1 conv + BN), or
    None; when None and the shape changes, that projection is built here. dropout:
    Dropout2d between the two convs (the reference's option, off in its recipe: it hurt).
    """
    expansion = 1  # output channels per out_channels (torchvision's convention)

    def __init__(self, in_channels, out_channels, stride=1, downsample=None, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if downsample is None and (stride != 1 or in_channels != out_channels):
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # registered last, as in the reference: parameter order (and so the order of the
        # optimizer's saved state) and the initial weights under a seed are the same
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.dropout(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """CIFAR ResNet: stem, four stages of BasicBlocks (stride 2 entering stages 2-4), head.

    blocks: blocks per stage, e.g. (5, 5, 5, 5); width: channels of stage 1, doubled per
    stage (64 -> 64/128/256/512); dropout: before the classifier; block_dropout: Dropout2d
    inside every block. Input (N, 3, 32, 32) -> logits (N, num_classes).
    """

    def __init__(self, blocks=SEED_BLOCKS, width=SEED_WIDTH, num_classes=100, dropout=0.3,
                 block_dropout=0.0):
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1 or width < 1 or num_classes < 1:
            raise ValueError(f"invalid ResNet shape: blocks={blocks} width={width} "
                             f"num_classes={num_classes}")
        # the constructor's arguments, as checkpoints store them (build_model reads them back)
        self.model_args = {"blocks": list(blocks), "width": width, "num_classes": num_classes,
                           "dropout": dropout, "block_dropout": block_dropout}
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # No max-pool here: on 32x32 inputs it would throw away 3/4 of the pixels at once.
        chans = [width * 2**i for i in range(4)]
        in_ch = width
        for i, (n, ch) in enumerate(zip(blocks, chans)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(in_ch, ch, stride, dropout=block_dropout)]
            stage += [BasicBlock(ch, ch, dropout=block_dropout) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            in_ch = ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)  # before the classifier: in blocks it hurt
        self.fc = nn.Linear(in_ch, num_classes)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))  # (N, w, 32, 32)
        x = self.layer1(x)                    # (N, w, 32, 32)
        x = self.layer2(x)                    # (N, 2w, 16, 16)
        x = self.layer3(x)                    # (N, 4w, 8, 8)
        x = self.layer4(x)                    # (N, 8w, 4, 4)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))

    def load_state_dict(self, state_dict, *args, **kwargs):
        """nn.Module's, reading this repo's older checkpoints too (upgrade_state_dict)."""
        return super().load_state_dict(upgrade_state_dict(state_dict), *args, **kwargs)


def ResNet34(num_classes=100, dropout=0.0, fc_dropout=0.3):
    """The seed network: [5, 5, 5, 5] BasicBlocks at width 64 (30,032,292 parameters).

    The reference's signature: `dropout` is the Dropout2d inside each block (0 in its
    recipe); the Dropout(0.3) before the classifier, fixed there, is `fc_dropout` here.
    """
    return ResNet(SEED_BLOCKS, SEED_WIDTH, num_classes, dropout=fc_dropout, block_dropout=dropout)


def get_resnet34(num_classes=100, pretrained=False):
    """The reference's factory: ResNet34(num_classes). There are no pretrained weights to
    download for 32x32 CIFAR images; start from a checkpoint instead."""
    if pretrained:
        raise ValueError("get_resnet34(pretrained=True): there are no published pretrained "
                         "weights for this network; load a checkpoint with model_from_checkpoint, "
                         "or start training from one with train.py --init-from")
    return ResNet34(num_classes)


def build_model(model_args):
    """ResNet from the constructor arguments stored in a checkpoint (a plain dict)."""
    return ResNet(tuple(model_args["blocks"]), model_args["width"], model_args["num_classes"],
                  model_args.get("dropout", 0.3), model_args.get("block_dropout", 0.0))


def network_name(args):
    """'ResNet34 (100 classes)' or 'ResNet(blocks=[1, 1, 1, 1], width=16) (10 classes)'."""
    shape = ("ResNet34" if tuple(args["blocks"]) == SEED_BLOCKS and args["width"] == SEED_WIDTH
             else f"ResNet(blocks={list(args['blocks'])}, width={args['width']})")
    return f"{shape} ({args['num_classes']} classes)"


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


# -----------------------------------------------------------------------------
# Checkpoints

class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, unsafe or of another network."""


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary name beside `path`; move it into place only once writing succeeded,
    so a crash mid-write leaves the previous file, never a truncated one."""
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


def save_checkpoint(ckpt, path):
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint safely: weights_only=True, so a file cannot run code when loaded.
    map_location: where its tensors go (a file saved on a GPU loads on the CPU)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since 1.6
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
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint (no 'model_state_dict')")
    return ckpt


def _refused_global(error):
    """'it asks for posix.system' from torch's several-paragraph weights_only refusal."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    if found:
        return f"it asks for {found.group(1)}"
    line = next((ln for ln in str(error).splitlines() if "global" in ln.lower()), "")
    return textwrap.shorten(line, 120, placeholder=" ...") or "it holds objects of other kinds"


# This repo's checkpoints before the reference's names were adopted called the projection
# branch `shortcut`; `downsample` is the reference's (and torchvision's) name.
_OLD_NAME = re.compile(r"(^|\.)shortcut(\.|$)")


def upgrade_state_dict(state):
    """The state dict with this repo's older key names replaced by today's: the one place
    that knows them. Returned as it is when it has none."""
    if not any(_OLD_NAME.search(k) for k in state):
        return state
    new = OrderedDict((_OLD_NAME.sub(r"\1downsample\2", k), v) for k, v in state.items())
    meta = getattr(state, "_metadata", None)  # per-module versions (BatchNorm reads its own)
    if meta is not None:
        new._metadata = OrderedDict((_OLD_NAME.sub(r"\1downsample\2", k), v) for k, v in meta.items())
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


def model_args_from_state_dict(state_dict):
    """Infer blocks/width/classes from tensor shapes, for checkpoints that do not store them."""
    try:
        width = state_dict["conv1.weight"].shape[0]
        num_classes = state_dict["fc.weight"].shape[0]
        blocks = [len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")})
                  for i in range(1, 5)]
    except (KeyError, AttributeError, IndexError):
        raise CheckpointError("the checkpoint's weights are not of this project's ResNet") from None
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


def model_from_checkpoint(ckpt, device="cpu", expected=None):
    """Rebuild the network a checkpoint (a path or a loaded dict) holds, in eval mode:
    this repo's checkpoints and the reference's, whose shape is read from the weights.

    expected: optional model arguments the caller needs (e.g. {"num_classes": 100}); a
    checkpoint of another network is refused with the difference named.
    Returns (model, checkpoint dict).
    """
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, map_location="cpu")
    state = ckpt["model_state_dict"]
    args = ckpt.get("model_args") or model_args_from_state_dict(state)
    check_model_args(model_args_from_state_dict(state), args, "the checkpoint holds weights")
    if expected:
        check_model_args(args, expected)
    model = build_model(args)
    load_weights(model, state)
    return model.to(device).eval(), ckpt


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
    Returns one line saying what was assumed, or None when nothing was missing."""
    missing = [k for k in ("model_args", "class_names", "mean", "std") if k not in ckpt]
    if not missing:
        return None
    args = ckpt.setdefault("model_args", model_args_from_state_dict(ckpt["model_state_dict"]))
    name = dataset_of(ckpt)
    name = name if name in cifar.DATASETS else None  # an image folder's come with its files
    spec = cifar.DATASETS[name or "cifar100"]
    names = cifar.CLASS_NAMES[name] if name else [f"class_{i}" for i in range(args["num_classes"])]
    ckpt.setdefault("class_names", list(names))
    ckpt.setdefault("mean", list(spec["mean"]))
    ckpt.setdefault("std", list(spec["std"]))
    said = {"model_args": "network arguments", "class_names": "class names", "mean": "mean/std",
            "std": "mean/std"}
    lacks = list(dict.fromkeys(said[k] for k in missing))
    lacks = ", ".join(lacks[:-1]) + " or " + lacks[-1] if len(lacks) > 1 else lacks[0]
    using = (f"{name.upper().replace('CIFAR', 'CIFAR-')}'s class names and statistics" if name
             else "numbered class names and CIFAR-100's statistics")
    return (f"it holds no {lacks} (a checkpoint of the reference repo?): using {using}, "
            f"and {network_name(args)} as its weights' shapes say")


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
# Predictions on any picture

def normalize(images, mean, std):
    """uint8 (N, H, W, 3) RGB images, a numpy array or a tensor on any device -> float
    (N, 3, H, W) normalised exactly as in training, computed where the images are.

    Training, evaluation and inference all go through this one function: loaders hand
    over uint8 (a quarter of the bytes of float32) and the conversion runs on the device
    as one batched op. The result is an NCHW view of NHWC memory, i.e. channels_last.
    """
    x = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images))
    return standardize(x.permute(0, 3, 1, 2).float(), mean, std)


def standardize(x, mean, std):
    """float (N, 3, H, W) pixel values 0..255 -> (x / 255 - mean) / std per channel, as one
    multiply-add. mean/std: sequences, or tensors already on x's device (a host list would
    be copied to the device on every call, and on CUDA that copy waits for the GPU)."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return torch.addcmul(-mean / std, x, 1 / (255 * std))


def load_image(image, size=32):
    """A file path, PIL image or uint8 array (H, W), (H, W, 3) or (H, W, 4), of any size ->
    uint8 (size, size, 3) RGB: the largest centred square, resized with PIL's bicubic filter
    (antialiased when shrinking), so the picture is not squashed."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"expected a uint8 (H, W[, C]) array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        with Image.open(image) as f:  # OSError for unreadable or non-image files
            image = f.convert("RGB")
    image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(image.resize((size, size), Image.BICUBIC, box=box), dtype=np.uint8)


@dataclass
class Classifier:
    """A trained network with what it takes to use it: class names and normalisation."""
    model: nn.Module
    class_names: list
    mean: tuple
    std: tuple

    @property
    def device(self):
        return next(self.model.parameters()).device


def load_classifier(path, device="cpu"):
    """One call from a checkpoint file to a ready model (eval mode) with its class names.
    A file without names or normalisation (the reference's) gets CIFAR's, with a warning."""
    model, ckpt = model_from_checkpoint(path, device)
    note = fill_metadata(ckpt)
    if note:
        warnings.warn(f"{path}: {note}", stacklevel=2)
    return Classifier(model, list(ckpt["class_names"]), tuple(ckpt["mean"]), tuple(ckpt["std"]))


@torch.no_grad()
def predict(clf, images, k=5):
    """Top-k (class name, probability) for each image (see load_image for what an image is)."""
    batch = np.stack([load_image(im) for im in images])
    probs = clf.model(normalize(batch, clf.mean, clf.std).to(clf.device)).float().softmax(1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(clf.class_names[i], float(p)) for p, i in zip(ps.tolist(), idx.tolist())]
            for ps, idx in zip(top.values.cpu(), top.indices.cpu())]


# -----------------------------------------------------------------------------
# A run's checkpoint folder: periodic files, retention, the newest good one

def periodic_checkpoints(folder):
    """checkpoint_epoch_N.pt files, oldest first."""
    found = [(int(m.group(1)), m.group(0)) for m in
             (re.fullmatch(r"checkpoint_epoch_(\d+)\.pt", f) for f in os.listdir(folder)) if m]
    return [os.path.join(folder, name) for _, name in sorted(found)]


def prune_periodic(folder, keep):
    """Keep the newest `keep` periodic checkpoints (0: keep all); last/best are not touched."""
    if keep > 0:
        for path in periodic_checkpoints(folder)[:-keep]:
            os.remove(path)


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
