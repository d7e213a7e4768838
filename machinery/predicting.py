"""Predictions for many pictures, as fast as the decoder and the network allow: files
listed as --dataset folder lists them, decoded in worker processes (the reduced JPEG
decode of images.load_image), batched through the network on its device while the next
batches decode. One Prediction per picture, in the order given, a bad file included (its
error instead of classes), so that one unreadable photo among thousands stops nothing.

    clf = model.load_classifier("checkpoints/best_model.pt", device="auto")
    for p in predictions(clf, ["photos/"], k=3):       # a generator: any number of files
        print(p.source, p.top or p.error)

model.predict() is the list form of the same path. The network may also be an exported
ONNX file (onnx_classifier): onnxruntime runs it, with the preprocessing inside.
"""
import functools
import glob
import itertools
import json
import math
import os
import stat
import unicodedata
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .checkpoint_files import CheckpointError, fill_metadata
from .cifar import DataError
from .folder_cache import die_with, why
from .folder_listing import EXTENSIONS, is_image, printable
from .imagefolder import images_under, shown
from .images import load_image, normalize
from .runtime import make_runtime
from .workers import default_workers

BATCH = 256  # pictures per batch through the network
FILES_PER_WORKER = 64  # fewer pictures than this per worker: decoding in this process is faster


@dataclass
class Classifier:
    """A trained network with what it takes to use it: class names and normalisation."""
    model: nn.Module
    class_names: list
    mean: tuple
    std: tuple
    image_size: int = 32  # what the network was trained at (pictures are resized to it)
    class_ids: list = None  # the data set's own ids behind the names (Tiny ImageNet's wnids)

    @property
    def device(self):
        return next(self.model.parameters()).device


def as_classifier(model, ckpt, source):
    """The network rebuilt from checkpoint `ckpt` (model.load_classifier), with its class
    names and normalisation. A file without them (the reference's) gets CIFAR's, with a
    warning naming `source`."""
    import warnings
    note = fill_metadata(ckpt)
    if note:
        warnings.warn(f"{source}: {note}", stacklevel=3)
    classes = model.fc.out_features
    if not 8 <= int(ckpt["image_size"]) <= 1024:
        raise CheckpointError(f"{source}: its image_size {ckpt['image_size']} is no picture size "
                              f"this repo trains at (16 to 128)")
    try:
        fine = not isinstance(ckpt["std"], (str, bytes)) and all(
            math.isfinite(float(s)) and float(s) > 0 for s in ckpt["std"])
    except (TypeError, ValueError):
        fine = False
    if not fine:  # (x - mean) / 0: every answer NaN
        raise CheckpointError(f"{source}: its std {ckpt['std']!r} is no data set's (each "
                              f"channel's must be a positive number)")
    try:
        fine = (not isinstance(ckpt["mean"], (str, bytes)) and len(ckpt["mean"]) == 3  # ('123')
                and all(math.isfinite(float(m)) for m in ckpt["mean"]))
    except (TypeError, ValueError):
        fine = False
    if not fine:  # 'abc', None, NaN: a traceback in export.py and app.py, or every answer NaN
        raise CheckpointError(f"{source}: its mean {ckpt['mean']!r} is no data set's (it must be "
                              f"three numbers, one per colour channel)")
    for key in ("class_names", "class_ids"):
        if ckpt.get(key) is not None and len(ckpt[key]) != classes:
            raise CheckpointError(f"{source}: its {key} name {len(ckpt[key])} classes, and its "
                                  f"network has {classes}: not a checkpoint this repo wrote whole")
    return Classifier(model, list(ckpt["class_names"]), tuple(ckpt["mean"]), tuple(ckpt["std"]),
                      int(ckpt["image_size"]), ckpt.get("class_ids"))


@dataclass
class OnnxClassifier:
    """An exported ONNX file (export.py) and what its metadata says."""
    session: object  # onnxruntime.InferenceSession
    class_names: list
    image_size: int
    class_ids: list = None


