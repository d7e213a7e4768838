"""CIFAR-10/100 data for train.py: files on disk, generated stand-ins, augmentation, loaders.

One small reader turns the standard pickle files (`cifar-100-python/{train,test,meta}`,
`cifar-10-batches-py/...`) into uint8 arrays. Real runs download those files with
torchvision (which verifies their checksums); tests and `train.py --smoke` write generated
files in exactly the same format, so both go through the same reader.

Randomness is keyed, not streamed: the augmentation of training image i in epoch e is a
pure function of (seed, e, i), and the shuffle order of (seed, e). Results therefore do
not depend on the worker count or on whether the run was resumed.
"""
import os
import pickle
import random
import signal

# albumentations asks PyPI for a newer version at import: a network call that delays the
# start on Colab and prints a warning on offline machines. The user can still opt in.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from model import standardize  # noqa: E402

CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
# Label indices are the alphabetical order of the names, as in the data set's meta file.
CIFAR100_CLASSES = sorted(n for names in CIFAR100_SUPERCLASSES.values() for n in names)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

# folder, train files, test file, meta file, label key, names key, per-channel mean/std (0-1)
DATASETS = {
    "cifar100": dict(folder="cifar-100-python", train=["train"], test="test", meta="meta",
                     label_key="fine_labels", names_key="fine_label_names",
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    "cifar10": dict(folder="cifar-10-batches-py",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test="test_batch",
                    meta="batches.meta", label_key="labels", names_key="label_names",
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
}

# Independent random streams, each keyed by (seed, stream, ...) instead of shared state.
AUG_STREAM, SHUFFLE_STREAM, CUTMIX_STREAM, TORCH_STREAM, VAL_STREAM = range(5)


class DataError(Exception):
    """Missing, unreadable or malformed data set files."""


def stream_seed(*keys):
    """A 63-bit seed derived from integer keys, e.g. stream_seed(seed, CUTMIX_STREAM, epoch)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


# -----------------------------------------------------------------------------
# Files on disk

def _files(name, split):
    spec = DATASETS[name]
    return spec["train"] if split == "train" else [spec["test"]]


def dataset_present(root, name):
    spec = DATASETS[name]
    needed = spec["train"] + [spec["test"], spec["meta"]]
    return all(os.path.isfile(os.path.join(root, spec["folder"], f)) for f in needed)


def ensure_dataset(root, name, download=True):
    """Make sure the pickle files are in root; download (checksums verified) if they are not."""
    if dataset_present(root, name):
        return
    where = os.path.join(os.path.abspath(root), DATASETS[name]["folder"])
    if download:
        import torchvision  # only needed here; keeps importing data.py light
        cls = torchvision.datasets.CIFAR100 if name == "cifar100" else torchvision.datasets.CIFAR10
        try:
            cls(root, train=True, download=True)
        except Exception as e:  # network, disk and checksum failures all end the same way
            raise DataError(f"{name} is not in {where} and the download failed "
                            f"({type(e).__name__}: {str(e)[:100]}); download it from "
                            f"{cls.url} and extract it into {os.path.abspath(root)}") from None
    if not dataset_present(root, name):
        raise DataError(f"{name} is not in {where} (downloads are off); put the extracted "
                        f"'{DATASETS[name]['folder']}' folder in {os.path.abspath(root)}")


class _Forbidden(pickle.UnpicklingError):
    """A data file names a global that CIFAR files never contain."""


class _DataUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR files hold (dicts, lists, strings, numbers, numpy arrays) and
    refuses every other global, so a file crafted to run code when loaded runs nothing.

    Arrays pickled by numpy 1 (the real files) name numpy.core, by numpy 2 numpy._core;
    bytes pickled by Python 3 at protocol 2 come through _codecs.encode.
    """
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
                 for name in ("_reconstruct", "scalar"))}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _Forbidden(f"it asks to run {module}.{name}")
        if module.startswith("numpy.core."):  # numpy 2 warns on the old name
            module = "numpy._core." + module.split(".", 2)[2]
        return super().find_class(module, name)


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            # encoding: the real files were written by Python 2
            return _DataUnpickler(f, encoding="latin1").load()
    except _Forbidden as e:
        raise DataError(f"refusing to read {path}: {e}, and a data set file holds only "
                        f"lists, strings, numbers and numpy arrays") from None
    except pickle.UnpicklingError as e:
        raise DataError(f"cannot read {path}: corrupt file ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:  # a truncated or garbled pickle fails in many ways; all mean one thing
        raise DataError(f"cannot read {path}: corrupt or truncated file ({type(e).__name__})") from None


def read_split(root, name, split):
    """(images uint8 (N, 32, 32, 3) RGB, labels int64 (N,)) from the standard pickle files."""
    spec = DATASETS[name]
    xs, ys = [], []
    for fname in _files(name, split):
        path = os.path.join(root, spec["folder"], fname)
        batch = _unpickle(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch[spec["label_key"]], dtype=np.int64)
            # rows hold 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path} is not a {name} batch file ({type(e).__name__}: {e})") from None
        if len(labels) != len(xs[-1]):
            raise DataError(f"{path}: {len(xs[-1])} images but {len(labels)} labels")
        ys.append(labels)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def read_class_names(root, name):
    spec = DATASETS[name]
    meta = _unpickle(os.path.join(root, spec["folder"], spec["meta"]))
    if spec["names_key"] not in meta:
        raise DataError(f"{spec['meta']} of {name} has no '{spec['names_key']}'")
    return list(meta[spec["names_key"]])


def load_dataset(root, name, download=True):
    """Everything train.py needs: train/test arrays and class names, checked for consistency."""
    if name not in DATASETS:
        raise DataError(f"unknown data set '{name}' (choose from {', '.join(DATASETS)})")
    ensure_dataset(root, name, download)
    x_train, y_train = read_split(root, name, "train")
    x_test, y_test = read_split(root, name, "test")
    names = read_class_names(root, name)
    top = max(y_train.max(), y_test.max())
    if min(y_train.min(), y_test.min()) < 0 or top >= len(names):
        raise DataError(f"{name} labels run to {top} but the meta file names {len(names)} classes")
    return x_train, y_train, x_test, y_test, names


def split_validation(labels, n, seed, num_classes):
    """(indices kept for training, indices held out), both sorted: n images held out, the
    same number from every class, chosen by the seed alone (so a resumed run, every rank
    and a rerun hold out the same images)."""
    per, counts = n // num_classes, np.bincount(labels, minlength=num_classes)
    if n % num_classes or n <= 0:
        raise DataError(f"--val-split {n} must be a positive multiple of the {num_classes} "
                        f"classes (the same number of images from each)")
    if per >= counts.min():
        raise DataError(f"--val-split {n} would hold out {per} images per class, but a class "
                        f"has only {counts.min()} training images")
    rng = np.random.default_rng([seed, VAL_STREAM])
    held = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per]
                                   for c in range(num_classes)]))
    return np.setdiff1d(np.arange(len(labels)), held), held


