"""Your own images as a data set: torchvision's ImageFolder layout, DIR/train/<class>/*
and DIR/test/<class>/*, decoded once into the same uint8 arrays as CIFAR's.

    python train.py --dataset folder --data-dir DIR

Class names are the folder names, sorted as torchvision sorts them. Files ending in png,
jpg, jpeg, webp or bmp (any case) are images, of any size and mode: each is turned by
its EXIF orientation, converted to RGB and its largest centred square resized to 32x32
(images.load_image, as predict() does for a picture). A file that cannot be read is
skipped, with one warning line for all.

Decoding runs once, with a progress bar, into DIR/.imagefolder-cache/: one .npz per split,
keyed by the split's file list, sizes and modification times (a changed folder is read
again), written atomically. The training split's per-channel mean and standard
deviation are computed there too and stored with it.
"""
import hashlib
import multiprocessing
import os
import sys

import numpy as np

from cifar import DataError
from images import load_image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SIZE = 32  # what the recipe's pad/crop and the network are built for
CACHE = ".imagefolder-cache"
VERSION = 2  # of the cache's contents; a new one reads every folder again (2: EXIF turns)
BYTES_PER_IMAGE = SIZE * SIZE * 3
POOL_FROM = 2000  # files from which decoding runs in worker processes


def present(root):
    return os.path.isdir(os.path.join(root, "train"))


def classes(root):
    """The class names: train/'s folders, sorted (torchvision's order)."""
    folder = os.path.join(root, "train")
    if not os.path.isdir(folder):
        raise DataError(f"{os.path.abspath(root)} has no train/ folder; --dataset folder reads "
                        f"DIR/train/<class>/* and DIR/test/<class>/*")
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"cannot read {folder}: {e.strerror}") from None
    if len(names) < 2:
        raise DataError(f"{folder} has {len(names)} class folder{'s' * (len(names) != 1)}; a "
                        f"classifier needs at least two")
    return names


def has_split(root, split):
    return os.path.isdir(os.path.join(root, split))


def list_files(root, split, names):
    """[(path, label)] of a split's image files, in class then file-name order."""
    folder = os.path.join(root, split)
    try:
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"cannot read {folder}: {e.strerror}") from None
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(f"{folder} has class folder{'s' * (len(unknown) > 1)} that train/ lacks: "
                        f"{', '.join(unknown[:5])}")
    files = []
    for label, name in enumerate(names):
        cls = os.path.join(folder, name)
        if not os.path.isdir(cls):
            continue  # a test split may lack a class
        try:
            images = sorted(f for f in os.listdir(cls) if f.lower().endswith(EXTENSIONS))
        except OSError as e:
            raise DataError(f"cannot read {cls}: {e.strerror}") from None
        if not images:
            raise DataError(f"{cls} holds no images ({', '.join(e[1:] for e in EXTENSIONS)})")
        files += [(os.path.join(cls, f), label) for f in images]
    return files


def check(root):
    """Every one-line error a folder can give, before any decoding: the class folders of
    train/ and test/ and their image files."""
    names = classes(root)
    return {split: list_files(root, split, names) for split in ("train", "test")
            if has_split(root, split)}


