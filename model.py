"""The enhanced ResNet34 for 32x32 images (CIFAR-100), and from a checkpoint back to it.

    Input (3x32x32)
      -> Conv1 (3->64, 3x3, stride 1) + BN + ReLU      no max-pool: 32x32 is kept
      -> Layer1: 5x BasicBlock ( 64 ->  64, 32x32)
      -> Layer2: 5x BasicBlock ( 64 -> 128, 16x16, stride 2)
      -> Layer3: 5x BasicBlock (128 -> 256,  8x8,  stride 2)
      -> Layer4: 5x BasicBlock (256 -> 512,  4x4,  stride 2)
      -> AdaptiveAvgPool2d -> Dropout(0.3) -> FC(512 -> 100)
    30,032,292 parameters for 100 classes.

`ResNet(blocks, width, ...)` is the same network at any depth and width, so tests and quick
runs use a reduced one through the same code. The reference's names work as its users wrote
them (`ResNet34(num_classes, dropout)`, `get_resnet34`, `BasicBlock(in, out, stride,
downsample, dropout)`) and its state-dict keys are this network's, so its checkpoints load
as they are:

    model = ResNet34(num_classes=100)
    model.load_state_dict(torch.load("checkpoints/best_model.pt")["model_state_dict"])

or, rebuilding whatever network a checkpoint holds from the file alone:

    model, ckpt = model_from_checkpoint("checkpoints/best_model.pt")

or, for predictions on your own pictures (paths, folders, PIL images or uint8 arrays, any
size), batched through the network while worker processes decode the next ones:

    clf = load_classifier("checkpoints/best_model.pt")
    predict(clf, ["cat.jpg"], k=3)   # [[("cat", 0.71), ("tiger", 0.08), ("fox", 0.05)]]
    for p in predictions(clf, ["photos/"]):   # a generator, for any number of files
        print(p.source, p.top or p.error)
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from machinery.checkpoint_files import (check_model_args, load_checkpoint, load_weights,
                                        model_args_from_state_dict, upgrade_state_dict)
from machinery.predicting import as_classifier
from machinery.runtime import pick_device
# Defined here once, before the house was split: `from model import X` keeps working.
from machinery.checkpoint_files import (CheckpointError, atomic_path, dataset_of,  # noqa: F401
                                        fill_metadata, find_latest_checkpoint,
                                        init_from_checkpoint, network_name,
                                        periodic_checkpoints, position_of, save_checkpoint)
from machinery.images import load_image, normalize, standardize  # noqa: F401
from machinery.predicting import Classifier, Prediction, predict, predictions  # noqa: F401

SEED_BLOCKS = (5, 5, 5, 5)  # BasicBlocks per stage: 20 in all (torchvision's ResNet34: 3, 4, 6, 3)
SEED_WIDTH = 64  # channels of the stem and stage 1, doubled in each later stage


# -----------------------------------------------------------------------------
# The network

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
                 block_dropout=0.0, stem_pool=False):
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1 or width < 1 or num_classes < 1:
            raise ValueError(f"invalid ResNet shape: blocks={blocks} width={width} "
                             f"num_classes={num_classes}")
        # the constructor's arguments, as checkpoints store them (build_model reads them back)
        self.model_args = {"blocks": list(blocks), "width": width, "num_classes": num_classes,
                           "dropout": dropout, "block_dropout": block_dropout}
        if stem_pool:  # (only then: files of the seed's network keep their arguments as they were)
            self.model_args["stem_pool"] = True
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # No max-pool here: on 32x32 inputs it would throw away 3/4 of the pixels at once.
        # stem_pool puts ImageNet's back (3x3, stride 2; no weights) to test that claim.
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if stem_pool else nn.Identity()
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
        x = self.pool(F.relu(self.bn1(self.conv1(x))))  # (N, w, 32, 32); 16x16 with stem_pool
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


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


# -----------------------------------------------------------------------------
# From a checkpoint back to the network

def build_model(model_args):
    """ResNet from the constructor arguments stored in a checkpoint (a plain dict)."""
    return ResNet(tuple(model_args["blocks"]), model_args["width"], model_args["num_classes"],
                  model_args.get("dropout", 0.3), model_args.get("block_dropout", 0.0),
                  bool(model_args.get("stem_pool", False)))


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


def load_classifier(path, device="cpu"):
    """One call from a checkpoint file to a ready model (eval mode) with its class names.
    A file without names or normalisation (the reference's) gets CIFAR's, with a warning.
    device: "cpu", "cuda", ..., or "auto" (cuda > mps > cpu)."""
    model, ckpt = model_from_checkpoint(path, pick_device(device) if device == "auto" else device)
    return as_classifier(model, ckpt, path)