def onnx_classifier(path):
    """An export.py ONNX file, run by onnxruntime on the CPU (DataError if it cannot be)."""
    try:
        import onnxruntime
    except ImportError:
        raise DataError("--onnx needs onnxruntime: pip install onnxruntime") from None
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        return OnnxClassifier(session, json.loads(meta["class_names"]), int(meta["image_size"]),
                              json.loads(meta["class_ids"]) if meta.get("class_ids") else None)
    except Exception as e:  # noqa: BLE001 -- onnxruntime's load errors have no common type
        raise DataError(f"{path} is not an ONNX file of export.py "
                        f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None


@dataclass
class Prediction:
    source: object  # the path (or the picture) given
    top: list  # [(class name, probability)] best first; None where the picture failed
    error: str = ""  # why it failed: "cannot identify image file", ...
    classes: list = None  # the indices of top's classes (names may repeat; indices do not)


# -----------------------------------------------------------------------------
# Pictures: what to read, and reading them in worker processes

def expand(sources, lists=None):
    """Paths to pictures, in a stable order, each directory entry once (however spelled,
    the first spelling kept; a link to a picture is a picture of its own): a folder's images as --dataset folder lists them (sub-folders,
    every format it reads, what tools leave behind and pipes skipped, a link from one
    class folder into another not followed), a glob's matches sorted (pipes skipped),
    @list.txt's lines (one path each, in turn expanded, relative to the working folder),
    anything else as it is: a file, a PIL image, an array. (source, root) pairs:
    root is the folder a file was found under, None for what was named directly.
    DataError, naming the @list and line where one said it, for a path that does not
    exist, a folder named that holds no picture, a glob that matches nothing, an @list
    that names itself. lists: the @list files read are appended to it."""
    out, taken = [], set()
    for source, root in _expand(sources, [] if lists is None else lists, (), ""):
        key = _real(source) if isinstance(source, str) else id(source)
        if key not in taken:  # a file named twice (`a.png ./a.png`), or by `**` and its folder
            taken.add(key)
            out.append((source, root))
    return out


def _real(path):
    """The directory entry a path names, however spelled (relative, absolute, through a
    link to its folder): its folder's real path and its own name. Two entries of one file
    (a link to another picture, a hard link: Hugging Face snapshots, DVC caches) are two
    rows, as a submission needs an id for each."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.realpath(folder), name


def _special(path):
    """Whether `path` is a pipe, socket or device (reading one waits for ever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # a dangling link: its row says it is missing
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _expand(sources, lists, within, where):
    for n, src in sources if where else enumerate(sources, 1):
        if not isinstance(src, (str, os.PathLike)):
            yield src, None
            continue
        src, said = os.fspath(src), f"{where}, line {n}: " if where else ""
        if src.startswith("@") and not os.path.exists(src):
            path = os.path.abspath(src[1:])
            if path in within:
                raise DataError(f"{said}@{shown(src[1:])} names itself, through the lists it names")
            lists.append(src[1:])
            yield from _expand(_lines(src[1:], said), lists, within + (path,), f"@{shown(src[1:])}")
        elif os.path.isdir(src):
            found = images_under(src)
            if not found:
                raise DataError(f"{said}{printable(src)} holds no picture "
                                f"({', '.join(e.lstrip('.') for e in EXTENSIONS)})")
            yield from ((p, src) for p in found)
        elif os.path.exists(src) and not stat.S_ISREG(os.stat(src).st_mode):
            raise DataError(f"{said}{printable(src)} is not a file but a pipe, socket or device")
        elif os.path.lexists(src):
            yield src, None
        elif glob.has_magic(src):
            found = sorted(glob.glob(src, recursive=True))
            if not found:
                raise DataError(f"{said}{printable(src)} matches no file")
            base = _fixed_part(src)  # (the class is the first folder under it, as for a folder)
            for p in found:  # (a folder a glob matches is searched; an empty one passed over)
                if _through_link(p, base):  # `**` follows bowl/more -> ../trout; a folder does not
                    continue
                if os.path.isdir(p):
                    yield from ((f, base) for f in images_under(p))
                elif not _special(p) and is_image(os.path.basename(p)):  # as in a folder:
                    yield p, base  # a pipe, a sidecar (IMG_1.png.json), .DS_Store skipped
        else:
            raise DataError(f"{said}{printable(src) or 'an empty path'} does not exist")


def _through_link(path, base):
    """Whether `path` lies under `base` through a linked folder (a link from one class
    folder into another, which a folder's own walk does not follow)."""
    parts = os.path.relpath(path, base).split(os.sep)
    links = (os.path.join(base, *parts[:i + 1]) for i in range(len(parts)))
    return any(os.path.islink(q) and os.path.isdir(q) for q in links)  # (a picture's link: its own)


def _fixed_part(pattern):
    """The folder a glob searches under: its leading components without a wildcard
    (`t3/**/*.png`, `t3/*`: t3), so that its files' classes are the first folders under
    it, as where t3 was named itself, however the glob is spelled."""
    parts = pattern.replace(os.sep, "/").split("/")
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts[:-1]))
    return "/".join(fixed) or ("/" if pattern.startswith("/") else ".")


