"""Your own images as a data set, in the layouts people have (torchvision's ImageFolder,
Keras, Kaggle), decoded once into the same uint8 arrays as CIFAR's.

    python train.py --dataset folder --data-dir DIR [--image-size 32]

Layouts (the README's table): DIR/train/<class>/... with an evaluation folder beside it
named test/, val/, valid/ or validation/ (any case); train/ + val/ + test/; or a flat
DIR/<class>/... with --val-split. Class names are train/'s folder names, sorted as
torchvision sorts them. A class folder's sub-folders are searched too, and every file
ending in one of EXTENSIONS (any case) is an image, of any size and mode: each is turned
by its EXIF orientation, converted to RGB and its largest centred square resized to
--image-size (images.load_image, as predict() does for a picture). What tools leave
behind (hidden files and folders, __MACOSX, Thumbs.db) is skipped without a word; a file
that cannot be read is skipped with one warning line for all.

A Folder is listed once (names, sizes, modification times) and every split is decoded at
most once per run: into DIR/.imagefolder-cache/, or, where DIR cannot be written (Kaggle's
inputs, shared mounts), into a per-user cache folder; --cache-dir overrides both. One .npz
per split, keyed by its files' paths relative to DIR, sizes and modification times (a
changed folder is read again), written atomically. The training split's per-channel mean
and standard deviation are computed there too and stored with it.
"""
import hashlib
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from .cifar import DataError
from .images import load_image

# torchvision's ImageFolder's extensions, and GIF (its first frame)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
EVAL_FOLDERS = ("test", "val", "valid", "validation")  # any case
LEFT_BEHIND = {"__macosx", "thumbs.db", "desktop.ini"}  # and every name starting with "."
SIZE = 32  # the reference's: what the recipe's numbers are written for
SIZES = range(16, 129, 8)  # --image-size: the network halves the size three times
CACHE = ".imagefolder-cache"
PROJECT = "enhanced-resnet34"  # the per-user cache folder's name
VERSION = 3  # of the cache's contents; a new one reads every folder again (3: JPEG draft)
POOL_FROM = 2000  # files from which decoding runs in worker processes
CHUNK = 64  # files per task given to a worker
FEW_IMAGES = 10  # a class with fewer training images gets a warning


def _stderr(line):
    print(line, file=sys.stderr, flush=True)


