"""Predict the classes of many pictures into a table.

    python predict.py photos/ --checkpoint checkpoints/best_model.pt      # -> predictions.csv
    python predict.py "shots/*.jpg" @more.txt --format jsonl --out preds.jsonl
    python predict.py test/ --checkpoint best_model.pt --format submission   # Kaggle: id,label
    python predict.py photos/ --onnx best_model.onnx                       # onnxruntime runs it

PATH: files, folders (searched as `--dataset folder` searches them: sub-folders, every
format it reads, what tools leave behind skipped), globs, or @list.txt (a path a line).
One row per file, in a stable order (as given; a folder's files sorted): the path, the
top-k classes with their probabilities and an error column (CSV); JSON Lines with
--format jsonl (or --out x.jsonl), one JSON list with json (or --out x.json); `id,label` with --format submission (id: the file's name without its
ending, in natural order: 1, 2, ..., 10; label: the data set's own class id where the
checkpoint has them, Tiny ImageNet's n02123045, else the class name). Files are decoded in
worker processes while the network works through the batches before them on its device
(the GPU when there is one). A file that cannot be read (truncated, empty, not an image,
too large) gets its row with the error, and the run goes on. Where the files sit in class
folders named after the checkpoint's classes (or class ids), two classes at least, the
summary line also gives the accuracy against those folders.

Exit status: 0 when every file was predicted; 1 when some could not be read (their rows
say why) or the table could not be written; 2 for bad input, before any picture is decoded and anything written: a PATH
that does not exist or holds no picture, a checkpoint that is not one, an --out that
exists (without --force), that cannot be written, that is a pipe or device (/dev/stdout:
even with --force), or that is one of the inputs (even with --force), two files of one
submission id. The table is written atomically: it appears
whole, or not at all.
"""
import argparse
import csv
import errno
import json
import os
import re
import sys
import time
import unicodedata
import warnings

from machinery.stops import quiet_ctrl_c

quiet_ctrl_c(__name__)  # before torch loads (seconds): a Ctrl-C there is one line, not a traceback

from tqdm import tqdm

from machinery.checkpoint_files import CheckpointError, atomic_path, is_checkpoint_file
from machinery.cifar import DataError
from machinery.config import UserError
from machinery.folder_listing import EXTENSIONS, printable
from machinery.imagefolder import shown
from machinery.predicting import expand, onnx_classifier, predictions, table_truth, truth
from machinery.runtime import pick_device
from machinery.workers import usable_cpus
from model import load_classifier

