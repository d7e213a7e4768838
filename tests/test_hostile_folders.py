"""The folder reader under hostile input (issue: hostile input): tables whose paths could
mislabel, a cache that could serve stale pixels or leave a dead process's files behind,
and the order of a run's checks before it moves anything aside. One row per case."""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, train_here
from machinery import data, folder_cache, imagefolder
from machinery.cifar import DataError


def picture(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def cats_and_dogs(root, splits=("train", "test")):
    """train/{cat,dog}/ and test/{cat,dog}/, two pictures each, each class its own colour."""
    for split in splits:
        for c, name in enumerate(("cat", "dog")):
            for i in range(2):
                picture(root / split / name / f"{i}.png", (100 * c, 50, i))


def kaggle(root, table):
    """train/0.png, train/a/0.png and train/a/1.png (a sub-folder, not class folders),
    labelled by `table` beside train/."""
    picture(root / "train" / "0.png", (255, 0, 0))
    picture(root / "train" / "a" / "0.png", (0, 0, 255))
    picture(root / "train" / "a" / "1.png", (0, 255, 0))
    (root / "train.csv").write_text(table)


LABELS = [  # (case, the table, {file under train/: the label it must get})
    ("paths that include train/", "file,label\ntrain/a/0.png,cat\ntrain/0.png,dog\ntrain/a/1.png,cat\n",
     {"a/0.png": "cat", "0.png": "dog", "a/1.png": "cat"}),
    ("paths relative to train/", "file,label\na/0.png,cat\n0.png,dog\na/1.png,dog\n",
     {"a/0.png": "cat", "0.png": "dog", "a/1.png": "dog"}),
    ("a name only one file has", "file,label\ntrain/a/0.png,cat\ntrain/0.png,dog\n1.png,dog\n",
     {"a/0.png": "cat", "0.png": "dog", "a/1.png": "dog"}),
    ("separated by semicolons, as a European Excel saves CSV",
     "file;label\ntrain/a/0.png;cat\ntrain/0.png;dog\ntrain/a/1.png;cat\n",
     {"a/0.png": "cat", "0.png": "dog", "a/1.png": "cat"}),
    ("a path whose folder holds no file of that name: no other folder's file taken",
     "file,label\ntrain/a/0.png,cat\ntrain/0.png,dog\ntrain/1.png,dog\ntrain/a/1.png,cat\n",
     {"a/0.png": "cat", "0.png": "dog", "a/1.png": "cat"}),
    ("a folder this data set lacks (another machine's layout): the name still counts",
     "file,label\nimages/a/0.png,cat\ntrain/0.png,dog\nimages/q/1.png,dog\n",
     {"a/0.png": "cat", "0.png": "dog", "a/1.png": "dog"}),
    ("semicolons without a header, a decimal comma in a cell",
     "a/0.png;cat;0,5\n0.png;dog;1,5\na/1.png;dog;2,0\n",
     {"a/0.png": "cat", "0.png": "dog", "a/1.png": "dog"}),
]


BAD_LABELS = [  # (case, the table beside train/, the line says)
    ("a NUL byte in a label", "file,label\ntrain/a/0.png,cat\ntrain/0.png,cat\x00\ntrain/a/1.png,dog\n",
     "train.csv, row 3: the label 'cat\\x00' holds a control character"),
    ("an escape character in a label", "file,label\ntrain/a/0.png,c\x1bat\ntrain/0.png,dog\n",
     "train.csv, row 2: the label 'c\\x1bat' holds a control character"),
    ("a DEL in a label", "file,label\ntrain/a/0.png,cat\ntrain/0.png,dog\x7f\ntrain/a/1.png,dog\n",
     "train.csv, row 3: the label 'dog\\x7f' holds a control character"),
    ("a zero-width space in a label", "file,label\ntrain/a/0.png,cat\ntrain/0.png,cat\u200b\ntrain/a/1.png,dog\n",
     "train.csv, row 3: the label 'cat\\u200b' holds an invisible character"),
    ("one label in both Unicode forms", "file,label\ntrain/a/0.png,caf\u00e9\ntrain/0.png,cafe\u0301\ntrain/a/1.png,dog\n",
     "differ only in Unicode form (NFC and NFD"),
]


@pytest.mark.parametrize("case, table, says", BAD_LABELS, ids=[r[0] for r in BAD_LABELS])
def test_a_label_with_a_control_character_is_one_line_naming_the_row(tmp_path, case, table, says):
    kaggle(tmp_path, table)
    with pytest.raises(DataError) as e:
        imagefolder.Folder(str(tmp_path), warn=lambda line: None)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("case, table, want", LABELS, ids=[r[0] for r in LABELS])
def test_a_tables_path_is_matched_whole_before_any_name(tmp_path, case, table, want):
    kaggle(tmp_path, table)
    folder = imagefolder.Folder(str(tmp_path), warn=lambda line: None)
    split = folder.splits["train"]
    got = {os.path.relpath(p, tmp_path / "train"): folder.classes[label] for p, label in split.files}
    assert got == want


def test_a_name_two_files_share_is_one_line_naming_both(tmp_path):
    picture(tmp_path / "train" / "a" / "0.png", (255, 0, 0))
    picture(tmp_path / "train" / "a" / "b" / "0.png", (0, 0, 255))
    picture(tmp_path / "train" / "a" / "1.png", (0, 255, 0))
    (tmp_path / "train.csv").write_text("file,label\n0.png,cat\n1.png,dog\n")
    with pytest.raises(DataError) as e:
        imagefolder.Folder(str(tmp_path), warn=lambda line: None)
    assert str(e.value) == (f"{tmp_path / 'train.csv'}, row 2: 0.png could be "
                            f"{tmp_path / 'train' / 'a' / '0.png'} or "
                            f"{tmp_path / 'train' / 'a' / 'b' / '0.png'}; name each file by its path, "
                            f"relative to the table's folder")


def test_a_file_replaced_with_its_size_and_time_kept_is_decoded_again(tmp_path):
    """cp -p, rsync -t and unzip keep a file's modification time; a BMP keeps its size."""
    for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        for i in range(2):
            Image.new("RGB", (8, 8), colour).save(_mkdir(tmp_path / "train" / name) / f"{i}.bmp")
    first, _, _ = imagefolder.read_split(str(tmp_path), "train", warn=lambda line: None)
    target = tmp_path / "train" / "red" / "0.bmp"  # the third file, after blue's two
    stat = target.stat()
    Image.new("RGB", (8, 8), (0, 200, 0)).save(target)  # green now, the same size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    again, _, _ = imagefolder.read_split(str(tmp_path), "train", warn=lambda line: None)
    assert tuple(first[2, 0, 0]) == (200, 0, 0) and tuple(again[2, 0, 0]) == (0, 200, 0)


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_dead_writers_temporary_cache_files_are_removed_and_a_live_ones_kept(tmp_path):
    cache = _mkdir(tmp_path / "cache")
    living = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
        files = {"dead": cache / f"train-32px-0123.npy.tmp{dead}",
                 "packed, dead": cache / f"train-32px-0123.npy.packed{dead}",
                 "live": cache / f"train-32px-4567.npy.tmp{living.pid}",
                 "id used again": cache / f"train-32px-89ab.npy.tmp{living.pid}"}
        for path in files.values():
            path.write_bytes(b"\0" * 1024)
        old = time.time() - 3600  # written an hour before the live process started
        os.utime(files["id used again"], (old, old))
        folder_cache.remove_dead_leftovers(str(cache))
        assert {k: p.exists() for k, p in files.items()} == {
            "dead": False, "packed, dead": False, "live": True, "id used again": False}
    finally:
        living.kill()
        living.wait()


def test_the_next_run_removes_what_a_killed_decode_left(tmp_path):
    """As a run killed with kill -9 in its decode leaves them: the next one cleans up."""
    for c in ("a", "b"):
        for i in range(3):
            picture(tmp_path / "train" / c / f"{i}.png", (10 * i, 80 if c == "a" else 160, 0))
    folder = imagefolder.Folder(str(tmp_path), warn=lambda line: None)
    cache = _mkdir(pathlib.Path(folder.caches[0]))  # the data folder's own cache
    leftover = cache / "train-32px-dead.npy.tmp4194304"  # past Linux's largest process id
    leftover.write_bytes(b"\0" * 4096)
    folder.read("train")
    assert not leftover.exists() and any(f.endswith(".npy") for f in os.listdir(cache))


ORDER = [  # (case, flags of the second run)
    ("--archive with a typo in --data-dir", ["--archive", "--data-dir", "{tmp}/no-such-data"]),
    ("--archive with a flag that fails its check", ["--archive", "--batch-size", "0"]),
    ("--archive and a resume file that is not there", ["--archive", "--resume", "{tmp}/none.pt"]),
]


@pytest.mark.parametrize("case, flags", ORDER, ids=[r[0] for r in ORDER])
def test_archive_moves_nothing_when_a_check_fails_first(tiny_data, tmp_path, case, flags):
    out = tmp_path / "run"
    base = ["--data-dir", tiny_data, "--blocks", "1", "1", "1", "1", "--width", "8", "--epochs", "1",
            "--batch-size", "100", "--num-workers", "0", "--gradcam-images", "0",
            "--target-accuracy", "0", "--out-dir", out]
    assert train_here(*base).returncode == 0
    before = sorted(os.listdir(out / "checkpoints"))
    proc = train_here(*base, *[f.format(tmp=tmp_path) for f in flags])
    assert proc.returncode == 2, proc.stderr
    assert sorted(os.listdir(out / "checkpoints")) == before  # nothing moved aside


def test_a_smoke_runs_files_stay_when_the_next_run_fails_its_checks(tmp_path):
    out = tmp_path / "run"
    folder = _mkdir(out / "checkpoints")
    data.write_synthetic_dataset(str(tmp_path / "d"), "cifar10", n_train=100, n_test=20, seed=1)
    assert train_here("--smoke", "--dataset", "cifar10", "--data-dir", tmp_path / "d", "--epochs", "1",
                      "--gradcam-images", "0", "--out-dir", out).returncode == 0
    before = sorted(os.listdir(folder))
    proc = train_here("--data-dir", tmp_path / "no-such-data", "--no-download", "--out-dir", out)
    assert proc.returncode == 2 and sorted(os.listdir(folder)) == before, proc.stderr
    assert np.all([f.endswith((".pt", ".lock")) for f in before])


def _children(pid):
    """The ids of the processes whose parent is `pid` (Linux's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_decoding_workers_end_with_a_run_killed_while_they_decode(tmp_path):
    for c in ("a", "b"):
        folder = _mkdir(tmp_path / "train" / c)
        for i in range(folder_cache.POOL_FROM // 2 + 200):
            Image.new("RGB", (64, 64), (i % 256, 40 if c == "a" else 200, 0)).save(folder / f"{i}.png")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from machinery import imagefolder\n"
            "imagefolder.Folder(%r, workers=2).read('train')\n") % (ROOT, str(tmp_path))
    run = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.monotonic() + 60, []
        while len(workers) < 2 and time.monotonic() < deadline and run.poll() is None:
            workers = _children(run.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, "no decoding workers started"
        run.kill()  # as kill -9 or the out-of-memory killer
        run.wait()
        time.sleep(1)
        assert [w for w in workers if os.path.exists(f"/proc/{w}")
                and "Z" not in open(f"/proc/{w}/stat").read().rsplit(")", 1)[1].split()[0]] == []
    finally:
        run.kill()


LINKED = [  # (case, made after train/{cat,dog} and test/{cat,dog}, the line says)
    ("a class linked under a second name", lambda r: os.symlink("cat", r / "train" / "kitty"),
     "are one folder (a link)"),
    ("test/ a link to train/", lambda r: (shutil.rmtree(r / "test"), os.symlink("train", r / "test")),
     "are one folder (a link)"),
    ("test/'s classes in another case", lambda r: (os.rename(r / "test" / "cat", r / "test" / "Cat"),
                                                   os.rename(r / "test" / "dog", r / "test" / "Dog")),
     "in another case (Cat for cat)"),
    ("train/ holds café in both Unicode forms, test/ one",
     lambda r: (_cafe(r / "train", "NFC"), _cafe(r / "train", "NFD"), _cafe(r / "test", "NFC")),
     "are two folders whose names differ only in Unicode form"),
    ("train/ holds café in both Unicode forms, test/ none",
     lambda r: (_cafe(r / "train", "NFC"), _cafe(r / "train", "NFD")),
     "are two folders whose names differ only in Unicode form"),
    ("Train/ beside train/", lambda r: shutil.copytree(r / "train", r / "Train"),
     "has both Train/ and train/ (names that differ only in case)"),
    ("TEST/ beside test/", lambda r: shutil.copytree(r / "test", r / "TEST"),
     "has both TEST/ and test/ (names that differ only in case)"),
    ("test/ holds café in both Unicode forms",
     lambda r: (_cafe(r / "train", "NFC"), _cafe(r / "test", "NFC"), _cafe(r / "test", "NFD")),
     "are two folders whose names differ only in Unicode form"),
]


def _cafe(split, form):
    """A class café, its name in Unicode form `form` (a Mac writes NFD, Linux NFC)."""
    import unicodedata
    for i in range(2):
        picture(split / unicodedata.normalize(form, "café") / f"{i}.png", (200, 9 * len(form), i))


@pytest.mark.parametrize("case, make, says", LINKED, ids=[r[0] for r in LINKED])
def test_one_folder_under_two_names_is_one_line(tmp_path, case, make, says):
    cats_and_dogs(tmp_path)
    make(tmp_path)
    with pytest.raises(DataError, match=re.escape(says)):
        imagefolder.Folder(str(tmp_path), warn=lambda line: None)


def test_a_link_from_train_into_test_is_not_trained_on(tmp_path):
    cats_and_dogs(tmp_path)
    os.symlink(tmp_path / "test" / "cat", tmp_path / "train" / "cat" / "more")
    said = []
    folder = imagefolder.Folder(str(tmp_path), warn=said.append)
    assert len(folder.splits["train"].files) == 4 and "link" in " ".join(said)


def test_a_class_folder_in_the_other_unicode_form_is_the_same_class(tmp_path):
    import unicodedata
    for split, form in (("train", "NFC"), ("test", "NFD")):
        for c, name in enumerate(("café", "dog")):
            for i in range(2):
                picture(tmp_path / split / unicodedata.normalize(form, name) / f"{i}.png", (100 * c, 5, i))
    folder = imagefolder.Folder(str(tmp_path), warn=lambda line: None)
    assert len(folder.splits["test"].files) == 4


@pytest.mark.parametrize("where", ["out-dir", "cache-dir"])
def test_a_runs_own_folders_inside_a_flat_data_folder_are_not_classes(tmp_path, where):
    for c, name in enumerate(("cat", "dog")):
        for i in range(6):
            picture(tmp_path / "data" / name / f"{i}.png", (100 * c, 50, i))
    mine = tmp_path / "data" / "runs"
    run = ["--dataset", "folder", "--data-dir", tmp_path / "data", "--val-split", "2", "--blocks",
           "1", "1", "1", "1", "--width", "8", "--epochs", "1", "--batch-size", "10",
           "--num-workers", "0", "--gradcam-images", "0", "--target-accuracy", "0",
           f"--{where}", mine] + (["--out-dir", tmp_path / "out"] if where == "cache-dir" else [])
    for _ in range(2):  # the second run finds the first one's files in the data folder
        proc = train_here(*run, *(["--resume", "auto"] if where == "out-dir" else ["--archive"]))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "classes: 2," in proc.stdout, proc.stdout


def test_a_link_from_test_into_train_is_not_tested_on(tmp_path):
    """test/dog/sub -> train/cat would make cat's training images dog's test images."""
    cats_and_dogs(tmp_path)
    os.symlink(tmp_path / "train" / "cat", tmp_path / "test" / "dog" / "sub")
    said = []
    folder = imagefolder.Folder(str(tmp_path), warn=said.append)
    assert len(folder.splits["test"].files) == 4 and "link" in " ".join(said)


def test_a_table_whose_every_name_is_ambiguous_says_which_row(tmp_path):
    """Not "no column names the files": the row and the files its name could be."""
    for part in ("part1", "part2"):
        for i in range(4):
            picture(tmp_path / "train" / part / f"{i}.png", (50 * i, 0, 0))
    (tmp_path / "train.csv").write_text("file,label\n0.png,cat\n1.png,dog\n2.png,cat\n3.png,dog\n")
    with pytest.raises(DataError) as e:
        imagefolder.Folder(str(tmp_path), labels=str(tmp_path / "train.csv"), warn=lambda line: None)
    assert str(e.value).startswith(f"{tmp_path / 'train.csv'}, row 2: 0.png could be "
                                   f"{tmp_path / 'train' / 'part1' / '0.png'} or "
                                   f"{tmp_path / 'train' / 'part2' / '0.png'}; "), str(e.value)


SPELLED = [  # (case, the cell naming train/a/0.png; its bare name 0.png is train/0.png's too)
    ("a doubled slash", "train/a//0.png"),
    ("a .. inside", "train/a/../a/0.png"),
    ("./ in front", "./train/a/0.png"),
    ("absolute, through a linked folder", "{tmp}/linked/a/0.png"),
]


@pytest.mark.parametrize("case, cell", SPELLED, ids=[r[0] for r in SPELLED])
def test_a_tables_path_is_normalised_before_it_is_matched(tmp_path, case, cell):
    cell = cell.format(tmp=tmp_path)
    kaggle(tmp_path, f"file,label\n{cell},cat\ntrain/0.png,dog\ntrain/a/1.png,cat\n")
    os.symlink(tmp_path / "train", tmp_path / "linked")
    folder = imagefolder.Folder(str(tmp_path), warn=lambda line: None)
    got = {os.path.relpath(p, tmp_path / "train"): folder.classes[label]
           for p, label in folder.splits["train"].files}
    assert got == {"a/0.png": "cat", "0.png": "dog", "a/1.png": "cat"}


def test_a_label_column_that_names_the_images_is_one_line(tmp_path):
    """--label-column id would make one class of each image."""
    for i in range(4):
        picture(tmp_path / "train" / f"{i}.png", (50 * i, 0, 0))
    (tmp_path / "train.csv").write_text("id,label\n0,cat\n1,dog\n2,cat\n3,dog\n")
    with pytest.raises(DataError, match=re.escape("--label-column id: that column of ")):
        imagefolder.Folder(str(tmp_path), label_column="id", warn=lambda line: None)


def test_the_docs_say_which_edits_the_cache_key_does_not_see():
    """The fingerprint reads a file whole up to 2 * SAMPLED bytes, else its two ends: the
    docs promise no more (an edit in the middle of a large BMP, its size and time kept)."""
    from machinery.folder_listing import SAMPLED
    text = " ".join(open(os.path.join(ROOT, "docs", "own-images.md")).read().split())
    assert (f"the whole of a file up to {2 * SAMPLED // 1024} KiB, of a larger one's first and "
            f"last {SAMPLED // 1024} KiB" in text and "What this does not see" in text)


def test_a_failed_download_leaves_no_data_folder_behind(tmp_path, monkeypatch):
    """--data-dir /nonexistent offline: the folders torchvision made are removed again."""
    import urllib.error
    import urllib.request
    from machinery import cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    (tmp_path / "kept").mkdir()
    for root in (tmp_path / "no" / "such", tmp_path / "kept"):
        with pytest.raises(DataError, match="the download failed"):
            cifar.ensure_dataset(str(root), "cifar100")
    assert sorted(os.listdir(tmp_path)) == ["kept"] and not os.listdir(tmp_path / "kept")


def test_training_and_predict_give_an_unreadable_file_the_same_reason(tmp_path):
    """An empty file and a file that is no picture: training's warning and predict's row
    say the same words for each (once they did not: 'not a picture' for an empty file)."""
    from machinery.predicting import error_text
    for c, name in enumerate(("cat", "dog")):
        for i in range(2):
            picture(tmp_path / "train" / name / f"{i}.png", (100 * c, 50, i))
    (tmp_path / "train" / "cat" / "empty.png").write_bytes(b"")
    (tmp_path / "train" / "cat" / "text.png").write_bytes(b"not a picture\n")
    said = []
    imagefolder.read_split(str(tmp_path), "train", warn=said.append)
    for name in ("empty.png", "text.png"):
        path = str(tmp_path / "train" / "cat" / name)
        try:
            Image.open(path).load()
        except Exception as e:  # noqa: BLE001 -- what predict's reader catches
            reason = error_text(e, path)
        assert f"{path} ({reason})" in " ".join(said), (reason, said)
    assert "(an empty file)" in " ".join(said)


def test_class_folders_that_differ_only_in_case_are_said(tmp_path):
    """train/cat/ beside train/Cat/: two classes here (EMNIST's a and A are two letters),
    one folder on a Mac's disk; said in one warning, not silently."""
    for c, name in enumerate(("cat", "Cat", "dog")):
        for i in range(2):
            picture(tmp_path / "train" / name / f"{i}.png", (80 * c, 50, i))
    said = []
    folder = imagefolder.Folder(str(tmp_path), warn=said.append)
    assert len(folder.classes) == 3
    assert [line for line in said if "differ only in case" in line and "'Cat' and 'cat'" in line]


def test_labels_that_print_alike_are_said(tmp_path):
    """A no-break space and a full-width letter: classes of their own that print as
    'big cat' and 'cat'; said in a warning each."""
    for i in range(4):
        picture(tmp_path / "train" / f"{i}.png", (60 * i, 0, 0))
    (tmp_path / "train.csv").write_text("id,label\n0,big cat\n1,big\u00a0cat\n2,cat\n3,\uff43at\n",
                                        encoding="utf-8")
    said = []
    imagefolder.Folder(str(tmp_path), warn=said.append)
    assert len([line for line in said if "differ only in case, width or spacing" in line]) == 2


def test_a_submission_table_labels_nothing(tmp_path):
    """Kaggle's sample_submission.csv holds placeholder labels for the test ids: taken as
    'the only table', it labelled train/1.png..., or trained on test/ itself."""
    for split in ("train", "test"):
        for i in range(1, 5):
            picture(tmp_path / "a" / split / f"{i}.png", (40 * i, 0, 0))
    (tmp_path / "a" / "sample_submission.csv").write_text("id,label\n1,dog\n2,cat\n3,dog\n4,cat\n")
    with pytest.raises(DataError, match="holds images but no labels"):
        imagefolder.Folder(str(tmp_path / "a"), warn=lambda line: None)
    shutil.rmtree(tmp_path / "a" / "train")
    os.rename(tmp_path / "a" / "sample_submission.csv", tmp_path / "a" / "sampleSubmission.csv")
    with pytest.raises(DataError, match="has test/ but no train/ folder"):
        imagefolder.Folder(str(tmp_path / "a"), warn=lambda line: None)


def test_a_tables_path_that_names_two_files_from_two_folders_is_one_line(tmp_path):
    """train/1.png in a train.csv beside train/ is train/1.png from the table's folder and
    train/train/1.png (a second unzip) from train/'s: once the nested copy was trained on."""
    for i in range(1, 4):
        picture(tmp_path / "train" / f"{i}.png", (255, 0, 0))
        picture(tmp_path / "train" / "train" / f"{i}.png", (0, 0, 255))
    (tmp_path / "train.csv").write_text("id,label\n" + "".join(
        f"train/{i}.png,{'red' if i % 2 else 'pink'}\n" for i in range(1, 4)))
    with pytest.raises(DataError, match=r"train/1\.png could be .*train/1\.png or .*train/train/1\.png"):
        imagefolder.Folder(str(tmp_path), warn=lambda line: None)


def test_pictures_beside_the_class_folders_are_said_once_never_left_out_silently(tmp_path):
    """The fifth review: pictures lying in train/ itself, beside its class folders, were
    left out without a word."""
    from image_folders import write_image_folder
    write_image_folder(str(tmp_path), per_class=(4, 2), corrupt=0)
    for name in ("stray1.png", "stray2.jpg"):
        shutil.copy(next((tmp_path / "train" / "cat").iterdir()), tmp_path / "train" / name)
    shutil.copy(next((tmp_path / "test" / "cat").iterdir()), tmp_path / "test" / "lost.png")
    said = []
    folder = imagefolder.Folder(str(tmp_path), warn=said.append)
    assert said == [
        f"warning: {tmp_path / 'train'}: 2 pictures lie beside the class folders, in no class: "
        f"not used (stray1.png, stray2.jpg); move them into their class folder",
        f"warning: {tmp_path / 'test'}: 1 picture lies beside the class folders, in no class: "
        f"not used (lost.png); move it into its class folder"]
    assert not any("stray" in p for p, _ in folder.splits["train"].files)
