"""Where and how the network runs: the device, the precision (bf16, fp16, fp32), the memory
format, the step mode (eager, CUDA graphs, torch.compile), the processes of a torchrun job,
and evaluation over a whole loader (summed over processes). train.py trains with these;
its --evaluate uses them on a saved checkpoint.
"""
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.nn.functional as F

from .cifar import DataError
from .config import UserError
from .failures import one_line
from .logs import log
from .images import normalize
from .workers import default_workers  # noqa: F401 -- where the loop's callers have always found it


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





# -----------------------------------------------------------------------------
# Processes (torchrun) and precision

@dataclass
class Dist:
    """This process's place in a torchrun job; rank 0 of 1 under plain `python train.py`."""
    rank: int = 0
    world: int = 1
    patient: object = None  # a gloo group whose barrier waits PATIENT_S (see barrier)

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

    def barrier(self, patient=False):
        """patient: wait up to PATIENT_S, not the process group's timeout (gloo's 30 min,
        NCCL's 10): rank 0 may be decoding a big image folder for the first time."""
        if self.world > 1:
            torch.distributed.barrier(group=self.patient if patient else None)

    def from_main(self, make):
        """make() on rank 0, its result sent to every rank: what one process should work
        out for all, such as the listing of an image folder. A DataError there is raised
        on every rank, with its one line."""
        if self.world == 1:
            return make()
        box = [None]
        if self.main:
            try:
                box[0] = ("made", make())
            except DataError as e:
                box[0] = ("error", str(e))
        torch.distributed.broadcast_object_list(box, src=0, group=self.patient)
        kind, value = box[0]
        if kind == "error":
            raise DataError(value)
        return value

    def share_buffers(self, net):
        """Give every rank rank 0's BatchNorm statistics: each rank's last forward pass
        updated its own, and rank 0's network is the one that is saved and evaluated."""
        if self.world > 1:
            for b in net.buffers():
                torch.distributed.broadcast(b, src=0)


PATIENT_S = 6 * 3600  # the longest first decode a job waits for (a million photos, 8 cores)
# How long a rank waits for its peers (to join, or in a collective) before it ends with an
# error: not the process group's default of 30 minutes, which keeps a rank whose peers died
# sitting in the job. Every wait of a healthy job is far shorter (steps, evaluation);
# rank 0's long work (decoding, the end of the run) is waited for with patient=True.
PEERS_GONE_S = 300
STORE_KEY = "enhanced-resnet34/store"


def fresh_store(world, timeout):
    """The store the process group is made in: a new one that rank 0 serves, for each
    start of the workers. torchrun's agents keep one store for all restarts of an elastic
    job, with the process group's keys in it: a restarted rank that comes before its peer
    reads the killed peer's address there and fails ("Gloo connectFullMesh failed ...
    Connection refused") or waits for ever (pytorch/pytorch#135712). Rank 0 publishes its
    new store's port in the agent's store; a rank that reads the port of a killed rank 0
    finds nobody serving it and reads again."""
    from torch.distributed import TCPStore
    host, rank = os.environ["MASTER_ADDR"], int(os.environ["RANK"])
    agent = TCPStore(host, int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout)
    if rank == 0:
        store = TCPStore(host, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        agent.set(STORE_KEY, str(store.port))
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        port = int(agent.get(STORE_KEY))  # waits until rank 0 (of this round or the last) set it
        if serves(host, port):
            try:
                return TCPStore(host, port, world, is_master=False, timeout=timeout)
            except Exception:  # noqa: BLE001 -- the port was the killed round's, now another's
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 of the torchrun job did not start its store in "
                               f"{timeout.total_seconds():.0f} s")
        time.sleep(0.2)


def serves(host, port):
    """Whether anybody accepts connections at host:port: a plain connect, answered at once
    (TCPStore's own client retries a refused port until its timeout)."""
    try:
        socket.create_connection((host, port), timeout=5).close()
        return True
    except OSError:
        return False


def env_rank():
    """This process's rank as torchrun sets it (0 without torchrun), before any set-up."""
    return int(os.environ.get("RANK", "0"))


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
    backend, timeout = "nccl" if device.type == "cuda" else "gloo", timedelta(seconds=PEERS_GONE_S)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        torch.distributed.init_process_group(backend, store=fresh_store(world, timeout),
                                             rank=int(os.environ["RANK"]), world_size=world,
                                             timeout=timeout)
    else:
        torch.distributed.init_process_group(backend, timeout=timeout)
    patient = torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=PATIENT_S))
    return Dist(torch.distributed.get_rank(), world, patient), device