def cache_key(files):
    """A digest of the file list, sizes and modification times (and the cache's version)."""
    h = hashlib.sha1(f"{VERSION} {SIZE}".encode())
    for path, label in files:
        st = os.stat(path)
        h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def available_memory():
    """Bytes of memory free for new allocations (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kb * 1024
    except (OSError, StopIteration, ValueError):
        return None


def check_memory(n, where):
    need, free = 2 * n * BYTES_PER_IMAGE, available_memory()  # the array and its copy in the loader
    if free is not None and need > free:
        raise DataError(f"{where}: {n:,} images need {need / 2**30:.1f} GiB as {SIZE}x{SIZE} arrays "
                        f"(3 KB each, twice over while loading), more than the "
                        f"{free / 2**30:.1f} GiB free")


def _decode(path):
    """uint8 (SIZE, SIZE, 3) or None for a file that is not a readable image."""
    try:
        return load_image(path, SIZE)
    except Exception:  # noqa: BLE001 -- PIL raises many kinds for a broken file
        return None


def decode(files, desc):
    """(images uint8 (N, SIZE, SIZE, 3), labels int64 (N,), paths skipped), decoding in
    worker processes when there are many files."""
    from tqdm import tqdm
    paths = [p for p, _ in files]
    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    bar = dict(total=len(paths), desc=desc, unit="img", leave=False, file=sys.stderr)
    if workers > 1 and len(paths) >= POOL_FROM:
        # fork, as the DataLoader's workers: spawn would import the main module again, and
        # from a notebook or stdin there is none to import (the pool then hangs)
        methods = multiprocessing.get_all_start_methods()
        with multiprocessing.get_context("fork" if "fork" in methods else "spawn").Pool(workers) as pool:
            out = list(tqdm(pool.imap(_decode, paths, chunksize=64), **bar))
    else:
        out = [_decode(p) for p in tqdm(paths, **bar)]
    kept = [i for i, im in enumerate(out) if im is not None]
    images = np.stack([out[i] for i in kept]) if kept else np.zeros((0, SIZE, SIZE, 3), np.uint8)
    labels = np.array([files[i][1] for i in kept], np.int64)
    return images, labels, [paths[i] for i, im in enumerate(out) if im is None]


def mean_std(images):
    """Per-channel mean and standard deviation of uint8 images, on the 0-1 scale."""
    x = images.reshape(-1, 3)
    total = np.zeros(3)
    squares = np.zeros(3)
    for chunk in np.array_split(x, max(1, len(x) // 2**22)):  # float64 sums, a chunk at a time
        c = chunk.astype(np.float64) / 255
        total += c.sum(0)
        squares += (c * c).sum(0)
    mean = total / len(x)
    return [float(v) for v in mean], [float(v) for v in np.sqrt(squares / len(x) - mean**2)]


def _stderr(line):
    print(line, file=sys.stderr, flush=True)


def stats(root):
    """The training images' (mean, std), from the cache without loading the images."""
    path = _cache_path(root, "train", list_files(root, "train", classes(root)))
    try:
        with np.load(path) as f:  # an .npz loads each array only when it is asked for
            return tuple(float(v) for v in f["mean"]), tuple(float(v) for v in f["std"])
    except (OSError, ValueError, KeyError):
        extra = read_split(root, "train")[2]
        return tuple(extra["mean"]), tuple(extra["std"])


def _cache_path(root, split, files):
    return os.path.join(root, CACHE, f"{split}-{cache_key(files)}.npz")


def read_split(root, split, warn=_stderr):
    """(images uint8 (N, 32, 32, 3), labels int64 (N,), extra) of a split, from the cache
    when it is up to date; extra: {"classes", "mean", "std"} (mean/std: train only)."""
    names = classes(root)
    if not has_split(root, split):
        raise DataError(f"{os.path.abspath(root)} has no {split}/ folder" + (
            "; without one, hold out training images with --val-split N" if split == "test" else ""))
    files = list_files(root, split, names)
    folder = os.path.join(root, CACHE)
    path = _cache_path(root, split, files)
    if os.path.isfile(path):
        try:
            with np.load(path) as f:
                return f["images"], f["labels"], _extra(f)
        except (OSError, ValueError, KeyError):
            pass  # unreadable: decode again below
    check_memory(len(files), os.path.join(root, split))
    images, labels, skipped = decode(files, f"decoding {split}/")
    if skipped:
        warn(f"warning: skipped {len(skipped)} file{'s' * (len(skipped) > 1)} that {'are' if len(skipped) > 1 else 'is'} not "
             f"a readable image: {', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}")
    empty = [names[c] for c in sorted(set(lab for _, lab in files) - set(labels.tolist()))]
    if empty:  # a class whose every file was unreadable
        raise DataError(f"{os.path.join(root, split, empty[0])}: not one of its files is a "
                        f"readable image")
    extra = {"classes": names}
    if split == "train":
        extra["mean"], extra["std"] = mean_std(images)
    _write_cache(folder, split, path, images, labels, extra, warn)
    return images, labels, extra


def _extra(f):
    extra = {"classes": [str(c) for c in f["classes"]]}
    if "mean" in f:
        extra["mean"], extra["std"] = [float(v) for v in f["mean"]], [float(v) for v in f["std"]]
    return extra


def _write_cache(folder, split, path, images, labels, extra, warn):
    """Write the split's cache atomically, replacing its older versions; a folder that
    cannot be written to costs only the next run's decoding (said once)."""
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels, **{k: np.asarray(v) for k, v in extra.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for old in os.listdir(folder):
            if old.startswith(f"{split}-") and old.endswith(".npz") and old != os.path.basename(path):
                os.remove(os.path.join(folder, old))
    except OSError as e:
        warn(f"warning: cannot write the decoded images to {folder} ({e.strerror}); the next run "
             f"decodes them again")
        if os.path.exists(f"{path}.tmp{os.getpid()}"):
            os.remove(f"{path}.tmp{os.getpid()}")
