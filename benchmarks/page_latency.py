"""The demo page's latency: one picture through its HTTP API (gradio_client), p50 and p95
over sequential requests, for the checkpoint with and without Grad-CAM and for its ONNX
export, beside the network's own time for that picture.

    python benchmarks/app.py                          # the seed ResNet34, fresh weights
    python benchmarks/app.py --checkpoint best_model.pt --requests 100

Each page runs as `python app.py` in its own process on 127.0.0.1, as a user starts it;
the client waits for each answer before sending the next picture (a 400x300 JPEG).
Prints a table; --json writes it too. Nothing is kept.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
from predict_files import checkpoint as fresh_checkpoint  # noqa: E402
from machinery import own_files  # noqa: E402

TOOL = "benchmarks/page_latency.py"  # what its --json figures say wrote them


def percentiles(seconds):
    ms = sorted(1000 * s for s in seconds)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))]}


def page_latency(command, picture, n, warmup=3):
    import socket
    from gradio_client import Client, handle_file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(command + ["--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 -- not up yet
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{' '.join(command)} did not start") from None
                time.sleep(0.5)
        times = []
        for i in range(warmup + n):
            start = time.perf_counter()
            client.predict(handle_file(picture), api_name="/classify")
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return percentiles(times)
    finally:
        proc.terminate()
        proc.wait(30)


def model_latency(checkpoint, onnx, picture, n):
    import torch
    from machinery.images import load_image
    from machinery.predicting import torch_probabilities
    from model import load_classifier
    import onnxruntime
    clf = load_classifier(checkpoint)
    run = torch_probabilities(clf)
    square = load_image(picture, clf.image_size)
    x = torch.from_numpy(square[None])
    session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    out = {}
    for name, fn in (("pytorch", lambda: run(x)),
                     ("onnx", lambda: session.run(["probabilities"], {"images": square[None]}))):
        fn()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = percentiles(times)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="default: the seed ResNet34 with fresh weights")
    p.add_argument("--requests", type=int, default=50, help="timed requests per page (default 50)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--force", action="store_true", help="replace a --json file this did not write")
    args = p.parse_args(argv)
    refused = args.json and own_files.refused_json(args.json, TOOL, args.force)
    if refused:
        p.error(refused)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or fresh_checkpoint(tmp, reduced=False)
        onnx = os.path.join(tmp, "model.onnx")
        subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), ckpt, "--out", onnx],
                       check=True, capture_output=True)
        picture = os.path.join(tmp, "photo.jpg")
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(picture)
        app = [sys.executable, os.path.join(ROOT, "app.py")]
        rows = {"network alone, PyTorch": model_latency(ckpt, onnx, picture, args.requests)["pytorch"]}
        rows["network alone, onnxruntime"] = model_latency(ckpt, onnx, picture, args.requests)["onnx"]
        for name, command in (("page, PyTorch + Grad-CAM", app + ["--checkpoint", ckpt]),
                              ("page, PyTorch, --no-gradcam", app + ["--checkpoint", ckpt, "--no-gradcam"]),
                              ("page, ONNX", app + ["--onnx", onnx])):
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows[name] = page_latency(command, picture, args.requests)
    print(f"\none 400x300 JPEG, {args.requests} sequential requests, "
          f"{'fresh seed ResNet34' if not args.checkpoint else args.checkpoint}, CPU")
    print(f"{'':32s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, r in rows.items():
        print(f"{name:32s} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f}")
    if args.json:
        own_files.write_json(args.json, rows, TOOL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
