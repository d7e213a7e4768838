"""torch.hub's entry points, the convention of model repos on GitHub:

    model = torch.hub.load("OWNER/REPO", "resnet34", checkpoint="best_model.pt")
    model = torch.hub.load("path/to/this/checkout", "resnet34", source="local",
                           checkpoint="checkpoints/best_model.pt")
    model = torch.hub.load(..., "resnet34", num_classes=10)   # fresh weights

The network comes back in eval mode, on the CPU. There are no published weights to
download: `checkpoint` is a file of yours (this repo's, the reference's, or a bare state
dict), and without one the network starts from fresh weights.
"""
from model import ResNet34, get_resnet34, model_from_checkpoint

dependencies = ["torch", "numpy", "PIL"]  # what torch.hub checks for before loading


def resnet34(checkpoint=None, num_classes=100, pretrained=False):
    """The enhanced ResNet34 (30,032,292 parameters for 100 classes): with `checkpoint`,
    whatever network that file holds, with its weights; otherwise fresh weights for
    `num_classes` classes."""
    if checkpoint:
        model, _ = model_from_checkpoint(checkpoint)
        return model
    if pretrained:
        get_resnet34(num_classes, pretrained=True)  # raises, saying why
    return ResNet34(num_classes=num_classes).eval()
