"""A model card from a checkpoint: what the network classifies, how well, how it was
trained, and how to use it. Every number comes from the file, none is typed in.

    card(ckpt, "model.onnx")            # markdown, with the Hugging Face front matter
    summary(ckpt)                       # the short card the demo page shows

The front matter is what Hugging Face reads, as its specifications name the keys: a
model repository's card (kind "model": license, library_name, pipeline_tag, datasets,
tags, model-index with the accuracy and its split) or a Space's (kind "space": title,
sdk, sdk_version, app_file, license, datasets, tags). A --smoke model's card claims no
result (no model-index) and no data set: its pictures were generated. No card names a
path of the machine it was made on: paths are reduced to their last part.
"""
import dataclasses
import hashlib
import json
import math
import re
import sys

from .checkpoint_files import dataset_of
from .config import Config
from .logs import changed_settings

NAMES = {"cifar100": "CIFAR-100", "cifar10": "CIFAR-10", "folder": "an image folder"}
HUB_DATASETS = {"cifar100": "uoft-cs/cifar100", "cifar10": "uoft-cs/cifar10"}  # their Hub ids
PATHS = ("data_dir", "cache_dir", "labels", "init_from", "out_dir")  # Config's path fields
# The card's first body line: which tool wrote it, as what, and the digest of the rest, so
# that a card edited by hand (or written as the other kind) is known and not replaced
MARK = "<!-- written by export.py as {kind} card from {source}, digest {digest}: rerun it to update -->"
MARKED = re.compile(r"<!-- written by export\.py as (\w+) card from .*?, digest ([0-9a-f]{16}): "
                    r"rerun it to update -->\n")


