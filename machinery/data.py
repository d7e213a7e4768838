"""The training data pipeline: augmentation (albumentations in the DataLoader workers, or
batched on the device with --aug-on-device), keyed sampling, loaders and the validation
split; which data set a run reads (read_split & co. dispatch). The files themselves are
read by cifar.py (CIFAR's pickles, and generated stand-ins) and imagefolder.py (your own
images).

Randomness is keyed, not streamed: the augmentation of training image i in epoch e is a
pure function of (seed, e, i), and the shuffle order of (seed, e). Results therefore do
not depend on the worker count or on whether the run was resumed.
"""
import os
import random
import signal
from dataclasses import dataclass

# albumentations asks PyPI for a newer version at import: a network call that delays the
# start on Colab and prints a warning on offline machines. The user can still opt in.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from . import cifar  # noqa: E402
from . import imagefolder  # noqa: E402
# the CIFAR files' names, re-exported so that data.DATASETS & co. keep working for callers
from .cifar import (CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR100_SUPERCLASSES,  # noqa: E402,F401
                   DATASETS, DataError, write_synthetic_dataset)
from .folder_cache import Rows, rows  # noqa: E402
from .images import standardize  # noqa: E402


# -----------------------------------------------------------------------------
# The data sets: CIFAR's files (cifar.py) or the user's own image folders (imagefolder.py)

FOLDER = "folder"
DATASET_NAMES = sorted(DATASETS) + [FOLDER]
CIFAR_SIZE = 32  # CIFAR's images; --image-size is for folders


def open_folder(cfg, layout=None):
    """The image folder of a run, listed once (its one-line errors first), or None for
    CIFAR, whose images are 32x32 and only that. layout: rank 0's listing, for the others."""
    if cfg.dataset != FOLDER:
        if cfg.image_size != CIFAR_SIZE:
            raise DataError(f"--image-size {cfg.image_size}: {cfg.dataset}'s images are "
                            f"{CIFAR_SIZE}x{CIFAR_SIZE}; other sizes are for --dataset folder")
        if cfg.labels:
            raise DataError(f"--labels {cfg.labels}: a table of labels is for --dataset folder")
        return None
    return imagefolder.Folder(cfg.data_dir, cfg.image_size, cfg.cache_dir or None,
                              workers=cfg.num_workers, labels=cfg.labels or None,
                              label_column=cfg.label_column or None, layout=layout,
                              skip=(cfg.out_dir,))  # a run's own folder inside its data: not data


def folder_options(saved):
    """The settings of a saved run (a checkpoint's config) that say how its folder is read."""
    return {"cache_dir": saved.get("cache_dir") or None, "labels": saved.get("labels") or None,
            "label_column": saved.get("label_column") or None}


def dataset_present(root, name):
    return imagefolder.present(root) if name == FOLDER else cifar.dataset_present(root, name)


def ensure_dataset(root, name, download=True, folder=None):
    """The data set's files are there (CIFAR: downloaded if they are not; a folder: its
    splits decoded into the cache, so that torchrun's other ranks only open that)."""
    if name != FOLDER:
        return cifar.ensure_dataset(root, name, download)
    folder = folder or imagefolder.Folder(root)
    for split in folder.splits:
        folder.read(split)


def read_split(root, name, split, size=CIFAR_SIZE, cache_dir=None, labels=None, label_column=None):
    """(images uint8 (N, size, size, 3) RGB, labels int64 (N,)) of the train or test split;
    a folder's images are a read-only memory map of its cache."""
    if name == FOLDER:
        return imagefolder.read_split(root, split, size=size, cache_dir=cache_dir, labels=labels,
                                      label_column=label_column)[:2]
    return cifar.read_split(root, name, split)


