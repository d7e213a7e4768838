"""How fast predict.py turns a folder of JPEGs into predictions, against the limits measured
in the same run: decoding alone (the same worker processes), the network alone (the same
batches, already decoded), and a loop calling predict() one file at a time.

    python benchmarks/predict_files.py                          # 2,000 CIFAR-sized, 2,000 12-MP
    python benchmarks/predict_files.py --files 500 --kinds cifar --reduced

The network is the seed ResNet34 with fresh weights (speed does not depend on them; --reduced:
[1, 1, 1, 1] at width 16), on the GPU when there is one. The JPEGs are generated into a
temporary folder: the CIFAR-sized ones each drawn anew, the 12-MP ones 8 distinct photos
linked under 2,000 names (each file is decoded in full every time, as any other would be;
the links save 4 GB of disk). Nothing is kept. Prints a table; --json writes it too.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from decode import photo  # noqa: E402
from machinery.checkpoint_files import save_checkpoint  # noqa: E402
from machinery.predicting import batches, predict, predictions, torch_probabilities  # noqa: E402
from machinery.runtime import default_workers, pick_device  # noqa: E402
from model import ResNet, load_classifier  # noqa: E402
from machinery import own_files  # noqa: E402

TOOL = "benchmarks/predict_files.py"  # what its --json figures say wrote them

KINDS = {"cifar": (32, 32), "12mp": (4000, 3000)}
DISTINCT_LARGE = 8


def write_jpegs(folder, kind, n, seed=0):
    w, h = KINDS[kind]
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    distinct = n if kind == "cifar" else min(n, DISTINCT_LARGE)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"{i:05d}.jpg")
        if i < distinct:
            Image.fromarray(photo(rng, w, h, 3.0) if kind != "cifar" else
                            rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
        else:
            os.link(paths[i % distinct], path)
        paths.append(path)
    return paths


def checkpoint(folder, reduced):
    blocks, width = ((1, 1, 1, 1), 16) if reduced else ((5, 5, 5, 5), 64)
    torch.manual_seed(0)
    net = ResNet(blocks, width, 100)
    path = os.path.join(folder, "model.pt")
    save_checkpoint({"model_state_dict": net.state_dict(), "model_args": net.model_args,
                     "class_names": [f"class_{i}" for i in range(100)],
                     "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32}, path)
    return path


def timed(fn):
    start = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - start)


def measure(clf, paths, batch, workers, single):
    run = torch_probabilities(clf)
    run(torch.zeros(batch, 32, 32, 3, dtype=torch.uint8))  # warm-up: first-call set-up

    def decode_only():
        return sum(len(good) for _, good, _ in batches(paths, 32, batch, workers))
    decoded = [images for images, _, _ in batches(paths, 32, batch, workers)]

    def network_only():
        for images in decoded:
            run(images)
        return sum(len(x) for x in decoded)

    def end_to_end():
        return sum(p.top is not None for p in predictions(clf, paths, 5, batch_size=batch,
                                                          workers=workers))

    def one_at_a_time():
        for p in paths[:single]:
            predict(clf, [p])
        return single
    limits = {"decoding alone": timed(decode_only), "network alone": timed(network_only)}
    return {**limits, "end to end": timed(end_to_end), "predict() one file at a time":
            timed(one_at_a_time)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=2000, help="JPEGs of each kind (default 2000)")
    p.add_argument("--kinds", default="cifar,12mp", help="cifar, 12mp or both (default)")
    p.add_argument("--reduced", action="store_true", help="a reduced network instead of the seed's")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=default_workers(),
                   help=f"decoding processes (default {default_workers()}: one per usable core)")
    p.add_argument("--single", type=int, default=200,
                   help="files timed in the one-at-a-time loop (default 200)")
    p.add_argument("--json", metavar="PATH", help="also write the figures here")
    p.add_argument("--force", action="store_true", help="replace a --json file this did not write")
    args = p.parse_args(argv)
    refused = args.json and own_files.refused_json(args.json, TOOL, args.force)
    if refused:
        p.error(refused)
    device = pick_device("auto")
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    results = {"device": str(device), "network": "reduced" if args.reduced else "seed ResNet34",
               "workers": args.workers, "batch_size": args.batch_size, "kinds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        clf = load_classifier(checkpoint(tmp, args.reduced), device)
        for kind in args.kinds.split(","):
            print(f"writing {args.files:,} {kind} JPEGs ...", file=sys.stderr, flush=True)
            paths = write_jpegs(os.path.join(tmp, kind), kind, args.files)
            rates = measure(clf, paths, args.batch_size, args.workers, min(args.single, args.files))
            slower = min(rates["decoding alone"], rates["network alone"])
            rates["end to end / slower limit"] = rates["end to end"] / slower
            rates["end to end / one at a time"] = rates["end to end"] / rates["predict() one file at a time"]
            results["kinds"][kind] = rates
            print(f"\n{kind} JPEGs ({KINDS[kind][0]}x{KINDS[kind][1]}), {args.files:,} files, "
                  f"{results['network']} on {device}, {args.workers} decoding workers, batch "
                  f"{args.batch_size}")
            for name, v in rates.items():
                print(f"  {name:32s} {v:10.2f}" + ("" if "/" in name else " files/s"))
    if args.json:
        own_files.write_json(args.json, results, TOOL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
