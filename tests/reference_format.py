"""Checkpoints in the exact format the reference repo's own train.py saves, for the tests.

`best_model.pt` / `checkpoint_epoch_N.pt` there hold a plain dict: `epoch` (the last
completed epoch, 0-based), `model_state_dict` (its BasicBlocks' projection is called
`downsample`, as in torchvision; weights in channels_last when saved from CUDA),
`optimizer_state_dict` (SGD with Nesterov momentum buffers, and the keys OneCycleLR adds to
its param groups), `test_loss`, `test_accuracy`, and the per-epoch lists `train_losses`,
`test_losses`, `train_acc`, `test_acc`, all Python floats. No scheduler, scaler, config,
learning rates, class names or mean/std.
"""
import warnings

import numpy as np
import torch

from model import ResNet


def reference_network(blocks=(1, 1, 1, 1), width=8, num_classes=100, seed=0):
    """A network with the reference's state-dict layout (this repo's ResNet has it too)."""
    torch.manual_seed(seed)
    net = ResNet(blocks, width, num_classes)
    assert any(".downsample." in k for k in net.state_dict())
    return net


def reference_checkpoint(net, epoch, steps_per_epoch=391, epochs=200, seed=0):
    """The dict the reference saves after `epoch`: one real SGD step, so that momentum
    buffers exist, then its OneCycleLR stepped to the end of that epoch."""
    opt = torch.optim.SGD(net.parameters(), lr=0.004, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=epochs * steps_per_epoch, pct_start=0.2,
        anneal_strategy="cos", div_factor=25, final_div_factor=1000)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 32, 32, generator=g)  # (the step in NCHW: width 8 in channels_last
    y = torch.randint(0, net.fc.out_features, (4,), generator=g)  # can crash oneDNN on a CPU)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    net = net.to(memory_format=torch.channels_last)  # as saved from a CUDA run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range((epoch + 1) * steps_per_epoch):
            sched.step()
    rng = np.random.default_rng(seed)
    n = epoch + 1
    test_acc = [float(v) for v in np.sort(rng.uniform(1, 60, n))]  # below the 75% target
    return {
        "epoch": epoch,
        "model_state_dict": net.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "test_loss": float(4 - test_acc[-1] / 20),
        "test_accuracy": test_acc[-1],
        "train_losses": [float(v) for v in rng.uniform(1, 4, n)],
        "test_losses": [float(4 - a / 20) for a in test_acc],
        "train_acc": [float(v) for v in rng.uniform(1, 60, n)],
        "test_acc": test_acc,
    }


def reference_lr_after(step, steps_per_epoch, epochs=200):
    """The learning rate of the reference's schedule after `step` steps, from torch's own
    OneCycleLR (independently of this repo's code)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.004, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=epochs * steps_per_epoch, pct_start=0.2,
        div_factor=25, final_div_factor=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(step):
            sched.step()
    return sched.get_last_lr()[0], opt.param_groups[0]["momentum"]