def shown(path):
    """A path as it can be printed: a name that is not UTF-8 (Windows zips leave such) with
    its odd bytes as \\x escapes; open() takes the path itself, whatever its bytes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def left_behind(name):
    return name.startswith(".") or name.lower() in LEFT_BEHIND


def _folders(path):
    """The sub-folder names of `path`, sorted, without what tools leave behind."""
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir() and not left_behind(e.name))
    except OSError as e:
        raise DataError(f"cannot read {shown(path)}: {e.strerror}") from None


def find_splits(root):
    """{"train": folder, ["val": folder,] ["test": folder]}: where each split's class
    folders are. "test" is what is evaluated after every epoch (test/, or val/ alone);
    with both, "val" picks the best epoch and "test" is evaluated once at the end. A flat
    tree is its own "train" and has neither."""
    if not os.path.isdir(root):
        raise DataError(f"{shown(os.path.abspath(root))} is not a folder")
    by_case = {name.lower(): name for name in _folders(root)}
    evals = [by_case[n] for n in EVAL_FOLDERS if n in by_case]
    if "train" not in by_case:
        if evals:
            raise DataError(f"{shown(os.path.abspath(root))} has {evals[0]}/ but no train/ folder "
                            f"beside it")
        return {"train": root}
    vals = [n for n in evals if n.lower() != "test"]
    if len(vals) > 1:
        raise DataError(f"{shown(os.path.abspath(root))} has both {vals[0]}/ and {vals[1]}/: keep "
                        f"one as the validation images")
    splits = {"train": os.path.join(root, by_case["train"])}
    if vals and "test" in by_case:
        splits["val"] = os.path.join(root, vals[0])
    if evals:
        splits["test"] = os.path.join(root, by_case["test"] if "test" in by_case else vals[0])
    return splits


def images_under(folder):
    """Every image file under a class folder, its sub-folders included (as torchvision
    finds them), sorted."""
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not left_behind(d))
        found += [os.path.join(top, f) for f in files
                  if not left_behind(f) and f.lower().endswith(EXTENSIONS)]
    return sorted(found)


class Split:
    """One split's listing: (path, label) of each image file, its (size, mtime) and the
    files that vanished or dangle (skipped)."""

    def __init__(self, name, folder, names):
        self.name, self.folder = name, folder
        found = _folders(folder)
        unknown = sorted(set(found) - set(names))
        if unknown and name != "train":
            raise DataError(f"{shown(folder)} has class folder{'s' * (len(unknown) > 1)} that "
                            f"train/ lacks: {', '.join(map(shown, unknown[:5]))}")
        self.files, self.stats, self.missing = [], [], []
        for label, cls in enumerate(names):
            path = os.path.join(folder, cls)
            if not os.path.isdir(path):
                continue  # an evaluation split may lack a class
            images = images_under(path)
            if not images:
                raise DataError(f"{shown(path)} holds no images "
                                f"({', '.join(e[1:] for e in EXTENSIONS)})")
            for f in images:
                try:
                    st = os.stat(f)  # through a symlink; a dangling one raises
                except OSError:
                    self.missing.append(f)
                    continue
                self.files.append((f, label))
                self.stats.append((st.st_size, st.st_mtime_ns))
        if not self.files and name != "train":
            raise DataError(f"{shown(folder)} holds no images: add some (in the class folders "
                            f"of train/) or remove it")

    def key(self, root, size):
        """A digest of the file list (relative to the data folder, so `D`, `./D` and its
        absolute path are one cache), sizes, modification times, image size and version."""
        h = hashlib.sha1(f"{VERSION} {size}".encode())
        for (path, label), (nbytes, mtime) in zip(self.files, self.stats):
            h.update(os.fsencode(os.path.relpath(path, root)) + f"\0{label}\0{nbytes}\0{mtime}\n".encode())
        return h.hexdigest()[:16]


def user_cache(root):
    """The per-user cache folder of a data folder: $XDG_CACHE_HOME (or ~/.cache)/<project>/
    <folder name>-<digest of its real path>."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, PROJECT, _tag(root))


def _tag(root):
    real = os.path.realpath(root)
    return f"{shown(os.path.basename(real)) or 'root'}-{hashlib.sha1(os.fsencode(real)).hexdigest()[:10]}"


