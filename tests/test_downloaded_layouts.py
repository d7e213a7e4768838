"""Data sets as people download them: Kaggle's folder of numbered files and a table of
labels, Tiny ImageNet's tree, and labels in tables of every common shape."""
import os

import numpy as np
import pytest
import torch

from machinery import config, data, imagefolder
from machinery.runtime import Dist
from image_folders import CLASSES, TINY_WORDS, _picture, write_kaggle_folder, write_tiny_imagenet


def _main(root, out, *flags):
    from train import main
    return main(["--dataset", "folder", "--data-dir", str(root), "--blocks", "1", "1", "1", "1",
                 "--width", "8", "--batch-size", "16", "--num-workers", "0", "--epochs", "1",
                 "--gradcam-images", "0", "--out-dir", str(out), *flags])


@pytest.mark.slow
def test_a_kaggle_folder_trains_with_val_split_and_takes_its_class_names_from_the_table(tmp_path, capsys):
    root = tmp_path / "cifar-10"
    truth = write_kaggle_folder(str(root), per_class=8, unlabeled=5)
    assert _main(root, tmp_path / "run", "--val-split", "6") == 0
    said = capsys.readouterr()
    assert "classes: 3, 24 training images (labels from trainLabels.csv)" in said.out
    assert f"{root / 'test'}: 5 images without labels" in said.err  # said, never a class
    assert "18 train / 6 validation (held out) images" in said.out
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best_model.pt", weights_only=True)
    assert ckpt["class_names"] == CLASSES and "class_ids" not in ckpt
    folder = imagefolder.Folder(str(root))
    assert set(folder.splits) == {"train"}  # test/ is not read, nor sampleSubmission.csv
    labels = {os.path.basename(p): folder.classes[c] for p, c in folder.splits["train"].files}
    assert labels == truth  # every file under its row's label, "10.png" not "1.png"'s


@pytest.mark.slow
def test_tiny_imagenet_as_downloaded_trains_validates_on_val_and_shows_words(tmp_path, capsys):
    root = tmp_path / "tiny-imagenet-200"
    truth = write_tiny_imagenet(str(root))
    folder = imagefolder.Folder(str(root), 64)
    wnids = sorted(TINY_WORDS)
    assert folder.ids == wnids and folder.classes == ["goldfish", "European fire salamander", "bullfrog"]
    assert set(folder.splits) == {"train", "test"} and folder.folders["test"] == str(root / "val")
    val = {os.path.basename(p): wnids[c] for p, c in folder.splits["test"].files}
    assert val == truth  # labelled by val_annotations.txt, not read as a class "images"
    x, y, _ = folder.read("test")
    assert x.shape == (9, 64, 64, 3)
    train_x, train_y, _ = folder.read("train")
    means = np.stack([np.asarray(train_x)[train_y == c].reshape(-1, 3).mean(0) for c in range(3)])
    nearest = np.abs(np.asarray(x).reshape(len(x), -1, 3).mean(1)[:, None] - means[None]).sum(-1).argmin(1)
    assert nearest.tolist() == y.tolist()  # each val image sits with the class its row names
    assert _main(root, tmp_path / "run", "--image-size", "64") == 0
    said = capsys.readouterr()
    assert f"{root / 'test'}: 4 images without labels" in said.err
    assert "18 train / 9 test images at 64x64" in said.out  # val/ evaluated, as a lone val/ is
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best_model.pt", weights_only=True)
    assert ckpt["class_names"] == folder.classes and ckpt["class_ids"] == wnids


def _table_tree(root, rows, header="id,label", images="train", sep=","):
    """DIR/<images>/<name>.png for each (name, label) row, and its table beside them."""
    rng = np.random.default_rng(1)
    os.makedirs(os.path.join(root, images), exist_ok=True)
    for name, label in rows:
        _picture(rng, (50 + 60 * CLASSES.index(label), 90, 90), (20, 20), "RGB").save(
            os.path.join(root, images, f"{name}.png"))
    return "\n".join(([header] if header else []) + [f"{n}{sep}{label}" for n, label in rows]) + "\n"


def _rows(n=4):
    return [(f"img{i:02d}", CLASSES[i % 3]) for i in range(3 * n)]