def _lines(path, said=""):
    """(line number, path) of an @list's lines: blank lines and # comments skipped (a
    comment that names a file is said, ./#name names it), a UTF-8 byte order mark (Notepad's, PowerShell's) ignored. said: where the list was
    named ("@outer.txt, line 3: "), for the error when it cannot be read."""
    try:
        with open(path, "rb") as f:
            raw = f.read().splitlines()
    except OSError as e:
        raise DataError(f"{said}cannot read the list @{shown(path)}: {e.strerror}") from None
    lines = []
    for n, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8-sig" if n == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"@{shown(path)}, line {n}: not UTF-8 text; save the list as UTF-8") from None
        if text.startswith("#") and os.path.lexists(text):  # a comment, said once: no guess
            warnings.warn(f"@{shown(path)}, line {n}: {text} is a comment (lines that start with "
                          f"#), though a file of that name exists; write ./{text} to name it")
        elif text and not text.startswith("#"):
            lines.append((n, text))
    return lines


def truth(source, root, classes, ids=None):
    """The index of the class a picture's folder names: the first folder under the folder
    given (root/<class>/...), or a file's own folder where the file was named directly;
    matched against the class names, then the class ids (Tiny ImageNet's val/n02123045/).
    None otherwise. The folder given never names a class itself: `predict.py kaggle/train/`
    is not every picture of the class "train"."""
    if not isinstance(source, str):
        return None
    if root is not None:
        parts = os.path.relpath(source, root).split(os.sep)
        if len(parts) < 2:
            return None
        name = parts[0]
    else:
        name = os.path.basename(os.path.dirname(os.path.abspath(source)))
    nfc = functools.partial(unicodedata.normalize, "NFC")  # (café/ as a Mac writes it)
    known = {nfc(n): i for i, n in enumerate(ids or [])}
    known.update({nfc(n): i for i, n in enumerate(classes)})  # a name wins over an id
    return known.get(nfc(name))


def table_truth(root, sources, classes, ids=None):
    """({source: class index}, the table's file name, or a note why it labels nothing) for
    a folder given to predict.py that a table labels as train.py finds one: Tiny
    ImageNet's val/ (val/images/ and val/val_annotations.txt), a folder with its val.csv
    beside it; or, for val/images/ given, its parent's. ({}, None, None) where no table
    labels the folder."""
    from . import folder_listing, label_tables
    table, folder = None, os.path.abspath(root)
    for folder in (folder, os.path.dirname(folder)):  # (val/images/ given: val/'s table)
        try:
            table = folder_listing.table_for(os.path.dirname(folder), folder, train=False)
        except DataError:
            return {}, None, None
        if table:
            break
    if not table:
        return {}, None, None
    index = {n: i for i, n in enumerate(ids or [])}
    index.update({n: i for i, n in enumerate(classes)})  # a name wins over an id
    try:
        rows = label_tables.labelled_files(table, folder, sources, known=set(index),
                                           warn=lambda line: None, single_warning=False)
    except DataError as e:
        return {}, os.path.basename(table), f"{e}: no accuracy against it"
    return {p: index[label] for p, label in rows}, os.path.basename(table), None


def error_text(e, source):
    """A one-line reason a picture could not be read (without its path: the row has it),
    in the words training's warning uses for the same file."""
    return why(e, source if isinstance(source, str) else None)


class Pictures(torch.utils.data.Dataset):
    """The pictures as the network's uint8 squares: (index, square or None, error)."""

    def __init__(self, sources, size):
        self.sources, self.size = sources, size

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, i):
        try:
            return i, load_image(self.sources[i], self.size), ""
        except Exception as e:  # noqa: BLE001 -- a bad picture is a row with its error
            return i, None, error_text(e, self.sources[i])


def _decoder_started(parent, worker_id):
    die_with(parent)


