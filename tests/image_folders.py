"""Generated image folders in torchvision's ImageFolder layout, for the tests: a learnable
colour per class, written as files of mixed formats, sizes and modes, some corrupt."""
import os

import numpy as np
from PIL import Image

CLASSES = ["cat", "dog", "frog"]
# (extension, PIL mode, size): every format and mode the reader must take
KINDS = [(".png", "RGB", (32, 32)), (".jpg", "RGB", (64, 48)), (".webp", "RGBA", (40, 40)),
         (".bmp", "L", (24, 36)), (".png", "P", (50, 50)), (".JPEG", "RGB", (33, 31))]


def _picture(rng, colour, size, mode):
    w, h = size
    pixels = np.clip(rng.normal(colour, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        image = image.convert("RGBA")
    elif mode == "L":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("P", palette=Image.ADAPTIVE)
    return image


def write_image_folder(root, per_class=(12, 4), classes=CLASSES, corrupt=1, seed=0, test=True):
    """DIR/train/<class>/* (per_class[0] files each) and DIR/test/<class>/* (per_class[1]),
    plus `corrupt` unreadable .png files and one .txt per train class (not an image).
    Returns {split: number of readable images}."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, (len(classes), 3))
    counts = {}
    for split, n in zip(("train", "test"), per_class):
        if split == "test" and not test:
            continue
        counts[split] = 0
        for c, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                ext, mode, size = KINDS[i % len(KINDS)]
                _picture(rng, colours[c], size, mode).save(os.path.join(folder, f"{i:03d}{ext}"))
                counts[split] += 1
            if split == "train":
                with open(os.path.join(folder, "notes.txt"), "w") as f:
                    f.write("not an image")
    for k in range(corrupt):
        with open(os.path.join(root, "train", classes[k % len(classes)], f"broken{k}.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    return counts


def write_kaggle_folder(root, per_class=8, classes=CLASSES, unlabeled=5, seed=0):
    """Kaggle's CIFAR-10 competition as downloaded: train/1.png ... train/N.png in a random
    class order, trainLabels.csv ("id,label"), an unlabeled test/ of numbered PNGs, and
    sampleSubmission.csv (also "id,label": a placeholder for every test image). Returns
    {file name: label} of the training images."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, (len(classes), 3))
    labels = rng.permutation(np.repeat(np.arange(len(classes)), per_class))
    os.makedirs(os.path.join(root, "train"))
    os.makedirs(os.path.join(root, "test"))
    truth = {}
    with open(os.path.join(root, "trainLabels.csv"), "w") as f:
        f.write("id,label\n")
        for i, c in enumerate(labels, 1):
            _picture(rng, colours[c], (32, 32), "RGB").save(os.path.join(root, "train", f"{i}.png"))
            f.write(f"{i},{classes[c]}\n")
            truth[f"{i}.png"] = classes[c]
    with open(os.path.join(root, "sampleSubmission.csv"), "w") as f:
        f.write("id,label\n")
        for i in range(1, unlabeled + 1):
            _picture(rng, colours[i % len(classes)], (32, 32), "RGB").save(os.path.join(root, "test", f"{i}.png"))
            f.write(f"{i},{classes[0]}\n")
    return truth


# Tiny ImageNet's first wnids and their lines in words.txt (tab-separated, synonyms by commas)
TINY_WORDS = {"n01443537": "goldfish, Carassius auratus", "n01629819": "European fire salamander, "
              "Salamandra salamandra", "n01641577": "bullfrog, Rana catesbeiana"}


def write_tiny_imagenet(root, train=6, val=3, test=4, seed=0):
    """Tiny ImageNet's tree as its zip unpacks (64x64 JPEGs): wnids.txt, words.txt (more
    wnids than the classes), train/<wnid>/images/<wnid>_<i>.JPEG with <wnid>_boxes.txt,
    val/images/val_<i>.JPEG labelled by val/val_annotations.txt (file, wnid, box; tabs, no
    header) and an unlabeled test/images/test_<i>.JPEG. Returns {val file: wnid}."""
    rng = np.random.default_rng(seed)
    wnids = sorted(TINY_WORDS)
    colours = rng.integers(30, 226, (len(wnids), 3))
    os.makedirs(root)
    with open(os.path.join(root, "wnids.txt"), "w") as f:
        f.write("".join(f"{w}\n" for w in reversed(wnids)))  # not sorted, as in the zip
    with open(os.path.join(root, "words.txt"), "w") as f:
        f.write("n00001740\tentity\n" + "".join(f"{w}\t{TINY_WORDS[w]}\n" for w in wnids) +
                "n15299783\tlatent period, latency\n")
    for c, w in enumerate(wnids):
        os.makedirs(os.path.join(root, "train", w, "images"))
        with open(os.path.join(root, "train", w, f"{w}_boxes.txt"), "w") as boxes:
            for i in range(train):
                name = f"{w}_{i}.JPEG"
                _picture(rng, colours[c], (64, 64), "RGB").save(os.path.join(root, "train", w, "images", name))
                boxes.write(f"{name}\t0\t0\t63\t63\n")
    truth = {}
    os.makedirs(os.path.join(root, "val", "images"))
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
        for i in range(val * len(wnids)):
            c, name = int(rng.integers(len(wnids))), f"val_{i}.JPEG"
            _picture(rng, colours[c], (64, 64), "RGB").save(os.path.join(root, "val", "images", name))
            f.write(f"{name}\t{wnids[c]}\t{i % 9}\t3\t60\t61\n")
            truth[name] = wnids[c]
    os.makedirs(os.path.join(root, "test", "images"))
    for i in range(test):
        _picture(rng, colours[i % len(wnids)], (64, 64), "RGB").save(
            os.path.join(root, "test", "images", f"test_{i}.JPEG"), format="JPEG")
    return truth