def test_tables_of_every_common_shape_label_the_same_files(tmp_path):
    expected = None
    shapes = [("labels.csv", "id,label", ",", "photos", None),  # one folder, one table
              ("train.csv", "image_id,breed", ",", "train_images", None),  # Kaggle's names
              ("train.tsv", None, "\t", "train", None),  # no header, tabs
              ("meta.csv", "file,kind,notes", ",", "train", "kind")]  # a column named by flag
    for i, (table, header, sep, images, column) in enumerate(shapes):
        root = tmp_path / str(i)
        text = _table_tree(str(root), _rows(), header, images, sep)
        if column:
            text = "\n".join(line + ",x" for line in text.splitlines()) + "\n"
        (root / table).write_text(text)
        if images == "train_images":  # and an unlabeled folder beside it, as Kaggle ships
            _table_tree(str(root), [("t0", "cat")], None, "test_images")
        folder = imagefolder.Folder(str(root), label_column=column,
                                    labels=str(root / table) if column else None)
        got = [(os.path.basename(p), folder.classes[c]) for p, c in folder.splits["train"].files]
        assert folder.classes == CLASSES and len(got) == 12, (table, got)
        assert expected is None or got == expected
        expected = got


def test_a_tables_loose_ends_are_one_warning_each_and_a_broken_table_one_line(tmp_path):
    rows = _rows() + [("lonely", "frog")]
    text = _table_tree(str(tmp_path), rows)
    (tmp_path / "train" / "img00.png").unlink()  # a row without its file
    _picture(np.random.default_rng(0), (9, 9, 9), (20, 20), "RGB").save(tmp_path / "train" / "extra.png")
    (tmp_path / "trainLabels.csv").write_text(text.replace("lonely,frog", "lonely,dog") +
                                              "img05,frog\n" + "single,horse\n")
    _picture(np.random.default_rng(0), (9, 9, 9), (20, 20), "RGB").save(tmp_path / "train" / "single.png")
    said = []
    folder = imagefolder.Folder(str(tmp_path), warn=said.append)
    assert said == [
        "warning: trainLabels.csv: 1 row names a file that " f"{tmp_path / 'train'} lacks, skipped: img00",
        "warning: trainLabels.csv: 1 row names an image a row above named already (the first kept): img05",
        f"warning: {tmp_path / 'train'}: 1 image has no row in trainLabels.csv, not used: extra.png",
        "warning: trainLabels.csv: 1 label has a single image, too few to learn or to hold one out: horse"]
    assert folder.classes == ["cat", "dog", "frog", "horse"]
    for bad, line in [("id,label\nimg01,cat\nimg02\n", "row 3: 1 column, where the labels are column 2"),
                      ("id,label\nimg01,cat\nimg02,\n", "row 3: img02 has no label"),
                      ('id,label\nimg01,"cat\n', "row 2: unexpected end of data"),
                      ("id,label\nnothing,cat\n", "no column names the files of"),
                      # (once the first row won, said as 'a row above named it already')
                      ("id,label\nimg01,cat\nimg01,dog\n", "row 3: img01 is labelled 'dog' here and 'cat'")]:
        (tmp_path / "trainLabels.csv").write_text(bad)
        with pytest.raises(data.DataError, match=line):
            imagefolder.Folder(str(tmp_path))
    (tmp_path / "trainLabels.csv").write_bytes(b"id,label\nimg01,cat\nimg02,\xff\xfe\n")
    with pytest.raises(data.DataError, match=r"trainLabels.csv, row 3: not text"):
        imagefolder.Folder(str(tmp_path))


def test_two_tables_for_one_folder_are_named_with_labels(tmp_path):
    text = _table_tree(str(tmp_path), _rows())
    (tmp_path / "train.csv").write_text(text)
    (tmp_path / "train_extra.csv").write_text(text)
    with pytest.raises(data.DataError, match=r"has 2 tables for train/ \(train.csv, train_extra.csv\): "
                                             r"name the labels with --labels FILE"):
        imagefolder.Folder(str(tmp_path))
    assert imagefolder.Folder(str(tmp_path), labels=str(tmp_path / "train.csv")).classes == CLASSES
    with pytest.raises(data.DataError, match=r"--label-column kind: .*train.csv has no such column "
                                             r"\(id, label; or give its number, from 1\)"):
        imagefolder.Folder(str(tmp_path), labels=str(tmp_path / "train.csv"), label_column="kind")
    with pytest.raises(data.DataError, match=r"--labels .*nope.csv: no such file"):
        imagefolder.Folder(str(tmp_path), labels=str(tmp_path / "nope.csv"))


