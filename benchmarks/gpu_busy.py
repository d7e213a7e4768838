"""Where the GPU's time goes: how much of a stretch of wall time it was busy, and what kind
of kernel ran. Used by benchmarks/throughput.py; plain functions, so CPU tests can check
the parsing and the classification without a GPU.
"""
import shutil
import subprocess
import threading

# CUDA kernel names (cuDNN, cuBLAS, PyTorch's own) and CPU operator names -> a kind of
# work. First match wins, so cuDNN's layout conversions (cudnn::...nchwToNhwcKernel) and
# batch norm (cudnn::bn_...) come before convolution, whose cuDNN kernels are named
# xmma_/implicit_gemm/fprop/dgrad/wgrad, mostly without the word "conv". The classifier's
# matmul (cuBLAS gemm) counts with the convolutions: both are the tensor-core arithmetic.
KERNEL_KINDS = (
    ("memory format conversions and copies",
     ("nchwtonhwc", "nhwctonchw", "memcpy", "memset")),
    ("batch norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "bn_bwd", "bn_fwd")),
    ("convolution and matmul", ("conv", "xmma", "implicit", "fprop", "dgrad", "wgrad",
                                "winograd", "cutlass", "cudnn", "gemm", "cublas", "mkldnn",
                                "addmm", "aten::mm", "linear")),
    ("optimizer and clipping", ("sgd", "multi_tensor_apply", "foreach", "norm")),
    ("element-wise and reductions", ("elementwise", "vectorized", "unrolled", "reduce",
                                     "softmax", "nll_loss", "cross_entropy", "relu", "clamp",
                                     "threshold", "add", "sub", "mul", "div", "sum", "mean",
                                     "pool", "argmax", "eq", "bitwise", "where", "copy", "cat",
                                     "index", "dropout", "bernoulli", "fill", "triton")),
)


def kernel_kind(name):
    """The kind of work a kernel (or CPU operator) name stands for; "other" if none fits."""
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def breakdown(times):
    """{name: seconds} -> {kind: share of the total}, largest first."""
    kinds = {}
    for name, t in times.items():
        kind = kernel_kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + t
    total = sum(kinds.values()) or 1.0
    return {k: t / total for k, t in sorted(kinds.items(), key=lambda kv: -kv[1])}


class GpuBusy:
    """The share of time a GPU had a kernel running, while the `with` block ran: the
    utilization nvidia-smi reports (the same figure as its `GPU-Util` column), sampled
    every 100 ms. `fraction` is None where nvidia-smi is missing or says nothing (on a
    CPU, say). The driver averages each sample over its own period (up to 1 s), so blocks
    shorter than a few seconds read low: the first SKIP samples are dropped."""

    SKIP = 2

    def __init__(self, gpu="0", command=None):
        """gpu: what nvidia-smi -i takes: an index in its own numbering, a UUID or a PCI
        bus id (nvidia_smi_id: torch's index differs where CUDA_VISIBLE_DEVICES is set)."""
        self.command = command or (
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
             "-i", str(gpu), "-lms", "100"] if shutil.which("nvidia-smi") else None)
        self.samples, self.fraction, self._proc, self._reader = [], None, None, None

    def __enter__(self):
        if self.command:
            try:
                self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, text=True)
            except OSError:
                return self
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            value = parse_percent(line)
            if value is not None:
                self.samples.append(value)

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._reader.join(timeout=10)
        kept = self.samples[self.SKIP:] or self.samples
        self.fraction = sum(kept) / len(kept) / 100 if kept else None


def nvidia_smi_id(device):
    """The PCI bus id of a torch CUDA device, as nvidia-smi -i takes it: '00000000:3B:00.0'."""
    import torch
    p = torch.cuda.get_device_properties(device)
    return f"{p.pci_domain_id:08X}:{p.pci_bus_id:02X}:{p.pci_device_id:02X}.0"


def parse_percent(line):
    """'87' or '87 %' -> 87.0; anything else (an error, '[N/A]') -> None."""
    text = line.strip().rstrip("%").strip()
    try:
        return float(text)
    except ValueError:
        return None