def read_split_for(ckpt, root, name, split, size=CIFAR_SIZE, cache_dir=None, labels=None,
                   label_column=None):
    """read_split, its labels numbered as the checkpoint numbers its classes. A folder
    numbers its classes by its own sub-folders (or table), sorted: a class renamed, added
    or missing since training would shift every number, and --evaluate would score cats as
    dogs. Its classes are matched to the checkpoint's by id (or name); one the checkpoint
    does not know is a DataError naming it."""
    if name != FOLDER:
        return read_split(root, name, split, size)
    images, found, extra = imagefolder.read_split(root, split, size=size, cache_dir=cache_dir,
                                                  labels=labels, label_column=label_column)
    theirs, ours = list(extra["ids"]), list(ckpt.get("class_ids") or ckpt["class_names"])
    if theirs == ours:
        return images, found
    index = {c: i for i, c in enumerate(ours)}
    unknown = [c for c in theirs if c not in index]
    if unknown:
        raise DataError(f"{imagefolder.shown(root)}: the class{'es' * (len(unknown) > 1)} "
                        f"{', '.join(map(imagefolder.shown, unknown[:3]))}"
                        f"{', ...' if len(unknown) > 3 else ''} of {split}/ "
                        f"{'are' if len(unknown) > 1 else 'is'} not among the checkpoint's "
                        f"{len(ours)} ({', '.join(map(imagefolder.shown, ours[:3]))}"
                        f"{', ...' if len(ours) > 3 else ''}): it was trained on other classes")
    return images, np.asarray([index[c] for c in theirs], np.int64)[found]


def read_class_names(root, name):
    return imagefolder.classes(root) if name == FOLDER else cifar.read_class_names(root, name)


def normalization(root, name, folder=None):
    """Per-channel (mean, std) on the 0-1 scale: CIFAR's published ones, a folder's from
    its training images (computed once, with the cache)."""
    if name == FOLDER:
        return (folder or imagefolder.Folder(root)).stats()
    return DATASETS[name]["mean"], DATASETS[name]["std"]


def load_dataset(root, name, download=True, folder=None):
    """(x_train, y_train, x_test, y_test, class names). A folder without an evaluation
    folder gives an empty test set (train.py then needs --val-split); a folder's images
    are Rows over the memory-mapped cache, never copied into this process."""
    if name != FOLDER:
        return cifar.load_dataset(root, name, download)
    folder = folder or imagefolder.Folder(root)
    x_train, y_train, extra = folder.read("train")
    if folder.has("test"):
        x_test, y_test, _ = folder.read("test")
    else:
        x_test, y_test = x_train[:0], y_train[:0]
    return Rows(x_train), y_train, Rows(x_test), y_test, extra["classes"]


def check_protocol(cfg, folder):
    """What is evaluated: a one-line error for a layout the flags cannot use."""
    if folder is None:
        return
    if folder.has("val") and cfg.val_split:
        raise DataError(f"{imagefolder.shown(folder.folders['val'])} holds the validation images "
                        f"already: drop --val-split, or that folder")
    if not cfg.val_split and not folder.has("test"):
        where, n = imagefolder.shown(os.path.abspath(cfg.data_dir)), len(folder.classes)
        by_folders = folder.splits["train"].labelled_by == "class folders"
        raise DataError(
            f"{where} has no train/ folder: its {n} class folders are all training images; "
            f"hold some out to evaluate on with --val-split N (a multiple of {n}), or split "
            f"them into train/ and test/" if folder.flat and by_folders else
            f"{where} has no labelled test/ (or val/) folder to evaluate on: hold out training "
            f"images with --val-split N (a multiple of {n}), or add one (class folders, or a "
            f"table of labels)")


@dataclass
class Prepared:
    """A run's images: trained on, evaluated after each epoch, and the test set."""
    train: tuple  # (x uint8 (N, S, S, 3), y int64 (N,))
    evaluated: tuple  # the test set, or the validation images
    test: tuple  # (empty for a folder without one)
    names: list  # the class names shown
    mean: tuple  # of the images trained on
    std: tuple
    val_folder: bool  # the validation images are a val/ folder beside test/
    ids: list = None  # a folder's class ids, where they differ from the names (wnids)