# -----------------------------------------------------------------------------
# Generated stand-in data (tests and the offline --smoke demo)

def _synthetic_images(labels, palette, rng):
    """Each class: its own background colour with a square of a second colour at a random spot."""
    n = len(labels)
    imgs = np.empty((n, 32, 32, 3), np.float32)
    imgs[:] = palette[labels, 0][:, None, None, :]
    for k in range(n):
        s = rng.integers(8, 15)
        r, c = rng.integers(0, 32 - s, size=2)
        imgs[k, r:r + s, c:c + s] = palette[labels[k], 1]
    imgs += rng.normal(0, 12, imgs.shape)
    return np.clip(imgs, 0, 255).astype(np.uint8)


def write_synthetic_dataset(root, name="cifar100", n_train=2000, n_test=500, seed=0):
    """Write a small, learnable data set in the exact on-disk format of the real one.

    Deterministic: the same arguments give byte-identical files. Returns the folder.
    """
    spec = DATASETS[name]
    names = CIFAR100_CLASSES if name == "cifar100" else CIFAR10_CLASSES
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(len(names), 2, 3)).astype(np.float32)
    folder = os.path.join(root, spec["folder"])
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % len(names)  # balanced: every class equally often
        rng.shuffle(labels)
        imgs = _synthetic_images(labels, palette, rng)
        files = _files(name, split)
        for i, idx in enumerate(np.array_split(np.arange(n), len(files))):
            _dump(os.path.join(folder, files[i]),
                  _batch_dict(name, imgs[idx], labels[idx], f"{split} batch {i + 1}"))
    meta = {spec["names_key"]: list(names)}
    if name == "cifar100":
        meta["coarse_label_names"] = sorted(CIFAR100_SUPERCLASSES)
    _dump(os.path.join(folder, spec["meta"]), meta)
    return folder


def _batch_dict(name, imgs, labels, batch_label):
    d = {"batch_label": batch_label,
         "data": imgs.transpose(0, 3, 1, 2).reshape(len(imgs), 3072),
         "filenames": [f"synthetic_{i:05d}.png" for i in range(len(imgs))],
         DATASETS[name]["label_key"]: [int(v) for v in labels]}
    if name == "cifar100":
        coarse = {f: i for i, c in enumerate(sorted(CIFAR100_SUPERCLASSES))
                  for f in CIFAR100_SUPERCLASSES[c]}
        d["coarse_labels"] = [coarse[CIFAR100_CLASSES[v]] for v in labels]
    return d


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


# -----------------------------------------------------------------------------
# Augmentation

