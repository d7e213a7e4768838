"""Image folders as people have them: the layouts of torchvision, Keras and Kaggle, what
tools leave in them, odd file names, read-only mounts, sizes other than 32 px."""
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from machinery import config, data, folder_cache, imagefolder
from conftest import ROOT
from image_folders import CLASSES, write_image_folder
from machinery.runtime import Dist


def _arrays(folder, split):
    x, y, extra = folder.read(split)
    return x, y, extra["classes"]


def _same(a, b):
    return all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a, b))


@pytest.fixture(scope="module")
def reference_tree(tmp_path_factory):
    """The layout every other one is compared with: DIR/train/ + DIR/test/."""
    root = str(tmp_path_factory.mktemp("reference"))
    write_image_folder(root, per_class=(6, 3), corrupt=0)
    return root


def _copy_as(reference, root, **renames):
    """The reference tree with its split folders renamed (test="val", ...)."""
    for split in ("train", "test"):
        target = renames.get(split, split)
        if target:
            shutil.copytree(os.path.join(reference, split), os.path.join(root, target))
    return str(root)


@pytest.mark.parametrize("name", ["val", "Valid", "VALIDATION", "Test"])
def test_each_name_of_an_evaluation_folder_gives_what_test_gives(reference_tree, tmp_path, name):
    expected = imagefolder.Folder(reference_tree)
    other = imagefolder.Folder(_copy_as(reference_tree, tmp_path, test=name))
    assert other.classes == expected.classes == CLASSES and not other.has("val")
    assert _same(_arrays(other, "test"), _arrays(expected, "test"))
    assert _same(_arrays(other, "train"), _arrays(expected, "train"))


def test_a_flat_tree_is_the_training_images_and_needs_val_split(reference_tree, tmp_path):
    flat = str(tmp_path / "flat")
    shutil.copytree(os.path.join(reference_tree, "train"), flat)
    folder = imagefolder.Folder(flat)
    assert folder.flat and not folder.has("test")
    assert _same(_arrays(folder, "train"), _arrays(imagefolder.Folder(reference_tree), "train"))
    cfg = config.resolve_config({"dataset": "folder", "data_dir": flat})
    with pytest.raises(data.DataError, match=r"has no train/ folder: its 3 class folders are all "
                                             r"training images; hold some out .* --val-split N \(a multiple of 3\)"):
        data.check_protocol(cfg, folder)
    data.check_protocol(config.resolve_config({"dataset": "folder", "data_dir": flat, "val_split": 3}), folder)


def test_train_val_and_test_evaluate_val_each_epoch_and_test_once(reference_tree, tmp_path):
    root = _copy_as(reference_tree, tmp_path, test="val")
    shutil.copytree(os.path.join(reference_tree, "train"), os.path.join(root, "test"))
    cfg = config.resolve_config({"dataset": "folder", "data_dir": root})
    waits = []

    class Recorded(Dist):  # what the other ranks of a torchrun job would wait on
        def barrier(self, patient=False):
            waits.append(patient)
    images = data.prepare(cfg, Recorded(), lambda line: None, {})
    assert waits == [True]  # for the first decode: not the process group's 30-minute timeout
    expected = imagefolder.Folder(reference_tree)
    assert images.val_folder and images.names == CLASSES
    assert _same(images.evaluated, _arrays(expected, "test")[:2])  # val/: what is selected on
    assert _same(images.test, _arrays(expected, "train")[:2])  # test/: evaluated once
    with pytest.raises(data.DataError, match="holds the validation images already"):
        data.check_protocol(config.resolve_config({"dataset": "folder", "data_dir": root,
                                                   "val_split": 3}), imagefolder.Folder(root))
    with pytest.raises(data.DataError, match="has both val/ and valid/"):
        os.makedirs(os.path.join(root, "valid"))
        imagefolder.Folder(root)


def test_the_patient_barrier_uses_its_own_group(monkeypatch):
    import torch
    seen = []
    monkeypatch.setattr(torch.distributed, "barrier", lambda group=None: seen.append(group))
    dist = Dist(0, 2, patient="the long-timeout group")
    dist.barrier(patient=True)
    dist.barrier()
    assert seen == ["the long-timeout group", None]


