"""Which files of a data folder are the images of which split, under which label: the
layouts of the README's table, each folder listed once.

A split is labelled by its class folders (torchvision's ImageFolder), or by a table of
labels (label_tables.py): beside the image folder, as Kaggle ships trainLabels.csv, or
inside it, as Tiny ImageNet's val/val_annotations.txt. An evaluation folder with neither
is unlabeled (Kaggle's test/, Tiny ImageNet's test/): said in one line and left out.
Class ids are the folder names or the table's labels; a words.txt beside them (Tiny
ImageNet's, ImageNet's synset list) gives the names shown.
"""
import os
import re
import stat
import sys
import unicodedata
import zlib
from dataclasses import dataclass, field

from .cifar import DataError
from . import label_tables

# torchvision's ImageFolder's extensions, and GIF (its first frame)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
EVAL_FOLDERS = ("test", "val", "valid", "validation")  # any case
SPLIT_FOLDERS = ("train",) + EVAL_FOLDERS
LEFT_BEHIND = {"__macosx", "thumbs.db", "desktop.ini"}  # and every name starting with "."
WORDS = ("words.txt", "LOC_synset_mapping.txt")  # class id -> names, as ImageNet's ship


def _stderr(line):
    print(line, file=sys.stderr, flush=True)


def shown(path):
    """A path as it can be printed: a name that is not UTF-8 (Windows zips leave such) with
    its odd bytes as \\x escapes; open() takes the path itself, whatever its bytes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def printable(path):
    """shown(path) for a message line: control characters (a NUL, a line break that an
    @list's line or a file name may hold) as escapes, so the line stays one line."""
    return "".join(repr(ch)[1:-1] if unicodedata.category(ch) == "Cc" else ch for ch in shown(path))


def left_behind(name):
    return name.startswith(".") or name.lower() in LEFT_BEHIND


def is_image(name):
    return not left_behind(name) and name.lower().endswith(EXTENSIONS)


def _entries(path):
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if not left_behind(e.name)), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read {shown(path)}: {e.strerror}") from None


def _is_dir(entry):
    try:
        return entry.is_dir()  # through a symlink
    except OSError:
        return False


def _is_file(entry):
    """Not a FIFO, socket or device (reading one waits for ever); a dangling link is kept,
    to be reported as missing."""
    try:
        return stat.S_ISREG(entry.stat().st_mode)  # through a symlink
    except OSError:
        return True


def folders_in(path):
    """The sub-folder names of `path`, sorted, without what tools leave behind."""
    return [e.name for e in _entries(path) if _is_dir(e)]


