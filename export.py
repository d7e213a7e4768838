"""Take a trained model where it is used: ONNX (onnxruntime, any language) or a torch.export
program (.pt2), with the preprocessing inside, checked against PyTorch before it is kept;
or a Hugging Face Space folder around the ONNX file, with the model card.

    python export.py checkpoints/best_model.pt                  # -> best_model.onnx
    python export.py checkpoints/best_model.pt --format all     # .onnx and .pt2
    python export.py best_model.pt --format pt2 --out model.pt2
    python export.py best_model.pt --format space --out my-space/   # the demo page + card
    python export.py best_model.pt --format card --out MODEL_CARD.md

Any checkpoint the other tools take: this repo's, the reference's, a bare state dict.
The exported model takes what a decoder gives: `images`, uint8 RGB (batch, N, N, 3), any
batch, N the checkpoint's image size; it scales and normalises them with the checkpoint's
mean/std itself and returns `logits` and `probabilities` (batch, classes). The ONNX file's
metadata holds the class names (JSON), the image size, mean/std, and the checkpoint's
epoch and test accuracy. Exporter: torch.onnx.export(dynamo=True), the one PyTorch
recommends (through torch.export, onnxscript translating), at its default opset.

Every export is checked: on 64 images (the checkpoint's test set when it is on disk,
else generated) the exported model's top-1 must equal PyTorch's and its probabilities
differ by at most 1e-4. A file that fails is not kept (exit 1, one line). An --out that
is the checkpoint itself, or any existing file but an earlier export of the same format
(which is replaced), is refused before anything is exported (exit 2, one line); --force
replaces such a file, never the checkpoint. The same for a card this tool did not write
(its first lines say when it did) and for the files of a Space folder: the folder's
.export.json names what the last export wrote, as it wrote it; files beside them stay,
and a checkpoint under a Space file's name is refused even with --force. An --out that
is no regular file (a device, a FIFO, /dev/stdout) is refused, --force or not; so is a
checkpoint load_classifier refuses, and a --license that is not a Hub licence id.
"""
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import zipfile

from machinery.stops import quiet_ctrl_c

quiet_ctrl_c(__name__)  # before torch loads (seconds): a Ctrl-C there is one line, not a traceback

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from machinery import own_files
from machinery.failures import Stopped, signals_held
from machinery.own_files import writer_alive
from machinery.card import card, facts, summary, written_card
from machinery.checkpoint_files import (CheckpointError, atomic_path, dataset_of, fill_metadata,
                                        is_checkpoint_file, load_checkpoint)
from machinery.images import standardize
from machinery.predicting import as_classifier
from machinery.space_app import OneLineParser, stop_cleanly_on_sigterm, stopped_by_signal
from model import model_from_checkpoint

CHECK_IMAGES = 64
TOLERANCE = 1e-4  # max |difference| of a probability, fp32


class ExportError(Exception):
    """An export that cannot be made or does not match PyTorch: one line, exit 1."""


class Pixels(nn.Module):
    """The network behind its own preprocessing: uint8 RGB (N, S, S, 3) ->
    (logits, probabilities), both float32 (N, classes)."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, images):
        x = standardize(images.permute(0, 3, 1, 2).float(), self.mean, self.std)
        logits = self.net(x)
        return logits, logits.softmax(dim=1)


def deployable(path):
    """(Pixels module in eval mode, metadata dict, the note for a file without metadata)."""
    ckpt = load_checkpoint(path)
    note = fill_metadata(ckpt)
    net, _ = model_from_checkpoint(ckpt)
    as_classifier(net, ckpt, path)  # what load_classifier refuses (names, size, mean, std): never exported
    meta = {"class_names": json.dumps(list(ckpt["class_names"])), "image_size": str(ckpt["image_size"]),
            "mean": json.dumps(list(ckpt["mean"])), "std": json.dumps(list(ckpt["std"])),
            "epoch": str(ckpt.get("epoch", "")),
            "source": os.path.basename(path), "summary": summary(ckpt)}
    meta.update(accuracy_meta(facts(ckpt)))
    if ckpt.get("class_ids"):  # the data set's own ids (Tiny ImageNet's wnids): submissions
        meta["class_ids"] = json.dumps(list(ckpt["class_ids"]))
    return Pixels(net, ckpt["mean"], ckpt["std"]).eval(), meta, note, ckpt


def accuracy_meta(f):
    """The metadata's figures, each named by what it measured and whose it is: the test
    accuracy only where it is this checkpoint's own (in a last.pt of a run with validation
    images, the one written there is the best model's, kept under its own key)."""
    meta = {"test_accuracy": "" if f["accuracy"] is None else str(f["accuracy"])}
    if f["split"] == "val" and f["history"]:
        meta["validation_accuracy"] = "" if f["val_accuracy"] is None else str(f["val_accuracy"])
    if f["best_test"]:
        meta["best_model_test_accuracy"] = str(f["best_test"][0])
        meta["best_model_epoch"] = "" if f["best_test"][1] is None else str(f["best_test"][1])
    return meta