# -----------------------------------------------------------------------------
# Precision and step mode: the fastest safe choice for the device

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def has_native_bf16(device):
    """bf16 tensor cores: compute capability 8.0 and up (A100, A10, L4, H100, ...). Older
    GPUs (T4, V100) only emulate it, slower than fp16, which torch still calls supported."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def pick_precision(name, device):
    """auto: bf16 autocast where the GPU has bf16 units (fp32's range: no loss scaling, so
    no unscale and no skipped steps), fp16 with a GradScaler on older GPUs (the reference's
    choice on its T4), fp32 on the CPU and other devices."""
    cuda = device.type == "cuda"
    if name == "auto":
        return ("bf16" if has_native_bf16(device) else "fp16") if cuda else "fp32"
    if name == "fp16" and not cuda:
        raise UserError(f"--precision fp16 runs on CUDA only (as its loss scaling does); "
                        f"on {device.type} use fp32" + (" or bf16" if device.type == "cpu" else ""))
    if name == "bf16" and cuda and not has_native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise UserError(f"--precision bf16: the {torch.cuda.get_device_name(device)} has no bf16 "
                        f"units (compute capability {major}.{minor}, bf16 needs 8.0); use fp16")
    if name == "bf16" and device.type not in ("cuda", "cpu"):
        raise UserError(f"--precision bf16 runs on CUDA and the CPU; on {device.type} use fp32")
    return name


def pick_step_mode(name, device, world=1):
    """auto: CUDA graphs on a CUDA GPU (one process), eager elsewhere. Graphs replay the
    network's forward and backward pass with one launch each instead of about a thousand
    launches from Python, which on fast GPUs is most of a step's time; they take seconds
    to capture and need no compiler. Under torchrun the step runs eagerly."""
    if name == "auto":
        return "graphs" if device.type == "cuda" and world == 1 else "eager"
    if name == "graphs" and device.type != "cuda":
        raise UserError(f"--step-mode graphs needs CUDA; on {device.type} use eager or compile")
    if name != "eager" and world > 1:
        raise UserError(f"--step-mode {name} runs in one process; under torchrun the step "
                        f"runs eagerly (--step-mode eager)")
    return name


@dataclass
class Runtime:
    """What every step needs besides the model: device, precision, memory format, step
    mode, ranks, and the normalisation that turns the loaders' uint8 batches into the
    network's input."""
    device: torch.device
    precision: str  # bf16, fp16 (autocast; fp16 with a GradScaler) or fp32
    memory_format: torch.memory_format
    mean: torch.Tensor  # per channel, 0-1, on the device (made once: no copy per batch)
    std: torch.Tensor
    dist: Dist = field(default_factory=Dist)
    step_mode: str = "eager"  # eager, graphs or compile (see TrainingNetwork)

    @property
    def amp(self):
        return self.precision != "fp32"

    def autocast(self):
        # a no-op context in fp32, so every device shares one code path. No cast cache:
        # CUDA graph capture refuses it, and a step casts each weight once anyway.
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision], cache_enabled=False)

    def grad_scaler(self):
        """fp16 needs loss scaling (its range is too small for small gradients); bf16 and
        fp32 get a disabled scaler, whose calls do nothing."""
        return torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def batch(self, x, y):
        """A loader's uint8 (N, H, W, 3) batch -> normalised float (N, 3, H, W) on the
        device, in the run's memory format (channels_last comes for free from NHWC)."""
        x = normalize(x.to(self.device, non_blocking=True), self.mean, self.std)
        return x.contiguous(memory_format=self.memory_format), y.to(self.device, non_blocking=True)

    def example_batch(self, n, size=32):
        """A synthetic network input as the training batches will be: (n, 3, size, size)
        float32 on the device, in the run's memory format. Drawn from its own generator,
        so making it leaves the run's random streams alone."""
        g = torch.Generator(self.device).manual_seed(0)
        x = torch.randn((n, 3, size, size), generator=g, device=self.device)
        return x.contiguous(memory_format=self.memory_format)


def channels_last_crashes(device, width):
    """Whether this torch's oneDNN may corrupt the heap (a segfault, "free(): invalid next
    size") on the CPU in channels_last: reviews on AVX-512 CPUs saw it with --width 8 at
    32 px (batches 3, 5, 12, 16, 17, 48), and under 16 channels at 64 px; widths 16 and 64
    ran. benchmarks/channels_last_probe.py found no crash on an AVX2 CPU (widths 8 to 24,
    batches 1 to 64). Widths 12 and 24 were never run on AVX-512: every width that is not
    a multiple of 16 (its vector of floats) is kept out. The seed network (64) never is."""
    return device.type == "cpu" and width % 16 != 0


