"""--dataset folder: your own images in torchvision's ImageFolder layout, decoded once."""
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
import torch

from machinery import data, folder_cache, imagefolder
from conftest import run_here, train_here
from image_folders import CLASSES, write_image_folder, write_kaggle_folder
from model import load_classifier, predict


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pets")
    return str(root), write_image_folder(str(root))


def _cache_files(root):
    cache = os.path.join(root, imagefolder.CACHE)
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def test_the_reader_decodes_every_format_and_mode_and_skips_what_it_cannot_read(tmp_path):
    counts = write_image_folder(str(tmp_path), corrupt=2)
    said = []
    x, y, extra = imagefolder.read_split(str(tmp_path), "train", warn=said.append)
    assert x.shape == (counts["train"], 32, 32, 3) and x.dtype == np.uint8
    assert extra["classes"] == CLASSES and sorted(set(y.tolist())) == [0, 1, 2]
    assert np.bincount(y).tolist() == [12, 12, 12]  # notes.txt is not an image, broken*.png skipped
    assert said == [f"decoded images cached in {tmp_path / imagefolder.CACHE}",
                    f"warning: skipped 2 files that are not a readable image: "
                    f"{tmp_path / 'train' / 'cat' / 'broken0.png'} (not a picture (or in a format Pillow cannot read)), "
                    f"{tmp_path / 'train' / 'dog' / 'broken1.png'} (not a picture (or in a format Pillow cannot read))"]
    # each class keeps its colour through every format (grey, palette and RGBA become RGB)
    means = np.stack([x[y == c].reshape(-1, 3).mean(0) for c in range(3)])
    assert np.abs(means[:, None] - means[None]).sum(-1)[~np.eye(3, dtype=bool)].min() > 20


def test_decoding_in_worker_processes_gives_the_same_arrays(folder, monkeypatch):
    root, _ = folder
    files = imagefolder.Folder(root).splits["train"].files
    alone = imagefolder.decode(files, 32, "decoding", workers=1)
    monkeypatch.setattr(folder_cache, "POOL_FROM", 1)
    pooled = imagefolder.decode(files, 32, "decoding", workers=2)
    assert np.array_equal(alone[0], pooled[0]) and np.array_equal(alone[1], pooled[1])
    assert alone[2] == pooled[2] == [os.path.join(root, "train", "cat", "broken0.png")]


def test_the_cache_is_reused_and_read_again_after_the_folder_changes(tmp_path, monkeypatch):
    write_image_folder(str(tmp_path), corrupt=0)
    x, y, _ = imagefolder.read_split(str(tmp_path), "train")
    assert [f for f in _cache_files(str(tmp_path)) if f.startswith("train-")]
    decoded = _count_decodes(monkeypatch, len)
    x2, y2, _ = imagefolder.read_split(str(tmp_path), "train")
    assert not decoded and np.array_equal(x, x2) and np.array_equal(y, y2)  # from the cache
    path = tmp_path / "train" / "dog" / "000.png"
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # the same file, touched
    imagefolder.read_split(str(tmp_path), "train")
    assert decoded == [36]
    (tmp_path / "train" / "dog" / "000.png").unlink()  # one file fewer
    x3, _, _ = imagefolder.read_split(str(tmp_path), "train")
    assert decoded == [36, 35] and len(x3) == 35
    assert len([f for f in _cache_files(str(tmp_path)) if f.startswith("train-")]) == 2  # old ones go
    assert len([f for f in _cache_files(str(tmp_path)) if f.startswith("train-32px-")]) == 2  # .npy, .json


def _count_decodes(monkeypatch, what):
    """A list that gets what(paths) of every decode."""
    decoded, real = [], folder_cache.decode_into
    monkeypatch.setattr(folder_cache, "decode_into", lambda out, paths, *a: (
        decoded.append(what(paths)), real(out, paths, *a))[1])
    return decoded