def _number(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def facts(ckpt):
    """What a card says, from the checkpoint: a dict of plain values."""
    cfg = {**dataclasses.asdict(Config()), **(ckpt.get("config") or {})}
    split = "val" if cfg.get("val_split") or cfg.get("val_folder") else "test"
    accs, top5s = _numbers(ckpt.get(f"{split}_acc")), _numbers(ckpt.get(f"{split}_top5"))
    epoch = ckpt.get("epoch", len(accs) - 1)  # (an edited file's "3" or 1.5: said as unknown)
    epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else -1
    test, best_test = _test_figure(ckpt, split, accs, epoch)
    params = sum(v.numel() for k, v in ckpt["model_state_dict"].items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    names = list(ckpt["class_names"])
    defaults = dataclasses.asdict(Config())
    return {
        "history": bool(ckpt.get("train_acc")),  # (a bare state dict has none: no figures)
        "dataset": dataset_of(ckpt) or "cifar100", "classes": names, "image_size": ckpt["image_size"],
        "epoch": epoch, "epochs": len(ckpt.get("train_acc") or []), "planned": cfg.get("epochs"),
        "split": split, "accuracy": test,
        "best_test": best_test,  # (accuracy, epoch) of the best model, where not this file's
        "no_test_set": split == "val" and ckpt.get("test_images") == 0,
        "val_source": ("the val/ folder's images" if cfg.get("val_folder") else
                       f"{cfg.get('val_split')} training images held out (--val-split)"),
        "top5": (top5s[epoch] if split == "test" and 0 <= epoch < len(top5s) else
                 _number(ckpt.get("test_top5")) if test is not None else None)
        if len(names) > 5 else None,  # (an epoch past the history: its list is no figure)
        "val_accuracy": accs[epoch] if split == "val" and 0 <= epoch < len(accs) else None,
        "test_images": _number(ckpt.get("test_images")), "parameters": params,
        "settings": changed_settings(Config(**{k: v if v == defaults[k] else local(k, v)
                                               for k, v in cfg.items() if k in defaults})),
        "smoke": bool(cfg.get("smoke")), "network": ckpt.get("model_args") or {},
        "hours": (_number(ckpt.get("train_seconds")) or 0) / 3600 or None,
    }


def _test_figure(ckpt, split, accs, epoch):
    """(this checkpoint's own test accuracy or None, (accuracy, epoch) of the test figure
    it holds where that is another checkpoint's, else None). With validation images the
    test set is evaluated once at the end, with the best model, and the figure is written
    into last.pt too: there it is the best epoch's, not last.pt's own."""
    if split == "test":
        return (accs[epoch] if 0 <= epoch < len(accs) else _number(ckpt.get("test_accuracy"))), None
    figure = _number(ckpt.get("test_accuracy"))
    if figure is None:
        return None, None
    of = ckpt.get("test_of_epoch")
    if not isinstance(of, int) or isinstance(of, bool):  # (older files: the best epoch's)
        of = accs.index(max(accs)) if accs and None not in accs else None
    return (figure, None) if of == epoch else (None, (figure, of))


def _numbers(values):
    """A history list as figures: anything else in it (an edited file's "x") is no figure."""
    return [_number(v) for v in values] if isinstance(values, (list, tuple)) else []


def local(key, value):
    """A setting as a card may say it: a path reduced to its last part (a card is for
    others to read; /home/<user>/... is not theirs to know)."""
    if key in PATHS and isinstance(value, str) and value not in ("", "."):
        return re.split(r"[\\/]", value.rstrip("\\/"))[-1] or value  # (a Windows path too)
    return value


def marked(source):
    """A checkpoint's file name as the card's marker line may hold it: no '<' or '>' (a
    '-->' would end the comment, the rest shown on the card) and no line break (the
    marker is one line: the tool would no longer know its own card)."""
    return re.sub(r"[<>\x00-\x1f\x7f]|[^\S ]", "_", source)


def _epoch(f):
    return f["epoch"] if 0 <= f["epoch"] < max(f["epochs"], 1) else "?"  # (past its history: unknown)


def _pct(v):
    return "n/a" if _number(v) is None or not math.isfinite(v) else f"{v:.2f}%"


def protocol(f):
    if f["split"] == "val":
        return ("the test set, evaluated once at the end with the model that did best on held-out "
                f"validation images ({_pct(f['val_accuracy'])} there)")
    return ("the test set, which also chose the best epoch (as the reference did: this flatters "
            "the figure a little)")


def summary(ckpt):
    """The short card of the demo page: data set, classes, size, epoch, accuracy, size."""
    f = facts(ckpt)
    top5 = f" (top-5 {_pct(f['top5'])})" if f["top5"] is not None else ""
    smoke = (" **A `--smoke` demo model: generated pictures, not real data; its numbers say "
             "nothing about photos.**" if f["smoke"] else "")
    dataset = NAMES.get(f["dataset"], f["dataset"])  # said first: a smoke model's is generated
    if not f["history"]:  # a bare state dict: its names may be a guess from their count
        assumed = " (names assumed from their count)" if ckpt.get("names_assumed") else ""
        return (f"**Weights only: the data set and recipe are unknown**, {len(f['classes'])} "
                f"classes{assumed}, {f['image_size']}x{f['image_size']} px | "
                f"{f['parameters']:,} parameters.")
    return (f"**{'Generated ' + dataset + '-format pictures' if f['smoke'] else dataset}**, "
            f"{len(f['classes'])} classes, "
            f"{f['image_size']}x{f['image_size']} px | epoch {_epoch(f)} of {f['epochs']} | "
            f"{accuracy_words(f)}{top5} | {f['parameters']:,} parameters.{smoke}")


def accuracy_words(f):
    """The figure a short card gives, named by what it measured and whose it is."""
    if f["accuracy"] is not None or f["split"] == "test":
        return f"test accuracy {_pct(f['accuracy'])}"
    words = f"validation accuracy {_pct(f['val_accuracy'])}"
    if f["best_test"]:
        acc, epoch = f["best_test"]
        return words + f" (test {_pct(acc)} is the best model's, epoch {'?' if epoch is None else epoch})"
    return words + (" (the data had no test set)" if f["no_test_set"] else " (no test figure yet)")


def front_matter(f, title, kind, app_file="app.py", sdk_version=None, license="mit"):
    """Hugging Face's YAML for a model repository's card (kind "model") or a Space's. A
    --smoke model (generated pictures) and a bare state dict (no history: its data set is
    a guess from its class count) name no data set and claim no result."""
    known = not f["smoke"] and f["history"]
    if kind == "space":
        python = f"{sys.version_info.major}.{sys.version_info.minor}"  # the pins' Python
        lines = ["---", f"title: {_yaml_text(title)}", "emoji: 🔍", "colorFrom: indigo", "colorTo: gray",
                 "sdk: gradio"] + ([f"sdk_version: {sdk_version}"] if sdk_version else []) + [
                 f'python_version: "{python}"', f"app_file: {app_file}", f"license: {license}",
                 "pinned: false"]
    else:
        lines = ["---", f"license: {license}", "library_name: pytorch",
                 "pipeline_tag: image-classification"]
    if known and f["dataset"] in HUB_DATASETS:
        lines += ["datasets:", f"- {HUB_DATASETS[f['dataset']]}"]
    lines += ["tags:", "- image-classification", "- resnet", "- onnx"]
    if kind == "model" and known and f["accuracy"] is not None and f["dataset"] in HUB_DATASETS:
        lines += model_index(f, title)
    return "\n".join(lines + ["---", ""])


def _yaml_text(text):
    """Text as one quoted YAML string (JSON's quoting, which YAML reads): a data set's
    name from an edited checkpoint ("cifar100\\nlicense: evil") adds no key to the card."""
    return json.dumps(re.sub(r"[\x00-\x1f\x7f]", " ", text), ensure_ascii=False)


def model_index(f, title):
    lines = ["model-index:", f"- name: {_yaml_text(title)}", "  results:", "  - task:",
             "      type: image-classification", "      name: Image classification",
             "    dataset:", f"      name: {NAMES.get(f['dataset'], f['dataset'])}",
             f"      type: {HUB_DATASETS.get(f['dataset'], f['dataset'])}",
             "      split: test", "    metrics:", "    - type: accuracy",
             f"      value: {round(f['accuracy'], 2)}", "      name: top-1 accuracy (%)"]
    if f["top5"] is not None and f["top5"] == f["top5"]:
        lines += ["    - type: top_5_accuracy", f"      value: {round(f['top5'], 2)}",
                  "      name: top-5 accuracy (%)"]
    return lines


def card(ckpt, model_file="model.onnx", curve=None, title=None, kind="model", source="",
         sdk_version=None, license="mit"):
    """The model card, markdown with Hugging Face's front matter for a model repository
    (kind "model") or a Space (kind "space", whose gradio is sdk_version). curve: the file
    name of the training curves' picture beside it, if any; source: the checkpoint's file
    name, in the line that marks the card as this tool's; license: the weights' licence,
    as the Hub names them."""
    f = facts(ckpt)
    dataset = NAMES.get(f["dataset"], f["dataset"])
    if f["smoke"]:
        dataset = f"generated {dataset}-format pictures"
    net = f["network"]
    seed = list(net.get("blocks") or []) == [5, 5, 5, 5] and net.get("width") == 64
    where = f"on {dataset}" if f["history"] else "(weights only)"
    title = title or (f"{'Enhanced ResNet34' if seed else 'ResNet'} {where}"
                      + (" (a --smoke demo)" if f["smoke"] else ""))
    recipe = (f"The recipe of the enhanced ResNet34 on CIFAR-100 (SGD with Nesterov momentum, "
              f"OneCycleLR\nup to 0.1, CutMix on 30% of batches, label smoothing 0.1, random "
              f"crops, flips, affine\njitter, cut-out and noise). Settings that differ from it: "
              f"`{f['settings']}`.")
    if not f["history"]:  # a bare state dict: no settings, no history; the names a guess
        dataset = "a data set the file does not name" + (
            f" (the names below are {dataset}'s, assumed from the class count)"
            if ckpt.get("names_assumed") else "")
        recipe = ("The file holds the weights alone: the data set and the recipe they were "
                  "trained with are unknown.")
    classes = ", ".join(f["classes"][:12]) + (", ..." if len(f["classes"]) > 12 else "")
    net = f["network"]
    shape = (f"ResNet with {net.get('blocks')} BasicBlocks at width {net.get('width')}"
             if net else "ResNet")
    top5 = f", top-5 {_pct(f['top5'])}" if f["top5"] is not None else ""
    hours = f" Training took {f['hours']:.1f} h." if f["hours"] else ""
    smoke = ("\n> **This is a `--smoke` demo model**, trained for seconds on generated "
             "pictures (coloured squares), not on real data: its accuracy says nothing about "
             "photos.\n" if f["smoke"] else "")
    body = f"""# {title}
{smoke}
A {shape} ({f['parameters']:,} parameters) that sorts {f['image_size']}x{f['image_size']}
pictures into the {len(f['classes'])} classes of {dataset}: {classes}.

## Results

{results(f, top5, curve)}
## Training

{recipe}{hours}

## Use

Intended for pictures of these {len(f['classes'])} classes only: anything else still gets
one of them. Every picture is turned by its EXIF orientation, cropped to its largest
centred square and shrunk to {f['image_size']}x{f['image_size']} px, so small details are
lost, and the figures above hold for pictures like the training set's, not for photos of
another kind.

Without PyTorch, with `onnxruntime`, `numpy` and Pillow (`{model_file}` takes uint8 RGB
`(batch, {f['image_size']}, {f['image_size']}, 3)` and scales and normalises inside; its
metadata holds the class names):

```python
import json, numpy as np, onnxruntime
from PIL import Image, ImageOps
session = onnxruntime.InferenceSession("{model_file}")
names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
image = Image.open("cat.jpg"); image.draft("RGB", ({f['image_size']}, {f['image_size']}))
image = ImageOps.exif_transpose(image).convert("RGB")
(w, h), s = image.size, min(image.size)
square = image.resize(({f['image_size']}, {f['image_size']}), Image.BICUBIC,
                      box=((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
probs = session.run(["probabilities"], {{"images": np.asarray(square)[None]}})[0][0]
print(names[int(probs.argmax())], float(probs.max()))
```

With PyTorch and the training repo: `load_classifier("best_model.pt")` and
`predict(clf, ["cat.jpg"])` from its `model.py`, or `python predict.py photos/`.
"""
    head = front_matter(f, title, kind, sdk_version=sdk_version, license=license)
    mark = MARK.format(kind=kind, source=marked(local("init_from", source) or "a checkpoint"),
                       digest=digest(head + body))
    return head + mark + "\n" + body  # (the front matter first: Hugging Face reads it there)


def results(f, top5, curve):
    """The Results section's table, or why there is none (a bare state dict)."""
    if not f["history"]:
        return "The file holds the weights alone, with no training history: no figures to give.\n"
    where = "the generated test pictures, not photos" if f["smoke"] else protocol(f)
    images = f", {f['test_images']:,} images" if f["test_images"] else ""
    if f["split"] == "val" and f["accuracy"] is None:  # no test figure of this checkpoint's
        return _validation_results(f, curve)
    table = (f"| | |\n|---|---|\n| top-1 accuracy | **{_pct(f['accuracy'])}**{top5} |\n"
             f"| measured on | {where}{images} |\n"
             f"| epoch | {_epoch(f)} (of {f['epochs']} trained, {f['planned']} planned) |\n")
    return table + (f"\n![training curves]({curve})\n" if curve else "")


def _validation_results(f, curve):
    """A checkpoint with validation images but no test figure of its own: its validation
    accuracy, named as such, and whose the test figure is (the best model's), if any."""
    if f["best_test"]:
        acc, epoch = f["best_test"]
        test = (f"{_pct(acc)}, of the best model (epoch {'?' if epoch is None else epoch}), not of "
                f"this checkpoint: evaluate it with `train.py --evaluate`")
    else:
        test = "none: the data had no test set" if f["no_test_set"] else \
            "none yet (the test set is evaluated once, at the end of the run)"
    smoke = " (generated pictures, not photos)" if f["smoke"] else ""
    table = (f"| | |\n|---|---|\n| validation accuracy | **{_pct(f['val_accuracy'])}**{smoke} |\n"
             f"| measured on | {f['val_source']} |\n| test accuracy | {test} |\n"
             f"| epoch | {_epoch(f)} (of {f['epochs']} trained, {f['planned']} planned) |\n")
    return table + (f"\n![training curves]({curve})\n" if curve else "")


def digest(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def written_card(text):
    """The kind ("model" or "space") of a card export.py wrote and nobody changed since;
    None for any other text (hand-written, edited, another tool's)."""
    found = MARKED.search(text)
    if found and digest(text[:found.start()] + text[found.end():]) == found.group(2):
        return found.group(1)
    return None
