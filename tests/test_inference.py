"""Using a trained model: --evaluate, predict() on any picture, Grad-CAM on your own images."""
import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image

from machinery import data, imagefolder, runtime
import train
from conftest import run_here, train_here
from machinery.images import load_image
from machinery.metrics import write_evaluation_report
from model import load_classifier, predict


def _top1(text, label):
    return float(re.search(rf"{label}: top-1 ([0-9.]+)%", text).group(1))


@pytest.mark.slow
def test_evaluate_reports_the_training_logs_accuracy_and_writes_the_report(smoke_run, tmp_path):
    out, _ = smoke_run
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    proc = train_here("--evaluate", out / "checkpoints" / "last.pt", "--tta",
                      "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _top1(proc.stdout, "plain") == round(ckpt["test_acc"][-1], 2)
    assert "flip TTA: top-1" in proc.stdout and "10 worst:" in proc.stdout
    assert "most confused" in proc.stdout
    folder = tmp_path / "training_metrics_from_ckpt"
    assert open(folder / "confusion_matrix.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(folder / "per_class_accuracy.csv")))
    assert len(rows) == 100 and rows[0]["class"] == "apple"
    assert rows[0]["superclass"] == "fruit_and_vegetables"
    # the generated test set is balanced, so per-class accuracies average to the overall one
    mean = np.mean([float(r["accuracy"]) for r in rows])
    assert mean == pytest.approx(_top1(proc.stdout, "flip TTA"), abs=0.01)


def test_per_class_accuracy_averages_to_the_overall_accuracy_on_a_balanced_set(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    pred = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 10, 300))
    report = write_evaluation_report(pred, labels, data.CIFAR10_CLASSES, str(tmp_path))
    assert report["per_class"].mean() == pytest.approx(100 * (pred == labels).mean())
    true, wrong, count = report["pairs"][0]
    t, p = data.CIFAR10_CLASSES.index(true), data.CIFAR10_CLASSES.index(wrong)
    assert count == ((labels == t) & (pred == p)).sum() > 0


def test_tta_changes_nothing_for_a_flip_invariant_model(tiny_data):
    # Global average pooling first: a mirrored image gives exactly the same features.
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(3, 100))
    x, y = data.read_split(tiny_data, "cifar100", "test")
    spec = data.DATASETS["cifar100"]
    loader = data.make_test_loader(x, y, batch_size=64)
    rt = runtime.make_runtime(torch.device("cpu"), "fp32", False, spec["mean"], spec["std"])
    plain = runtime.collect_logits(model, loader, rt)
    tta = runtime.collect_logits(model, loader, rt, tta=True)
    assert torch.allclose(plain[0], tta[0], atol=1e-5)
    assert runtime.score(*plain)["acc"] == runtime.score(*tta)["acc"]


def test_tta_differs_for_an_ordinary_model(tiny_data):
    torch.manual_seed(0)
    model = train.ResNet((1, 1, 1, 1), 8, 100).eval()
    x, y = data.read_split(tiny_data, "cifar100", "test")
    spec = data.DATASETS["cifar100"]
    loader = data.make_test_loader(x, y, batch_size=64)
    rt = runtime.make_runtime(torch.device("cpu"), "fp32", False, spec["mean"], spec["std"])
    assert not torch.allclose(runtime.collect_logits(model, loader, rt)[0],
                              runtime.collect_logits(model, loader, rt, tta=True)[0])


@pytest.fixture(scope="module")
def classifier(smoke_run):
    out, _ = smoke_run
    return load_classifier(str(out / "checkpoints" / "best_model.pt"))