def test_a_cache_write_that_dies_half_way_leaves_no_cache_behind(tmp_path, monkeypatch):
    write_image_folder(str(tmp_path), corrupt=0)

    def dies(fd):  # the images are written; making them durable fails
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(folder_cache.os, "fsync", dies)
    said = []
    x, _, _ = imagefolder.read_split(str(tmp_path), "train", warn=said.append)
    assert len(x) == 36 and said and "cannot write the decoded images" in said[0]
    assert "No space left on device" in said[0]
    assert _cache_files(str(tmp_path)) == []  # nothing half-written, no temporary file


def test_mean_and_std_come_from_the_training_images_and_are_stored(folder):
    root, _ = folder
    x, _, extra = imagefolder.read_split(root, "train")
    pixels = x.reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(extra["mean"], pixels.mean(0), atol=1e-9)
    assert np.allclose(extra["std"], pixels.std(0), atol=1e-9)
    assert data.normalization(root, "folder") == (tuple(extra["mean"]), tuple(extra["std"]))
    name = next(f for f in _cache_files(root) if f.startswith("train-") and f.endswith(".json"))
    with open(os.path.join(root, imagefolder.CACHE, name)) as f:
        assert np.allclose(json.load(f)["stats"]["all"][0], extra["mean"])


def _one_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def _train(root, out, *flags):
    return train_here("--dataset", "folder", "--data-dir", root, "--blocks", "1", "1",
                      "1", "1", "--width", "8", "--batch-size", "16", "--num-workers", "0",
                      "--out-dir", out, *flags)