def _png(path, colour=(200, 30, 30), size=(20, 20)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_folders_as_they_are_clutter_formats_sub_folders_odd_names_and_dangling_links(tmp_path):
    root = str(tmp_path)
    for cls in ("ant", "bee"):
        _png(os.path.join(root, "train", cls, "a.png"))
    # what tools leave behind: skipped without a word
    _png(os.path.join(root, "train", "ant", ".hidden.png"))
    _png(os.path.join(root, "train", "ant", ".ipynb_checkpoints", "a-checkpoint.png"))
    _png(os.path.join(root, "train", "__MACOSX", "ant", "._a.png"))
    _png(os.path.join(root, "train", ".ipynb_checkpoints", "x.png"))
    (tmp_path / "train" / "ant" / "Thumbs.db").write_bytes(b"\0" * 50)
    (tmp_path / "train" / "ant" / ".DS_Store").write_bytes(b"\0" * 50)
    # more formats, a sub-folder, a name that is not UTF-8, a dangling link
    Image.new("RGB", (20, 20), (200, 30, 30)).save(os.path.join(root, "train", "ant", "b.tif"))
    Image.new("RGB", (20, 20), (200, 30, 30)).save(os.path.join(root, "train", "ant", "c.GIF"))
    _png(os.path.join(root, "train", "ant", "2019", "d.png"))
    odd = os.path.join(os.fsencode(root), b"train", b"bee", b"caf\xe9.png")
    Image.new("RGB", (20, 20), (30, 30, 200)).save(odd)
    os.symlink(os.path.join(root, "gone.png"), os.path.join(root, "train", "bee", "link.png"))
    said = []
    folder = imagefolder.Folder(root, warn=said.append)
    assert folder.classes == ["ant", "bee"]
    names = [os.path.relpath(p, root) for p, _ in folder.splits["train"].files]
    assert names == ["train/ant/2019/d.png", "train/ant/a.png", "train/ant/b.tif", "train/ant/c.GIF",
                     "train/bee/a.png", os.fsdecode(b"train/bee/caf\xe9.png")]
    x, y, _ = folder.read("train")
    assert np.bincount(y).tolist() == [4, 2] and len(x) == 6
    assert said[0].startswith("decoded images cached in") and len(said) == 2
    assert said[1] == f"warning: skipped 1 file that is not a readable image: {root}/train/bee/link.png (missing)"
    print(said[1], imagefolder.shown(odd))  # the odd name prints, too


def test_the_same_folder_by_any_name_is_one_cache_and_one_decode(tmp_path, monkeypatch):
    write_image_folder(str(tmp_path / "D"), per_class=(4, 2), corrupt=0)
    decoded, real = [], folder_cache.decode_into
    monkeypatch.setattr(folder_cache, "decode_into", lambda out, paths, size, workers, desc: (
        decoded.append(desc), real(out, paths, size, workers, desc))[1])
    monkeypatch.chdir(tmp_path)
    for name in ("D", "./D", "D/", str(tmp_path / "D")):
        imagefolder.Folder(name).read("train")
    assert decoded == ["decoding train/"]
    assert len(os.listdir(tmp_path / "D" / imagefolder.CACHE)) == 2  # its .npy and .json


def test_an_empty_evaluation_folder_is_an_error_before_training(reference_tree, tmp_path):
    root = _copy_as(reference_tree, tmp_path, test=None)
    os.makedirs(os.path.join(root, "val"))
    with pytest.raises(data.DataError, match=r"val holds no images: add some"):
        imagefolder.Folder(root)
    from train import main
    assert main(["--dataset", "folder", "--data-dir", root, "--out-dir", str(tmp_path / "o")]) == 2


def test_the_class_counts_and_the_classes_too_small(tmp_path):
    write_image_folder(str(tmp_path), per_class=(12, 2), corrupt=0)
    for f in sorted((tmp_path / "train" / "dog").iterdir())[:5]:
        f.unlink()  # 7 left
    lines = imagefolder.Folder(str(tmp_path)).summary()
    assert lines == ["classes: 3, 31 training images; smallest dog (7), largest cat (12)",
                     "warning: 1 class with fewer than 10 training images, too few to learn "
                     "well: dog (7)"]


def test_a_jpeg_is_decoded_at_a_reduced_scale_and_looks_the_same(tmp_path, monkeypatch):
    from machinery.images import load_image
    rng = np.random.default_rng(0)
    small = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((200, 200, 1))).astype(np.uint8)
    path = str(tmp_path / "big.jpg")
    Image.fromarray(small).save(path, quality=90)  # 3200 x 2400
    sizes = []
    real = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda im, *a, **kw: (sizes.append(im.size),
                                                                     real(im, *a, **kw))[1])
    reduced = load_image(path, 32).astype(float)
    assert sizes == [(400, 300)]  # 1/8 of each side: the smallest scale >= 32 px
    with Image.open(path) as f:
        full = np.asarray(f.convert("RGB").resize((32, 32), Image.BICUBIC, box=(400, 0, 2800, 2400)))
    assert np.abs(reduced - full).mean() < 2