class Folder:
    """A data folder, listed once: its splits, classes and cache, shared by every tool of
    a run. read(split) decodes a split at most once (then from the cache)."""

    def __init__(self, root, size=SIZE, cache_dir=None, warn=_stderr):
        if size not in SIZES:
            raise DataError(f"--image-size {size}: a multiple of 8 from {SIZES[0]} to {SIZES[-1]}")
        self.root, self.size, self.warn = root, size, warn
        self.folders = find_splits(root)
        self.flat = self.folders["train"] == root
        self.classes = _folders(self.folders["train"])
        if self.flat and not self.classes:
            raise DataError(f"{shown(os.path.abspath(root))} has no train/ folder, nor class folders: "
                            f"--dataset folder reads DIR/train/<class>/* and DIR/test/<class>/* "
                            f"(or DIR/<class>/* with --val-split)")
        if len(self.classes) < 2:
            raise DataError(f"{shown(self.folders['train'])} has {len(self.classes)} class "
                            f"folder{'s' * (len(self.classes) != 1)}; a classifier needs at least two")
        self.splits = {s: Split(s, f, self.classes) for s, f in self.folders.items()}
        self.caches = ([os.path.join(cache_dir, _tag(root))] if cache_dir else
                       [os.path.join(root, CACHE), user_cache(root)])
        self.decoded, self.said_cache = {}, False

    def has(self, split):
        return split in self.splits

    def counts(self):
        """Training images per class."""
        return np.bincount([label for _, label in self.splits["train"].files],
                           minlength=len(self.classes))

    def summary(self):
        """Lines said at the start of a run: the class counts, and the classes too small."""
        n = self.counts()
        lo, hi = int(n.argmin()), int(n.argmax())
        lines = [f"classes: {len(n)}, {n.sum():,} training images; smallest "
                 f"{shown(self.classes[lo])} ({n[lo]:,}), largest {shown(self.classes[hi])} ({n[hi]:,})"]
        few = [f"{shown(self.classes[c])} ({n[c]})" for c in np.flatnonzero(n < FEW_IMAGES)]
        if few:
            lines.append(f"warning: {len(few)} class{'es' * (len(few) > 1)} with fewer than "
                         f"{FEW_IMAGES} training images, too few to learn well: {', '.join(few[:5])}"
                         f"{', ...' if len(few) > 5 else ''}")
        return lines

    def cache_file(self, split, folder=None):
        key = self.splits[split].key(self.root, self.size)
        return os.path.join(folder or self.caches[0], f"{split}-{key}.npz")

    def cached(self, split):
        """The split's up-to-date cache file, where one exists."""
        return next((p for p in (self.cache_file(split, c) for c in self.caches)
                     if os.path.isfile(p)), None)

    def read(self, split):
        """(images uint8 (N, size, size, 3), labels int64 (N,), extra) of a split; extra:
        {"classes", "mean", "std"} (mean/std: train only)."""
        if split not in self.splits:
            raise DataError(f"{shown(os.path.abspath(self.root))} has no {split}/ folder" + (
                "; without one, hold out training images with --val-split N" if split == "test" else ""))
        if split not in self.decoded:
            self.decoded[split] = self._load(split) or self._decode(split)
        return self.decoded[split]

    def _load(self, split):
        path = self.cached(split)
        if path:
            try:
                with np.load(path) as f:
                    return f["images"], f["labels"], _extra(f)
            except (OSError, ValueError, KeyError):
                pass  # unreadable: decode again
        return None

    def _decode(self, split):
        s, names = self.splits[split], self.classes
        check_memory(len(s.files), shown(s.folder), self.size)
        images, labels, skipped = decode(s.files, self.size, f"decoding {split}/")
        skipped = s.missing + skipped
        if skipped:
            self.warn(f"warning: skipped {len(skipped)} file{'s' * (len(skipped) > 1)} that "
                      f"{'are' if len(skipped) > 1 else 'is'} not a readable image: "
                      f"{', '.join(map(shown, skipped[:3]))}{', ...' if len(skipped) > 3 else ''}")
        empty = [names[c] for c in sorted(set(lab for _, lab in s.files) - set(labels.tolist()))]
        if empty:  # a class whose every file was unreadable
            raise DataError(f"{shown(os.path.join(s.folder, empty[0]))}: not one of its files is "
                            f"a readable image")
        extra = {"classes": names}
        if split == "train":
            extra["mean"], extra["std"] = mean_std(images)
        self._write(split, images, labels, extra)
        return images, labels, extra

    def _write(self, split, images, labels, extra):
        """The split's cache, in the first of the cache folders that can be written; where
        none can, the next run decodes again (said once)."""
        errors = []
        for folder in self.caches:
            try:
                write_cache(folder, split, self.cache_file(split, folder), images, labels, extra)
            except OSError as e:
                errors.append(f"{shown(folder)}: {e.strerror}")
                continue
            if not self.said_cache:
                why = f" ({shown(self.root)} cannot be written)" if errors else ""
                self.warn(f"decoded images cached in {shown(folder)}{why}")
                self.said_cache = True
            return
        self.warn(f"warning: cannot write the decoded images ({'; '.join(errors)}); the next "
                  f"run decodes them again")

    def stats(self):
        """The training images' (mean, std), from the cache without loading the images."""
        path = None if "train" in self.decoded else self.cached("train")
        if path:
            try:
                with np.load(path) as f:  # an .npz loads each array only when it is asked for
                    return tuple(float(v) for v in f["mean"]), tuple(float(v) for v in f["std"])
            except (OSError, ValueError, KeyError):
                pass
        extra = self.read("train")[2]
        return tuple(extra["mean"]), tuple(extra["std"])