def _identity(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk(folder, seen, loops):
    """Image files under `folder` as they are found, each real directory entered once."""
    stack = [folder]
    while stack:
        top = stack.pop()
        try:
            here = _identity(top)
        except OSError:
            continue
        if here in seen and top != folder:
            if loops is not None:
                loops.append(top)
            continue
        seen.add(here)
        subs = []
        for e in _entries(top):
            if _is_dir(e):
                subs.append(e.path)
            elif is_image(e.name) and _is_file(e):
                yield e.path
        stack.extend(reversed(subs))


def walk_images(folder, seen=None, loops=None):
    """Every image file under `folder`, its sub-folders included (as torchvision finds
    them), symlinked ones too, sorted. Each real directory is entered once: a link back
    to one already entered, or to one in `seen` (the data folder, the split and class
    folders, so a link to a parent cannot pull other classes in), is appended to `loops`
    and not followed."""
    return sorted(_walk(folder, set() if seen is None else seen, loops))


def images_of_tree(folder):
    """Every image under `folder` as a tree of class folders lists it: its own files, and
    each sub-folder's, a link from one sub-folder into another not followed (the other's
    pictures are listed as its own, never twice, never under the linking name), sorted."""
    subs = [os.path.join(folder, name) for name in folders_in(folder)]
    tops = {_identity(folder)} | {_identity(s) for s in subs}
    # (a top-level pipe too is skipped: reading one waits for ever)
    files = [e.path for e in _entries(folder) if not _is_dir(e) and is_image(e.name) and _is_file(e)]
    entered = {_identity(folder)}
    for sub in subs:
        if _identity(sub) in entered:
            continue  # a link to the folder itself (`again -> .`), or a second name of a sub-folder
        entered.add(_identity(sub))
        files += _walk(sub, tops - {_identity(sub)}, None)
    return sorted(files)


def holds_images(folder):
    """Whether any image lies under `folder` (stops at the first)."""
    try:
        return next(_walk(folder, set(), None), None) is not None
    except DataError:  # a folder that cannot be read holds none that can be used
        return False


SAMPLED = 64 * 1024  # bytes read from each end of a file for its fingerprint


def fingerprint(path, nbytes):
    """A digest of a file's first and last 64 KiB (all of a smaller one): beside its size
    and modification time in the cache's key, so that a file replaced by another of the
    same size with its time kept (cp -p, rsync -t, unzip) is decoded again, not served
    stale. Cheap next to decoding (benchmarks/cache_key.py), and so blind to an edit
    between a larger file's ends with its size and time kept (docs/own-images.md says so)."""
    try:  # (os.open and pread: a third less time than a Python file object, for small files)
        fd = os.open(path, os.O_RDONLY)
        try:
            sample = os.read(fd, SAMPLED)
            if nbytes > SAMPLED:
                sample += os.pread(fd, SAMPLED, max(SAMPLED, nbytes - SAMPLED))
        finally:
            os.close(fd)
    except OSError:  # unreadable now: decoding will say why
        return "unreadable"
    return zlib.crc32(sample)  # a third of blake2b's time: it tells files apart, no more


@dataclass
class Split:
    """One split's listing: (path, label) of each image file, its (size, mtime,
    fingerprint), the files that vanished or dangle, and how it is labelled ("class
    folders" or a table)."""
    name: str
    folder: str
    files: list = field(default_factory=list)
    stats: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    labelled_by: str = "class folders"

    def add(self, path, label):
        try:
            st = os.stat(path)  # through a symlink; a dangling one raises
        except OSError:
            self.missing.append(path)
            return
        self.files.append((path, label))
        self.stats.append((st.st_size, st.st_mtime_ns, fingerprint(path, st.st_size)))


@dataclass
class Layout:
    """A data folder's splits ({"train", ["val",] ["test"]} -> Split), class ids (folder
    names or table labels, sorted as torchvision sorts them) and the names shown for
    them; flat: the folder is its own train/ (--val-split needed)."""
    root: str
    splits: dict
    ids: list
    names: list
    flat: bool = False


# -----------------------------------------------------------------------------
# Which folder is which split

def _first_word(name):
    """'trainLabels.csv' -> 'train', 'train_images' -> 'train', 'val_annotations.txt' -> 'val'."""
    words = re.findall(r"[a-z0-9]+|[A-Z][a-z0-9]*", os.path.splitext(name)[0])
    return words[0].lower() if words else ""


def _tables_in(folder, extensions=label_tables.EXTENSIONS):
    """The tables found by themselves: never a submission's (Kaggle's sampleSubmission.csv
    holds placeholder labels for the test ids; taken, it labelled train/1.png by them)."""
    return [e.path for e in _entries(folder) if not _is_dir(e) and e.name.lower().endswith(extensions)
            and e.name not in WORDS and e.name.lower() != "wnids.txt"
            and not SUBMISSION.search(e.name.lower().replace("_", "").replace("-", ""))]


SUBMISSION = re.compile(r"submission")  # sampleSubmission.csv, sample_submission.csv, submission.csv


def table_for(root, split_folder, train=True):
    """The table labelling a split folder, or None: one inside it whose name begins with
    the folder's (val/val_annotations.txt), or, where the folder has no class folders, one
    beside it whose name does (trainLabels.csv, train.csv for train/ or train_images/) or
    for the training images the data folder's one table."""
    word = _first_word(os.path.basename(split_folder))
    classes = len(folders_in(split_folder)) > 1  # class folders win over a stray table
    inside = [t for t in _tables_in(split_folder) if _first_word(os.path.basename(t)) == word
              and (train or label_tables.has_labels(t))]
    if len(inside) == 1 and not classes:
        return inside[0]
    tables = _tables_in(root, (".csv", ".tsv")) if split_folder != root else []
    if not train:  # a test.csv of ids alone (Kaggle's) labels nothing: test/ is unlabeled
        tables = [t for t in tables if label_tables.has_labels(t)]
    beside = [t for t in tables if _first_word(os.path.basename(t)) == word]
    if len(beside) > 1:
        raise DataError(f"{shown(root)} has {len(beside)} tables for {shown(os.path.basename(split_folder))}/ "
                        f"({', '.join(shown(os.path.basename(t)) for t in beside)}): name the labels "
                        f"with --labels FILE")
    if beside and not classes:
        return beside[0]
    others = [n for n in folders_in(root) if os.path.join(root, n) != split_folder
              and holds_images(os.path.join(root, n))]
    if train and len(tables) == 1 and not folders_in(split_folder) and not others:
        return tables[0]  # (the only table beside the only folder of images)
    return None


def _split_folders(root, labels, ours=frozenset()):
    """({split: folder}, the training images' table or None, flat): where each split's
    images are. "test" is what is evaluated after every epoch (test/, or val/ alone); with
    both, "val" picks the best epoch and "test" is evaluated once at the end. A flat tree
    (class folders, or one folder of images and one table) is "train" alone."""
    names = [n for n in folders_in(root) if _identity(os.path.join(root, n)) not in ours]
    by_case = {n.lower(): n for n in names if n.lower() in SPLIT_FOLDERS}
    evals = [by_case[n] for n in EVAL_FOLDERS if n in by_case]
    where = shown(os.path.abspath(root))
    for split in by_case:  # train/ and Train/: which one is meant? (one folder on macOS)
        twins = sorted(n for n in names if n.lower() == split and holds_images(os.path.join(root, n)))
        if len(twins) > 1:
            raise DataError(f"{where} has both {twins[0]}/ and {twins[1]}/ (names that differ "
                            f"only in case): keep one of them, or merge them")
    if "train" not in by_case or _is_flat(root, names, by_case, labels):
        holding = [n for n in names if holds_images(os.path.join(root, n))]
        tables = [labels] if labels else _tables_in(root, (".csv", ".tsv"))
        pairs = [(t, n) for t in tables for n in holding
                 if _first_word(n) == _first_word(os.path.basename(t))]
        if len(tables) == 1 and len(holding) <= 1:  # one folder of images (or none), one table
            return {"train": os.path.join(root, holding[0]) if holding else root}, tables[0], True
        trains = [(t, n) for t, n in pairs if _first_word(n) == "train"]
        if len(pairs) == 1 or len(trains) == 1:  # train.csv beside train_images/ (and
            table, folder = (trains or pairs)[0]  # test_images/, with its test.csv or not)
            return {"train": os.path.join(root, folder)}, table, True
        if evals and len(holding) <= len(evals):
            raise DataError(f"{where} has {evals[0]}/ but no train/ folder beside it")
        _refuse_a_split_among_classes(root, names, evals)
        return {"train": root}, labels, True
    vals = [n for n in evals if n.lower() != "test"]
    if len(vals) > 1:
        raise DataError(f"{where} has both {vals[0]}/ and {vals[1]}/: keep one as the "
                        f"validation images")
    splits = {"train": os.path.join(root, by_case["train"])}
    if vals and "test" in by_case:
        splits["val"] = os.path.join(root, vals[0])
    if evals:
        splits["test"] = os.path.join(root, by_case["test"] if "test" in by_case else vals[0])
    return splits, labels or table_for(root, splits["train"]), False


def _is_flat(root, names, by_case, labels):
    """A folder named train/ (test/, val/) beside folders of images is a class of a flat
    tree (CIFAR-100 has a class "train"), unless train/ is labelled by a table, or an
    evaluation folder shares train/'s class folders: then the split is meant, and the
    other folders are a mistake too likely to guess about."""
    others = [n for n in names if n not in by_case.values() and holds_images(os.path.join(root, n))]
    if not others:
        return False
    if "train" not in by_case:
        return True
    train = os.path.join(root, by_case["train"])
    if labels or table_for(root, train):
        return False
    classes = set(folders_in(train))
    shared = [n for n in by_case.values() if n != by_case["train"]
              and classes & set(folders_in(os.path.join(root, n)))]
    holding = [c for c in classes if holds_images(os.path.join(train, c))]
    if not shared and len(holding) < 2:
        return True  # train/ holds pictures, not class folders: a class (CIFAR-100 has one)
    beside = f"beside {shared[0]}/" if shared else "holding class folders"
    raise DataError(f"{shown(os.path.abspath(root))}: is {by_case['train']}/ the training split "
                    f"({beside}) or a class beside {', '.join(map(shown, others[:3]))}? "
                    f"Move the class folders into {by_case['train']}/ (and the evaluation "
                    f"images into test/), move the other folders out, or rename the class "
                    f"{by_case['train']}/ (e.g. {by_case['train']}_)")


def _refuse_a_split_among_classes(root, names, evals):
    """A flat tree's class folders beside a test/ (or val/) that holds folders of the same
    names: the evaluation images would be trained on, as the class "test". One line."""
    for e in evals:
        same = sorted(set(folders_in(os.path.join(root, e))) & set(names))
        if same:
            raise DataError(f"{shown(os.path.abspath(root))}: {e}/ holds the class folders "
                            f"beside it ({', '.join(map(shown, same[:3]))}): put the training "
                            f"classes into train/ (train/<class>/, {e}/<class>/), or move "
                            f"{e}/ out")


# -----------------------------------------------------------------------------
# The listing

def list_folder(root, labels=None, label_column=None, warn=_stderr, skip=()):
    """The Layout of a data folder (one-line DataErrors for what cannot be used; warnings,
    one line each, through `warn`). labels: a table of the training images' labels (the
    --labels flag); label_column: its column of labels (--label-column); skip: folders
    the run itself writes (--out-dir, --cache-dir), never data even inside the folder."""
    if not os.path.isdir(root):
        raise DataError(f"{shown(os.path.abspath(root))} is not a folder")
    if labels and not os.path.isfile(labels):
        raise DataError(f"--labels {shown(labels)}: no such file")
    ours = {_identity(f) for f in skip if f and os.path.isdir(f)}
    folders, table, flat = _split_folders(root, labels, ours)
    _refuse_one_folder_twice([(f"{name}/", path) for name, path in folders.items()])
    # the folders of the evaluation splits and of their classes: never walked into from
    # train/ (a link train/cat/more -> test/cat would train on test images)
    evaluated = [os.path.join(f, c) for n, f in folders.items() if n != "train" for c in folders_in(f)]
    loops, seen = [], {_identity(root)} | {_identity(f) for f in folders.values()}
    apart = seen | {_identity(f) for f in evaluated}  # (what train/'s walk may not enter)
    train = folders["train"]
    if table:
        ids, splits = _table_split(root, "train", train, table, label_column, None, warn, apart, loops)
    else:
        ids = [c for c in folders_in(train) if _identity(os.path.join(train, c)) not in ours]
        _refuse_two_unicode_forms(train, ids)
        _alike(shown(train), ids, "class folders", warn)
        _check_classes(root, train, ids, flat)
        splits = {"train": _class_split("train", train, ids, apart, loops)}
        _warn_loose_pictures(train, warn)
    # and the other way: a link test/b/sub -> train/a would test on training images, as b's
    trained = seen | {_identity(os.path.join(train, c)) for c in folders_in(train)}
    for name in ("val", "test"):
        if name in folders:
            split = _evaluation_split(root, name, folders[name], ids, label_column, trained, loops,
                                      warn, table)
            if split is not None:
                splits[name] = split
    if "val" in splits and "test" not in splits:  # test/ unlabeled: val/ is evaluated each epoch
        splits["test"] = splits.pop("val")
        splits["test"].name = "test"
    if loops:
        warn(f"warning: skipped {len(loops)} link{'s' * (len(loops) > 1)} to a folder already "
             f"listed (a loop, or a link to a parent): {', '.join(map(shown, loops[:3]))}"
             f"{', ...' if len(loops) > 3 else ''}")
    return Layout(root, splits, ids, names_of(root, ids, warn), flat)


def _warn_rows_against_folders(table, split, ids, images, root, label_column, warn):
    """The training table's rows for an evaluation folder that its class folders label:
    not used; said where they give another label than the folder (a stray row)."""
    try:
        rows = dict(label_tables.labelled_files(table, split.folder, images, label_column,
                                                warn=lambda line: None, single_warning=False,
                                                root=root))
    except DataError:
        rows = {}
    by_folder = {path: ids[label] for path, label in split.files}
    other = sorted(p for p, label in rows.items() if p in by_folder and by_folder[p] != label)
    if other:
        warn(f"warning: {shown(os.path.basename(table))}: {len(other):,} row"
             f"{'s give' if len(other) > 1 else ' gives'} a picture of {shown(split.folder)} "
             f"another label than its class folder, which wins: "
             f"{', '.join(shown(os.path.relpath(p, split.folder)) for p in other[:3])}"
             f"{', ...' if len(other) > 3 else ''}")


def _warn_loose_pictures(folder, warn):
    """Pictures lying in a split folder itself, beside its class folders, belong to no
    class: left out, said in one line (they were left out without a word)."""
    loose = [e.name for e in _entries(folder) if not _is_dir(e) and is_image(e.name)]
    if loose:
        warn(f"warning: {shown(folder)}: {len(loose):,} picture{'s lie' if len(loose) > 1 else ' lies'} "
             f"beside the class folders, in no class: not used ({', '.join(map(shown, loose[:3]))}"
             f"{', ...' if len(loose) > 3 else ''}); move {'them' if len(loose) > 1 else 'it'} "
             f"into {'their' if len(loose) > 1 else 'its'} class folder")


def _check_classes(root, train, ids, flat):
    if flat and not ids:
        raise DataError(f"{shown(os.path.abspath(root))} has no train/ folder, nor class folders: "
                        f"--dataset folder reads DIR/train/<class>/* and DIR/test/<class>/* "
                        f"(or DIR/<class>/* with --val-split, or a folder of images and a table "
                        f"of labels)")
    if not ids and any(is_image(e.name) for e in _entries(train)):
        raise DataError(f"{shown(train)} holds images but no labels: put them in class folders, "
                        f"or give a table of labels with --labels FILE")
    if len(ids) < 2:
        raise DataError(f"{shown(train)} has {len(ids)} class folder{'s' * (len(ids) != 1)}; a "
                        f"classifier needs at least two")


def _refuse_two_unicode_forms(folder, names):
    """Two class folders whose names differ only in Unicode form (café written by a Mac,
    NFD, beside café written elsewhere, NFC): one name shown for two classes. One line."""
    first = {}
    for n in names:
        key = unicodedata.normalize("NFC", n)
        if key in first:
            raise DataError(f"{shown(os.path.join(folder, first[key]))} and "
                            f"{shown(os.path.join(folder, n))} are two folders whose names differ "
                            f"only in Unicode form (NFC and NFD, as a Mac and Linux write é): one "
                            f"class shown as two; move the pictures of one into the other")
        first[key] = n


def _alike(where, names, kind, warn):
    """Class names that look alike: two that differ only in Unicode form are one line (the
    same name on screen, two classes); two that differ only in case, width or spacing are
    said (EMNIST's a and A are two letters, but a Mac or Windows disk holds cat/ and Cat/
    as one folder, and `big cat` with a no-break space prints as `big cat`)."""
    first, said = {}, set()
    for n in names:
        nfc = unicodedata.normalize("NFC", n)
        if nfc in first and first[nfc] != n:
            raise DataError(f"{where}: the {kind} {first[nfc]!r} and {n!r} differ only in "
                            f"Unicode form (NFC and NFD, as Linux and a Mac write é): one class "
                            f"shown as two; write them one way")
        first[nfc] = n
        alike = _looks(n)  # case, full-width letters, a no-break space: cat, Cat, ｃat, big cat
        twin = next((m for m in first.values() if m != n and _looks(m) == alike), None)
        if twin and alike not in said:
            said.add(alike)
            warn(f"warning: {where}: the {kind} {twin!r} and {n!r} differ only in case, width "
                 f"or spacing: two classes here (and one folder on a Mac's or Windows' disk)")


def _looks(name):
    return unicodedata.normalize("NFKC", name).casefold()


def _refuse_one_folder_twice(named):
    """Two names of one folder (a link) among splits or classes: the same pictures twice,
    as two classes, or tested on as trained on. One line naming both."""
    first = {}
    for label, path in named:
        try:
            key = _identity(path)
        except OSError:
            continue
        if key in first:
            raise DataError(f"{shown(first[key][1])} and {shown(path)} are one folder (a link): "
                            f"its pictures would be {'two classes' if label[-1] != '/' else 'trained and tested on'}; "
                            f"remove the link")
        first[key] = (label, path)


def _class_split(name, folder, ids, seen, loops, named=None):
    """named: {class id: its folder's name here}, where they differ (Unicode's two forms
    of é: a Mac writes one, Linux and Windows the other)."""
    named = named or {}
    paths = [(c, os.path.join(folder, named.get(c, c))) for c in ids]
    _refuse_one_folder_twice([(c, p) for c, p in paths if os.path.isdir(p)])
    split = Split(name, folder)
    classes = {_identity(p) for _, p in paths if os.path.isdir(p)}
    for label, (cls, path) in enumerate(paths):
        if not os.path.isdir(path):
            continue  # an evaluation split may lack a class
        images = walk_images(path, seen | (classes - {_identity(path)}), loops)
        if not images:
            raise DataError(f"{shown(path)} holds no images "
                            f"({', '.join(e[1:] for e in EXTENSIONS)})")
        for f in images:
            split.add(f, label)
    return split


def _table_split(root, name, folder, table, label_column, known, warn, seen=(), loops=None,
                 images=None):
    """(class ids, {name: Split}) of a folder labelled by a table. seen: the folders its
    walk may not enter (another split's)."""
    images = walk_images(folder, set(seen), loops) if images is None else images
    rows = label_tables.labelled_files(table, folder, images, label_column, known, warn,
                                       single_warning=known is None, root=root)
    ids = known or label_tables.sorted_labels({label for _, label in rows})
    if known is None:
        _alike(shown(table), ids, "labels", warn)
    if known is None and len(ids) < 2:
        raise DataError(f"{shown(table)} has {len(ids)} label{'s' * (len(ids) != 1)}; a classifier "
                        f"needs at least two")
    index = {c: i for i, c in enumerate(ids)}
    split = Split(name, folder, labelled_by=shown(os.path.basename(table)))
    for path, label in rows:
        split.add(path, index[label])
    return ids, {name: split}


def _evaluation_split(root, name, folder, ids, label_column, seen, loops, warn, shared=None):
    """An evaluation folder's Split: by a table inside or beside it, by the training
    images' table (shared) where its rows name this folder's files by their paths, by
    class folders, or None (unlabeled, said in one line)."""
    _refuse_two_unicode_forms(folder, folders_in(folder))
    found = {unicodedata.normalize("NFC", n): n for n in folders_in(folder)}
    named = {i: found[unicodedata.normalize("NFC", i)] for i in ids
             if unicodedata.normalize("NFC", i) in found}
    table, images, rows_here = table_for(root, folder, train=False), None, None
    if not table and shared:
        probe = []  # (its links skipped, counted once: here if the table is used, else below)
        images = walk_images(folder, set(seen), probe)
        table = shared if label_tables.names_by_path(shared, folder, images, root) else None
        rows_here, table = (table, None) if named else (None, table)  # class folders win, as
        if table and loops is not None:  # they do over a stray table beside them
            loops.extend(probe)
    if table:
        split = _table_split(root, name, folder, table, label_column, ids, warn, seen, loops,
                             images)[1][name]
    elif named:
        unknown = sorted(set(found.values()) - set(named.values()))
        if unknown:
            raise DataError(f"{shown(folder)} has class folder{'s' * (len(unknown) > 1)} that "
                            f"train/ lacks: {', '.join(map(shown, unknown[:5]))}")
        split = _class_split(name, folder, ids, seen, loops, named)
        _warn_loose_pictures(folder, warn)
        if rows_here:
            _warn_rows_against_folders(rows_here, split, ids, images, root, label_column, warn)
    else:
        same = [(n, i) for n in found.values() for i in ids if n.casefold() == i.casefold()]
        if same:
            raise DataError(f"{shown(folder)}'s class folders are train/'s in another case "
                            f"({shown(same[0][0])} for {shown(same[0][1])}): name them as in train/")
        n = len(walk_images(folder, set(seen)))
        if n:
            warn(f"warning: {shown(folder)}: {n:,} images without labels (no class folders of train/'s, no "
                 f"table): not trained or evaluated on; predict.py labels them")
            return None
        split = Split(name, folder)
    if not split.files:
        raise DataError(f"{shown(folder)} holds no images: add some (in the class folders "
                        f"of train/) or remove it")
    return split


def names_of(root, ids, warn=_stderr):
    """The names shown for the class ids: the first name of each in words.txt (Tiny
    ImageNet's "n01443537<tab>goldfish, Carassius auratus" -> "goldfish") where the data
    folder has one naming every id; a name two ids share gets its id added."""
    for words in WORDS:
        path = os.path.join(root, words)
        if not os.path.isfile(path):
            continue
        table = {}
        try:
            with open(path, encoding="utf-8-sig", errors="replace") as f:  # (Notepad's BOM)
                for line in f:
                    key, _, rest = line.strip().replace("\t", " ", 1).partition(" ")
                    table[key] = rest.split(",")[0].strip() or key
        except OSError as e:
            raise DataError(f"cannot read {shown(path)}: {e.strerror}") from None
        if not all(i in table for i in ids):
            warn(f"warning: {shown(path)} does not name every class; the classes keep their ids")
            return list(ids)
        names = [table[i] for i in ids]
        twice = {n for n in names if names.count(n) > 1}
        return [f"{n} ({i})" if n in twice else n for n, i in zip(names, ids)]
    return list(ids)
