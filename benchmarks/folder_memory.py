"""One copy of an image folder for every process: the private memory (RssAnon) each
torchrun rank gains while it prepares the folder and reads every training image of its
share, against the size of the memory-mapped cache, and the time to its first batch with
no cache yet (cold: rank 0 decodes) and with one (warm: every rank opens it).

    python benchmarks/folder_memory.py                    # 20,000 generated 64-px PNGs
    python benchmarks/folder_memory.py --images 50000 --size 64 --json out.json
    python benchmarks/folder_memory.py --data-dir DIR     # your own folder (its cache is redone)

Linux only (it reads /proc). Each configuration is a torchrun job of
tests/folder_memory_worker.py on the CPU (gloo); "warm" means the cache file exists, its
pages may well be in the kernel's page cache too (dropping those needs root).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from machinery import own_files  # noqa: E402

TOOL = "benchmarks/folder_memory.py"  # what its --json figures say wrote them
WORKER = os.path.join(ROOT, "tests", "folder_memory_worker.py")
CLASSES = 10


def write_folder(root, n, size, seed=0):
    """n PNGs of size x size in DIR/train/c<k>/, a colour per class with a little texture."""
    from tqdm import tqdm
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, (CLASSES, 3))
    for c in range(CLASSES):
        os.makedirs(os.path.join(root, "train", f"c{c}"), exist_ok=True)
    for i in tqdm(range(n), desc="writing PNGs", unit="img", leave=False, mininterval=5):
        c = i % CLASSES
        image = np.clip(rng.normal(colours[c], 12, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, "train", f"c{c}", f"{i:06d}.png"), compress_level=1)


def run(root, processes, size, report):
    shutil.rmtree(report, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", WORKER, root, report, str(size)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"error: the torchrun job failed:\n{proc.stderr[-3000:]}")
    ranks = [json.load(open(os.path.join(report, f"{r}.json"))) for r in range(processes)]
    return ranks, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--size", type=int, default=64, help="image size, and the cache's")
    p.add_argument("--data-dir", default="", help="a folder of your own (default: generated)")
    p.add_argument("--json", default="", help="also write the figures here")
    p.add_argument("--force", action="store_true", help="replace a --json file this did not write")
    args = p.parse_args(argv)
    refused = args.json and own_files.refused_json(args.json, TOOL, args.force)
    if refused:
        p.error(refused)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or os.path.join(tmp, "folder")
        if not args.data_dir:
            write_folder(root, args.images, args.size)
        cache = os.path.join(root, ".imagefolder-cache")
        rows = []
        for processes in (1, 2):
            for state in ("cold", "warm"):
                if state == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                ranks, wall = run(root, processes, args.size, os.path.join(tmp, "report"))
                for r in ranks:
                    rows.append(dict(processes=processes, state=state, rank=r["rank"],
                                     private_mb=r["grew_kb"] / 1024, cache_mb=r["cache_bytes"] / 2**20,
                                     first_batch_s=r["first_batch_s"], images_read=r["seen"], job_s=wall))
    print(f"\n{args.images:,} images at {args.size} px; {os.cpu_count()} CPUs; private memory = "
          f"RssAnon gained from before the folder is prepared to after the last batch")
    print(f"{'processes':>9} {'cache':>5} {'rank':>4} {'private MB':>10} {'cache MB':>8} "
          f"{'share':>6} {'first batch s':>13} {'read':>7}")
    for r in rows:
        print(f"{r['processes']:>9} {r['state']:>5} {r['rank']:>4} {r['private_mb']:>10.1f} "
              f"{r['cache_mb']:>8.1f} {r['private_mb'] / r['cache_mb']:>6.1%} "
              f"{r['first_batch_s']:>13.2f} {r['images_read']:>7,}")
    if args.json:
        own_files.write_json(args.json, {"images": args.images, "size": args.size, "rows": rows}, TOOL)


if __name__ == "__main__":
    main()