def prepare(cfg, dist, say, smoke_sizes):
    """The run's Prepared images. The evaluated images are the test set (the reference's
    protocol), or validation images (a val/ folder beside test/, or with --val-split
    training images held out), and then the test set is evaluated once at the end. Rank
    0 lists the folder (its listing is sent to the others), generates (--smoke),
    downloads or decodes the files; the others wait, then open the same cache."""
    layout = dist.from_main(lambda: getattr(open_folder(cfg), "layout", None))
    folder = open_folder(cfg, layout) if layout else None  # (rank 0's listing, not again)
    check_protocol(cfg, folder)
    if dist.main:
        if cfg.smoke and not dataset_present(cfg.data_dir, cfg.dataset):
            say(f"smoke run: writing generated {cfg.dataset}-format data to {cfg.data_dir}")
            write_synthetic_dataset(cfg.data_dir, cfg.dataset, seed=cfg.seed, **smoke_sizes)
        for line in folder.summary() if folder else ():
            say(line)
        ensure_dataset(cfg.data_dir, cfg.dataset, cfg.download, folder)
    dist.barrier(patient=True)  # however long rank 0 takes to decode a big folder
    x_train, y_train, x_test, y_test, names = load_dataset(cfg.data_dir, cfg.dataset, False, folder)
    ids = folder.ids if folder and folder.ids != folder.classes else None
    test = (x_test, y_test)
    if folder and folder.has("val"):
        mean, std = normalization(cfg.data_dir, cfg.dataset, folder)
        return Prepared((x_train, y_train), folder.read("val")[:2], test, names, mean, std, True, ids)
    if not cfg.val_split:
        mean, std = normalization(cfg.data_dir, cfg.dataset, folder)
        return Prepared((x_train, y_train), test, test, names, mean, std, False, ids)
    kept, held = split_validation(y_train, cfg.val_split, cfg.seed, len(names))
    # the statistics of the images trained on: the held-out ones are not looked at
    mean, std = (folder.stats(kept, f"val{cfg.val_split}-seed{cfg.seed}") if folder else
                 normalization(cfg.data_dir, cfg.dataset))
    return Prepared((rows(x_train, kept), y_train[kept]), (rows(x_train, held), y_train[held]),
                    test, names, mean, std, False, ids)


# Independent random streams, each keyed by (seed, stream, ...) instead of shared state.
AUG_STREAM, SHUFFLE_STREAM, CUTMIX_STREAM, TORCH_STREAM, VAL_STREAM = range(5)


