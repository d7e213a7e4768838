"""Labels in a table, as Kaggle ships them (train/ + trainLabels.csv, "id,label") and
Tiny ImageNet labels its validation images (val_annotations.txt: file, wnid, box; tabs,
no header): which column names the image, which the label, and which files they are.

CSV or tab-separated, with or without a header. The image column is the one whose cells
name files of the image folder: by path, by file name, or by id (`1` -> `1.png`). The
label column is named by --label-column, or found by its header (label, class, ...), or
is the only other column; without a header, the first other column (for an evaluation
split, the first whose cells are all classes of train/).
"""
import csv
import os
import posixpath
import sys
import unicodedata
from typing import NamedTuple

from .cifar import DataError

EXTENSIONS = (".csv", ".tsv", ".txt")
LABEL_NAMES = ("label", "labels", "class", "classes", "class_name", "classname", "category",
               "target", "y", "breed", "species", "wnid", "diagnosis", "landmark_id")
IMAGE_NAMES = ("id", "image", "image_id", "images", "file", "filename", "file_name", "path",
               "image_name", "img", "name", "fname")
SAMPLE = 200  # rows looked at to find the image column
EXAMPLES = 3  # names shown in a warning


def _shown(path):
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _stderr(line):
    print(line, file=sys.stderr, flush=True)


def _examples(items):
    items = list(items)
    return ", ".join(map(_shown, items[:EXAMPLES])) + (", ..." if len(items) > EXAMPLES else "")


def read_rows(path):
    """[(line number, [cells])] of a table's non-empty rows: tab-separated where its first
    line has a tab (.tsv always), semicolon-separated where it has more semicolons than
    commas (Excel's CSV where the decimal mark is a comma: `1.png;cat;0,5`),
    comma-separated where it has a comma, else by spaces."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"cannot read {_shown(path)}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = 1 + open(path, "rb").read()[:e.start].count(b"\n")
        raise DataError(f"{_shown(path)}, row {line}: not text (a byte that is not UTF-8); a "
                        f"table of labels is CSV or tab-separated text") from None
    first = next((line for line in lines if line.strip()), "")
    tabs = path.lower().endswith(".tsv") or "\t" in first
    # (a space after a comma is not part of the next cell: `2, "dog"` is the label dog)
    mark = ";" if first.count(";") > first.count(",") else "," if "," in first else " "
    options = dict(delimiter="\t") if tabs else dict(delimiter=mark, skipinitialspace=True)
    reader, rows = csv.reader(lines, strict=True, **options), []
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((reader.line_num, [c.strip() for c in cells]))
    except csv.Error as e:
        raise DataError(f"{_shown(path)}, row {reader.line_num}: {e}") from None
    if not rows:
        raise DataError(f"{_shown(path)} is empty: a table of labels has a row per image")
    return rows


SPLITS = ("train", "test", "val", "valid", "validation")  # split folders' names, any case


class Index(NamedTuple):
    """What a table's cells are looked up in (made by file_index)."""
    whole: dict  # {path: [files]}: by every relative path a table may give, and absolute
    names: dict  # {name: [files]}: by file name, and by name without its extension
    real: dict  # {real path: file}: made when an absolute cell needs it
    parents: set  # the folders the images sit in, by name
    folder: str  # the split's folder
    bases: tuple  # the folders a table's relative paths may start from (the split's first)


def _folded(path):
    """A path with its split folders' names in lower case: `Test/0.png` is `test/0.png`
    (split folders are found in any case)."""
    parts = path.split("/")
    return "/".join(p.lower() if p.lower() in SPLITS else p for p in parts)


