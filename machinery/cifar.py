"""CIFAR-10/100 on disk: what the data sets are (class names, statistics, file layout),
downloading them, reading their pickle files, and writing generated stand-ins.

One small reader turns the standard pickle files (`cifar-100-python/{train,test,meta}`,
`cifar-10-batches-py/...`) into uint8 arrays. Real runs download those files with
torchvision (which verifies their checksums); tests and `train.py --smoke` write generated
files in exactly the same format, so both go through the same reader.

Light on purpose (numpy and the standard library): the checkpoint loaders take the class names and
statistics from here for checkpoints that do not carry them, without importing the
augmentation pipeline.
"""
import os
import pickle

import numpy as np

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
CLASS_NAMES = {"cifar100": CIFAR100_CLASSES, "cifar10": CIFAR10_CLASSES}

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


class DataError(Exception):
    """Missing, unreadable or malformed data set files."""


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
        made = _missing_folders(root)  # (torchvision makes them before it connects)
        archive = os.path.join(root, getattr(cls, "filename", ""))
        had_archive = os.path.exists(archive)
        try:
            cls(root, train=True, download=True)
        except Exception as e:  # network, disk and checksum failures all end the same way
            _remove_made(made, None if had_archive else archive)
            raise DataError(f"{name} is not in {where} and the download failed "
                            f"({type(e).__name__}: {str(e)[:100]}); download it from "
                            f"{cls.url} and extract it into {os.path.abspath(root)}") from None
    if not dataset_present(root, name):
        raise DataError(f"{name} is not in {where} (downloads are off); put the extracted "
                        f"'{DATASETS[name]['folder']}' folder in {os.path.abspath(root)}")


def _missing_folders(root):
    """The folders of `root`'s path that do not exist yet, deepest first."""
    missing, path = [], os.path.abspath(root)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_made(folders, archive):
    """What a failed download left of its own: its partial archive (one that was not
    there before), and the folders it made, where nothing else is in them."""
    try:
        if archive and os.path.isfile(archive):
            os.remove(archive)
        for folder in folders:
            os.rmdir(folder)  # only an empty one
    except OSError:
        pass


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
