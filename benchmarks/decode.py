"""How fast image files become the 32x32 (or --size) squares the folder reader caches: one
core, images.load_image with the JPEG decoder's reduced DCT scale (what the reader uses)
and without it (every pixel decoded, then resized), and how much the results differ.

    python benchmarks/decode.py                 # 12 MP and 0.2 MP JPEGs, 32 px
    python benchmarks/decode.py --size 64 --large 10 --noise 3

The JPEGs are generated (photo-like: smooth colour fields, edges and sensor noise) into a
temporary folder; nothing is kept.
"""
import argparse
import contextlib
import os
import sys
import tempfile
import time
from unittest import mock

import numpy as np
from PIL import Image, JpegImagePlugin

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machinery.images import load_image  # noqa: E402


def photo(rng, w, h, noise):
    """A w x h RGB picture with a photo's mix of smooth areas, edges and sensor noise (its
    standard deviation in grey levels: more noise, more bytes per file)."""
    coarse = rng.integers(0, 256, (h // 250 + 2, w // 250 + 2, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    grain = rng.normal(0, noise, (h, w, 1)).astype(np.float32)
    return np.clip(image + grain, 0, 255).astype(np.uint8)


def write_jpegs(folder, n, w, h, seed, noise):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"{w}x{h}-{i}.jpg")
        Image.fromarray(photo(rng, w, h, noise)).save(path, quality=90)
        paths.append(path)
    return paths


def rate(paths, size, reduced):
    """(images/s on this core, the decoded squares)."""
    no_draft = mock.patch.object(JpegImagePlugin.JpegImageFile, "draft", lambda *a, **kw: None)
    with contextlib.nullcontext() if reduced else no_draft:
        start = time.perf_counter()
        out = [load_image(p, size) for p in paths]
        seconds = time.perf_counter() - start
    return len(paths) / seconds, np.stack(out).astype(np.float64)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=32, help="the square's side (default 32)")
    p.add_argument("--large", type=int, default=12, help="12-megapixel JPEGs (default 12)")
    p.add_argument("--small", type=int, default=200, help="512x384 JPEGs (default 200)")
    p.add_argument("--noise", type=float, default=1.5,
                   help="sensor noise in grey levels (default 1.5: about 1.2 MB per 12 MP file; "
                        "3: 1.9 MB). The reduced decode still reads every byte, so the "
                        "speed-up shrinks as files grow")
    args = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core: per-core figures
    print(f"decode to {args.size}x{args.size}, one core, Pillow {Image.__version__}")
    print(f"{'files':>22} | {'full decode':>13} | {'reduced decode':>14} | speed-up | mean |diff|")
    with tempfile.TemporaryDirectory() as tmp:
        for n, (w, h), seed in ((args.large, (4000, 3000), 0), (args.small, (512, 384), 1)):
            if not n:
                continue
            paths = write_jpegs(tmp, n, w, h, seed, args.noise)
            mb = sum(os.path.getsize(q) for q in paths) / n / 2**20
            full, a = rate(paths, args.size, reduced=False)
            fast, b = rate(paths, args.size, reduced=True)
            print(f"{n:>4} x {w}x{h} {mb:4.1f} MB | {full:8.1f} img/s | {fast:9.1f} img/s | "
                  f"{fast / full:7.1f}x | {np.abs(a - b).mean():.2f}/255")
    return 0


if __name__ == "__main__":
    sys.exit(main())