def stream_seed(*keys):
    """A 63-bit seed derived from integer keys, e.g. stream_seed(seed, CUTMIX_STREAM, epoch)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


def split_validation(labels, n, seed, num_classes):
    """(indices kept for training, indices held out), both sorted: n images held out, the
    same number from every class, chosen by the seed alone (so a resumed run, every rank
    and a rerun hold out the same images)."""
    per, counts = n // num_classes, np.bincount(labels, minlength=num_classes)
    if n % num_classes or n <= 0:
        raise DataError(f"--val-split {n} must be a positive multiple of the {num_classes} "
                        f"classes (the same number of images from each)")
    if per >= counts.min():
        raise DataError(f"--val-split {n} would hold out {per} image{'s' * (per != 1)} per class, but a class "
                        f"has only {counts.min()} training images")
    rng = np.random.default_rng([seed, VAL_STREAM])
    held = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per]
                                   for c in range(num_classes)]))
    return np.setdiff1d(np.arange(len(labels)), held), held


# -----------------------------------------------------------------------------
# Augmentation

def train_transform(mean, size=CIFAR_SIZE):
    """The reference's training augmentation, on uint8 images, ending in uint8. Its sizes
    scale from the reference's 32-px numbers: pad size/8 per side before the crop,
    cut-out holes size/4 to size/2 (affine and noise are relative already).

    The reference ended with Normalize + ToTensorV2 in every worker; here the workers hand
    over uint8 and images.normalize does the same arithmetic on the whole batch on the
    device (a quarter of the bytes to copy, one op instead of 128). strict=True: a
    misspelt argument raises instead of being silently dropped (albumentations only warns).
    """
    fill = tuple(round(255 * m) for m in mean)  # cut-out holes take the data set's mean colour
    padded, hole = size + 2 * (size // 8), (size // 4, size // 2)
    return A.Compose([
        A.PadIfNeeded(min_height=padded, min_width=padded, border_mode=cv2.BORDER_CONSTANT, fill=0),
        A.RandomCrop(height=size, width=size),
        A.HorizontalFlip(p=0.5),
        # tuples are ranges sampled per axis; a scalar would be a fixed value
        A.Affine(translate_percent=(-0.1, 0.1), scale=(0.85, 1.15), rotate=(-15, 15),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5),
        A.OneOf([
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=hole,
                            hole_width_range=hole, fill=fill),
            # std as a fraction of 255, because the image is uint8 (before normalisation)
            A.GaussNoise(std_range=(0.0125, 0.0278)),
        ], p=0.3),
    ], strict=True)


def reference_transform(mean, std):
    """The reference's own pipeline: the same augmentation, then Normalize + ToTensorV2 in
    every worker (float32 out). Not used for training: the benchmark's baseline and the
    yardstick the uint8 hand-over is tested against."""
    from albumentations.pytorch import ToTensorV2
    return A.Compose([*train_transform(mean).transforms, A.Normalize(mean=mean, std=std),
                      ToTensorV2()], strict=True)


class CIFARDataset(torch.utils.data.Dataset):
    """uint8 images + labels; items are uint8 (32, 32, 3) tensors, normalised later on the
    device. With augment=True an item is (epoch, index), and the random state of the
    whole pipeline is keyed by (seed, epoch, first index of the batch) once per batch
    (seeding per image would cost a third of the augmentation time).

    albumentations' own seeding is no use here: every DataLoader worker would copy the same
    generator, and `Compose.set_random_seed` gives each transform an identical generator,
    so e.g. flip and affine would fire together. One shared, keyed generator avoids both.
    """

    def __init__(self, images, labels, transform=None, augment=False, seed=0):
        self.images, self.labels = images, labels
        self.transform, self.augment, self.seed = transform, augment, seed

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        return self.__getitems__([item])[0]

    def __getitems__(self, items):
        """A whole batch at once (the DataLoader calls this when it exists)."""
        if items and isinstance(items[0], tuple):  # (epoch, index) pairs from EpochBatches
            if self.augment:
                epoch, first = items[0]
                rng = np.random.default_rng([self.seed, AUG_STREAM, epoch, first])
                self.transform.set_random_state(rng, random.Random(int(rng.integers(2**62))))
            items = [index for _, index in items]
        out = []
        for i in items:
            image = self.images[i]  # (a read-only memory map's row, for a folder's images)
            if self.transform is not None:
                image = self.transform(image=image)["image"]
            elif not image.flags.writeable:
                image = image.copy()
            out.append((torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[i])))
        return out


class EpochBatches(torch.utils.data.Sampler):
    """Training batches of (epoch, index) pairs, for one rank of `world` (1 without DDP).

    The epoch's order is a permutation keyed by (seed, epoch); step s takes images
    [s * batch_size, (s + 1) * batch_size) of it, the global batch, and this rank takes its
    share of those, so every step sees the same images whatever the number of ranks. The
    epoch travels with each index, so workers, even persistent ones, need no shared state.
    A last batch too small to give every rank an image is dropped (never, without DDP).
    """

    def __init__(self, n, batch_size, seed=0, rank=0, world=1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.steps = n // batch_size + (n % batch_size >= world)  # steps in a whole epoch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start_step=0):
        """start_step: skip the epoch's first steps (resuming mid-epoch)."""
        self.epoch, self.start = epoch, start_step

    def __len__(self):
        return self.steps - self.start

    def __iter__(self):
        perm = np.random.default_rng([self.seed, SHUFFLE_STREAM, self.epoch]).permutation(self.n)
        for step in range(self.start, self.steps):
            batch = perm[step * self.batch_size:(step + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in np.array_split(batch, self.world)[self.rank]]


def _ignore_stop_signals(worker_id):
    # Ctrl-C reaches the whole process group; the main process stops the run cleanly, and
    # a worker dying of the same signal would turn that into a DataLoader error.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loaders(x_train, y_train, x_test, y_test, mean, batch_size, eval_batch_size,
                 num_workers=0, seed=0, pin_memory=False, rank=0, world=1, raw=False):
    """(train loader, test loader) for one rank, both yielding uint8 (N, 32, 32, 3) batches.

    mean: the cut-out fill colour; batch_size is the global batch; the train loader's
    batch_sampler.set_epoch selects the epoch; each rank tests a disjoint share.
    raw: no augmentation in the workers (augment_batch does it on the device).
    """
    train_ds = CIFARDataset(x_train, y_train, None if raw else train_transform(mean, x_train.shape[1]),
                            augment=not raw, seed=seed)
    batches = EpochBatches(len(train_ds), batch_size, seed, rank, world)
    train = torch.utils.data.DataLoader(train_ds, batch_sampler=batches,
                                        **_loader_options(num_workers, pin_memory))
    return train, make_eval_loader(x_test, y_test, eval_batch_size, num_workers, pin_memory,
                                   rank, world)


