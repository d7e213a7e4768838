"""torch.hub's entry points, the convention of model repos on GitHub:

    model = torch.hub.load("OWNER/REPO", "resnet34", checkpoint="best_model.pt")
    model = torch.hub.load("path/to/this/checkout", "resnet34", source="local",
                           checkpoint="checkpoints/best_model.pt")
    model = torch.hub.load(..., "resnet34", num_classes=10)   # fresh weights

The network comes back in eval mode, on the CPU. There are no published weights to
download: `checkpoint` is a file of yours (this repo's, the reference's, or a bare state
dict), and without one the network starts from fresh weights.
"""
import importlib.util
import os
import sys

dependencies = ["torch", "numpy", "PIL"]  # what torch.hub checks for before loading


def _network():
    """This checkout's model.py, imported by its path under a name of its own: the program
    calling torch.hub may have a `model` module of its own (imported already, or to be
    imported after), and neither must stand in for the other."""
    name = "cifar_resnet34_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # (before running it: what it defines names this module)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def resnet34(checkpoint=None, num_classes=100, pretrained=False):
    """The enhanced ResNet34 (30,032,292 parameters for 100 classes): with `checkpoint`,
    whatever network that file holds, with its weights; otherwise fresh weights for
    `num_classes` classes."""
    net = _network()
    if checkpoint:
        model, _ = net.model_from_checkpoint(checkpoint)
        return model
    if pretrained:
        net.get_resnet34(num_classes, pretrained=True)  # raises, saying why
    return net.ResNet34(num_classes=num_classes).eval()
