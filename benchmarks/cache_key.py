"""What the folder cache's content fingerprints cost: listing a folder of N pictures with
and without them, against decoding the folder into its cache for the first time.

    python benchmarks/cache_key.py                      # 50,000 PNGs of 32 px, as CIFAR's
    python benchmarks/cache_key.py --files 5000 --side 256 --format jpg   # photos

Each file's fingerprint reads its first and last 64 KiB (folder_listing.fingerprint), so
a file replaced with its size and modification time kept is decoded again; every run
pays it while listing, where a decode is paid once. The files are written first, so the
page cache holds them for every timing: this measures the work, not the disk.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machinery import folder_cache, folder_listing  # noqa: E402
from machinery.workers import default_workers  # noqa: E402


def write_folder(root, files, side, fmt, classes=10):
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(os.path.join(root, "train", f"class{c}"))
    for i in range(files):
        picture = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(picture).save(os.path.join(root, "train", f"class{i % classes}", f"{i}.{fmt}"))


def listing(root, fingerprints):
    """Seconds to list the folder as a run does (each file stat'ed, fingerprinted or not)."""
    real = folder_listing.fingerprint
    if not fingerprints:
        folder_listing.fingerprint = lambda path, nbytes: ""
    try:
        t0 = time.perf_counter()
        layout = folder_listing.list_folder(root, warn=lambda line: None)
        return time.perf_counter() - t0, layout
    finally:
        folder_listing.fingerprint = real


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=50_000)
    p.add_argument("--side", type=int, default=32, help="pixels per side of each picture")
    p.add_argument("--format", default="png", choices=("png", "jpg"))
    p.add_argument("--size", type=int, default=32, help="the size decoded to (--image-size)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        write_folder(root, args.files, args.side, args.format)
        print(f"{args.files:,} {args.format.upper()} files of {args.side} px written in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        listing(root, True)  # once, so both timings below find the same warm page cache
        plain, _ = listing(root, False)
        printed, layout = listing(root, True)
        paths = [p for p, _ in layout.splits["train"].files]
        out = np.empty((len(paths), args.size, args.size, 3), np.uint8)
        workers = default_workers()
        t0 = time.perf_counter()
        folder_cache.decode_into(out, paths, args.size, workers)
        decode = time.perf_counter() - t0
    extra = printed - plain
    print(f"| files | listing, no fingerprints | listing with them | the fingerprints | "
          f"first decode ({workers} workers) | fingerprints / decode |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.files:,} {args.format} {args.side} px | {plain:.2f} s | {printed:.2f} s | "
          f"{extra:.2f} s | {decode:.2f} s | {100 * extra / decode:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