def make_eval_loader(x, y, batch_size, num_workers=0, pin_memory=False, rank=0, world=1):
    """Every world-th image for this rank: each counted exactly once, no padding;
    batch_size is the global batch."""
    mine = np.arange(rank, len(x), world)
    return make_test_loader(rows(x, mine), y[mine], batch_size // world or 1, num_workers, pin_memory)


def make_test_loader(x, y, batch_size, num_workers=0, pin_memory=False):
    """uint8 images in file order, no augmentation."""
    return torch.utils.data.DataLoader(CIFARDataset(x, y), batch_size=batch_size, shuffle=False,
                                       **_loader_options(num_workers, pin_memory))


def shutdown_workers(*loaders):
    """End the loaders' worker processes now, whatever state they are in.

    Persistent workers otherwise live until the interpreter exits, and after a failure
    that exit can wait forever: multiprocessing stops its children with SIGTERM, which
    the workers ignore (see _ignore_stop_signals), then waits for them. Safe to call on
    loaders without workers, and more than once.
    """
    for loader in loaders:
        it = getattr(loader, "_iterator", None)
        if it is None or not hasattr(it, "_shutdown_workers"):
            continue
        try:
            it._shutdown_workers()  # asks each worker to stop, waits 5 s at most
        except RuntimeError:  # another worker's death, reported again on the way out
            pass
        for w in getattr(it, "_workers", []):
            if w.is_alive():
                w.kill()  # SIGKILL: the one a worker cannot ignore
                w.join(timeout=5)
        loader._iterator = None


def _loader_options(num_workers, pin_memory):
    return dict(num_workers=num_workers, pin_memory=pin_memory,
                persistent_workers=num_workers > 0, worker_init_fn=_ignore_stop_signals)


# -----------------------------------------------------------------------------
# The same augmentation on whole batches, on the training device (--aug-on-device)

def draw_augmentations(n, rng, h=32, w=32):
    """Every per-image random choice of train_transform for n images, on the host.

    rng: a numpy Generator. Returns a dict of (n,) arrays. Drawing these few numbers on
    the host means the device never has to tell the host what was chosen (on a GPU that
    would wait for it), and lets the noise be drawn only for the images that get noise.
    """
    u, pad, hole = rng.uniform, h // 8, (h // 4, h // 2 + 1)
    p = {
        # PadIfNeeded(40) + RandomCrop(32): a crop offset 0..8 in the padded image (at 32 px)
        "crop_y": rng.integers(0, 2 * pad + 1, n), "crop_x": rng.integers(0, 2 * pad + 1, n),
        "flip": rng.random(n) < 0.5,
        "affine": rng.random(n) < 0.5,
        "angle": u(-15, 15, n),
        "scale_x": u(0.85, 1.15, n), "scale_y": u(0.85, 1.15, n),  # each axis on its own,
        "shift_x": u(-0.1, 0.1, n) * w, "shift_y": u(-0.1, 0.1, n) * h,  # as albumentations
        "hole_h": rng.integers(*hole, n), "hole_w": rng.integers(*hole, n),
        "noise_std": u(0.0125, 0.0278, n) * 255,  # of 255: the image is still uint8
    }
    # where the hole goes, given its size; then OneOf(hole, noise) on 30% of the images
    p["hole_y"] = (rng.random(n) * (h - p["hole_h"] + 1)).astype(np.int64)
    p["hole_x"] = (rng.random(n) * (w - p["hole_w"] + 1)).astype(np.int64)
    one_of, hole_not_noise = rng.random(n) < 0.3, rng.random(n) < 0.5
    p["hole"], p["noise"] = one_of & hole_not_noise, one_of & ~hole_not_noise
    return p


def augment_batch(images, seed, mean, std):
    """train_transform's distribution for a whole batch with torch ops, on images' device.

    images: uint8 (N, H, W, 3); seed: keys every random choice; mean, std: per channel,
    as sequences or tensors on the device. Pad+crop is one gather of the uint8 images;
    flip and the random affine are composed into one matrix per image and applied by a
    single grid_sample; cut-out and noise touch only the images that get them. Returns
    (normalised float (N, 3, H, W), the per-image draws as a dict of arrays).
    """
    n, h, w, _ = images.shape
    dev = images.device
    p = draw_augmentations(n, np.random.default_rng(seed), h, w)
    x = _crop(images, p).permute(0, 3, 1, 2).float()
    # pixels the affine pulls from outside the crop take the fill colour 0: zero padding
    x = torch.nn.functional.grid_sample(x, _sampling_grid(p, h, w, dev), mode="bilinear",
                                        padding_mode="zeros", align_corners=False)
    x = _cutout(x, p, mean)
    x = _noise(x, p, torch.Generator(dev).manual_seed(seed))
    return standardize(x, mean, std), p


def to_device(array, device, dtype=np.float32):
    """A small host array -> tensor on the device, without waiting for the device. To a GPU
    through pinned memory: a copy from pageable memory may be staged by the driver, which
    then waits (PyTorch's caching host allocator reuses the pinned blocks, and holds each
    until its copy is done)."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
    if torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _crop(images, p):
    """PadIfNeeded(40) with black + RandomCrop(32) of uint8 (N, H, W, 3) (at 32 px; H/8 per
    side in general): each image's window picked from a strided view of all 9 x 9
    windows, copied in one gather."""
    n, h, w, c = images.shape
    pad = h // 8
    padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad))
    s = padded.stride()
    k = 2 * pad + 1
    windows = padded.as_strided((n, k, k, h, w, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    cy, cx = (to_device(p[k], images.device, np.int64) for k in ("crop_y", "crop_x"))
    return windows[torch.arange(n, device=images.device), cy, cx]


def _sampling_matrices(p, h, w):
    """(N, 2, 3): for each image, the affine map from an output pixel's grid_sample
    coordinates (-1..1, align_corners=False) to where it comes from in the cropped image,
    with the affine and then the flip undone. Computed on the host (tiny)."""
    n = len(p["flip"])
    on = p["affine"]
    a = np.deg2rad(p["angle"]) * on
    cos, sin = np.cos(a), np.sin(a)
    sx, sy = np.where(on, p["scale_x"], 1.0), np.where(on, p["scale_y"], 1.0)
    tx, ty = p["shift_x"] * on, p["shift_y"] * on
    cx, cy = (w - 1) / 2, (h - 1) / 2
    one, zero = np.ones(n), np.zeros(n)

    def mat(r0, r1):  # (N, 3, 3) from two rows of per-image values, third row 0 0 1
        return np.stack([np.stack(r0, -1), np.stack(r1, -1), np.stack([zero, zero, one], -1)], 1)

    # affine: out = R S (in - c) + c + t, so in = S^-1 R^-1 (out - c - t) + c
    ux, uy = -cx - tx, -cy - ty
    affine = mat((cos / sx, sin / sx, (cos * ux + sin * uy) / sx + cx),
                 (-sin / sy, cos / sy, (-sin * ux + cos * uy) / sy + cy))
    f = p["flip"]
    flip = mat((1 - 2 * f, zero, f * (w - 1)), (zero, one, zero))
    to_pixels = np.array([[w / 2, 0, cx], [0, h / 2, cy], [0, 0, 1]])  # from -1..1
    return (np.linalg.inv(to_pixels) @ flip @ affine @ to_pixels)[:, :2]


def _sampling_grid(p, h, w, device):
    """grid_sample's grid (N, H, W, 2) for the flip + affine matrices, on the device."""
    theta = to_device(_sampling_matrices(p, h, w).reshape(-1, 6), device)[:, :, None, None]
    xs = (2 * torch.arange(w, device=device) + 1) / w - 1  # pixel centres in -1..1
    ys = ((2 * torch.arange(h, device=device) + 1) / h - 1)[:, None]
    grid = torch.empty((len(theta), h, w, 2), device=device)
    torch.addcmul(theta[:, 1] * ys + theta[:, 2], theta[:, 0], xs, out=grid[..., 0])
    torch.addcmul(theta[:, 4] * ys + theta[:, 5], theta[:, 3], xs, out=grid[..., 1])
    return grid


def _chosen(p, key, device):
    """Indices of the images drawn for `key`, on the host and on the device."""
    chosen = np.flatnonzero(p[key])
    return chosen, to_device(chosen, device, np.int64)


def _cutout(x, p, mean):
    """One hole of 8-16 x 8-16 pixels (at 32 px) filled with the mean colour, on the chosen
    images."""
    chosen, idx = _chosen(p, "hole", x.device)
    if not len(chosen):
        return x
    h, w = x.shape[-2:]
    y0, x0 = p["hole_y"][chosen], p["hole_x"][chosen]
    box = to_device(np.stack([y0, y0 + p["hole_h"][chosen], x0, x0 + p["hole_w"][chosen]], 1),
                     x.device)[:, :, None, None]
    rows = torch.arange(h, device=x.device)[:, None]
    cols = torch.arange(w, device=x.device)
    hole = (rows >= box[:, 0]) & (rows < box[:, 1]) & (cols >= box[:, 2]) & (cols < box[:, 3])
    fill = (torch.as_tensor(mean, dtype=x.dtype, device=x.device) * 255).round()
    x[idx] = torch.where(hole[:, None], fill[None, :, None, None], x[idx])
    return x


def _noise(x, p, gen):
    """Gaussian noise, std 0.0125-0.0278 of 255 per image, per pixel and channel, on the
    chosen images, added as albumentations adds it to a uint8 image: the image rounded,
    the noise truncated towards zero (its add does so: 0.6 adds 0, -1.5 adds -1, so noise
    of std 5 grey levels spreads pixels by 4.6), the sum clipped to 0..255."""
    chosen, idx = _chosen(p, "noise", x.device)
    if not len(chosen):
        return x
    sd = to_device(p["noise_std"][chosen], x.device)[:, None, None, None]
    noise = torch.randn((len(chosen), *x.shape[1:]), generator=gen, device=x.device)
    x[idx] = (x[idx].round() + (noise * sd).trunc()).clamp(0, 255)
    return x
