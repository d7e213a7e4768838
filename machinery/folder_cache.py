"""Image files decoded once into a memory-mapped cache that every process shares.

A split's cache is two files in a cache folder: `<split>-<size>px-<key>.npy`, the images
as one uint8 (N, size, size, 3) array, and `.json` beside it (labels, class ids, the
training images' mean and std, and the files that could not be read, with why). The .npy
is opened read-only as a memory map (np.load(mmap_mode="r")): every torchrun rank and
every DataLoader worker reads the same pages of the kernel's page cache, so the machine
holds one copy whatever the number of processes, and a data set larger than the memory
is read from the disk as it is needed instead of being refused.

Decoding writes each image straight into the new file, so it needs the disk's room, not
the memory's; files are written under a temporary name and renamed, so a run killed
half-way leaves no cache behind.
"""
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from .cifar import DataError
from .own_files import writer_alive
from .images import load_image

VERSION = 4  # of the cache's contents; a new one reads every folder again (4: memory-mapped)
POOL_FROM = 2000  # files from which decoding runs in worker processes
CHUNK = 64  # files per task given to a worker
SIZES_KEPT = 3  # image sizes whose caches a split keeps side by side (the newest)
BYTES_AT_ONCE = 2**24  # of images per step where a whole cache is read through (statistics, copies)


def _shown(path):
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class Rows:
    """Some rows of an image array, picked by index, without copying them: the images a
    run trains on when --val-split holds others out, over the one memory-mapped cache.
    Indexed by a number it gives an image, by a slice or indices those images (copied,
    as a batch is). Pickled (a worker started by spawn, on macOS and Windows), a memory
    map travels as its file's name and is opened again there."""

    def __init__(self, array, index=None):
        self.array = array
        self.index = np.arange(len(array)) if index is None else np.asarray(index, np.int64)

    def __len__(self):
        return len(self.index)

    @property
    def shape(self):
        return (len(self.index),) + tuple(self.array.shape[1:])

    @property
    def dtype(self):
        return self.array.dtype

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            return self.array[self.index[i]]
        return np.asarray(self.array[self.index[i]])  # a slice or indices: those images, copied

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.array[self.index], dtype)

    def __getstate__(self):
        if isinstance(self.array, np.memmap) and self.array.filename:
            return {"file": self.array.filename, "index": self.index}
        return {"array": np.asarray(self.array[self.index]), "index": np.arange(len(self))}

    def __setstate__(self, state):
        self.index = state["index"]
        self.array = (np.load(state["file"], mmap_mode="r") if "file" in state else state["array"])


def rows(array, index):
    """Rows of an array or of Rows, by index, as Rows over the underlying array."""
    if isinstance(array, Rows):
        return Rows(array.array, array.index[np.asarray(index, np.int64)])
    return Rows(array, index)


# -----------------------------------------------------------------------------
# Decoding, in worker processes for many files

def why(error, path=None):
    """A file's failure to read, in a few words, without its path (the line or row has it):
    the same words in training's warning and predict's table."""
    with contextlib.suppress(OSError, TypeError, ValueError):
        if path is not None and os.path.isfile(path) and os.path.getsize(path) == 0:
            return "an empty file"
    if type(error).__name__ == "UnidentifiedImageError":
        return "not a picture (or in a format Pillow cannot read)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = (str(error).strip().splitlines() or [""])[0]
    text = text.replace(f"'{path}'", "").strip() if isinstance(path, str) else text
    text = text if len(text) <= 100 else text[:100].rsplit(" ", 1)[0] + " ..."  # (whole words)
    return text or type(error).__name__


def decode_one(path, size):
    """(uint8 (size, size, 3), None), or (None, why it could not be read)."""
    try:
        return load_image(path, size), None
    except Exception as e:  # noqa: BLE001 -- PIL raises many kinds for a broken file
        return None, why(e, path)


_work = {}  # a worker's paths, size and progress marks, set once when it starts


def _start_worker(paths, size, marks, parent):
    _work.update(paths=paths, size=size, marks=marks)
    die_with(parent)