def _extra(f):
    extra = {"classes": [str(c) for c in f["classes"]]}
    if "mean" in f:
        extra["mean"], extra["std"] = [float(v) for v in f["mean"]], [float(v) for v in f["std"]]
    return extra


def write_cache(folder, split, path, images, labels, extra):
    """Write a split's cache atomically (OSError if it cannot), replacing its older versions."""
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels,
                     **{k: np.asarray(v) for k, v in extra.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    for old in os.listdir(folder):
        if old.startswith(f"{split}-") and old.endswith(".npz") and old != os.path.basename(path):
            os.remove(os.path.join(folder, old))


# -----------------------------------------------------------------------------
# Decoding, in worker processes for many files

def available_memory():
    """Bytes of memory free for new allocations (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kb * 1024
    except (OSError, StopIteration, ValueError):
        return None


def check_memory(n, where, size=SIZE):
    each = size * size * 3
    need, free = 2 * n * each, available_memory()  # the array and its copy in the loader
    if free is not None and need > free:
        raise DataError(f"{where}: {n:,} images need {need / 2**30:.1f} GiB as {size}x{size} "
                        f"arrays ({each / 1000:.0f} KB each, twice over while loading), more "
                        f"than the {free / 2**30:.1f} GiB free")


def _decode(path, size=SIZE):
    """uint8 (size, size, 3) or None for a file that is not a readable image."""
    try:
        return load_image(path, size)
    except Exception:  # noqa: BLE001 -- PIL raises many kinds for a broken file
        return None


_work = {}  # a worker's paths, size and progress marks, set once when it starts


def _start_worker(paths, size, marks):
    _work.update(paths=paths, size=size, marks=marks)


def _decode_chunk(start, stop):
    out = []
    for i in range(start, stop):
        _work["marks"][i] = 1  # being read: if the worker dies now, this file is named
        out.append(_decode(_work["paths"][i], _work["size"]))
        _work["marks"][i] = 2
    return out


def _decode_in_workers(paths, size, workers, bar):
    # fork, as the DataLoader's workers: spawn would import the main module again, and
    # from a notebook or stdin there is none to import
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    marks = ctx.RawArray("b", len(paths))
    out = [None] * len(paths)
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                                 initargs=(paths, size, marks)) as pool:
            tasks = {pool.submit(_decode_chunk, i, min(i + CHUNK, len(paths))): i
                     for i in range(0, len(paths), CHUNK)}
            for task in as_completed(tasks):
                chunk = task.result()
                out[tasks[task]:tasks[task] + len(chunk)] = chunk
                bar.update(len(chunk))
    except BrokenProcessPool:  # a worker killed (out of memory on a huge image, a decoder crash)
        reading = [shown(paths[i]) for i in range(len(paths)) if marks[i] == 1]
        raise DataError(f"a decoding worker died (killed, or out of memory) while reading "
                        f"{' or '.join(reading[:3]) or 'the images'}; remove or shrink that file, "
                        f"or decode with fewer workers (--num-workers)") from None
    return out


def decode(files, size=SIZE, desc="decoding", workers=None):
    """(images uint8 (N, size, size, 3), labels int64 (N,), paths skipped), decoding in
    worker processes when there are many files."""
    from tqdm import tqdm
    paths = [p for p, _ in files]
    if workers is None:
        workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False, file=sys.stderr) as bar:
        if workers > 1 and len(paths) >= POOL_FROM:
            out = _decode_in_workers(paths, size, workers, bar)
        else:
            out = []
            for p in paths:
                out.append(_decode(p, size))
                bar.update()
    kept = [i for i, im in enumerate(out) if im is not None]
    images = np.stack([out[i] for i in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
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
    # at least one grey level: a folder of flat colours would otherwise divide by zero
    std = np.maximum(np.sqrt(np.maximum(squares / len(x) - mean**2, 0)), 1 / 255)
    return [float(v) for v in mean], [float(v) for v in std]


# -----------------------------------------------------------------------------
# One call each, for the tools that read one split of a folder once

def present(root):
    return os.path.isdir(root)


def classes(root):
    return Folder(root).classes


def read_split(root, split, warn=_stderr, size=SIZE, cache_dir=None):
    return Folder(root, size, cache_dir, warn).read(split)