def file_index(images, folder, table_folder, root=None, within=True):
    """The Index of a split folder's files: by the path relative to the folder (within),
    relative to the table's own folder (a table beside train/ that says train/cat/0.png),
    relative to the data folder (a --labels table kept elsewhere) and absolute; by file
    name and by name without its extension, for tables that give only names."""
    whole, names = {}, {}
    bases = tuple(dict.fromkeys(b for b in (folder if within else None, table_folder, root) if b))
    for path in images:
        keys = {os.path.relpath(path, base).replace(os.sep, "/") for base in bases}
        for key in keys | {_folded(k) for k in keys} | {os.path.abspath(path)}:
            found = whole.setdefault(key, [])
            if path not in found:  # train/1.png from the table's folder, and train/train/1.png
                found.append(path)  # from train/'s: two files, a row that must say which
        name = os.path.basename(path)
        for key in {name, os.path.splitext(name)[0]}:
            names.setdefault(key, []).append(path)
    return Index(whole, names, {}, {_parent(p) for p in images}, folder, bases)


def _parent(path):
    return os.path.basename(os.path.dirname(path.replace("\\", "/").replace(os.sep, "/")))


def _elsewhere(index, cell):
    """Whether a cell's path names a file, or a file in a folder, outside the split being
    read: `test/0.png` read for train/ labels test/'s picture, never train/0.png."""
    if "/" not in cell:
        return False
    inside = os.path.join(os.path.abspath(index.folder), "")
    for base in index.bases:
        path = os.path.abspath(os.path.join(base, cell))
        if os.path.isfile(path) or os.path.isdir(os.path.dirname(path)):
            if not path.startswith(inside):
                return True
    return False


def other_split(index, cell):
    """The split a cell's path names, where it is not the one being read: its last folder
    named like a split (`data/test/0.png`, `/home/me/cifar/Test/0.png`: test). None for a
    bare name, or a path of this split's (`/home/test/data/train/0.png`: train)."""
    words = [p.lower() for p in cell.split("/")[:-1] if p.lower() in SPLITS]
    mine = os.path.basename(os.path.abspath(index.folder)).lower()
    return words[-1] if words and words[-1] != mine else None


def _for_another_split(index, cell):
    """Whether a cell names a file of another split that is there: a file outside this
    split, or a file of a split folder beside it (`test/0.png` beside `Test/`)."""
    split = other_split(index, cell)
    if split:
        beside = os.path.dirname(os.path.abspath(index.folder))
        try:
            if any(n.lower() == split for n in os.listdir(beside)):
                return True
        except OSError:
            pass
    return _elsewhere(index, cell)


def _spelled(cell):
    """`train/a//0.png`, `./train/a/../a/0.png`, `train\\a\\0.png`: the path they spell."""
    cell = cell.replace("\\", "/")
    return posixpath.normpath(cell) if cell else cell


def _by_path(index, cell):
    """The files a (spelled) cell names by its whole path: relative, in any case of the
    split folders' names, or absolute, through a linked folder by the file it reaches."""
    found = index.whole.get(cell) or index.whole.get(_folded(cell))
    if found:
        return found
    if os.path.isabs(cell):
        real = index.real
        if not real:
            real.update((os.path.realpath(p), p) for ps in index.whole.values() for p in ps)
        found = real.get(os.path.realpath(cell))
        return [found] if found else []
    return []


def _candidates(index, cell):
    """(the cell as compared, [the files it may name]): the one its whole path names (and
    another file the same path reaches from the table's or the data folder: ambiguous),
    else none where the path leads to another split, else those with its name (two or
    more: ambiguous)."""
    cell = _spelled(cell)
    found = _by_path(index, cell)
    if found and "/" in cell and not os.path.isabs(cell):
        mine = {os.path.abspath(p) for p in found}  # `test/0.png`: train/test/0.png, and test/0.png
        others = {os.path.abspath(os.path.join(b, cell)) for b in index.bases[1:]} - mine
        return cell, found + sorted(p for p in others if os.path.isfile(p))
    if found:
        return cell, found
    if other_split(index, cell) or _elsewhere(index, cell):
        return cell, []
    name, parent = cell.rsplit("/", 1)[-1], _parent(cell)
    for key in (name, os.path.splitext(name)[0]):
        found = index.names.get(key) or []
        if parent in index.parents:  # `train/cat/5.png` is never dog/5.png: a folder it names is here
            found = [p for p in found if _parent(p) == parent]
        if found:
            return cell, found
    return cell, []