def check_images(ckpt):
    """64 uint8 (N, size, size, 3) images: the checkpoint's test set if it is on disk
    (never downloaded for this), else generated. Returns (images, where they came from)."""
    from machinery import data
    cfg = ckpt.get("config") or {}
    name = cfg.get("dataset") or dataset_of(ckpt) or "cifar100"
    size = ckpt["image_size"]
    try:
        x, _ = data.read_split(cfg.get("data_dir", "./data"), name, "test", size,
                               **data.folder_options(cfg))
        if len(x):  # (copied out of a folder's read-only memory map)
            kind = f"{name}-format test images, generated (--smoke)" if cfg.get("smoke") else \
                f"{name} test images"
            return np.array(x[:CHECK_IMAGES]), f"{min(len(x), CHECK_IMAGES)} {kind}"
    except (data.DataError, OSError, KeyError, ValueError):
        pass
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (CHECK_IMAGES, size, size, 3), dtype=np.uint8),
            f"{CHECK_IMAGES} generated images")


def _exportable(module):
    """The copy of the module that is exported (the original stays the reference)."""
    return copy.deepcopy(module)


def _dynamic_batch():
    return {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}


def check_packages(fmts):
    """One line naming the pip command when ONNX's optional packages are missing, said
    before anything is exported: torch.onnx needs onnx and onnxscript, the check
    onnxruntime."""
    if "onnx" not in fmts:
        return
    import importlib.util
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(missing)}: pip install "
                          f"onnx onnxscript onnxruntime (or --format pt2, which needs none)")


def export_onnx(module, meta, path, size):
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    program = torch.onnx.export(_exportable(module), (example,), dynamo=True, verbose=False,
                                input_names=["images"], output_names=["logits", "probabilities"],
                                dynamic_shapes=_dynamic_batch(), external_data=False)
    proto = program.model_proto
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    for node in _nodes(proto.graph, proto.functions):  # a Space publishes the file: its nodes'
        del node.metadata_props[:]  # stack traces would name this machine's folders
        node.doc_string = ""
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return f"opset {opset}"


def _nodes(graph, functions=()):
    """Every node of an ONNX graph, its subgraphs' and its functions'."""
    for node in list(graph.node) + [n for f in functions for n in f.node]:
        yield node
        for attr in node.attribute:
            for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                yield from _nodes(sub)


def run_onnx(path, images):
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["logits", "probabilities"], {"images": images})


def export_pt2(module, meta, path, size):
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    program = torch.export.export(_exportable(module), (example,), dynamic_shapes=_dynamic_batch())
    for node in program.graph.nodes:  # (stack traces name this machine's folders)
        node.meta.pop("stack_trace", None)
    with open(path, "wb") as f:  # (a file, not its name: the archive's folder is "archive",
        torch.export.save(program, f,  # never the temporary name with its process id)
                          extra_files={"metadata.json": json.dumps(meta)})
    return "torch.export"


def run_pt2(path, images):
    with torch.no_grad():
        return [t.numpy() for t in torch.export.load(path).module()(torch.from_numpy(images))]


FORMATS = {"onnx": (".onnx", export_onnx, run_onnx), "pt2": (".pt2", export_pt2, run_pt2)}


MARKS = {"class_names", "image_size", "mean", "std", "epoch", "source", "summary"}  # deployable()'s


