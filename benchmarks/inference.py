"""Inference speed where the model is used: PyTorch eager against onnxruntime on this CPU,
at batch 1 (one photo at a time, a web service) and batch 64 (a folder of photos).

    python benchmarks/inference.py                       # the seed network, fresh weights
    python benchmarks/inference.py --checkpoint best_model.pt
    python benchmarks/inference.py --quick               # reduced network: a check

Both run the same exported module (export.Pixels: uint8 pixels in, probabilities out,
normalisation included), fp32, on the CPU, with the threads each library picks (printed).
Each figure is the median of --repeats timed repeats after a warm-up; a repeat is enough
calls for about --seconds seconds. The ONNX file is exported and checked by export.py's
own code into a temporary folder.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from machinery import cifar  # noqa: E402
import export  # noqa: E402
from model import ResNet, ResNet34  # noqa: E402


def rate(fn, batch, repeats, seconds):
    """Median images/s of fn() (one call = `batch` images)."""
    fn()  # warm-up: allocations, the first call's set-up
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds / 4 or calls < 1:  # calls per repeat
        fn()
        calls += 1
    per_repeat = max(1, round(calls * 4))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(per_repeat):
            fn()
        times.append(time.perf_counter() - t0)
    return batch * per_repeat / statistics.median(times)


def module_for(args):
    spec = cifar.DATASETS["cifar100"]
    if args.checkpoint:
        module, _, _, _ = export.deployable(args.checkpoint)
        return module, args.checkpoint
    torch.manual_seed(0)
    net = ResNet((1, 1, 1, 1), 16, 100) if args.quick else ResNet34(100)
    name = "reduced ResNet (quick)" if args.quick else "ResNet34, 100 classes (fresh weights)"
    return export.Pixels(net.eval(), spec["mean"], spec["std"]).eval(), name


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="a checkpoint to time (default: the seed network)")
    p.add_argument("--batches", default="1,64", help="batch sizes (default 1,64)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="about this long per repeat")
    p.add_argument("--quick", action="store_true", help="reduced network, short repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.seconds = 1, 0.2
    import onnxruntime
    module, name = module_for(args)
    rng = np.random.default_rng(0)
    print(f"{name}; torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{onnxruntime.__version__} (its default threads); {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        images = rng.integers(0, 256, (export.CHECK_IMAGES, 32, 32, 3), dtype=np.uint8)
        path = export.export(name, "onnx", os.path.join(tmp, "model.onnx"), images, module, {},
                             say=lambda line: None)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        print(f"{'batch':>5} | {'PyTorch eager img/s':>19} | {'onnxruntime img/s':>17} | ratio")
        for batch in map(int, args.batches.split(",")):
            x = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                eager = rate(lambda: module(xt), batch, args.repeats, args.seconds)
            ort = rate(lambda: session.run(["probabilities"], {"images": x}), batch,
                       args.repeats, args.seconds)
            print(f"{batch:>5} | {eager:>19,.1f} | {ort:>17,.1f} | {ort / eager:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
