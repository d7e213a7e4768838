"""predict.py under hostile input (issue: hostile input): tables that could mislead, and
the mistakes that used to surface only after every picture was predicted. One row per
case; each runs predict.py's main in this process on the smoke run's model (CIFAR-100's
classes, "train" among them)."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_here
from machinery import predicting


@pytest.fixture(scope="module")
def model(smoke_run, tmp_path_factory):
    """The smoke model, and a copy that knows its classes' ids as Tiny ImageNet's do."""
    best = smoke_run[0] / "checkpoints" / "best_model.pt"
    ckpt = torch.load(best, weights_only=True)
    ids = [f"n{i:08d}" for i in range(len(ckpt["class_names"]))]
    with_ids = tmp_path_factory.mktemp("ids") / "with_ids.pt"
    torch.save({**ckpt, "class_ids": ids}, with_ids)
    return best, with_ids, ckpt["class_names"], ids


def picture(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def _accuracy_said(proc):
    return "against their class folders" in proc.stdout


def test_a_flat_folder_named_like_a_class_is_no_label(model, tmp_path):
    """Kaggle's train/ of numbered files, and "train" is a CIFAR-100 class."""
    best, _, names, _ = model
    assert "train" in names
    for i in range(3):
        picture(tmp_path / "kaggle" / "train" / f"{i}.png", i)
    proc = run_here("predict.py", tmp_path / "kaggle" / "train", "--checkpoint", best,
                    "--out", tmp_path / "p.csv")
    assert proc.returncode == 0 and not _accuracy_said(proc), proc.stdout


def test_one_folder_named_like_a_class_with_nothing_beside_it_is_no_label(model, tmp_path):
    best, _, _, _ = model
    for i in range(3):
        picture(tmp_path / "photos" / "apple" / f"{i}.png", i)
    proc = run_here("predict.py", tmp_path / "photos", "--checkpoint", best, "--out", tmp_path / "p.csv")
    assert proc.returncode == 0 and not _accuracy_said(proc), proc.stdout


def test_class_folders_named_by_class_ids_are_scored_and_a_submission_names_the_ids(model, tmp_path):
    _, with_ids, names, ids = model
    for c in (0, 1):
        picture(tmp_path / "val" / ids[c] / f"{c}.png", c)
    proc = run_here("predict.py", tmp_path / "val", "--checkpoint", with_ids, "--out", tmp_path / "p.csv")
    assert proc.returncode == 0 and _accuracy_said(proc), proc.stdout
    proc = run_here("predict.py", tmp_path / "val", "--checkpoint", with_ids, "--format",
                    "submission", "--out", tmp_path / "s.csv")
    labels = [row[1] for row in csv.reader(open(tmp_path / "s.csv"))][1:]
    assert proc.returncode == 0 and labels and set(labels) <= set(ids), labels


def test_submission_ids_come_in_natural_order(model, tmp_path):
    best, _, _, _ = model
    for i in (10, 2, 1):
        picture(tmp_path / "test" / f"{i}.png", i)
    assert run_here("predict.py", tmp_path / "test", "--checkpoint", best, "--format",
                    "submission", "--out", tmp_path / "s.csv").returncode == 0
    assert [row[0] for row in csv.reader(open(tmp_path / "s.csv"))] == ["id", "1", "2", "10"]


def _refused(proc, out=None):
    """Exit 2, one line, and no table written."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert out is None or not out.exists()
    return lines[0]


REFUSED = [  # (case, files to make, PATH arguments, --out, more flags, the line says)
    ("one id, three files", ["test/1.png", "test/1.jpg", "test/sub/1.png"], ["test"], "s.csv",
     ["--format", "submission"], "both have the id 1"),
    ("nothing to predict", [], ["empty"], "p.csv", [], "nothing to predict: {tmp}/empty holds no picture"),
    ("--out in a folder that does not exist", ["a.png"], ["a.png"], "no/such/dir/p.csv", [],
     "the folder {tmp}/no/such/dir does not exist"),
    ("--out is an input, even with --force", ["a.png", "b.png"], ["a.png", "b.png"], "a.png",
     ["--force"], "it is one of the inputs"),
    ("--out is the @list, even with --force", ["a.png"], ["@list.txt"], "list.txt", ["--force"],
     "it is one of the inputs"),
    ("an @list line that is not UTF-8", ["a.png"], ["@latin1.txt"], "p.csv", [],
     "@{tmp}/latin1.txt, line 2: not UTF-8 text"),
]


@pytest.mark.parametrize("case, files, paths, out, flags, says", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_input_is_one_line_before_any_picture_is_decoded(model, tmp_path, monkeypatch, case,
                                                              files, paths, out, flags, says):
    best, _, _, _ = model
    for i, name in enumerate(files):
        picture(tmp_path / name, i)
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.png'}\n")
    (tmp_path / "latin1.txt").write_bytes(f"{tmp_path / 'a.png'}\n".encode() + "café.png\n".encode("latin-1"))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(predicting, "load_image", lambda *a: pytest.fail("a picture was decoded"))
    args = ["@" + str(tmp_path / p[1:]) if p.startswith("@") else tmp_path / p for p in paths]
    proc = run_here("predict.py", *args, "--checkpoint", best, "--out", tmp_path / out, *flags)
    assert says.format(tmp=tmp_path) in _refused(proc)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