FORMATS = {"csv": "predictions.csv", "jsonl": "predictions.jsonl", "json": "predictions.json",
           "submission": "submission.csv"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Predict the classes of many pictures into a table.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="files, folders, globs, or @list.txt (one path a line)")
    p.add_argument("--checkpoint", default=None,
                   help="the trained model (default: checkpoints/best_model.pt)")
    p.add_argument("--onnx", metavar="FILE", default=None,
                   help="an export.py ONNX file instead of a checkpoint, run by onnxruntime")
    p.add_argument("--out", default=None,
                   help="the table to write (default: " + ", ".join(
                       f"{v} for {k}" for k, v in FORMATS.items()) + ")")
    p.add_argument("--format", choices=list(FORMATS), default=None,
                   help="csv, jsonl (a JSON object a line), json (one JSON list), or "
                        "submission (id,label); default: --out's ending (.jsonl, .json), else csv")
    p.add_argument("--top-k", type=int, default=5, help="classes per file (default 5)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="pictures per batch through the network (default 256)")
    p.add_argument("--num-workers", type=int, default=-1,
                   help="decoding processes (default -1: one per usable core, at most 8)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cuda, mps, cpu")
    p.add_argument("--tta", action="store_true",
                   help="average each picture's logits with its mirror's, as --evaluate --tta")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out (never one of the inputs)")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    for a in argv[:argv.index("--") if "--" in argv else len(argv)]:
        if a.startswith("-") and a not in p._option_string_actions and os.path.lexists(a):
            p.error(f"{a} is a file, but a name that starts with '-' reads as a flag: write "
                    f"./{a}, or put the files last, after -- (predict.py --out p.csv -- {a})")
    return p.parse_args(argv)


NAME_MAX = 255  # bytes of a file name on Linux's and macOS's file systems


def check(args):
    """The one-line refusals that need no listing, before anything is read or written."""
    for name, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1 (got {value})")
    if args.checkpoint and args.onnx:
        raise UserError("give --checkpoint or --onnx, not both")
    if args.onnx and args.device not in ("auto", "cpu"):
        raise UserError(f"--onnx runs on the CPU (onnxruntime); --device {args.device} is for "
                        f"--checkpoint")
    if args.out is not None and not args.out.strip():
        raise UserError("--out '': give the table's file name (or leave --out out: "
                        + ", ".join(f"{v} for {k}" for k, v in FORMATS.items()) + ")")
    if args.out and args.out.endswith(("/", os.sep)):
        raise UserError(f"--out {shown(args.out)} ends with /, a folder's name; give the "
                        f"table's file name")
    ending = os.path.splitext(args.out or "")[1].lower()[1:]
    args.format = args.format or (ending if ending in ("jsonl", "json") else "csv")
    args.out = args.out or FORMATS[args.format]
    if args.out == "-":  # not a file named "-": the table is a file, never stdout
        raise UserError("--out -: predict.py writes its table to a file, not to stdout (the "
                        "summary goes there); give a file's name (a file named -: --out ./-)")
    if os.path.exists(args.out) and not (os.path.isfile(args.out) or os.path.isdir(args.out)):
        # a pipe or device (/dev/stdout, /dev/null): the table is renamed into place, which
        # would replace the node itself (or fail on /dev, after every picture is decoded)
        raise UserError(f"--out {shown(args.out)} is not a file but a pipe, socket or device, "
                        f"which the table cannot replace (even with --force); give a file's name")
    if os.path.islink(args.out) and os.path.exists(args.out):
        args.out = os.path.realpath(args.out)  # the table replaces the link's file, not the link
    out = shown(args.out)
    if is_checkpoint_file(args.out):
        raise UserError(f"refusing to write {out}: it is a checkpoint; choose another --out")
    if os.path.isdir(args.out):
        raise UserError(f"--out {out} is a folder; give the table's file name")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise UserError(f"--out {out}: the folder {shown(folder)} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {shown(folder)} cannot be written to")
    if sticky_and_theirs(folder, args.out):
        raise UserError(f"--out {out}: another user's file in a folder where only its owner may "
                        f"replace it (/tmp's sticky bit); choose another --out")
    if len(os.fsencode(os.path.basename(args.out))) + len(f".tmp{os.getpid()}") > NAME_MAX:
        raise UserError(f"--out {out}: the name is too long (with its temporary ending, over "
                        f"{NAME_MAX} bytes)")


def sticky_and_theirs(folder, path):
    """Whether `path` is another user's file in a sticky folder (/tmp): a rename over it
    fails (EPERM), which would be found only after every picture was decoded."""
    try:
        me, st, owner = os.geteuid(), os.stat(folder), os.lstat(path).st_uid
    except (OSError, AttributeError):  # (no such file; Windows has no euid)
        return False
    return bool(st.st_mode & 0o1000) and me != 0 and me not in (owner, st.st_uid)


def check_found(args, found, lists):
    """The refusals that need the list of files: nothing found, --out among the inputs
    (even with --force: predicting a file must not destroy it), an --out that exists
    (without --force), two files of one submission id."""
    if not found:
        raise DataError(f"nothing to predict: {', '.join(map(shown, args.paths))} "
                        f"{'holds' if len(args.paths) == 1 else 'hold'} no picture "
                        f"({', '.join(e.lstrip('.') for e in EXTENSIONS)})")
    out = shown(args.out)
    if os.path.exists(args.out):
        inputs = [p for p, _ in found if isinstance(p, str)] + list(lists)
        for p in inputs + [p for p in (args.checkpoint, args.onnx) if p]:
            if os.path.exists(p) and os.path.samefile(p, args.out):
                raise UserError(f"refusing to write {out}: it is one of the inputs "
                                f"(--force replaces only an earlier table); choose another --out")
    if os.path.lexists(args.out) and not args.force:
        raise UserError(f"{out} exists: add --force to replace it, or choose another --out")
    if args.format == "submission":
        first = {}
        for source, _ in found:  # (é as a Mac and Linux write it: one id, two files)
            other = first.setdefault(unicodedata.normalize("NFC", submission_id(source)), source)
            if other is not source:
                raise UserError(f"--format submission: {shown(other)} and {shown(source)} both "
                                f"have the id {submission_id(source)}, and a submission needs one "
                                f"row per id; predict them separately, or rename one")


def submission_id(source):
    """A file's name without its ending, printable (a name that is not UTF-8 gets \\xNN)."""
    return shown(os.path.splitext(os.path.basename(str(source)))[0])


def workers_for(asked, files):
    """--num-workers as decoding processes: -1, the default (predicting.batches chooses);
    an explicit number capped at the files and at the usable cores (1000 for 7 files
    started 1000 processes: 164 s where 0.5 s did), said in one line."""
    if asked < 0:
        return None
    cores = usable_cpus()  # (the cores this process may use: taskset, a container's share)
    cap = max(1, min(files, cores))  # (decoding is bound by the cores: no more is faster)
    if asked > cap:
        print(f"note: --num-workers {asked} capped at {cap} ({files:,} file{'s' * (files != 1)}, "
              f"{cores} usable core{'s' * (cores != 1)})", file=sys.stderr)
    return min(asked, cap)


def natural(text):
    """A sort key for "2" before "10" (and "img2" before "img10"); ASCII digits only."""
    return [(0, int(t), "") if t.isascii() and t.isdigit() else (1, 0, t)
            for t in re.split(r"([0-9]+)", text) if t]


def rows(found, results, k, fmt, ids=None):
    """The table's rows (header first) for the predictions, in the order of `found` (a
    submission's by id, in natural order). ids: the class ids a submission names."""
    if fmt == "submission":
        yield ["id", "label"]
        pairs = sorted(zip(found, results), key=lambda fr: natural(submission_id(fr[0][0])))
        for (source, _), p in pairs:
            label = "" if not p.top else ids[p.classes[0]] if ids else p.top[0][0]
            yield [submission_id(source), shown(label)]
        return
    if fmt == "csv":
        yield ["path"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "prob")] + ["error"]
    for (source, _), p in zip(found, results):
        path = shown(source) if isinstance(source, str) else repr(source)
        top = [(shown(name), prob) for name, prob in (p.top or [])[:k]]  # (caf\xe9: not UTF-8)
        if fmt == "csv":
            cells = [v for name, prob in top for v in (name, f"{prob:.6f}")]
            yield [path] + cells + [""] * (2 * k - len(cells)) + [p.error]
        else:
            yield {"path": path, "top": [{"class": n, "probability": round(pr, 6)} for n, pr in top],
                   "error": p.error}