def _collate(items):
    """(uint8 (n, s, s, 3) of the pictures read, their indices, (index, error) of the rest)."""
    good = [(i, im) for i, im, _ in items if im is not None]
    images = torch.from_numpy(np.stack([im for _, im in good])) if good else None
    return images, [i for i, _ in good], [(i, err) for i, im, err in items if im is None]


def batches(sources, size, batch_size=BATCH, workers=None):
    """The pictures decoded and batched, in order, in `workers` processes (default: one per
    usable core, at most 8, fewer for few pictures) while the caller runs the network."""
    if workers is None:
        workers = min(default_workers(), len(sources) // FILES_PER_WORKER)
    return torch.utils.data.DataLoader(
        Pictures(sources, size), batch_size=batch_size, num_workers=workers,
        collate_fn=_collate, prefetch_factor=4 if workers else None,  # (kill -9 of predict:
        worker_init_fn=functools.partial(_decoder_started, os.getpid()),  # its decoders go too)
        multiprocessing_context="fork" if workers and "fork" in
        torch.multiprocessing.get_all_start_methods() else None)


# -----------------------------------------------------------------------------
# The network: PyTorch or onnxruntime

def torch_probabilities(clf, tta=False):
    """uint8 (n, s, s, 3) -> probabilities (n, classes), on the classifier's device at its
    precision (bf16 or fp16 autocast on GPUs, fp32 on the CPU); tta: averaged with the
    mirrored pictures' logits."""
    rt = make_runtime(clf.device, "auto", False, clf.mean, clf.std)

    @torch.no_grad()
    def run(images):
        x = normalize(images.to(clf.device, non_blocking=True), rt.mean, rt.std)
        with rt.autocast():
            logits = clf.model(x).float()
            if tta:
                logits = (logits + clf.model(x.flip(3)).float()) / 2
        return logits.softmax(1).cpu()
    return run


def onnx_probabilities(clf, tta=False):
    def run(images):
        x = images.numpy()
        logits = clf.session.run(["logits"], {"images": x})[0]
        if tta:
            logits = (logits + clf.session.run(["logits"], {"images": x[:, :, ::-1].copy()})[0]) / 2
        return torch.from_numpy(logits).float().softmax(1)
    return run


def predictions(clf, sources, k=5, tta=False, batch_size=BATCH, workers=None, expanded=None):
    """A Prediction for each picture of `sources` (paths, folders, globs, @lists, PIL images,
    arrays: see expand), in order, as a generator. clf: a Classifier or an OnnxClassifier.
    expanded: expand(sources) when the caller has it already."""
    found = expand(one_or_many(sources)) if expanded is None else expanded
    items = [src for src, _ in found]
    run = (onnx_probabilities if isinstance(clf, OnnxClassifier) else torch_probabilities)(clf, tta)
    k = min(k, len(clf.class_names))
    for images, good, bad in batches(items, clf.image_size, batch_size, workers):
        result = dict((i, Prediction(items[i], None, err)) for i, err in bad)
        if good:
            top = run(images).topk(k, dim=1)
            for i, ps, idx in zip(good, top.values.tolist(), top.indices.tolist()):
                result[i] = Prediction(items[i], [(clf.class_names[c], p) for p, c in zip(ps, idx)],
                                       classes=idx)
        for i in sorted(result):
            yield result[i]


def one_or_many(sources):
    """A path, a PIL image or an array given alone is one picture, not a sequence of them
    (a string's letters, an image's rows)."""
    from PIL import Image
    return [sources] if isinstance(sources, (str, os.PathLike, Image.Image, np.ndarray)) else sources


def predict(clf, images, k=5, tta=False):
    """Top-k (class name, probability) for each picture, in order: paths, folders (their
    pictures), globs, PIL images or uint8 arrays, any size (see images.load_image). A
    picture that cannot be read raises OSError naming it; predictions() goes on instead."""
    out = []
    for p in predictions(clf, images, k, tta):
        if p.top is None:
            what = p.source if isinstance(p.source, (str, os.PathLike)) else (
                f"a {type(p.source).__name__}" + (f" {p.source.dtype} {p.source.shape}"
                                                  if isinstance(p.source, np.ndarray) else ""))
            raise OSError(f"cannot read {what}: {p.error}")
        out.append(p.top)
    return out