def names_by_path(path, folder, images, root):
    """Whether a table names a file of this split by its path from the table's folder or
    the data folder (`test/0.png`), or absolute: a training table that labels test/'s
    pictures too. Names alone (`0.png`, an id) never say which split they mean."""
    index = file_index(images, folder, os.path.dirname(os.path.abspath(path)), root, within=False)
    cells = {_spelled(c) for _, row in read_rows(path) for c in row}
    return any("/" in c and _by_path(index, c) for c in cells)


def lookup(index, cell, where=None):
    """The file a table's cell names: by its whole path first (normalised; an absolute one
    by its real path), by its name only where no path matches and one file alone has that
    name. None where none does. A name two files share is a DataError (where: the table
    and row, to name in it); without `where` (guessing which column names the files) it
    is None."""
    cell, found = _candidates(index, cell)
    if len(found) > 1 and where:
        raise DataError(f"{where}: {cell} could be {_shown(found[0])} or {_shown(found[1])}"
                        f"{' (or more)' if len(found) > 2 else ''}; name each file by its "
                        f"path, relative to the table's folder")
    return found[0] if len(found) == 1 else None


def names_files(index, cell):
    """Whether a cell names one file or more (an ambiguous name still says which column
    names the files: the rows then say which name is ambiguous)."""
    return bool(_candidates(index, cell)[1])


def _is_header(cells, image, index, label_column):
    if image < len(cells) and names_files(index, cells[image]):
        return False
    words = {c.lower() for c in cells}
    if words & set(IMAGE_NAMES + LABEL_NAMES) or (label_column or "").lower() in words:
        return True
    return image < len(cells) and not any(ch.isdigit() for ch in cells[image])


def _label_column(path, header, width, image, label_column, known, sample):
    columns = ", ".join(header) if header else f"{width} unnamed columns"
    if label_column:
        if header and label_column.lower() in header:
            return header.index(label_column.lower())
        if label_column.isdigit() and 1 <= int(label_column) <= width:
            return int(label_column) - 1  # counted from 1, as people count columns
        raise DataError(f"--label-column {label_column}: {_shown(path)} has no such column "
                        f"({columns}; or give its number, from 1)")
    others = [i for i in range(width) if i != image]
    if header:
        named = [i for i in others if i < len(header) and header[i] in LABEL_NAMES]
        if named:
            return named[0]
    if not others:
        raise DataError(f"{_shown(path)} has one column, the images: no labels")
    if known:  # an evaluation split's table: the column that holds train/'s classes
        fitting = [i for i in others if all(i < len(r) and r[i] in known for _, r in sample)]
        if fitting:
            return fitting[0]
    if len(others) == 1 or not header:
        return others[0]
    raise DataError(f"cannot tell which column of {_shown(path)} holds the labels ({columns}): "
                    f"name it with --label-column")