def is_export(path, fmt):
    """Whether `path` is a file this tool exported in format `fmt`: every metadata key
    deployable() writes is inside (another tool's model with class names alone is not)."""
    if fmt == "pt2":
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/extra/metadata.json")]
            try:
                return bool(names) and MARKS <= set(json.loads(z.read(names[0])))
            except (ValueError, TypeError):  # not JSON, or not an object
                return False
    import onnx
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 -- protobuf's decode errors: not an ONNX file
        return False
    return MARKS <= {p.key for p in proto.metadata_props}


SYSTEM = ("/dev/", "/proc/", "/sys/")


def check_special(out):
    """Refuse, even with --force and before any work, an --out that exists and is not a
    regular file: a device, a FIFO (reading it to see whose it is would wait for ever), a
    socket, or a link that leads into /dev, /proc or /sys (/dev/stdout): replacing one
    breaks what others use it for."""
    path, hops = os.path.abspath(out), 0
    while True:  # each link on the way, not only where it ends (/proc/self/fd/1 -> a file)
        if path.startswith(SYSTEM):
            raise CheckpointError(f"refusing to write {out}: it is, or leads to, {path}: not a "
                                  f"regular file; choose another --out")
        if not os.path.islink(path) or hops == 40:
            break
        path, hops = os.path.join(os.path.dirname(path), os.readlink(path)), hops + 1
    try:
        mode = os.stat(out).st_mode
    except OSError:
        return  # nothing there (or a dangling link): a new file
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # (a folder: said by the format)
        raise CheckpointError(f"refusing to write {out}: it is not a regular file (a device, "
                              f"FIFO or socket); choose another --out")


def check_parents(out):
    """Refuse, before any work, an `out` one of whose folders is a file (ck.pt/model.onnx):
    the folders export makes would fail only once the model was exported."""
    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.isdir(folder):
        if os.path.lexists(folder):
            raise CheckpointError(f"cannot write {out}: {folder} exists and is not a folder; "
                                  f"choose another --out")
        folder = os.path.dirname(folder)


