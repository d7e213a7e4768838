"""Enhanced ResNet34 for 32x32 images (CIFAR-100): the network, and rebuilding it from a
checkpoint. Users import it through the top-level model.py.

The seed network is `ResNet34(num_classes=100)`: a 3x3 stride-1 stem with no max-pool (a
32x32 image keeps its full resolution through the first stage), BasicBlocks [5, 5, 5, 5]
at widths 64/128/256/512, global average pool, Dropout(0.3), Linear(512 -> classes).
30,032,292 parameters for 100 classes. `ResNet(blocks, width, ...)` is the same network at
any depth and width, so tests and quick runs use a reduced one through the same code.
The reference repo's names work as its users wrote them (`ResNet34(num_classes, dropout)`,
`get_resnet34`, `BasicBlock(in, out, stride, downsample, dropout)`, `BasicBlock.expansion`)
and its state-dict keys are this network's, so its checkpoints load as they are.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint_files import (check_model_args, load_checkpoint, load_weights,
                               model_args_from_state_dict, upgrade_state_dict)

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


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


# -----------------------------------------------------------------------------
# From a checkpoint to the network

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