def die_with(parent):
    """Linux: this process gets SIGKILL when its parent (process `parent`) dies (kill -9,
    the out-of-memory killer), instead of decoding on for good as an orphan."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a pool's workers end when their queue closes
    if os.getppid() != parent:  # the parent died before the line above: nobody to decode for
        os._exit(1)


def _decode_chunk(start, stop):
    out = []
    for i in range(start, stop):
        _work["marks"][i] = 1  # being read: if the worker dies now, this file is named
        out.append(decode_one(_work["paths"][i], _work["size"]))
        _work["marks"][i] = 2
    return out


def _pooled(paths, size, workers):
    """(start, [(image, why)]) of every chunk, in order, decoded by worker processes."""
    # fork, as the DataLoader's workers: spawn would import the main module again, and
    # from a notebook or stdin there is none to import
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    marks = ctx.RawArray("b", len(paths))
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                                 initargs=(paths, size, marks, os.getpid())) as pool:
            # in order, each chunk's result let go once taken (as_completed would hold every
            # finished future, and so all the decoded images, until the last)
            starts = range(0, len(paths), CHUNK)
            stops = [min(i + CHUNK, len(paths)) for i in starts]
            yield from zip(starts, pool.map(_decode_chunk, starts, stops))
    except BrokenProcessPool:  # a worker killed (out of memory on a huge image, a decoder crash)
        reading = [_shown(paths[i]) for i in range(len(paths)) if marks[i] == 1]
        raise DataError(f"a decoding worker died (killed, or out of memory) while reading "
                        f"{' or '.join(reading[:3]) or 'the images'}; remove or shrink that file, "
                        f"or decode with fewer workers (--num-workers)") from None


def decode_into(out, paths, size, workers, desc="decoding"):
    """Decode paths[i] into out[i] (an array or memory map of N images), in `workers`
    processes when there are many files; returns {i: why} of the files that failed."""
    from tqdm import tqdm
    failed = {}
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False, file=sys.stderr) as bar:
        if workers > 1 and len(paths) >= POOL_FROM:
            chunks = _pooled(paths, size, workers)
        else:
            chunks = ((i, [decode_one(p, size) for p in paths[i:i + CHUNK]])
                      for i in range(0, len(paths), CHUNK))
        for start, results in chunks:
            for k, (image, reason) in enumerate(results):
                if image is None:
                    failed[start + k] = reason
                else:
                    out[start + k] = image
            bar.update(len(results))
    return failed


def decode(files, size, desc="decoding", workers=1):
    """(images uint8 (N, size, size, 3), labels int64 (N,), paths skipped) in memory."""
    paths = [p for p, _ in files]
    out = np.empty((len(paths), size, size, 3), np.uint8)
    failed = decode_into(out, paths, size, workers, desc)
    kept = np.array([i for i in range(len(paths)) if i not in failed], np.int64)
    labels = np.array([files[i][1] for i in kept], np.int64)
    return out[kept], labels, [paths[i] for i in sorted(failed)]


# -----------------------------------------------------------------------------
# The cache files

def stem(split, size, key):
    return f"{split}-{size}px-{key}"


def open_cached(folder, name):
    """(images read-only memory map, meta dict) of a cache, or None where it is missing,
    incomplete or unreadable."""
    remove_dead_leftovers(folder)
    try:
        with open(os.path.join(folder, name + ".json")) as f:
            meta = json.load(f)
        images = np.load(os.path.join(folder, name + ".npy"), mmap_mode="r")
    except (OSError, ValueError):
        return None
    if images.ndim != 4 or len(images) != len(meta.get("labels", ())):
        return None
    try:
        os.utime(os.path.join(folder, name + ".json"))  # used now: prune() keeps the recent
    except OSError:
        pass  # a read-only folder: nothing is pruned there either
    return images, meta


def write_meta(folder, name, meta):
    """The .json beside a cache, atomically (OSError if it cannot be written)."""
    path = os.path.join(folder, name + ".json")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_disk(folder, need):
    """OSError where the folder's disk has not `need` bytes free: writing a memory map past
    a full disk would kill the process (SIGBUS) instead of raising."""
    free = shutil.disk_usage(folder).free
    if need > free:
        raise OSError(28, f"{need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free")


LEFTOVER = re.compile(r"\.(?:tmp|packed)(\d+)$")  # a cache being written, by process id


def remove_dead_leftovers(folder):
    """The temporary files of a process that died writing a cache here (kill -9, a lost
    machine): they are never renamed, and grow to the full cache's size. One is dead when
    its process is gone, or when a process of that id started after it was last written
    (the id used again). A live writer's own files stay."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        found = LEFTOVER.search(name)
        if not found:
            continue
        path, pid = os.path.join(folder, name), int(found.group(1))
        try:
            if writer_alive(pid, path):
                continue
            os.remove(path)
        except OSError:
            pass  # gone already, or a folder this user may not change