def test_a_lone_val_folder_with_its_table_beside_train_class_folders(tmp_path):
    """train/<class>/ and val/ labelled by a table inside it: Tiny ImageNet's shape, CSV."""
    for i, (name, label) in enumerate(_rows()):
        _picture(np.random.default_rng(i), (90, 90, 90), (20, 20), "RGB").save(
            os.makedirs(tmp_path / "train" / label, exist_ok=True) or tmp_path / "train" / label / f"{name}.png")
    text = _table_tree(str(tmp_path), _rows(2), "file,class", "val/pictures")
    (tmp_path / "val" / "val_labels.csv").write_text(text)
    folder = imagefolder.Folder(str(tmp_path))
    assert set(folder.splits) == {"train", "test"} and len(folder.splits["test"].files) == 6
    (tmp_path / "val" / "val_labels.csv").write_text(text.replace("cat", "horse"))
    with pytest.raises(data.DataError, match=r"val_labels.csv, row \d: label horse is not one of train/'s classes"):
        imagefolder.Folder(str(tmp_path))


def test_prepare_refuses_labels_for_cifar_and_a_kaggle_folder_without_val_split(tmp_path):
    with pytest.raises(data.DataError, match="a table of labels is for --dataset folder"):
        data.open_folder(config.resolve_config({"labels": "x.csv"}))
    write_kaggle_folder(str(tmp_path), per_class=4, unlabeled=2)
    cfg = config.resolve_config({"dataset": "folder", "data_dir": str(tmp_path)})
    with pytest.raises(data.DataError, match=r"has no labelled test/ \(or val/\) folder to evaluate on: "
                                             r"hold out training images with --val-split N \(a multiple of 3\)"):
        data.prepare(cfg, Dist(), lambda line: None, {})


def _two_splits(root, test_folders=False):
    """train/0..39.png and test/0..9.png, cat and dog, where test/i.png is never train/i.png's
    class; with test_folders, each under its class folder (train/cat/0.png, test/dog/0.png)."""
    rng, rows = np.random.default_rng(2), []
    for split, n in (("train", 40), ("test", 10)):
        for i in range(n):
            label = CLASSES[(i + (split == "test")) % 2]
            rel = f"{split}/{label}/{i}.png" if test_folders else f"{split}/{i}.png"
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            _picture(rng, (50 + 60 * CLASSES.index(label), 90, 90), (20, 20), "RGB").save(
                os.path.join(root, rel))
            rows.append((rel, label))
    return rows


def _table(root, rows):
    (root / "labels.csv").write_text("file,label\n" + "".join(f"{f},{c}\n" for f, c in rows))
    return str(root / "labels.csv")


def test_a_table_labels_each_split_by_its_own_paths_never_another_splits_by_name(tmp_path):
    """Found by the fifth review: a row naming test/0.png labelled train/0.png (the same
    file name), so ten unlabelled training pictures were trained as the test's class, a
    row of each split was 'labelled here and in a row above', and rows of class folders
    under both splits were 'named already'. test/ was then not evaluated at all."""
    # (1) rows for train/10..39 and every test picture: train/0..9 have no row
    root = tmp_path / "one"
    rows = _two_splits(str(root))
    said = []
    folder = imagefolder.Folder(str(root), labels=_table(root, rows[10:]), warn=said.append)
    train = {os.path.relpath(p, root): folder.ids[c] for p, c in folder.splits["train"].files}
    assert train == dict(rows[10:40])  # train/0.png is never labelled by test/0.png's row
    test = {os.path.relpath(p, root): folder.ids[c] for p, c in folder.splits["test"].files}
    assert test == dict(rows[40:])  # the table labels test/ too
    assert said == [f"warning: {root / 'train'}: 10 images have no row in labels.csv, not "
                    f"used: 0.png, 1.png, 2.png, ..."], said
    # (2) rows for every picture, test/0.png another label than train/0.png: no false error
    root = tmp_path / "two"
    rows = _two_splits(str(root))
    folder = imagefolder.Folder(str(root), labels=_table(root, rows))
    assert len(folder.splits["train"].files) == 40 and len(folder.splits["test"].files) == 10
    # (3) class folders under both splits: no row is 'named already'
    root = tmp_path / "three"
    rows = _two_splits(str(root), test_folders=True)
    said = []
    folder = imagefolder.Folder(str(root), labels=_table(root, rows), warn=said.append)
    assert said == [] and len(folder.splits["test"].files) == 10
    test = {os.path.relpath(p, root): folder.ids[c] for p, c in folder.splits["test"].files}
    assert test == dict(rows[40:])


