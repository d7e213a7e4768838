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
