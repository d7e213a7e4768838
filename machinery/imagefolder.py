"""Your own images as a data set, in the layouts people have (torchvision's ImageFolder,
Keras, Kaggle's folder + table, Tiny ImageNet), decoded once into the same uint8 arrays as
CIFAR's.

    python train.py --dataset folder --data-dir DIR [--image-size 32] [--labels FILE]

Which files are which split's images, under which label, is folder_listing.py's (and
label_tables.py's, for labels in a table); how they are decoded and kept, once for every
process, folder_cache.py's. This file ties them together: a Folder is listed once, each
split decoded at most once per run (then opened from its cache): into DIR/.imagefolder-
cache/, or, where DIR cannot be written (Kaggle's inputs, shared mounts), a per-user
cache folder; --cache-dir overrides both. A cache is keyed by its files' paths relative
to DIR, labels, sizes and modification times (a changed folder is read again); the files
that could not be read are recorded with it and tried again by the next run.
"""
import hashlib
import os
import sys

import numpy as np

from . import folder_cache
from .cifar import DataError
from .folder_cache import Rows, check_memory, decode, decode_one, mean_std  # noqa: F401 -- (imagefolder.decode & co.)
from .folder_listing import (EVAL_FOLDERS, EXTENSIONS, LEFT_BEHIND, folders_in,  # noqa: F401
                             images_of_tree, list_folder, shown, walk_images)
from .workers import chosen_workers

SIZE = 32  # the reference's: what the recipe's numbers are written for
SIZES = range(16, 129, 8)  # --image-size: the network halves the size three times
CACHE = ".imagefolder-cache"
PROJECT = "enhanced-resnet34"  # the per-user cache folder's name
FEW_IMAGES = 10  # a class with fewer training images gets a warning


def _stderr(line):
    print(line, file=sys.stderr, flush=True)


def images_under(folder):
    """Every image file under a folder, its sub-folders included (as torchvision finds
    them; each real directory once, whatever links loop; a link from one class folder
    into another not followed, as --dataset folder lists them), sorted."""
    return images_of_tree(folder)


def user_cache(root):
    """The per-user cache folder of a data folder: $XDG_CACHE_HOME (or ~/.cache)/<project>/
    <folder name>-<digest of its real path>."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, PROJECT, _tag(root))


def _tag(root):
    real = os.path.realpath(root)
    return f"{shown(os.path.basename(real)) or 'root'}-{hashlib.sha1(os.fsencode(real)).hexdigest()[:10]}"


def split_key(split, root, size):
    """A digest of a split's file list (relative to the data folder, so `D`, `./D` and its
    absolute path are one cache), labels, sizes, modification times, fingerprints of
    their contents, the image size and the cache's version."""
    h = hashlib.sha1(f"{folder_cache.VERSION} {size}".encode())
    for (path, label), (nbytes, mtime, content) in zip(split.files, split.stats):
        h.update(os.fsencode(os.path.relpath(path, root)) +
                 f"\0{label}\0{nbytes}\0{mtime}\0{content}\n".encode())
    return h.hexdigest()[:16]


