"""The folder reader's loose ends, each reproduced: symlink loops, files that failed once,
a class called train, statistics of held-out images, the worker count, one listing per
run, caches of several sizes, and one copy of the data for every process."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from machinery import config, data, folder_cache, imagefolder, runtime, workers
from machinery.runtime import Dist
from conftest import ROOT
from elastic_worker import free_port
from image_folders import _picture, write_image_folder


def test_symlink_loops_and_links_to_a_parent_end_and_count_the_real_files(tmp_path):
    write_image_folder(str(tmp_path), per_class=(5, 2), corrupt=0)
    cat = tmp_path / "train" / "cat"
    os.symlink(".", cat / "again")  # a loop
    os.symlink("..", cat / "up")  # the parent: dog's and frog's images, labelled cat
    os.symlink("../..", tmp_path / "train" / "dog" / "top")  # the data folder itself
    os.symlink(str(tmp_path / "train" / "frog"), cat / "frogs")  # another class
    elsewhere = tmp_path.parent / f"{tmp_path.name}-more"
    _picture(np.random.default_rng(0), (200, 10, 10), (20, 20), "RGB").save(
        os.makedirs(elsewhere, exist_ok=True) or elsewhere / "x.png")
    os.symlink(str(elsewhere), cat / "more")  # a folder elsewhere: followed, once
    said = []
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the listing does not end"))
    signal.alarm(60)
    folder = imagefolder.Folder(str(tmp_path), warn=said.append)
    signal.alarm(0)
    assert folder.counts().tolist() == [6, 5, 5]  # cat's 5 and more/x.png
    assert said == [f"warning: skipped 4 links to a folder already listed (a loop, or a link to a "
                    f"parent): {cat / 'again'}, {cat / 'frogs'}, {cat / 'up'}, ..."]


def test_a_file_unreadable_on_the_first_run_is_read_on_the_next(tmp_path, monkeypatch):
    """A file that failed to decode while its bytes stayed the same (a read error, a file
    locked for a moment): its cache is up to date, and the next run tries it again. (A file
    whose bytes changed has another key: test_hostile_folders.)"""
    write_image_folder(str(tmp_path), per_class=(12, 2), corrupt=0)
    flaky, real = str(tmp_path / "train" / "dog" / "003.bmp"), folder_cache.load_image

    def fails_once(path, size):
        if path == flaky:
            raise OSError(5, "Input/output error")
        return real(path, size)
    monkeypatch.setattr(folder_cache, "load_image", fails_once)
    said = []
    x, _, _ = imagefolder.read_split(str(tmp_path), "train", warn=said.append)
    assert len(x) == 35 and said[-1].endswith("dog/003.bmp (Input/output error)")
    monkeypatch.undo()
    said = []
    x, y, _ = imagefolder.read_split(str(tmp_path), "train", warn=said.append)
    assert len(x) == 36 and np.bincount(y).tolist() == [12, 12, 12]
    assert said[0].startswith("1 file of train/ that could not be read before reads now")
    again = []
    assert len(imagefolder.read_split(str(tmp_path), "train", warn=again.append)[0]) == 36
    assert again == []  # from the cache, nothing to retry


@pytest.mark.parametrize("inside", ["files", "sub-folders"])
def test_a_flat_folder_with_a_class_called_train_is_three_classes_or_is_asked(tmp_path, inside):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["bus", "car", "train"]):
        for i in range(6):
            where = tmp_path / name / (f"kind{i % 2}" if name == "train" and inside == "sub-folders" else "")
            os.makedirs(where, exist_ok=True)
            _picture(rng, (40 + 80 * c, 100, 100), (20, 20), "RGB").save(where / f"{i}.png")
    if inside == "sub-folders":  # train/ holding folders of pictures: a split, or a class?
        with pytest.raises(data.DataError, match=r"is train/ the training split \(holding class "
                                                 r"folders\) or a class beside bus, car\?"):
            imagefolder.Folder(str(tmp_path))
        return
    folder = imagefolder.Folder(str(tmp_path))
    assert folder.flat and folder.classes == ["bus", "car", "train"]
    assert folder.counts().tolist() == [6, 6, 6]
    cfg = config.resolve_config({"dataset": "folder", "data_dir": str(tmp_path), "val_split": 3})
    images = data.prepare(cfg, Dist(), lambda line: None, {})
    assert images.names == ["bus", "car", "train"] and len(images.train[0]) == 15


def test_a_class_called_train_beside_a_real_split_is_refused_in_one_line(tmp_path):
    write_image_folder(str(tmp_path), per_class=(3, 2), corrupt=0)
    _picture(np.random.default_rng(0), (1, 2, 3), (20, 20), "RGB").save(
        os.makedirs(tmp_path / "bus") or tmp_path / "bus" / "0.png")
    with pytest.raises(data.DataError, match=r"is train/ the training split \(beside test/\) or a "
                                             r"class beside bus\?"):
        imagefolder.Folder(str(tmp_path))


def test_with_val_split_the_statistics_are_those_of_the_images_trained_on(tmp_path):
    write_image_folder(str(tmp_path), per_class=(12, 2), corrupt=0, test=False)
    cfg = config.resolve_config({"dataset": "folder", "data_dir": str(tmp_path), "val_split": 6})
    images = data.prepare(cfg, Dist(), lambda line: None, {})
    trained = np.asarray(images.train[0]).reshape(-1, 3).astype(np.float64) / 255
    assert len(images.train[0]) == 30 and len(images.evaluated[0]) == 6
    assert np.allclose(images.mean, trained.mean(0), rtol=0, atol=1e-12)
    assert np.allclose(images.std, trained.std(0), rtol=0, atol=1e-12)
    everything = imagefolder.Folder(str(tmp_path)).stats()
    assert not np.allclose(images.mean, everything[0], rtol=0, atol=1e-6)  # the held-out differ
    again = data.prepare(cfg, Dist(), lambda line: None, {})  # kept beside the cache
    assert (again.mean, again.std) == (images.mean, images.std)
    meta = [f for f in os.listdir(tmp_path / imagefolder.CACHE) if f.endswith(".json")]
    assert f"val6-seed{cfg.seed}" in json.load(open(tmp_path / imagefolder.CACHE / meta[0]))["stats"]


def test_num_workers_reaches_the_decoder_and_one_function_counts_the_cpus(tmp_path, monkeypatch):
    write_image_folder(str(tmp_path), per_class=(4, 2), corrupt=0)
    started = []
    real = folder_cache._pooled
    monkeypatch.setattr(folder_cache, "_pooled", lambda paths, size, n: (started.append(n), real(paths, size, n))[1])
    monkeypatch.setattr(folder_cache, "POOL_FROM", 1)
    for flag, n in [(3, 3), (0, 0), (-1, workers.default_workers())]:
        started.clear()
        cache = tmp_path / f"cache{flag}"
        cfg = config.resolve_config({"dataset": "folder", "data_dir": str(tmp_path), "num_workers": flag,
                                     "cache_dir": str(cache)})
        data.open_folder(cfg).read("train")
        assert started == ([n] if n > 1 else []), flag  # one worker decodes in the process itself
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert workers.default_workers() == runtime.default_workers() == 6


def test_rank_0_lists_the_folder_once_for_every_rank(monkeypatch):
    sent = []

    def broadcast(box, src, group):
        sent.append(group)
        box[0] = ("made", "rank 0's listing")
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast)
    listed = []
    other = Dist(rank=1, world=2, patient="patient group")
    assert other.from_main(lambda: listed.append(1) or "its own") == "rank 0's listing"
    assert listed == [] and sent == ["patient group"]  # not listed again on rank 1

    def failed(box, src, group):
        box[0] = ("error", "DIR has test/ but no train/ folder beside it")
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", failed)
    with pytest.raises(data.DataError, match="no train/ folder beside it"):
        other.from_main(lambda: "unused")


def test_caches_of_several_sizes_live_side_by_side_and_the_oldest_go(tmp_path, monkeypatch):
    write_image_folder(str(tmp_path), per_class=(3, 2), corrupt=0)
    decoded, real = [], folder_cache.decode_into
    monkeypatch.setattr(folder_cache, "decode_into", lambda out, paths, size, *a: (
        decoded.append(size), real(out, paths, size, *a))[1])
    for size in (32, 64, 32, 48, 16, 32):
        imagefolder.read_split(str(tmp_path), "train", size=size)
        time.sleep(0.01)  # (modification times apart)
    assert decoded == [32, 64, 48, 16]  # 32 px again: its cache was still there
    kept = sorted({f.split("-")[1] for f in os.listdir(tmp_path / imagefolder.CACHE) if f.startswith("train-")})
    assert kept == ["16px", "32px", "48px"]  # 64 px, the least recently used, went


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_two_torchrun_processes_share_one_copy_of_the_images(tmp_path):
    """Each rank reads every training image through its loader; the private memory each
    process gains stays well under the cache's size, as the cache is a shared memory map.

    What else moves the measurement is held still, so that a copy of the images is the
    only thing that could pass the bound: the cache is decoded before the job (a cold
    decode's buffers in rank 0 are not what is guarded: benchmarks/folder_memory.py times
    it), and glibc's malloc keeps a fixed mmap threshold, so a batch's buffers go back to
    the system when freed instead of staying in the heap once its adaptive threshold rose.
    Measured here: each rank gains 2.7 MB so; 13-26 MB with neither held (it failed the
    bound 2 of 5 times); 99 MB with the cache read into memory instead of mapped."""
    rng = np.random.default_rng(0)
    root = tmp_path / "big"
    for c in range(2):
        os.makedirs(root / "train" / f"c{c}")
        for i in range(1000):  # 2,000 images of 128 px: a 98 MB cache
            image = np.full((128, 128, 3), 60 + 120 * c, np.uint8)
            image[rng.integers(128), :] = rng.integers(0, 256, 3)
            Image.fromarray(image).save(root / "train" / f"c{c}" / f"{i}.png")
    imagefolder.read_split(str(root), "train", size=128)  # the cache, written once, now
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", os.path.join(ROOT, "tests", "folder_memory_worker.py"),
           str(root), str(tmp_path / "report")]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}  # glibc's default, fixed
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.load(open(tmp_path / "report" / f"{r}.json")) for r in range(2)]
    cache = reports[0]["cache_bytes"]
    assert cache >= 2000 * 128 * 128 * 3
    for r in reports:
        assert r["seen"] == 999  # its half of the 1,998 training images (--val-split 2)
        assert r["grew_kb"] * 1024 < cache / 4, reports  # private memory: far under one copy