CHANNELS_LAST_OFF = ("channels_last off: on the CPU, a --width that is not a multiple of 16 "
                     "can crash oneDNN natively (a segfault) at some batch sizes")


def make_runtime(device, precision, channels_last, mean, std, dist=None, step_mode="eager"):
    """precision and step_mode: names, "auto" included (see pick_precision, pick_step_mode).
    channels_last on CUDA and the CPU, where the benchmark shows it faster for this network
    (about 20% for the CPU's training step; on an H200 4% eager, 1.8x with bf16 graphs)."""
    dist = dist or Dist()
    torch.backends.cudnn.benchmark = device.type == "cuda"
    fast = channels_last and device.type in ("cuda", "cpu")
    fmt = torch.channels_last if fast else torch.contiguous_format
    mean, std = (torch.tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    return Runtime(device, pick_precision(precision, device), fmt, mean, std, dist,
                   pick_step_mode(step_mode, device, dist.world))


# -----------------------------------------------------------------------------
# The network as the training step runs it

class TrainingNetwork(torch.nn.Module):
    """What the training step calls as `model(x)`: the network itself in eager mode; in
    the fast modes a faster version of it, made by prepare() on a synthetic full batch
    before training starts, that runs every batch of that shape (evaluation, and an
    epoch's last smaller batch, run eagerly):

      graphs   torch.cuda.make_graphed_callables records the forward and the backward
               pass as two CUDA graphs; the loss, clipping and the optimizer stay eager.
      compile  torch.compile (on CUDA in mode reduce-overhead: Inductor's fused kernels,
               themselves replayed as CUDA graphs); a minute or two to compile.

    Making it runs a few forward and backward passes (warm-up, compiling, capturing);
    their effect on the BatchNorm statistics and the random state is undone. If it fails
    (no compiler, an unsupported GPU, ...) one warning, and eager from then on: a run
    never stops for the sake of speed.

    Made before the first batch, not on it: a run resumed at an epoch's last, smaller batch
    would otherwise make it for that size and run every full batch eagerly, and a capture
    while the DataLoader's pin-memory thread allocates can break (that thread is not yet
    running).
    """

    def __init__(self, net, mode="eager"):
        super().__init__()
        self.net, self.mode, self.fast, self.shape = net, mode, None, None
        self.ready_in = None  # seconds it took to make the fast version

    def prepare(self, x):
        """Make the fast version for training batches shaped like x (a synthetic batch:
        Runtime.example_batch), under the autocast the steps will run in."""
        if self.mode != "eager" and self.fast is None:
            self.net.train()
            self._make_fast(x)

    def forward(self, x):
        if self.fast is not None and self.training and x.shape == self.shape:
            if self.mode == "compile":  # a new step: the graphs' outputs of the last may go
                torch.compiler.cudagraph_mark_step_begin()
            return self.fast(x)
        return self.net(x)

    def _make_fast(self, x):
        what = {"graphs": "capturing the forward and backward pass as CUDA graphs",
                "compile": "compiling the training step (a minute or two on a GPU)"}[self.mode]
        log.info(f"step mode {self.mode}: {what} ...")
        kept, t0 = BufferSnapshot(self.net), time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
                self.fast = (graph_network if self.mode == "graphs" else compile_network)(self.net, x)
            self.shape, self.ready_in = x.shape, time.perf_counter() - t0
            log.info(f"step mode {self.mode}: ready in {self.ready_in:.1f}s")
        except Exception as e:  # noqa: BLE001 -- any failure here only costs speed
            log.warning(f"warning: --step-mode {self.mode} failed ({one_line(e)}); "
                        f"continuing in eager mode")
            self.mode, self.fast = "eager", None
        finally:
            kept.restore()  # the warm-up passes' BatchNorm updates
            for p in self.net.parameters():
                p.grad = None


def graph_network(net, x):
    """The network's forward and backward pass as CUDA graphs for batches shaped like x.
    make_graphed_callables replaces the forward of the module it is given, so it gets a
    one-layer wrapper: `net` itself stays eager for other shapes and for evaluation."""
    return torch.cuda.make_graphed_callables(torch.nn.Sequential(net), (x.detach().clone(),))


def compile_network(net, x, warmup=3):
    """torch.compile'd network, compiled here rather than inside a training step: the
    backward pass is compiled on the first backward, and reduce-overhead records its CUDA
    graphs on the following calls, so warm-up runs all of them now (where a failure can
    still fall back to eager). Each pass starts as a training step does: a new step for
    the graphs, no gradients (accumulating into the graphs' outputs of the pass before
    raises "accessing tensor output of CUDAGraphs that has been overwritten")."""
    fast = torch.compile(net, mode="reduce-overhead" if x.is_cuda else None)
    for _ in range(warmup):
        for p in net.parameters():
            p.grad = None
        torch.compiler.cudagraph_mark_step_begin()
        fast(x).float().sum().backward()
    return fast


def fresh_gradients(opt):
    """Zeroed gradient buffers of the run's own as every parameter's .grad, for the
    micro-batches' backward passes to add into. Were .grad None, it would become the tensor
    the first backward hands over, and under CUDA graphs (torch.compile's too) that aliases
    the graph's static gradient buffer, which the next replay overwrites instead of adding
    to: the update would use K x the last micro-batch's gradient (pytorch/pytorch#181723)."""
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)