def check_out(out, fmt, checkpoint, force=False):
    """Refuse, before anything is exported, an `out` that is the checkpoint itself or (but
    with --force) an existing file that is not an earlier export of the same kind (which
    is replaced)."""
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        raise CheckpointError(f"--out {out} is a folder; give the file's name (model{FORMATS[fmt][0]})")
    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.isdir(folder):  # (export makes the folders it needs: where it can)
        folder = os.path.dirname(folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write {out}: {folder} cannot be written to")
    if not os.path.lexists(out):
        return
    if os.path.exists(checkpoint) and os.path.exists(out) and os.path.samefile(out, checkpoint):
        raise CheckpointError(f"refusing to write {out}: it is the checkpoint being exported; "
                              f"choose another --out")
    if is_checkpoint_file(out):  # another one: an export never replaces a checkpoint either
        raise CheckpointError(f"refusing to write {out}: it is a checkpoint; choose another --out")
    dangling = os.path.islink(out) and not os.path.exists(out)  # (--force replaces the link)
    if not (os.path.isfile(out) or dangling) or not (force or is_export(out, fmt)):
        kind = {"onnx": "an ONNX", "pt2": "a .pt2"}[fmt]
        raise CheckpointError(f"refusing to write {out}: it exists and is not {kind} export; "
                              f"choose another --out, or add --force to replace it")


def compare(reference, exported):
    """(top-1 agreement, max |difference| of the probabilities) of two (logits, probs)."""
    same = bool((reference[0].argmax(1) == exported[0].argmax(1)).all())
    return same, float(np.abs(reference[1] - exported[1]).max())


def export(path, fmt, out, images, module, meta, say=print, out_name=None, commit=True):
    """Export to `out` via a temporary file, check it, and keep it only if it matches.
    out_name: the name to say, where `out` is itself a temporary one (a Space's build).
    commit=False: leave the checked file under its temporary name, returned, for the
    caller to move into place with the others (--format all: all of them or none)."""
    suffix, write, run = FORMATS[fmt]
    shown_out = out_name or out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    remove_dead_checks(out, suffix)
    tmp = f"{os.path.splitext(out)[0]}.checking{os.getpid()}{suffix}"  # the ending tools expect
    try:
        try:
            how = write(module, meta, tmp, images.shape[1])  # the size the check images have
        except ExportError:
            raise
        except OSError as e:  # the disk full, a folder not writable: say the user's file
            raise ExportError(f"cannot write {shown_out}: {e.strerror or e}") from e
        except Exception as e:  # noqa: BLE001 -- the exporters raise many kinds
            first = (str(e).strip().splitlines() or [""])[0][:200].replace(tmp, shown_out)
            raise ExportError(f"cannot export {path} to {fmt}: {type(e).__name__}: {first}") from e
        with torch.no_grad():
            reference = [t.numpy() for t in module(torch.from_numpy(images))]
        same, diff = compare(reference, run(tmp, images))
        if not same or not diff <= TOLERANCE:  # (NaN > TOLERANCE is False: NaN fails too)
            raise ExportError(f"the {fmt} export of {path} does not match PyTorch on "
                              f"{len(images)} images (top-1 {'identical' if same else 'differs'}, "
                              f"max |probability difference| {diff:.2e}, allowed {TOLERANCE:.0e}); "
                              f"nothing was written")
        with open(tmp, "rb+") as f:  # on disk before it takes the final name
            os.fsync(f.fileno())
        mib = os.path.getsize(tmp) / 2**20
        if commit:
            os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    say(f"{shown_out}: {fmt} ({how}), {mib:.1f} MiB; checked against PyTorch: top-1 identical, "
        f"max |probability difference| {diff:.1e}")
    return out if commit else tmp


def export_all(path, outs, images, module, meta):
    """Each format of `outs` made and checked first, then all moved into place: a stop or a
    failure half-way leaves every earlier file as it was (never a new .onnx beside an old
    .pt2 of another model, under a message that nothing was changed)."""
    checked = []
    try:
        for fmt, out in outs.items():
            checked.append((export(path, fmt, out, images, module, meta, commit=False), out))
        with signals_held(WHOLE):  # (a Ctrl-C between two renames: a new .onnx, an old .pt2)
            for tmp, out in checked:
                os.replace(tmp, out)
    finally:
        for tmp, _ in checked:
            with contextlib.suppress(OSError):
                os.remove(tmp)


def remove_dead_checks(out, suffix):
    """The files being checked that a killed export of `out` left beside it (its
    <name>.checking<pid><suffix>, full size): those whose process is gone, or whose id a
    later process took. Another export of the same name running now keeps its own."""
    folder, name = os.path.split(os.path.abspath(out))
    mine = re.compile(re.escape(os.path.splitext(name)[0]) + r"\.checking(\d+)" + re.escape(suffix))
    for old in os.listdir(folder):
        found, path = mine.fullmatch(old), os.path.join(folder, old)
        if not found or os.path.islink(path) or not os.path.isfile(path):
            continue
        with contextlib.suppress(OSError):
            if not writer_alive(int(found.group(1)), path):
                os.remove(path)


# -----------------------------------------------------------------------------
# A Hugging Face Space, and the model card alone

SPACE_FILES = ("app.py", "pictures.py", "model.onnx", "requirements.txt", "README.md")
# what the Space installs (CPU): the versions this repo's tests ran the page with
SPACE_PINS = {"gradio": "6.31.0", "onnxruntime": None, "numpy": None, "pillow": None}
EXAMPLES = 6


def pinned():
    """{package: version or None} of what the Space installs: the versions here."""
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name, fixed in SPACE_PINS.items():
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = fixed
    return out


def space_names(examples):
    """What export_space writes, relative to its folder."""
    return list(SPACE_FILES) + ["training_curves.png"] + [
        f"examples/{i}.png" for i in range(min(len(examples), EXAMPLES))]


def space_writes(name):
    """Whether an export, of this version or another (more examples), writes `name`."""
    return name in SPACE_FILES or name == "training_curves.png" or \
        re.fullmatch(r"examples/\d+\.png", name) is not None


def check_space(out, examples, force, checkpoint):
    """An --out folder that is new, or whose files this tool would replace are its own as
    it wrote them (own_files' manifest), or --force. Files beside them are kept. A
    checkpoint under one of the names it writes or removes (the one being exported, say,
    copied in as model.onnx), or a folder under the name of a file it writes (or a file
    as examples/), is refused even with --force, before the first file is replaced.
    examples: the pictures this export writes; None, before they are known: all but
    whose files these are is checked then."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CheckpointError(f"refusing to write {out}: it is a file; a Space is a folder")
    for name in space_names(() if examples is None else examples) + [own_files.MANIFEST]:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise CheckpointError(f"refusing to write {out}: its {name} is a folder, where the "
                                  f"export writes a file; move it away, or choose another --out")
    folder = os.path.join(out, "examples")
    if os.path.lexists(folder) and not os.path.islink(folder) and not os.path.isdir(folder):
        raise CheckpointError(f"refusing to write {out}: its examples is a file, where the "
                              f"export writes a folder; move it away, or choose another --out")
    removes = [n for n in own_files.written(out) if space_writes(n)] if os.path.isdir(out) else []
    for name in space_names(range(EXAMPLES)) + removes:  # every name it writes, or removes
        path = os.path.join(out, name)
        if os.path.exists(checkpoint) and os.path.exists(path) and os.path.samefile(path, checkpoint):
            raise CheckpointError(f"refusing to write {out}: its {name} is the checkpoint being "
                                  f"exported; choose another --out")
        if is_checkpoint_file(path):
            raise CheckpointError(f"refusing to write {out}: its {name} is a checkpoint; "
                                  f"choose another --out")
    if os.path.islink(os.path.join(out, "examples")) and not force:
        raise CheckpointError(f"refusing to write into {out}/examples: it is a link to another "
                              f"folder; add --force to replace the link with a folder")
    if examples is None:
        return
    theirs = os.path.isdir(out) and own_files.foreign(out, space_names(examples))
    if theirs and not force:
        raise CheckpointError(
            f"refusing to replace {', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''} "
            f"in {out}: not written by export.py, or changed since; add --force to replace "
            f"them, or choose another --out")


def export_space(path, out, images, module, meta, ckpt, examples=(), license="mit"):
    """A folder that runs as a Hugging Face Space (Gradio SDK) without this repo: the page
    (machinery/space_app.py as app.py, images.py as pictures.py), the checked ONNX model,
    pinned CPU requirements, a few examples, the training curves and the model card.

    Everything is made in a temporary folder beside `out` first (build_home) and moved
    into place only once all of it is made and checked: an export stopped half-way (Ctrl-C, kill)
    leaves the earlier one as it was. The earlier export's own examples go; what it did
    not write stays; a link in the folder is replaced by the file, never written through."""
    from machinery.metrics import write_metrics
    os.makedirs(out, exist_ok=True)
    remove_dead_builds(out)
    home, prefix = build_home(out)
    build = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=home)
    try:
        names = space_names(examples)
        os.makedirs(os.path.join(build, "examples"))
        export(path, "onnx", os.path.join(build, "model.onnx"), images, module, meta, out_name=
               os.path.join(out, "model.onnx"))
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "machinery")
        shutil.copyfile(os.path.join(here, "space_app.py"), os.path.join(build, "app.py"))
        shutil.copyfile(os.path.join(here, "images.py"), os.path.join(build, "pictures.py"))
        versions = pinned()
        with open(os.path.join(build, "requirements.txt"), "w") as f:
            f.write("".join(f"{n}=={v}\n" if v else f"{n}\n" for n, v in versions.items()))
        for i, image in enumerate(examples[:EXAMPLES]):
            Image.fromarray(image).save(os.path.join(build, "examples", f"{i}.png"))
        curve = "training_curves.png"
        with tempfile.TemporaryDirectory() as tmp:
            try:
                write_metrics(ckpt, tmp)
                shutil.copyfile(os.path.join(tmp, "metrics_overview.png"), os.path.join(build, curve))
            except CheckpointError:  # no history (a bare state dict): no curves
                curve = None
                names.remove("training_curves.png")
        with open(os.path.join(build, "README.md"), "w", encoding="utf-8") as f:
            f.write(card(ckpt, "model.onnx", curve, kind="space", source=path,
                         sdk_version=versions["gradio"], license=license))
        # all made: now in place, each file by a rename (whole, never through a link), the
        # manifest last, with Ctrl-C and SIGTERM held until all of it is done
        with signals_held(WHOLE):
            for old in own_files.leftovers(out, names, space_writes):
                os.remove(os.path.join(out, old))
            if os.path.islink(os.path.join(out, "examples")):
                os.remove(os.path.join(out, "examples"))
            os.makedirs(os.path.join(out, "examples"), exist_ok=True)
            for name in names:
                os.replace(os.path.join(build, name), os.path.join(out, name))
            own_files.record(out, names)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    print(f"{out}: a Space (Gradio) with the model card; try it: pip install -r "
          f"{os.path.join(out, 'requirements.txt')} && python {os.path.join(out, 'app.py')}")


WHOLE = "the export was already in place, whole, when it came"
BUILD = re.compile(r"\.export-(\d+)-[a-z0-9_]{8}")  # a Space's build folder (mkdtemp's), by its process id


def build_home(out):
    """Where a Space is built, and the build folder's prefix: beside `out` (a sibling
    `.<name>.export-<pid>-*`), so that a killed export's half-made folder is never inside
    the Space, where the next upload or `git add .` would carry it. Inside `out` only
    where its parent cannot take it (not writable, or another file system, where the
    final renames would not be atomic; or a name so long that the build's would not fit)."""
    out = os.path.abspath(out)
    parent, prefix = os.path.dirname(out), f".{os.path.basename(out)}.export-"
    fits = len(os.fsencode(prefix)) + 30 <= 255  # (a long name: its build's name would not fit)
    with contextlib.suppress(OSError):
        if fits and os.access(parent, os.W_OK | os.X_OK) and os.stat(parent).st_dev == os.stat(out).st_dev:
            return parent, prefix
    return out, ".export-"


def remove_dead_builds(out):
    """The build folders that a killed export left beside or in `out`: those whose process
    is gone (or whose id a later process took). Another export into the same folder at the
    same time keeps its own; a folder not named exactly as a build (`.export-mine`, an
    older export.py's without an id) is the user's, and stays."""
    out = os.path.abspath(out)
    parent, mine = os.path.dirname(out), f".{os.path.basename(out)}"
    places = [(out, old) for old in os.listdir(out)]
    with contextlib.suppress(OSError):
        places += [(parent, old[len(mine):]) for old in os.listdir(parent)
                   if old.startswith(mine + ".export-")]
    for home, old in places:
        path = os.path.join(home, mine + old if home == parent else old)
        found = BUILD.fullmatch(old)
        if not found or os.path.islink(path) or not os.path.isdir(path):
            continue
        with contextlib.suppress(OSError):
            if not writer_alive(int(found.group(1)), path):
                shutil.rmtree(path, ignore_errors=True)


# The licence ids the Hugging Face Hub offers for a card's `license:` (its list, 2026);
# "other" for any licence it does not name (the card's text then says which)
LICENSES = frozenset("""
apache-2.0 mit openrail openrail++ bigscience-openrail-m creativeml-openrail-m
bigscience-bloom-rail-1.0 bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause
bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0
cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1
eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl
apple-ascl apple-amlr mpl-2.0 odc-by odbl osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib
pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma
h-research intel-research unknown other""".split())


def check_license(license):
    """A licence id the Hub names, nothing else: the card's YAML front matter takes it as
    it is (a colon or a new line there would break it, or add keys), and the Hub shows an
    id it does not know as no licence at all."""
    if license not in LICENSES:
        low = license.strip().lower()
        close = [low] if low in LICENSES else sorted(i for i in LICENSES if i[:3] == low[:3])[:4]
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise CheckpointError(f"--license {license!r}: not a licence id the Hugging Face Hub "
                              f"names (mit, apache-2.0, cc-by-4.0, cc-by-nc-4.0, ...; 'other' for "
                              f"any other licence){hint}")


def write_card(ckpt, out, source, force, license="mit"):
    """The model card of a model repository, written atomically; an existing file only
    where it is a model card this tool wrote and nobody changed since (card.written_card),
    or with --force; never a checkpoint."""
    if os.path.isdir(out):
        raise CheckpointError(f"--out {out} is a folder; give the card's file name (README.md)")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)  # (as the others do)
    if os.path.lexists(out) and not force:
        try:
            with open(out, encoding="utf-8", errors="replace") as f:
                ours = written_card(f.read()) == "model"
        except OSError:
            ours = False
        if not ours:
            raise CheckpointError(f"refusing to replace {out}: not a model card export.py wrote, "
                                  f"or changed since (by hand, or a Space's card); add --force "
                                  f"to replace it, or choose another --out")
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:  # (a link: replaced)
        f.write(card(ckpt, "model.onnx", kind="model", source=source, license=license))
    print(f"{out}: the model card")