def labelled_files(path, folder, images, label_column=None, known=None, warn=_stderr,
                   single_warning=True, root=None):
    """[(image path, label)] of the files a table labels, sorted by path. images: the image
    folder's files; known: the classes an evaluation split's labels must be among. Rows
    naming missing files, files without a row and (single_warning) labels with a single
    image are each one warning; a table that cannot be used is one DataError naming the
    file and the row."""
    rows = read_rows(path)
    index = file_index(images, folder, os.path.dirname(os.path.abspath(path)), root)
    width = max(len(cells) for _, cells in rows[:SAMPLE + 1])
    sample = rows[1:SAMPLE + 1] or rows
    hits = [sum(1 for _, r in sample if i < len(r) and names_files(index, r[i])) for i in range(width)]
    image = max(range(width), key=hits.__getitem__)
    named = [i for i, c in enumerate(rows[0][1]) if c.lower() in IMAGE_NAMES and hits[i]]
    if named and rows[0][1][image].lower() not in IMAGE_NAMES:
        image = named[0]  # the header says which column names the files (`id,label`), even
        # where the labels are small numbers that name more files (a part of a folder)
    if not hits[image] and not (len(rows) == 1 and any(names_files(index, c) for c in rows[0][1])):
        where = _shown(folder)
        raise DataError(f"{_shown(path)}: no column names the files of {where} (row "
                        f"{sample[0][0]}: {', '.join(sample[0][1][:3])}; files such as "
                        f"{_examples(os.path.basename(p) for p in images) or 'none'})")
    header = None
    if _is_header(rows[0][1], image, index, label_column):
        header, rows = [c.lower() for c in rows[0][1]], rows[1:]
    label = _label_column(path, header, width, image, label_column, known, sample)
    if label_column and label == image:  # one class per image: no classifier to learn
        raise DataError(f"--label-column {label_column}: that column of {_shown(path)} names the "
                        f"images; name the column of labels")
    labelled, absent, twice = {}, [], []
    for line, cells in rows:
        if len(cells) <= max(image, label):
            raise DataError(f"{_shown(path)}, row {line}: {len(cells)} column"
                            f"{'s' * (len(cells) != 1)}, where the labels are column {label + 1}")
        if not cells[label]:
            raise DataError(f"{_shown(path)}, row {line}: {cells[image]} has no label")
        odd = next((ch for ch in cells[label] if unicodedata.category(ch) in ("Cc", "Cf")), None)
        if odd is not None:  # `cat\x00`, `cat\u200b` would be classes of their own, shown as cat
            kind = "a control" if unicodedata.category(odd) == "Cc" else "an invisible"
            raise DataError(f"{_shown(path)}, row {line}: the label {cells[label]!r} holds "
                            f"{kind} character ({odd!r}); a label is printable text")
        if known is not None and cells[label] not in known:
            raise DataError(f"{_shown(path)}, row {line}: label {cells[label]} is not one of "
                            f"train/'s classes")
        found = lookup(index, cells[image], where=f"{_shown(path)}, row {line}")
        if found is None and not _for_another_split(index, _spelled(cells[image])):
            absent.append(cells[image])
        elif found is None:
            continue  # (a row of another split's file labels that split, when it is read)
        elif found in labelled and labelled[found] != cells[label]:
            raise DataError(f"{_shown(path)}, row {line}: {cells[image]} is labelled "
                            f"{cells[label]!r} here and {labelled[found]!r} in a row above; "
                            f"give each image one label")
        elif found in labelled:
            twice.append(cells[image])
        else:
            labelled[found] = cells[label]
    _warn_loose_ends(path, folder, images, labelled, absent, twice, single_warning, warn)
    return sorted(labelled.items())


def _warn_loose_ends(path, folder, images, labelled, absent, twice, single_warning, warn):
    table, where = _shown(os.path.basename(path)), _shown(folder)
    if absent:
        warn(f"warning: {table}: {len(absent):,} row{'s name files' if len(absent) > 1 else ' names a file'} "
             f"that {where} lacks, skipped: {_examples(absent)}")
    if twice:
        warn(f"warning: {table}: {len(twice):,} row{'s name' if len(twice) > 1 else ' names'} an "
             f"image a row above named already (the first kept): {_examples(twice)}")
    unlabelled = [os.path.relpath(p, folder) for p in images if p not in labelled]
    if unlabelled:
        warn(f"warning: {where}: {len(unlabelled):,} image{'s have' if len(unlabelled) > 1 else ' has'} "
             f"no row in {table}, not used: {_examples(unlabelled)}")
    counts = {}
    for value in labelled.values():
        counts[value] = counts.get(value, 0) + 1
    single = sorted(v for v, n in counts.items() if n == 1)
    if single_warning and single:
        warn(f"warning: {table}: {len(single):,} label{'s have' if len(single) > 1 else ' has'} a "
             f"single image, too few to learn or to hold one out: {_examples(single)}")


def sorted_labels(labels):
    """Class ids in a stable order: by number where every label is an integer ("2" before
    "10"), else as torchvision sorts folder names."""
    labels = list(labels)
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def has_labels(path):
    """Whether a table has a column besides the images' (a test.csv of ids alone has not)."""
    try:
        return any(len(cells) > 1 for _, cells in read_rows(path)[:SAMPLE + 1])
    except DataError:
        return True  # a table that cannot be read is reported where it is used