def test_bad_folders_are_one_line_errors(tmp_path, capsys):
    from train import main

    def refused(root, out):  # train.py's own main, as a user's run would end: one line, exit 2
        capsys.readouterr()
        code = main(["--dataset", "folder", "--data-dir", str(root), "--blocks", "1", "1", "1",
                     "1", "--width", "8", "--num-workers", "0", "--out-dir", str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
        return lines[0]

    def made(name, **kw):
        root = tmp_path / name
        write_image_folder(str(root), corrupt=0, **kw)
        return root
    empty = made("empty")
    for f in (empty / "train" / "frog").iterdir():
        f.unlink()
    assert refused(empty, tmp_path / "o1") == \
        f"error: {empty / 'train' / 'frog'} holds no images (jpg, jpeg, png, ppm, bmp, pgm, tif, tiff, webp, gif)"
    stray = made("stray")
    os.makedirs(stray / "test" / "horse")
    assert refused(stray, tmp_path / "o2") == \
        f"error: {stray / 'test'} has class folder that train/ lacks: horse"
    one = made("one", classes=["cat"])
    assert "has 1 class folder; a classifier needs at least two" in refused(one, tmp_path / "o3")
    assert "nothing is not a folder" in refused(tmp_path / "nothing", tmp_path / "o4")
    blocked = tmp_path / "blocked"
    os.makedirs(blocked)
    (blocked / "train").write_text("a file where a folder should be")
    assert "has no train/ folder" in refused(blocked, tmp_path / "o5")
    no_test = made("no_test", test=False)
    assert refused(no_test, tmp_path / "o6") == (
        f"error: {no_test} has no labelled test/ (or val/) folder to evaluate on: hold out training "
        f"images with --val-split N (a multiple of 3), or add one (class folders, or a table of labels)")
    stray_table = made("stray_table")  # class folders and a train.csv of something else
    (stray_table / "train.csv").write_text("photographer,licence\nme,CC-BY\n")
    assert imagefolder.Folder(str(stray_table)).classes == CLASSES
    labels = tmp_path / "labels"
    write_kaggle_folder(str(labels), per_class=2, unlabeled=1)
    (labels / "trainLabels.csv").write_text("id,label\n1,cat\n2,\n")
    assert refused(labels, tmp_path / "o7") == f"error: {labels / 'trainLabels.csv'}, row 3: 2 has no label"


def test_a_disk_too_small_for_the_cache_and_a_memory_too_small_are_refused_before_decoding(
        tmp_path, monkeypatch):
    write_image_folder(str(tmp_path), corrupt=0)
    monkeypatch.setattr(folder_cache.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 1000))
    monkeypatch.setattr(folder_cache, "available_memory", lambda: 100_000)
    monkeypatch.setattr(folder_cache, "decode_into", lambda *a: pytest.fail("decoded anyway"))
    with pytest.raises(data.DataError, match=r"36 images need 0\.0 GiB as 32x32 arrays \(3 KB each\) "
                                             r"and no cache folder can be written"):
        imagefolder.read_split(str(tmp_path), "train")
    assert _cache_files(str(tmp_path)) == []


@pytest.mark.slow
def test_a_run_on_a_folder_end_to_end_and_every_tool_on_its_checkpoint(folder, tmp_path):
    root, counts = folder
    out = tmp_path / "run"
    proc = _train(root, out, "--epochs", "2", "--gradcam-images", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"data: folder in {root}, {counts['train']} train / {counts['test']} test images" in proc.stdout
    best = out / "checkpoints" / "best_model.pt"
    ckpt = torch.load(best, weights_only=True)
    _, _, extra = imagefolder.read_split(root, "train")
    assert ckpt["class_names"] == CLASSES and ckpt["mean"] == extra["mean"] and ckpt["std"] == extra["std"]
    assert (out / "gradcam_outputs" / "gradcam_grid.png").is_file()
    evaluated = train_here("--evaluate", best, "--out-dir", tmp_path / "ev")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    top1 = float(re.search(r"plain: top-1 ([0-9.]+)%", evaluated.stdout).group(1))
    assert top1 == round(ckpt["test_accuracy"], 2)
    assert f"on {counts['test']} folder test images" in evaluated.stdout
    cams = run_here("gradcam_utils.py", "--checkpoint", best, "--num-images", "3",
                      "--out-dir", tmp_path / "cams")
    assert cams.returncode == 0, cams.stderr[-2000:]
    assert (tmp_path / "cams" / "gradcam_grid.png").is_file()
    clf = load_classifier(str(best))
    (result,) = predict(clf, [os.path.join(root, "test", "frog", "001.jpg")], k=3)
    assert sorted(name for name, _ in result) == CLASSES


@pytest.mark.slow
def test_val_split_on_a_folder_with_and_without_test_images(folder, tmp_path, capsys):
    from train import main
    root, _ = folder
    flags = ["--dataset", "folder", "--blocks", "1", "1", "1", "1", "--width", "8", "--batch-size",
             "16", "--num-workers", "0", "--epochs", "1", "--val-split", "6", "--gradcam-images", "0"]
    assert main([*flags, "--data-dir", root, "--out-dir", str(tmp_path / "a")]) == 0
    said = capsys.readouterr().out
    assert "30 train / 6 validation (held out) images" in said
    assert "test set, evaluated once" in said
    bare = tmp_path / "bare"
    write_image_folder(str(bare), corrupt=0, test=False)
    assert main([*flags, "--data-dir", str(bare), "--out-dir", str(tmp_path / "b")]) == 0
    assert "no test/ folder: the held-out validation images are the only evaluation" in capsys.readouterr().out
    # the cards say so (they said "top-1 accuracy n/a ... measured on: the test set")
    from machinery.card import card, summary
    from machinery.checkpoint_files import load_checkpoint
    for name in ("last.pt", "best_model.pt"):
        ckpt = load_checkpoint(str(tmp_path / "b" / "checkpoints" / name))
        assert ckpt["test_images"] == 0 and "test_accuracy" not in ckpt
        text, short = card(ckpt), summary(ckpt)
        assert "| validation accuracy | **" in text and "none: the data had no test set" in text
        assert "n/a" not in text and "the test set, evaluated once" not in text
        assert "validation accuracy" in short and "(the data had no test set)" in short