def main(argv=None):
    p = OneLineParser(description="Export a checkpoint to ONNX or torch.export, "
                                            "preprocessing included, checked against PyTorch.")
    p.add_argument("checkpoint", help="e.g. checkpoints/best_model.pt")
    p.add_argument("--format", choices=("onnx", "pt2", "all", "space", "card"), default="onnx",
                   help="onnx (default), pt2 (torch.export), all (both), space (a Hugging Face "
                        "Space folder: the page, the ONNX model, the card), card (the model "
                        "card alone)")
    p.add_argument("--out", help="the file to write (default: the checkpoint's name with the "
                                 "format's ending); with --format all, the name without it; "
                                 "with space, a folder (default: <name>-space)")
    p.add_argument("--force", action="store_true",
                   help="replace files export.py did not write (or that were changed since): "
                        "a hand-written card, files in a Space folder; never a checkpoint")
    p.add_argument("--license", default="mit",
                   help="the licence the card states for the weights, as the Hub names them "
                        "(default mit, the code's; your data's terms may say otherwise)")
    args = p.parse_args(argv)
    fmts = {"all": ["onnx", "pt2"], "space": ["onnx"], "card": []}.get(args.format, [args.format])
    stem = os.path.splitext(args.out or args.checkpoint)[0]
    try:
        if os.path.isdir(args.checkpoint):
            raise CheckpointError(f"{args.checkpoint} is a folder; give the checkpoint file "
                                  f"(its checkpoints/best_model.pt, say)")
        check_packages(fmts)
        check_license(args.license)
        outs = {fmt: args.out if args.out and len(fmts) == 1 else stem + FORMATS[fmt][0]
                for fmt in fmts if fmt in FORMATS and args.format != "space"}
        space, card_out = args.out or stem + "-space", args.out or stem + "_card.md"
        for out in {"space": [space], "card": [card_out]}.get(args.format, outs.values()):
            check_special(out)  # a device, a FIFO, /dev/stdout: never, before any work
            check_parents(out)  # (ck.pt/model.onnx)
        if args.format == "space":
            check_space(space, None, args.force, args.checkpoint)
        for fmt, out in outs.items():
            check_out(out, fmt, args.checkpoint, args.force)
        module, meta, note, ckpt = deployable(args.checkpoint)
        if note:
            print(f"note: {args.checkpoint}: {note}", file=sys.stderr)
        if args.format == "card":
            write_card(ckpt, card_out, args.checkpoint, args.force, args.license)
            return 0
        images, source = check_images(ckpt)
        if args.format == "space":
            real = not source.endswith("generated images")  # the test set's: worth showing
            examples = images if real else ()
            check_space(space, examples, args.force, args.checkpoint)  # the names it writes
            print(f"exporting {args.checkpoint} (epoch {meta['epoch'] or '?'}); checking on {source}")
            export_space(args.checkpoint, space, images, module, meta, ckpt, examples,
                         args.license)
            return 0
        print(f"exporting {args.checkpoint} (epoch {meta['epoch'] or '?'}); checking on {source}")
        export_all(args.checkpoint, outs, images, module, meta)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 1
    except Stopped as e:  # (held while the files moved into place: they are all new)
        print(f"stopped by {signal.Signals(e.signum).name}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("stopped: nothing was changed (an export is kept only whole)", file=sys.stderr)
        return 130
    except Exception:
        if stopped_by_signal():  # SIGTERM inside an import: stopped, not a failure to report
            print("stopped: nothing was changed (an export is kept only whole)", file=sys.stderr)
            return 143
        raise
    return 0


if __name__ == "__main__":
    stop_cleanly_on_sigterm()  # kill/SIGTERM as Ctrl-C: the temporary files are removed
    sys.exit(main())