def test_a_decoding_worker_that_dies_ends_in_one_line_naming_the_file(tmp_path, monkeypatch):
    write_image_folder(str(tmp_path), per_class=(8, 2), corrupt=0)
    folder = imagefolder.Folder(str(tmp_path))
    files = folder.splits["train"].files
    victim = files[13][0]
    real = folder_cache.decode_one

    def crashes(path, size):
        if path == victim:
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return real(path, size)
    monkeypatch.setattr(folder_cache, "decode_one", crashes)  # (the workers are forked)
    monkeypatch.setattr(folder_cache, "POOL_FROM", 1)
    monkeypatch.setattr(folder_cache, "CHUNK", 4)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the decoding hangs"))
    signal.alarm(120)
    with pytest.raises(data.DataError, match=r"a decoding worker died \(killed, or out of memory\) "
                                             r"while reading .*" + os.path.basename(victim)):
        imagefolder.decode(files, 32, "decoding", workers=2)
    signal.alarm(0)


def test_image_size_is_checked_and_scales_the_augmentation():
    with pytest.raises(config.UserError, match="--image-size must be a multiple of 8 from 16 to 128"):
        config.resolve_config({"image_size": 20})
    with pytest.raises(data.DataError, match="cifar100's images are 32x32; other sizes are for "
                                             "--dataset folder"):
        data.open_folder(config.resolve_config({"image_size": 64}))
    pad, crop = data.train_transform((0.5,) * 3, 64).transforms[:2]
    assert (pad.min_height, crop.height) == (80, 64)  # 64/8 per side
    p = data.draw_augmentations(4000, np.random.default_rng(0), 64, 64)
    assert (p["crop_y"].min(), p["crop_y"].max()) == (0, 16)
    assert (p["hole_h"].min(), p["hole_h"].max()) == (16, 32)  # 64/4 to 64/2
    with pytest.raises(data.DataError, match=r"as 64x64 arrays \(12 KB each\) and no cache folder"):
        imagefolder.check_memory(10**12, "here", 64)


