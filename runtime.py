"""Where and how the network runs: the device, mixed precision and memory format, the
processes of a torchrun job, and evaluation over a whole loader (summed over processes).
train.py trains with these; its --evaluate uses them on a saved checkpoint.
"""
import contextlib
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from config import UserError
from model import normalize


# -----------------------------------------------------------------------------
# Device

def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name} is not a device name (auto, cuda, cuda:N, mps, cpu)") from None
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(),
                 "cpu": True}
    if not available.get(device.type, False):
        raise UserError(f"--device {name} is not available on this machine")
    return device


def default_workers():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, cores or 1)



# -----------------------------------------------------------------------------
# Processes (torchrun) and precision

@dataclass
class Dist:
    """This process's place in a torchrun job; rank 0 of 1 under plain `python train.py`."""
    rank: int = 0
    world: int = 1

    @property
    def main(self):  # the one process that logs and writes files
        return self.rank == 0

    def all_sum(self, t):
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def all_max(self, t):
        """The element-wise maximum over ranks: what one rank saw, all learn (ranks must
        take the same branch, or the next collective would wait forever)."""
        if self.world > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def share_buffers(self, net):
        """Give every rank rank 0's BatchNorm statistics: each rank's last forward pass
        updated its own, and rank 0's network is the one that is saved and evaluated."""
        if self.world > 1:
            for b in net.buffers():
                torch.distributed.broadcast(b, src=0)


def init_distributed(device_name):
    """Join the torchrun job, if any (NCCL on CUDA, gloo on CPU, one device per process).

    Returns (Dist, device). Without torchrun (WORLD_SIZE unset or 1) nothing is set up.
    """
    device = pick_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"torchrun runs on CUDA (NCCL) or the CPU (gloo), not {device.type}")
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(torch.distributed.get_rank(), world), device


@dataclass
class Runtime:
    """What every step needs besides the model: device, precision, memory format, ranks,
    and the normalisation that turns the loaders' uint8 batches into the network's input."""
    device: torch.device
    amp: bool
    memory_format: torch.memory_format
    mean: torch.Tensor  # per channel, 0-1, on the device (made once: no copy per batch)
    std: torch.Tensor
    dist: Dist = field(default_factory=Dist)

    def autocast(self):
        # a no-op context when amp is off, so CPU and GPU share one code path (and devices
        # whose autocast support varies across torch versions, like MPS, never touch it)
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16)

    def batch(self, x, y):
        """A loader's uint8 (N, H, W, 3) batch -> normalised float (N, 3, H, W) on the
        device, in the run's memory format (channels_last comes for free from NHWC)."""
        x = normalize(x.to(self.device, non_blocking=True), self.mean, self.std)
        return x.contiguous(memory_format=self.memory_format), y.to(self.device, non_blocking=True)


def make_runtime(device, amp, channels_last, mean, std, dist=None):
    """AMP runs on CUDA only; channels_last on CUDA and the CPU, where the benchmark shows
    it faster for this network (about 20% for the training step on a 2-core EPYC)."""
    on_cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = on_cuda
    fast = channels_last and device.type in ("cuda", "cpu")
    fmt = torch.channels_last if fast else torch.contiguous_format
    mean, std = (torch.tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    return Runtime(device, amp and on_cuda, fmt, mean, std, dist or Dist())



# -----------------------------------------------------------------------------
# Evaluation

@torch.no_grad()
def collect_logits(model, loader, rt, tta=False):
    """fp32 logits (N, classes) and labels (N,) for a whole loader, kept on the device.

    tta: average with the logits of the horizontally flipped images.
    """
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        x, y = rt.batch(x, y)
        with rt.autocast():
            out = model(x).float()
            if tta:
                out = (out + model(x.flip(3)).float()) / 2
        logits.append(out)
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def score(logits, labels, dist=None):
    """Plain cross-entropy (no smoothing), top-1 and top-5 accuracy (%), over all ranks."""
    best = logits.topk(min(5, logits.shape[1]), dim=1).indices
    sums = torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                        (best[:, 0] == labels).sum().double(),
                        (best == labels[:, None]).any(1).sum().double(),
                        torch.tensor(len(labels), dtype=torch.float64, device=logits.device)])
    loss, top1, top5, n = (dist or Dist()).all_sum(sums).tolist()  # one wait for the device
    return {"loss": loss / n, "acc": 100 * top1 / n, "top5": 100 * top5 / n, "n": int(n)}


def evaluate(model, loader, rt):
    return score(*collect_logits(model, loader, rt), rt.dist)