class Folder:
    """A data folder, listed once: its splits, classes and cache, shared by every tool of
    a run. read(split) decodes a split at most once (then opens its cache).

    classes: the names shown (words.txt's, where there is one); ids: the folder names or
    the table's labels. layout: a listing made already (by rank 0, for the other ranks)."""

    def __init__(self, root, size=SIZE, cache_dir=None, warn=_stderr, workers=None,
                 labels=None, label_column=None, layout=None, skip=()):
        if size not in SIZES:
            raise DataError(f"--image-size {size}: a multiple of 8 from {SIZES[0]} to {SIZES[-1]}")
        self.root, self.size, self.warn = root, size, warn
        self.workers = chosen_workers(workers)
        self.layout = layout or list_folder(root, labels or None, label_column or None, warn,
                                            (cache_dir, *skip))
        self.splits, self.flat = self.layout.splits, self.layout.flat
        self.folders = {name: s.folder for name, s in self.splits.items()}
        self.classes, self.ids = self.layout.names, self.layout.ids
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
        by = self.splits["train"].labelled_by
        sizes = (f"{n[lo]:,} each" if n[lo] == n[hi] else  # (tied: no class is the smallest)
                 f"smallest {shown(self.classes[lo])} ({n[lo]:,}), largest "
                 f"{shown(self.classes[hi])} ({n[hi]:,})")
        lines = [f"classes: {len(n)}, {n.sum():,} training images"
                 f"{'' if by == 'class folders' else f' (labels from {by})'}; {sizes}"]
        few = [f"{shown(self.classes[c])} ({n[c]})" for c in np.flatnonzero(n < FEW_IMAGES)]
        if few:
            lines.append(f"warning: {len(few)} class{'es' * (len(few) > 1)} with fewer than "
                         f"{FEW_IMAGES} training images, too few to learn well: {', '.join(few[:5])}"
                         f"{', ...' if len(few) > 5 else ''}")
        return lines

    def cache_name(self, split):
        return folder_cache.stem(split, self.size, split_key(self.splits[split], self.root, self.size))

    def read(self, split):
        """(images uint8 (N, size, size, 3), a read-only memory map of the cache; labels
        int64 (N,); extra {"classes", "ids", "mean", "std"}) of a split."""
        if split not in self.splits:
            raise DataError(f"{shown(os.path.abspath(self.root))} has no {split}/ folder" + (
                "; without one, hold out training images with --val-split N" if split == "test" else ""))
        if split not in self.decoded:
            images, meta, folder = self._open(split) or self._decode(split)
            self._check(split, meta)
            self.decoded[split] = images, np.asarray(meta["labels"], np.int64), meta, folder
        images, labels, meta, _ = self.decoded[split]
        extra = {"classes": list(self.classes), "ids": list(self.ids)}
        if "all" in meta.get("stats", {}):
            extra["mean"], extra["std"] = meta["stats"]["all"]
        return images, labels, extra

    def _open(self, split):
        """The split's up-to-date cache, where one exists and no file it could not read
        reads now."""
        name = self.cache_name(split)
        for folder in self.caches:
            found = folder_cache.open_cached(folder, name)
            if found is None:
                continue
            files = self.splits[split].files
            now = [i for i in found[1].get("failed", {}) if decode_one(files[int(i)][0], self.size)[0] is not None]
            if now:
                self.warn(f"{len(now)} file{'s' * (len(now) > 1)} of {split}/ that could not be read "
                          f"before read{'s' * (len(now) == 1)} now ({shown(files[int(now[0])][0])}): decoding again")
                return None
            return found[0], found[1], folder
        return None

    def _decode(self, split):
        """Decode a split into the first cache folder that can take it; where none can, into
        memory (the next run decodes again, said once)."""
        s, name, errors = self.splits[split], self.cache_name(split), []
        paths, labels = [p for p, _ in s.files], [label for _, label in s.files]
        meta = {"classes": list(self.ids), "size": self.size}
        for folder in self.caches:
            try:
                images, meta = folder_cache.write_cache(folder, name, paths, labels, self.size,
                                                        self.workers, self._desc(split), meta)
            except OSError as e:
                errors.append(f"{shown(folder)}: {e.strerror or e}")
                continue
            if not self.said_cache:
                why = f" ({shown(self.root)} cannot be written)" if errors else ""
                self.warn(f"decoded images cached in {shown(folder)}{why}")
                self.said_cache = True
            return self._with_stats(split, images, meta, folder), meta, folder
        check_memory(len(paths), shown(s.folder), self.size)
        out = np.empty((len(paths), self.size, self.size, 3), np.uint8)
        failed = folder_cache.decode_into(out, paths, self.size, self.workers, self._desc(split))
        kept = [i for i in range(len(paths)) if i not in failed]
        self.warn(f"warning: cannot write the decoded images ({'; '.join(errors)}); the next "
                  f"run decodes them again")
        meta = dict(meta, labels=[labels[i] for i in kept], failed={str(i): r for i, r in failed.items()})
        return self._with_stats(split, out[kept] if failed else out, meta, None), meta, None

    def _desc(self, split):
        return f"decoding {shown(os.path.basename(os.path.normpath(self.splits[split].folder)))}/"

    def _with_stats(self, split, images, meta, folder):
        if split == "train" and "all" not in meta.get("stats", {}):
            meta["stats"] = {"all": mean_std(images)}
            if folder:
                folder_cache.write_meta(folder, self.cache_name(split), meta)
        return images

    def _check(self, split, meta):
        """Say which files were skipped, and why; a class of which not one file could be
        read is an error."""
        s = self.splits[split]
        skipped = [f"{shown(p)} (missing)" for p in s.missing] + [
            f"{shown(s.files[int(i)][0])} ({why})" for i, why in sorted(meta.get("failed", {}).items(),
                                                                     key=lambda kv: int(kv[0]))]
        if skipped:
            self.warn(f"warning: skipped {len(skipped)} file{'s' * (len(skipped) > 1)} that "
                      f"{'are' if len(skipped) > 1 else 'is'} not a readable image: "
                      f"{', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}")
        empty = sorted(set(label for _, label in s.files) - set(meta["labels"]))
        if empty:
            raise DataError(f"{shown(s.folder)}: not one file of class {shown(self.classes[empty[0]])} "
                            f"is a readable image")

    def stats(self, index=None, tag=None):
        """(mean, std) of the training images, or of those at `index` (the images trained
        on, where --val-split holds others out): computed once, kept beside the cache under
        `tag`."""
        self.read("train")
        images, _, meta, folder = self.decoded["train"]
        tag = "all" if index is None else tag
        known = meta.setdefault("stats", {})
        if tag not in known:
            known[tag] = mean_std(images, index)
            if folder:
                try:
                    folder_cache.write_meta(folder, self.cache_name("train"), meta)
                except OSError:
                    pass  # computed again next time
        mean, std = known[tag]
        return tuple(mean), tuple(std)


# -----------------------------------------------------------------------------
# One call each, for the tools that read one split of a folder once

def present(root):
    return os.path.isdir(root)


def classes(root):
    return Folder(root).classes


def read_split(root, split, warn=_stderr, size=SIZE, cache_dir=None, labels=None, label_column=None):
    return Folder(root, size, cache_dir, warn, labels=labels, label_column=label_column).read(split)