def _read_only_run(root, *argv):
    """A Python script run with `root` mounted read-only (a user namespace's bind mount)."""
    script = (f"import sys; sys.path.insert(0, {ROOT!r})\n"
              "from machinery import folder_cache, imagefolder; real = folder_cache.decode_into\n"
              "folder_cache.decode_into = lambda o, p, s, w, d: (print('DECODED', d), real(o, p, s, w, d))[1]\n"
              "from machinery import config, data, runtime\n"
              f"cfg = config.resolve_config({{'dataset': 'folder', 'data_dir': {root!r}}})\n"
              "data.prepare(cfg, runtime.Dist(), print, {})\n"
              "imagefolder.Folder(cfg.data_dir).read('test')  # another tool of the run\n")
    mount = f"mount --bind -o ro {root} {root} && exec {sys.executable} -c \"$0\""
    return subprocess.run(["unshare", "-rm", "sh", "-c", mount, script, *argv], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_a_read_only_data_folder_caches_elsewhere_once(tmp_path, user_cache):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here to mount a folder read-only")
    root = str(tmp_path / "kaggle-input")
    write_image_folder(root, per_class=(4, 2), corrupt=0)
    first = _read_only_run(root)
    assert first.returncode == 0, first.stderr[-2000:]
    cache = imagefolder.user_cache(root)
    assert first.stdout.count("DECODED") == 2, first.stdout  # train/ and test/, once each
    lines = [line for line in first.stderr.splitlines() if "cache" in line]
    assert lines == [f"decoded images cached in {cache} ({root} cannot be written)"]
    assert not os.path.exists(os.path.join(root, imagefolder.CACHE))
    again = _read_only_run(root)
    assert again.returncode == 0 and "DECODED" not in again.stdout and "cache" not in again.stderr


@pytest.mark.slow
def test_image_size_64_end_to_end_on_train_val_test_with_two_classes(tmp_path, capsys):
    import torch

    import export
    import gradcam_utils
    import train
    from machinery.images import load_image, normalize
    from model import load_classifier, predict
    # width 8 may crash oneDNN natively with channels_last on the CPU: the
    # run turns it off (runtime.channels_last_crashes), or this test would die
    root = tmp_path / "pets"
    write_image_folder(str(root), per_class=(10, 4), classes=["cat", "dog"], corrupt=0)
    shutil.copytree(root / "test", root / "val")
    out = tmp_path / "run"
    flags = ["--dataset", "folder", "--data-dir", str(root), "--image-size", "64", "--blocks", "1",
             "1", "1", "1", "--width", "8", "--batch-size", "8", "--num-workers", "0",
             "--epochs", "2", "--save-every", "1", "--gradcam-images", "2", "--out-dir", str(out)]
    assert train.main(flags) == 0
    said = capsys.readouterr().out
    assert "20 train / 8 validation (val/) images at 64x64 (4x the compute per image of 32 px)" in said
    assert "test set, evaluated once, with the best model by validation accuracy" in said
    assert "top5" not in said and "top-5" not in said  # two classes: always 100%, so never shown
    assert "classes: 2, 20 training images; 10 each" in said
    ckpts = out / "checkpoints"
    best = torch.load(ckpts / "best_model.pt", weights_only=True)
    assert best["image_size"] == best["config"]["image_size"] == 64 and "val_acc" in best
    assert np.isnan(best["val_top5"]).all()
    uninterrupted = torch.load(ckpts / "last.pt", weights_only=True)["model_state_dict"]
    # resumed after its first epoch, with no --image-size: the checkpoint's is kept
    assert train.main(["--resume", str(ckpts / "checkpoint_epoch_0.pt"), "--out-dir", str(out)]) == 0
    resumed = torch.load(ckpts / "last.pt", weights_only=True)["model_state_dict"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    capsys.readouterr()
    assert train.main(["--evaluate", str(ckpts / "best_model.pt"), "--out-dir", str(tmp_path / "ev")]) == 0
    said = capsys.readouterr().out
    assert f"plain: top-1 {best['test_accuracy']:.2f}%  loss" in said  # its 64-px test images
    photo = str(root / "test" / "dog" / "001.jpg")
    assert gradcam_utils.main(["--checkpoint", str(ckpts / "best_model.pt"), "--images", photo,
                               "--out-dir", str(tmp_path / "cams")]) == 0
    assert gradcam_utils.main(["--checkpoint", str(ckpts / "best_model.pt"), "--num-images", "2",
                               "--out-dir", str(tmp_path / "cams")]) == 0
    clf = load_classifier(str(ckpts / "best_model.pt"))
    (top,) = predict(clf, [photo], k=2)
    x = normalize(load_image(photo, 64)[None], clf.mean, clf.std)
    with torch.no_grad():
        p = clf.model(x).softmax(1)[0]
    assert clf.image_size == 64 and dict(top) == pytest.approx(
        {name: float(p[i]) for i, name in enumerate(clf.class_names)}, abs=1e-6)
    assert export.main([str(ckpts / "best_model.pt"), "--format", "pt2", "--out",
                        str(tmp_path / "pets.pt2")]) == 0
    program = torch.export.load(str(tmp_path / "pets.pt2"))
    assert program.module()(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))[0].shape == (1, 2)