def write_table(path, table, fmt):
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        if fmt == "jsonl":
            for row in table:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif fmt == "json":  # one list that json.load reads, a file a line
            f.write("[\n" + ",\n".join(json.dumps(row, ensure_ascii=False) for row in table) + "\n]\n")
        else:
            csv.writer(f).writerows(table)


class Tally:
    """Counts for the summary line: files, failures, and the accuracy against class folders
    (only where the files sit in two or more: one folder named like a class is no label)."""

    def __init__(self, clf, found=()):
        self.classes, self.ids = clf.class_names, clf.class_ids
        self.n, self.failed, self.labelled, self.top1, self.top5 = 0, 0, 0, 0, 0
        self.seen = set()  # the classes the folders named
        self.found, self.notes, self.by_folder = found, [], 0
        self.tables = {}  # {folder given: ({picture: class}, the table's name or None)}

    def label(self, source, root):
        """The class a picture's folder names, else the one a table labelling the folder
        given names (Tiny ImageNet's val/val_annotations.txt), else None."""
        label = truth(source, root, self.classes, self.ids)
        self.by_folder += label is not None
        if label is not None or root is None:
            return label
        if root not in self.tables:  # (read once per folder given)
            under = [s for s, r in self.found if r == root and isinstance(s, str)]
            labels, table, note = table_truth(root, under, self.classes, self.ids)
            self.tables[root] = (labels, table if labels else None)
            self.notes += [note] if note else []
        return self.tables[root][0].get(source)

    def add(self, p, source, root):
        self.n += 1
        if p.top is None:
            self.failed += 1
            return
        label = self.label(source, root)
        if label is not None:
            self.seen.add(label)
            self.labelled += 1
            self.top1 += p.classes[0] == label
            self.top5 += label in p.classes[:5]

    def line(self, out, seconds):
        text = (f"{self.n:,} file{'s' * (self.n != 1)}: {self.n - self.failed:,} predicted, "
                f"{self.failed:,} could not be read; {shown(out)} ({seconds:.1f} s, "
                f"{self.n / max(seconds, 1e-9):.0f} files/s)")
        if len(self.seen) > 1:
            top5 = f", top-5 {100 * self.top5 / self.labelled:.2f}%" if len(self.classes) > 5 else ""
            tables = sorted({t for _, t in self.tables.values() if t})
            against = " and ".join(tables + ["their class folders"] * (self.by_folder > 0 or not tables))
            text += (f"\nagainst {against} ({self.labelled:,} files): top-1 "
                     f"{100 * self.top1 / self.labelled:.2f}%{top5}")
        return text


