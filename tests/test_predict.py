"""predict.py and predict(): many pictures into a table, bad files included, in order."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

import train
from conftest import run_here, run_script
from image_folders import CLASSES, _picture, write_image_folder
from model import load_classifier, predict, predictions

PER_CLASS = 101  # 303 readable pictures in class folders, and 3 bad files


@pytest.fixture(scope="module")
def folder_model(tmp_path_factory):
    """A reduced network trained for a few epochs on a generated cat/dog/frog folder, and
    a second folder of new pictures of those classes to predict, with three bad files."""
    root = tmp_path_factory.mktemp("pets")
    write_image_folder(str(root), per_class=(20, 4), seed=0)
    out = root / "run"
    assert train.main(["--dataset", "folder", "--data-dir", str(root), "--blocks", "1", "1", "1",
                       "1", "--width", "8", "--epochs", "4", "--batch-size", "20",
                       "--num-workers", "0", "--gradcam-images", "0", "--target-accuracy", "0",
                       "--out-dir", str(out)]) == 0
    photos = root / "photos"
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 226, (len(CLASSES), 3))  # write_image_folder's, seed 0
    for c, name in enumerate(CLASSES):
        os.makedirs(photos / name)
        for i in range(PER_CLASS):
            _picture(rng, colours[c], (40 + i % 7, 36), "RGB").save(photos / name / f"{i:03d}.jpg")
    blob = (photos / "cat" / "000.jpg").read_bytes()
    (photos / "cat" / "truncated.jpg").write_bytes(blob[: len(blob) // 2])
    (photos / "dog" / "notes.jpg").write_text("not a picture")
    (photos / "frog" / "empty.png").write_bytes(b"")
    return out / "checkpoints" / "best_model.pt", photos


BAD = {"cat/truncated.jpg", "dog/notes.jpg", "frog/empty.png"}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_folder_of_hundreds_becomes_a_row_per_file_bad_files_included(folder_model, tmp_path):
    best, photos = folder_model
    out = tmp_path / "p.csv"
    proc = run_script("predict.py", photos, "--checkpoint", best, "--out", out,
                      "--num-workers", "2", "--batch-size", "64")
    assert proc.returncode == 1, proc.stderr[-2000:]  # some files could not be read
    rows = _rows(out)
    names = [os.path.relpath(r["path"], photos) for r in rows]
    assert len(rows) == 3 * PER_CLASS + 3 and names == sorted(names)  # every file, in order
    assert {n for n, r in zip(names, rows) if r["error"]} == BAD
    good = [r for n, r in zip(names, rows) if n not in BAD]
    clf = load_classifier(str(best))
    want = predict(clf, [r["path"] for r in good], k=3)
    assert [[r[f"class_{i}"] for i in (1, 2, 3)] for r in good] == [[n for n, _ in w] for w in want]
    assert all(abs(float(r["prob_1"]) - w[0][1]) < 1e-5 for r, w in zip(good, want))
    right = sum(w[0][0] == os.path.basename(os.path.dirname(r["path"])) for r, w in zip(good, want))
    assert proc.stdout.splitlines()[-2].startswith(f"{3 * PER_CLASS + 3:,} files: "
                                                   f"{3 * PER_CLASS:,} predicted, 3 could not be read")
    assert proc.stdout.splitlines()[-1] == (f"against their class folders ({3 * PER_CLASS} files): "
                                            f"top-1 {100 * right / (3 * PER_CLASS):.2f}%")


@pytest.mark.slow
def test_the_generator_gives_every_picture_in_order_and_predict_raises_on_a_bad_one(folder_model):
    best, photos = folder_model
    clf = load_classifier(str(best))
    sources = [str(photos / "dog" / "notes.jpg"), np.zeros((20, 30, 3), np.uint8),
               str(photos / "cat" / "001.jpg")]
    got = list(predictions(clf, sources, k=2))
    assert [p.source for p in got[::2]] == sources[::2] and got[0].top is None
    assert got[0].error == "not a picture (or in a format Pillow cannot read)"
    assert len(got[2].top) == 2
    with pytest.raises(OSError, match=r"cannot read .*notes\.jpg: not a picture"):
        predict(clf, sources)
    assert predict(clf, sources[1:], k=2) == [got[1].top, got[2].top]


@pytest.mark.slow
def test_a_submission_is_id_and_label_for_a_numbered_folder(folder_model, tmp_path):
    best, photos = folder_model
    test = tmp_path / "test"
    os.makedirs(test)
    for i in (1, 2, 10):
        Image.open(photos / "frog" / f"{i:03d}.jpg").save(test / f"{i}.png")
    assert run_here("predict.py", test, "--checkpoint", best, "--format", "submission",
                      "--out", tmp_path / "s.csv").returncode == 0
    rows = list(csv.reader(open(tmp_path / "s.csv")))
    clf = load_classifier(str(best))
    labels = [p[0][0] for p in predict(clf, [test / "1.png", test / "2.png", test / "10.png"], k=1)]
    assert rows == [["id", "label"], ["1", labels[0]], ["2", labels[1]], ["10", labels[2]]]


@pytest.mark.slow
def test_an_onnx_file_gives_the_checkpoints_top_class_for_every_readable_file(folder_model,
                                                                              tmp_path):
    best, photos = folder_model
    onnx = tmp_path / "m.onnx"
    assert run_here("export.py", best, "--out", onnx).returncode == 0
    out = {}
    for name, how in (("pt", ["--checkpoint", best]), ("onnx", ["--onnx", onnx])):
        proc = run_here("predict.py", photos, *how, "--format", "jsonl",
                          "--out", tmp_path / f"{name}.jsonl")
        assert proc.returncode == 1, proc.stderr[-2000:]
        out[name] = [json.loads(line) for line in open(tmp_path / f"{name}.jsonl")]
    assert [r["path"] for r in out["pt"]] == [r["path"] for r in out["onnx"]]
    tops = [(a["top"][0]["class"], b["top"][0]["class"]) for a, b in zip(out["pt"], out["onnx"])
            if not a["error"]]
    assert len(tops) == 3 * PER_CLASS and all(a == b for a, b in tops)


@pytest.mark.slow
def test_bad_input_is_one_line_and_writes_nothing(folder_model, tmp_path):
    best, photos = folder_model
    out = tmp_path / "p.csv"
    proc = run_here("predict.py", photos / "nowhere", "--checkpoint", best, "--out", out)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines() == [f"error: {photos / 'nowhere'} does not exist"]
    out.write_text("mine")
    proc = run_here("predict.py", photos / "cat" / "001.jpg", "--checkpoint", best, "--out", out)
    assert proc.returncode == 2 and out.read_text() == "mine"
    assert proc.stderr.strip().splitlines() == [
        f"error: {out} exists: add --force to replace it, or choose another --out"]
    proc = run_here("predict.py", photos, "--checkpoint", photos / "cat" / "001.jpg", "--out",
                      tmp_path / "q.csv")
    assert proc.returncode == 2 and not (tmp_path / "q.csv").exists()
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot read checkpoint")
