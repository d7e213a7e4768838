"""Enhanced ResNet34 for 32x32 images (CIFAR-100), and loading it back from a checkpoint.

The seed network is `ResNet34(num_classes=100)`: a 3x3 stride-1 stem with no max-pool (a
32x32 image keeps its full resolution through the first stage), BasicBlocks [5, 5, 5, 5]
at widths 64/128/256/512, global average pool, Dropout(0.3), Linear(512 -> classes).
30,032,292 parameters for 100 classes. `ResNet(blocks, width, ...)` is the same network at
any depth and width, so tests and quick runs use a reduced one through the same code.

Inference, as in the reference README:

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
from dataclasses import dataclass
import pickle
import re
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

SEED_BLOCKS = (5, 5, 5, 5)
SEED_WIDTH = 64


# -----------------------------------------------------------------------------
# Network

class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_ch, out_ch, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: stem, four stages of BasicBlocks (stride 2 entering stages 2-4), head.

    blocks: blocks per stage, e.g. (5, 5, 5, 5); width: channels of stage 1, doubled per
    stage (64 -> 64/128/256/512). Input (N, 3, 32, 32) -> logits (N, num_classes).
    """

    def __init__(self, blocks=SEED_BLOCKS, width=SEED_WIDTH, num_classes=100, dropout=0.3):
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1 or width < 1 or num_classes < 1:
            raise ValueError(f"invalid ResNet shape: blocks={blocks} width={width} "
                             f"num_classes={num_classes}")
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # No max-pool here: on 32x32 inputs it would throw away 3/4 of the pixels at once.
        chans = [width * 2**i for i in range(4)]
        in_ch = width
        for i, (n, ch) in enumerate(zip(blocks, chans)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(in_ch, ch, stride)] + [BasicBlock(ch, ch) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            in_ch = ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)  # only before the classifier: in blocks it hurt
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


def ResNet34(num_classes=100, dropout=0.3):
    """The seed network: [5, 5, 5, 5] BasicBlocks at width 64 (30,032,292 parameters)."""
    return ResNet(SEED_BLOCKS, SEED_WIDTH, num_classes, dropout)


def build_model(model_args):
    """ResNet from the constructor arguments stored in a checkpoint (a plain dict)."""
    return ResNet(tuple(model_args["blocks"]), model_args["width"],
                  model_args["num_classes"], model_args.get("dropout", 0.3))


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
    """Read a checkpoint safely: weights_only=True, so a file cannot run code when loaded."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since 1.6
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint, "
                              f"or corrupt or truncated")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any object that is not a tensor or plain Python value
        lines = [ln for ln in str(e).splitlines() if "global" in ln.lower()]
        why = lines[0].strip(" .") if lines else "objects other than tensors and plain values"
        raise CheckpointError(f"refusing to load {path}: {why[:150]} "
                              f"(only tensors and plain values are accepted)") from None
    except Exception as e:  # zip/EOF/runtime errors all mean the same thing to a user
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or truncated file "
                              f"({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint (no 'model_state_dict')")
    return ckpt


def model_args_from_state_dict(state_dict):
    """Infer blocks/width/classes from tensor shapes, for checkpoints that do not store them."""
    try:
        width = state_dict["conv1.weight"].shape[0]
        num_classes = state_dict["fc.weight"].shape[0]
        blocks = [len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")})
                  for i in range(1, 5)]
    except (KeyError, AttributeError, IndexError):
        raise CheckpointError("the checkpoint's weights are not of this project's ResNet") from None
    return {"blocks": blocks, "width": int(width), "num_classes": int(num_classes), "dropout": 0.3}


def check_model_args(found, expected, source="a checkpoint"):
    """Raise naming the first difference, e.g. '(num_classes is 10 there, expected 100)'."""
    for key in ("num_classes", "blocks", "width"):
        if key in expected and list(_as_list(found[key])) != list(_as_list(expected[key])):
            raise CheckpointError(f"{source} of another network ({key} is "
                                  f"{found[key]} there, expected {expected[key]})")


def _as_list(v):
    return v if isinstance(v, (list, tuple)) else [v]


def model_from_checkpoint(ckpt, device="cpu", expected=None):
    """Rebuild the network a checkpoint (a path or a loaded dict) holds, in eval mode.

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
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit the network: "
                              f"{str(e).splitlines()[0][:200]}") from None
    return model.to(device).eval(), ckpt


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
    """One call from a checkpoint file to a ready model (eval mode) with its class names."""
    model, ckpt = model_from_checkpoint(path, device)
    missing = [k for k in ("class_names", "mean", "std") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} has no {missing[0]}: it is weights only; use "
                              f"model_from_checkpoint and normalise the input yourself")
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


def find_latest_checkpoint(folder, required=("model_state_dict",)):
    """The checkpoint furthest into training that loads and has the `required` keys.

    Returns (path, checkpoint, skipped): (None, None, ...) when there is none; skipped holds
    a one-line reason for each corrupt or truncated file passed over. last.pt wins ties.
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
            missing = set(required) - ckpt.keys()
            if missing:
                raise CheckpointError(f"{path} cannot be resumed: no {sorted(missing)[0]}")
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        if best is None or position_of(ckpt) > position_of(best):
            best, best_path = ckpt, path
    return best_path, best, skipped
