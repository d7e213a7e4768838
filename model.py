"""The enhanced ResNet34 and what its users import: the network, and from a checkpoint to
predictions.

The network itself is machinery/network.py; this file is the import its users write, as
in the reference (`from model import ResNet34`). Inference, as in the reference README
(its checkpoints or this repo's):

    model = ResNet34(num_classes=100)
    model.load_state_dict(torch.load("checkpoints/best_model.pt")["model_state_dict"])

or, rebuilding whatever network a checkpoint holds from the file alone:

    model, ckpt = model_from_checkpoint("checkpoints/best_model.pt")

or, for predictions on your own pictures (paths, PIL images or uint8 arrays, any size):

    clf = load_classifier("checkpoints/best_model.pt")
    predict(clf, ["cat.jpg"], k=3)   # [[("cat", 0.71), ("tiger", 0.08), ("fox", 0.05)]]

Names that were defined here once (checkpoint files, image decoding) are imported below,
so `from model import load_checkpoint` and the like keep working.
"""
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from machinery.checkpoint_files import fill_metadata
from machinery.images import load_image, normalize
from machinery.network import (SEED_BLOCKS, SEED_WIDTH, BasicBlock, ResNet,  # noqa: F401
                               ResNet34, build_model, count_parameters, get_resnet34,
                               model_from_checkpoint)
# Defined elsewhere since the house was split; imported from here by earlier code.
from machinery.checkpoint_files import (CheckpointError, atomic_path, check_model_args,  # noqa: F401
                                        dataset_of, find_latest_checkpoint,
                                        init_from_checkpoint, load_checkpoint, load_weights,
                                        model_args_from_state_dict, network_name,
                                        periodic_checkpoints, position_of, save_checkpoint,
                                        upgrade_state_dict)
from machinery.images import standardize  # noqa: F401


@dataclass
class Classifier:
    """A trained network with what it takes to use it: class names and normalisation."""
    model: nn.Module
    class_names: list
    mean: tuple
    std: tuple
    image_size: int = 32  # what the network was trained at (pictures are resized to it)

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
    return Classifier(model, list(ckpt["class_names"]), tuple(ckpt["mean"]), tuple(ckpt["std"]),
                      int(ckpt["image_size"]))


@torch.no_grad()
def predict(clf, images, k=5):
    """Top-k (class name, probability) for each image (see load_image for what an image is)."""
    batch = np.stack([load_image(im, clf.image_size) for im in images])
    probs = clf.model(normalize(batch, clf.mean, clf.std).to(clf.device)).float().softmax(1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(clf.class_names[i], float(p)) for p, i in zip(ps.tolist(), idx.tolist())]
            for ps, idx in zip(top.values.cpu(), top.indices.cpu())]