def train_transform(mean):
    """The reference's training augmentation, on uint8 images, ending in uint8.

    The reference ended with Normalize + ToTensorV2 in every worker; here the workers hand
    over uint8 and model.normalize does the same arithmetic on the whole batch on the
    device (a quarter of the bytes to copy, one op instead of 128). strict=True: a
    misspelt argument raises instead of being silently dropped (albumentations only warns).
    """
    fill = tuple(round(255 * m) for m in mean)  # cut-out holes take the data set's mean colour
    return A.Compose([
        A.PadIfNeeded(min_height=40, min_width=40, border_mode=cv2.BORDER_CONSTANT, fill=0),
        A.RandomCrop(height=32, width=32),
        A.HorizontalFlip(p=0.5),
        # tuples are ranges sampled per axis; a scalar would be a fixed value
        A.Affine(translate_percent=(-0.1, 0.1), scale=(0.85, 1.15), rotate=(-15, 15),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5),
        A.OneOf([
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(8, 16),
                            hole_width_range=(8, 16), fill=fill),
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
            image = self.images[i]
            if self.transform is not None:
                image = self.transform(image=image)["image"]
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
    train_ds = CIFARDataset(x_train, y_train, None if raw else train_transform(mean),
                            augment=not raw, seed=seed)
    batches = EpochBatches(len(train_ds), batch_size, seed, rank, world)
    train = torch.utils.data.DataLoader(train_ds, batch_sampler=batches,
                                        **_loader_options(num_workers, pin_memory))
    return train, make_eval_loader(x_test, y_test, eval_batch_size, num_workers, pin_memory,
                                   rank, world)


def make_eval_loader(x, y, batch_size, num_workers=0, pin_memory=False, rank=0, world=1):
    """Every world-th image for this rank: each counted exactly once, no padding;
    batch_size is the global batch."""
    return make_test_loader(x[rank::world], y[rank::world], batch_size // world or 1,
                            num_workers, pin_memory)


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
    u = rng.uniform
    p = {
        # PadIfNeeded(40) + RandomCrop(32): a crop offset 0..8 in the padded image
        "crop_y": rng.integers(0, 9, n), "crop_x": rng.integers(0, 9, n),
        "flip": rng.random(n) < 0.5,
        "affine": rng.random(n) < 0.5,
        "angle": u(-15, 15, n),
        "scale_x": u(0.85, 1.15, n), "scale_y": u(0.85, 1.15, n),  # each axis on its own,
        "shift_x": u(-0.1, 0.1, n) * w, "shift_y": u(-0.1, 0.1, n) * h,  # as albumentations
        "hole_h": rng.integers(8, 17, n), "hole_w": rng.integers(8, 17, n),
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


def _to_device(array, device, dtype=np.float32):
    """A small host array -> tensor on the device, without waiting for the device."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype)).to(device, non_blocking=True)


def _crop(images, p):
    """PadIfNeeded(40) with black + RandomCrop(32) of uint8 (N, H, W, 3): each image's
    window picked from a strided view of all 9 x 9 windows, copied in one gather."""
    n, h, w, c = images.shape
    padded = torch.nn.functional.pad(images, (0, 0, 4, 4, 4, 4))
    s = padded.stride()
    windows = padded.as_strided((n, 9, 9, h, w, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    cy, cx = (_to_device(p[k], images.device, np.int64) for k in ("crop_y", "crop_x"))
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
    theta = _to_device(_sampling_matrices(p, h, w).reshape(-1, 6), device)[:, :, None, None]
    xs = (2 * torch.arange(w, device=device) + 1) / w - 1  # pixel centres in -1..1
    ys = ((2 * torch.arange(h, device=device) + 1) / h - 1)[:, None]
    grid = torch.empty((len(theta), h, w, 2), device=device)
    torch.addcmul(theta[:, 1] * ys + theta[:, 2], theta[:, 0], xs, out=grid[..., 0])
    torch.addcmul(theta[:, 4] * ys + theta[:, 5], theta[:, 3], xs, out=grid[..., 1])
    return grid


def _chosen(p, key, device):
    """Indices of the images drawn for `key`, on the host and on the device."""
    chosen = np.flatnonzero(p[key])
    return chosen, torch.from_numpy(chosen).to(device, non_blocking=True)


def _cutout(x, p, mean):
    """One hole of 8-16 x 8-16 pixels filled with the mean colour, on the chosen images."""
    chosen, idx = _chosen(p, "hole", x.device)
    if not len(chosen):
        return x
    h, w = x.shape[-2:]
    y0, x0 = p["hole_y"][chosen], p["hole_x"][chosen]
    box = _to_device(np.stack([y0, y0 + p["hole_h"][chosen], x0, x0 + p["hole_w"][chosen]], 1),
                     x.device)[:, :, None, None]
    rows = torch.arange(h, device=x.device)[:, None]
    cols = torch.arange(w, device=x.device)
    hole = (rows >= box[:, 0]) & (rows < box[:, 1]) & (cols >= box[:, 2]) & (cols < box[:, 3])
    fill = (torch.as_tensor(mean, dtype=x.dtype, device=x.device) * 255).round()
    x[idx] = torch.where(hole[:, None], fill[None, :, None, None], x[idx])
    return x


def _noise(x, p, gen):
    """Gaussian noise, std 0.0125-0.0278 of 255 per image, per pixel and channel, on the
    chosen images; rounded and clipped like the uint8 image albumentations works on."""
    chosen, idx = _chosen(p, "noise", x.device)
    if not len(chosen):
        return x
    sd = _to_device(p["noise_std"][chosen], x.device)[:, None, None, None]
    noise = torch.randn((len(chosen), *x.shape[1:]), generator=gen, device=x.device)
    x[idx] = (x[idx] + noise * sd).round().clamp(0, 255)
    return x