def run(args):
    check(args)
    lists = []
    with warnings.catch_warnings(record=True) as said:  # an @list's comment naming a file
        warnings.simplefilter("always")
        found = expand(args.paths, lists)
    for w in said:
        print(f"note: {w.message}", file=sys.stderr)
    check_found(args, found, lists)
    with warnings.catch_warnings(record=True) as said:  # a file without names: one line
        warnings.simplefilter("always")
        clf = (onnx_classifier(args.onnx) if args.onnx else
               load_classifier(args.checkpoint or os.path.join("checkpoints", "best_model.pt"),
                               pick_device(args.device)))
    for w in said:
        print(f"warning: {w.message}", file=sys.stderr)
    tally, results, t0 = Tally(clf, found), [], time.perf_counter()
    stream = predictions(clf, args.paths, max(args.top_k, 5), args.tta, args.batch_size,
                         workers_for(args.num_workers, len(found)), expanded=found)
    with tqdm(total=len(found), desc="predicting", unit="file", file=sys.stderr) as bar:
        for (source, root), p in zip(found, stream):
            tally.add(p, source, root)
            results.append(p)
            bar.update()
    try:
        write_table(args.out, rows(found, results, min(args.top_k, len(clf.class_names)),
                                   args.format, clf.class_ids), args.format)
    except OSError as e:  # the table appears whole or not at all
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise Unwritten(f"cannot write {shown(args.out)}: {e.strerror or e}; nothing was "
                        f"written (the predictions are lost: {'free the disk, or ' * full}give "
                        f"another --out{'' if full else ' and run it again'})") from None
    print(tally.line(args.out, time.perf_counter() - t0))
    for note in tally.notes:
        print(f"note: {note}", file=sys.stderr)
    named = class_folders_named(args.paths, clf)
    if len(tally.seen) < 2 and len(named) > 1:
        print(f"note: {', '.join(named[:3])}{', ...' if len(named) > 3 else ''} are named like "
              f"classes, but a folder named alone labels nothing: give their parent folder "
              f"(or quote a glob: \"test/*\", not test/*) for the accuracy against them",
              file=sys.stderr)
    for p in [p for p in results if p.top is None][:5]:
        print(f"could not read {printable(p.source) if isinstance(p.source, str) else p.source}: "
              f"{p.error}", file=sys.stderr)
    return 1 if tally.failed else 0


def class_folders_named(paths, clf):
    """The folders given one by one (a shell's expansion of test/*) whose names are the
    checkpoint's classes: worth a note where no accuracy line could be given."""
    known = {unicodedata.normalize("NFC", n) for n in [*clf.class_names, *(clf.class_ids or [])]}
    return [printable(p) for p in map(str, paths) if os.path.isdir(p) and
            unicodedata.normalize("NFC", os.path.basename(os.path.normpath(p))) in known]


class Unwritten(Exception):
    """The table could not be written after the predictions: one line, exit 1."""


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (UserError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Unwritten as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # a decoding worker killed (out of memory on a huge picture?)
        if "DataLoader worker" not in str(e):
            raise
        print(f"error: a decoding worker died, out of memory on a very large picture or killed "
              f"({str(e).splitlines()[0]}); nothing was written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped: nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
