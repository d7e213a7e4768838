"""Run by torchrun (tests/test_folder_reader.py, benchmarks/folder_memory.py): one rank
prepares an image folder as train.py does, reads every training image of its share
through its DataLoader, and writes what it saw and how much private memory (RssAnon) it
gained to <report dir>/<rank>.json.

    torchrun --nproc_per_node=2 tests/folder_memory_worker.py DATA_DIR REPORT_DIR [IMAGE_SIZE] [LOADER_WORKERS]
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machinery import config, data, runtime  # noqa: E402


def rss_anon_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def main(root, report, size=128, loader_workers=0):
    dist, _ = runtime.init_distributed("cpu")
    cfg = config.resolve_config({"dataset": "folder", "data_dir": root, "image_size": size,
                                 "val_split": len(os.listdir(os.path.join(root, "train")))})  # one per class
    before, start = rss_anon_kb(), time.perf_counter()
    images = data.prepare(cfg, dist, print, {})
    train, _ = data.make_loaders(*images.train, *images.evaluated, images.mean, 128, 128,
                                 loader_workers, rank=dist.rank, world=dist.world, raw=True)
    seen, first = 0, None
    for x, _ in train:
        first = first or time.perf_counter() - start
        seen += len(x)
    data.shutdown_workers(train)
    cache = os.path.join(root, ".imagefolder-cache")
    size_bytes = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache) if f.endswith(".npy"))
    os.makedirs(report, exist_ok=True)
    with open(os.path.join(report, f"{dist.rank}.json"), "w") as f:
        json.dump({"rank": dist.rank, "grew_kb": rss_anon_kb() - before, "seen": seen,
                   "first_batch_s": first, "cache_bytes": size_bytes}, f)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