def _layout(root, files, table, table_at="train.csv"):
    """files: {relative path: its true class}; table: the table's text, beside them."""
    rng = np.random.default_rng(3)
    for rel, label in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        _picture(rng, (50 + 60 * CLASSES.index(label), 90, 90), (20, 20), "RGB").save(os.path.join(root, rel))
    path = os.path.join(root, table_at)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("file,label\n" + table)
    return path


def _labels(folder, root, split):
    return {os.path.relpath(p, root).replace(os.sep, "/"): folder.ids[c]
            for p, c in folder.splits[split].files} if split in folder.splits else None


def test_rows_for_another_split_never_label_this_one_by_a_files_name(tmp_path):
    """The hostile pass: rows naming test/'s pictures by a path from elsewhere
    (data/test/0.png, another machine's absolute path) labelled train/0.png by its name; a
    Test/ folder's rows written test/ did too (or stopped the run on a false error)."""
    train = {f"train/{i}.png": CLASSES[i % 2] for i in range(4)}
    for case, tree, table in [
            ("another folder's path", {**train, "test/0.png": "cat", "test/1.png": "dog"},
             "data/train/2.png,cat\ndata/train/3.png,dog\ndata/test/0.png,dog\ndata/test/1.png,cat\n"),
            ("another machine's path", {**train, "test/0.png": "cat"},
             "/home/other/test/data/train/2.png,cat\n/home/other/test/data/train/3.png,dog\n"
             "/home/other/data/test/0.png,dog\n"),
            ("no test/ at all", train, "train/2.png,cat\ntrain/3.png,dog\ntest/0.png,dog\n")]:
        root = tmp_path / case.replace(" ", "_").replace("'", "")
        said = []
        folder = imagefolder.Folder(str(_layout(str(root), tree, table) and root), warn=said.append)
        assert _labels(folder, root, "train") == {"train/2.png": "cat", "train/3.png": "dog"}, case
        assert any("2 images have no row" in line for line in said), (case, said)
    root = tmp_path / "cased"  # Test/ on disk, test/ in the table: the table labels Test/
    tree = {**train, "Test/0.png": "cat", "Test/1.png": "dog"}
    rows = "".join(f"{f},{c}\n" for f, c in train.items()) + "test/0.png,cat\ntest/1.png,dog\n"
    said = []
    folder = imagefolder.Folder(str(_layout(str(root), tree, rows) and root), warn=said.append)
    assert _labels(folder, root, "train") == train and said == []
    assert _labels(folder, root, "test") == {"Test/0.png": "cat", "Test/1.png": "dog"}


def test_a_shared_table_and_an_evaluation_folders_class_folders(tmp_path):
    """The hostile pass: one stray row of the training table relabelled test/'s class
    folders; through a linked data folder, real absolute paths did not label test/; a row
    that reaches train/test/0.png and test/0.png labelled both."""
    root = tmp_path / "stray"
    train = {f"train/{i}.png": CLASSES[i % 2] for i in range(4)}
    rows = "".join(f"{f},{c}\n" for f, c in train.items()) + "test/cat/1.png,dog\n"
    said = []
    _layout(str(root), {**train, "test/cat/1.png": "cat", "test/dog/0.png": "dog"}, rows)
    folder = imagefolder.Folder(str(root), warn=said.append)
    assert _labels(folder, root, "test") == {"test/cat/1.png": "cat", "test/dog/0.png": "dog"}
    assert said == ["warning: train.csv: 1 row gives a picture of " f"{root / 'test'} another label "
                    "than its class folder, which wins: cat/1.png"]
    real = tmp_path / "real"  # a table of real absolute paths, the data folder given by a link
    tree = {**train, "test/0.png": "cat", "test/1.png": "dog"}
    rows = "".join(f"{real / f},{c}\n" for f, c in tree.items())
    _layout(str(real), tree, rows)
    os.symlink(real, tmp_path / "link")
    folder = imagefolder.Folder(str(tmp_path / "link"))
    assert _labels(folder, tmp_path / "link", "test") == {"test/0.png": "cat", "test/1.png": "dog"}
    root = tmp_path / "twice"  # train/test/0.png and test/0.png: the row could be either
    tree = {**train, "train/test/0.png": "cat", "test/0.png": "dog"}
    _layout(str(root), tree, "".join(f"{f},{c}\n" for f, c in train.items()) + "test/0.png,dog\n")
    with pytest.raises(data.DataError, match=r"row 6: test/0.png could be .*train/test/0.png or "
                                             r".*twice/test/0.png"):
        imagefolder.Folder(str(root))