def write_cache(folder, name, paths, labels, size, workers, desc, meta):
    """Decode `paths` into the cache `name` in `folder` and return (images memory map,
    meta), meta with "labels" (of the images kept) and "failed" ({index: why}) added.
    OSError where the folder cannot take it (before decoding); the files appear whole or
    not at all."""
    os.makedirs(folder, exist_ok=True)
    remove_dead_leftovers(folder)
    each = size * size * 3
    check_disk(folder, len(paths) * each)
    final = os.path.join(folder, name + ".npy")
    tmp, packed = f"{final}.tmp{os.getpid()}", f"{final}.packed{os.getpid()}"
    try:
        out = dense = np.lib.format.open_memmap(tmp, "w+", np.uint8, (len(paths), size, size, 3))
        failed = decode_into(out, paths, size, workers, desc)
        kept = np.array([i for i in range(len(paths)) if i not in failed], np.int64)
        written = tmp
        if failed:  # the readable images only, copied a block at a time
            dense = np.lib.format.open_memmap(packed, "w+", np.uint8, (len(kept), size, size, 3))
            step = max(1, BYTES_AT_ONCE // each)
            for s in range(0, len(kept), step):
                dense[s:s + step] = out[kept[s:s + step]]
            out, written = dense, packed
        out.flush()
        del out, dense
        with open(written, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(written, final)
        meta = dict(meta, labels=[int(labels[i]) for i in kept],
                    failed={str(i): r for i, r in failed.items()})
        write_meta(folder, name, meta)
    finally:
        for leftover in (tmp, packed):
            if os.path.exists(leftover):
                os.remove(leftover)
    prune(folder, name)
    return np.load(final, mmap_mode="r"), meta


def prune(folder, name):
    """Remove the older caches of the split `name` is one of: other versions of the same
    size, and sizes past the SIZES_KEPT most recently used."""
    split, size, _ = name.rsplit("-", 2)
    caches = {}
    for f in os.listdir(folder):
        base, ext = os.path.splitext(f)
        if ext in (".npy", ".json") and base.count("-") >= 2 and base.rsplit("-", 2)[0] == split:
            caches.setdefault(base, []).append(os.path.join(folder, f))
    same = [c for c in caches if c != name and c.rsplit("-", 2)[1] == size]
    others = sorted((c for c in caches if c.rsplit("-", 2)[1] != size),
                    key=lambda c: max(os.path.getmtime(p) for p in caches[c]), reverse=True)
    for c in same + others[SIZES_KEPT - 1:]:
        for p in caches[c]:
            os.remove(p)
    for f in os.listdir(folder):  # and the older versions' files (.npz before VERSION 4)
        if f.startswith(f"{split}-") and f.endswith(".npz"):
            os.remove(os.path.join(folder, f))


# -----------------------------------------------------------------------------
# Memory and statistics

def available_memory():
    """Bytes of memory free for new allocations (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kb * 1024
    except (OSError, StopIteration, ValueError):
        return None


def check_memory(n, where, size):
    """A one-line DataError where n decoded images will not fit in the free memory: for
    decoding without a cache folder, the one case that holds them all in memory."""
    each = size * size * 3
    need, free = n * each, available_memory()
    if free is not None and need > free:
        raise DataError(f"{where}: {n:,} images need {need / 2**30:.1f} GiB as {size}x{size} "
                        f"arrays ({each / 1000:.0f} KB each) and no cache folder can be written; "
                        f"only {free / 2**30:.1f} GiB of memory is free: give --cache-dir")


def mean_std(images, index=None):
    """Per-channel mean and standard deviation of uint8 images (all, or the rows `index`),
    on the 0-1 scale, read a block at a time (a memory map is never loaded whole)."""
    rows = np.arange(len(images)) if index is None else np.sort(np.asarray(index, np.int64))
    total, squares = np.zeros(3, np.int64), np.zeros(3, np.int64)  # exact sums
    step = max(1, BYTES_AT_ONCE // 8 // max(1, int(np.prod(images.shape[1:]))))  # as int64
    for s in range(0, len(rows), step):
        block = rows[s:s + step]
        chunk = np.asarray(images[block[0]:block[-1] + 1] if block[-1] - block[0] + 1 == len(block)
                           else images[block]).reshape(-1, 3).astype(np.int64)
        total += chunk.sum(0)
        squares += (chunk * chunk).sum(0)
    n = max(1, len(rows) * int(np.prod(images.shape[1:3])))
    mean = total / n / 255
    # at least one grey level: a folder of flat colours would otherwise divide by zero
    std = np.maximum(np.sqrt(np.maximum(squares / n / 255**2 - mean**2, 0)), 1 / 255)
    return [float(v) for v in mean], [float(v) for v in std]