class BufferSnapshot:
    """A network's buffers (BatchNorm running statistics) as of when it was last taken.
    A training forward pass updates them before the step may still fail (out of memory in
    the backward pass, say); copying these back undoes that. One fused copy per dtype
    (the fused kernel takes one dtype per list: the seed network's 132 buffers are 88
    float32 statistics and 44 int64 batch counts)."""

    def __init__(self, model):
        groups = {}
        for b in model.buffers():
            groups.setdefault(b.dtype, []).append(b)
        self.groups = [(live, [b.clone() for b in live]) for live in groups.values()]

    def take(self):
        for live, kept in self.groups:
            torch._foreach_copy_(kept, live)

    def restore(self):
        for live, kept in self.groups:
            torch._foreach_copy_(live, kept)


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
    """Plain cross-entropy (no smoothing), top-1 and top-5 accuracy (%), over all ranks.
    With 5 classes or fewer top-5 is always 100%: it is NaN then, and shown nowhere."""
    best = logits.topk(min(5, logits.shape[1]), dim=1).indices
    sums = torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                        (best[:, 0] == labels).sum().double(),
                        (best == labels[:, None]).any(1).sum().double(),
                        torch.tensor(len(labels), dtype=torch.float64, device=logits.device)])
    loss, top1, top5, n = (dist or Dist()).all_sum(sums).tolist()  # one wait for the device
    top5 = 100 * top5 / n if logits.shape[1] > 5 else float("nan")
    return {"loss": loss / n, "acc": 100 * top1 / n, "top5": top5, "n": int(n)}


def evaluate(model, loader, rt):
    return score(*collect_logits(model, loader, rt), rt.dist)


# -----------------------------------------------------------------------------
# Input: whether the GPU waits for batches

def check_input(run, epoch, waited, seconds):
    """Say once per run when the GPU waits for the data loader's workers (too few CPU
    cores for the augmentation at the GPU's speed), and what to do about it."""
    share = waited / max(seconds, 1e-9)
    if run.rt.device.type != "cuda" or run.cfg.aug_on_device or share < INPUT_BOUND or run.said_input:
        return
    run.said_input = True
    log.warning(f"warning: the GPU waited for training batches {share:.0%} of epoch {epoch}: "
                f"{run.workers} CPU workers cannot augment as fast as it trains; --aug-on-device "
                f"augments whole batches on the GPU instead (same distribution; it is part of "
                f"the recipe, so for a new run, or --resume-force)")


INPUT_BOUND = 0.1  # share of an epoch spent waiting for batches that is worth a warning


def accumulation(cfg, dist):
    """How the log says --accum-steps splits each process's share of a batch."""
    if cfg.accum_steps == 1:
        return ""
    return (f", as {cfg.accum_steps} micro-batches of {cfg.batch_size // dist.world // cfg.accum_steps}: "
            f"BatchNorm sees those")


def check_distributed(cfg, dist, device):
    """One-line errors for settings this job's processes or device cannot run."""
    if cfg.batch_size % (dist.world * cfg.accum_steps):
        each = f" times --accum-steps {cfg.accum_steps}" if cfg.accum_steps > 1 else ""
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and must divide by "
                        f"the {dist.world} processes{each}")
    if cfg.sync_bn and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm does not run on "
                        f"{device.type}")