def test_predict_gives_the_same_answer_for_a_path_a_pil_image_and_an_array(classifier, smoke_run,
                                                                          tmp_path):
    out, _ = smoke_run
    x, y = data.read_split(str(out / "data" / "smoke"), "cifar100", "test")
    array = x[0]
    Image.fromarray(array).save(tmp_path / "pic.png")
    results = predict(classifier, [str(tmp_path / "pic.png"), Image.fromarray(array), array], k=3)
    assert results[0] == results[1] == results[2]
    names, probs = zip(*results[0])
    assert all(n in data.CIFAR100_CLASSES for n in names)
    assert list(probs) == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # on the generated data the model is right most of the time
    hits = [predict(classifier, [x[i]], k=1)[0][0][0] == data.CIFAR100_CLASSES[y[i]]
            for i in range(50)]
    assert sum(hits) > 15


def test_predict_accepts_other_sizes_and_grayscale(classifier, smoke_run):
    out, _ = smoke_run
    x, _ = data.read_split(str(out / "data" / "smoke"), "cifar100", "test")
    big = np.asarray(Image.fromarray(x[3]).resize((64, 64), Image.NEAREST))
    assert load_image(big).shape == (32, 32, 3)
    # a 64x64 upscale of a test image gets the same top class as the image itself
    assert predict(classifier, [big], k=1)[0][0][0] == predict(classifier, [x[3]], k=1)[0][0][0]
    gray = x[3].mean(2).astype(np.uint8)
    (result,) = predict(classifier, [gray], k=5)
    assert len(result) == 5 and all(0 <= p <= 1 for _, p in result)
    with pytest.raises(ValueError):
        load_image(np.zeros((8, 8), np.float32))


@pytest.mark.slow
def test_gradcam_cli_on_own_images_writes_overlays_and_reports_the_bad_file(smoke_run, tmp_path):
    out, _ = smoke_run
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "broken.png").write_text("this is not a picture")
    proc = run_here("gradcam_utils.py", "--checkpoint", out / "checkpoints" / "best_model.pt",
                      "--images", tmp_path / "a.jpg", tmp_path / "broken.png", tmp_path / "b.png",
                      "--out-dir", tmp_path / "cams")
    assert proc.returncode == 1
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == ["gradcam_a.png", "gradcam_b.png"]
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot read {tmp_path / 'broken.png'}: cannot identify image file "
        f"'{tmp_path / 'broken.png'}'"]
    table = proc.stdout.strip().splitlines()
    assert len(table) == 2 and table[0].startswith(str(tmp_path / "a.jpg"))
    assert table[0].count("%") == 3  # the top three classes


def test_a_phone_photo_is_read_the_way_a_viewer_shows_it(classifier, tmp_path):
    """A portrait photo stored landscape with EXIF orientation 6 ("turn 90 degrees clockwise
    to view"): read as the same photo turned in its pixels, by predict and every decoder."""
    left_red = np.zeros((30, 60, 3), np.uint8)  # 60 wide, 30 high: left half red, right blue
    left_red[:, :30, 0], left_red[:, 30:, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(left_red).save(tmp_path / "phone.png", exif=exif)
    turned = np.rot90(left_red, k=-1).copy()  # what viewers show: 30 wide, 60 high, red on top
    Image.fromarray(turned).save(tmp_path / "turned.png")
    square = load_image(str(tmp_path / "phone.png"))
    assert np.array_equal(square, load_image(str(tmp_path / "turned.png")))
    assert square[0, :, 0].min() > 200 and square[-1, :, 2].min() > 200  # red on top, blue below
    paths = [str(tmp_path / "phone.png"), str(tmp_path / "turned.png")]
    assert predict(classifier, paths[:1], k=5) == predict(classifier, paths[1:], k=5)
    # image folders decode the same way; a JPEG too (decoded at a reduced scale, then turned)
    Image.fromarray(np.kron(left_red, np.ones((40, 40, 1), np.uint8))).save(tmp_path / "phone.jpg", exif=exif)
    decoded, _, skipped = imagefolder.decode([(paths[0], 0), (paths[1], 1),
                                              (str(tmp_path / "phone.jpg"), 0)], 32)
    assert not skipped and np.array_equal(decoded[0], decoded[1])
    assert decoded[2][0, :, 0].min() > 200 and decoded[2][-1, :, 2].min() > 200
