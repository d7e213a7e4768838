"""predict.py under hostile input (issue: hostile input): tables that could mislead, and
the mistakes that used to surface only after every picture was predicted. One row per
case; each runs predict.py's main in this process on the smoke run's model (CIFAR-100's
classes, "train" among them)."""
import csv
import json
import os

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
    ("nothing to predict", [], ["empty"], "p.csv", [], "{tmp}/empty holds no picture"),
    ("--out in a folder that does not exist", ["a.png"], ["a.png"], "no/such/dir/p.csv", [],
     "the folder {tmp}/no/such/dir does not exist"),
    ("--out is an input, even with --force", ["a.png", "b.png"], ["a.png", "b.png"], "a.png",
     ["--force"], "it is one of the inputs"),
    ("--out is the @list, even with --force", ["a.png"], ["@list.txt"], "list.txt", ["--force"],
     "it is one of the inputs"),
    ("an @list line that is not UTF-8", ["a.png"], ["@latin1.txt"], "p.csv", [],
     "@{tmp}/latin1.txt, line 2: not UTF-8 text"),
    ("one id in two Unicode forms", ["test/caf\u00e9.png", "test/cafe\u0301.png"], ["test"], "s.csv",
     ["--format", "submission"], "both have the id caf"),
    ("a glob matching sidecars only", ["a.png"], ["tk/*"], "p.csv", [], "holds no picture"),
    ("an @list line holding a NUL", ["a.png"], ["@nul.txt"], "p.csv", [], "a\\x00b.png does not exist"),
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
    (tmp_path / "tk").mkdir()
    (tmp_path / "tk" / "IMG_1.png.json").write_text("{}")  # (a phone's sidecar: no picture)
    (tmp_path / "tk" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "nul.txt").write_bytes(b"a\x00b.png\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(predicting, "load_image", lambda *a: pytest.fail("a picture was decoded"))
    args = ["@" + str(tmp_path / p[1:]) if p.startswith("@") else tmp_path / p for p in paths]
    proc = run_here("predict.py", *args, "--checkpoint", best, "--out", tmp_path / out, *flags)
    assert says.format(tmp=tmp_path) in _refused(proc)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


MORE_REFUSED = [  # (case, files, PATH arguments, --out, flags, the line says) found by review
    ("--out is an @list named inside an @list, --force", ["a.png"], ["@outer.txt"], "inner.txt",
     ["--force"], "it is one of the inputs"),
    ("an @list that names itself", ["a.png"], ["@self.txt"], "p.csv", [], "names itself"),
    ("an @list that names a missing @list", ["a.png"], ["@l1.txt"], "p.csv", [],
     "@{tmp}/l1.txt, line 2: cannot read the list @{tmp}/missing.txt: No such file or directory"),
    ("a folder among the PATHs holds no picture", ["a.png"], ["a.png", "empty"], "p.csv", [],
     "{tmp}/empty holds no picture"),
    ("an --out name too long for its temporary ending", ["a.png"], ["a.png"], "p" * 250 + ".csv", [],
     "the name is too long"),
    ("--onnx with --device cuda", ["a.png"], ["a.png"], "p.csv", ["--device", "cuda", "--onnx", "m.onnx"],
     "--onnx runs on the CPU"),
    ("--out an input, without --force: said so", ["a.png"], ["a.png"], "a.png", [],
     "it is one of the inputs"),
    ("a pipe named as a picture", [], ["pipe.png"], "p.csv", [], "is not a file but a pipe"),
    ("a folder holding only a pipe", [], ["pipes"], "p.csv", [], "{tmp}/pipes holds no picture"),
    ("a glob matching only a pipe", [], ["pipes/*.png"], "p.csv", [], "holds no picture"),
    ("--out a pipe, even with --force", ["a.png"], ["a.png"], "pipe.png", ["--force"],
     "--out {tmp}/pipe.png is not a file but a pipe"),
    ("--out - is no stdout, nor a file named -", ["a.png"], ["a.png"], "-", [],
     "--out -: predict.py writes its table to a file, not to stdout"),
    ("--out a device, even with --force", ["a.png"], ["a.png"], "/dev/null", ["--force"],
     "--out /dev/null is not a file but a pipe, socket or device"),
]


@pytest.mark.parametrize("case, files, paths, out, flags, says", MORE_REFUSED,
                         ids=[r[0] for r in MORE_REFUSED])
def test_more_bad_input_is_one_line_before_any_picture_is_decoded(model, tmp_path, monkeypatch, case,
                                                                   files, paths, out, flags, says):
    best, _, _, _ = model
    for i, name in enumerate(files):
        picture(tmp_path / name, i)
    (tmp_path / "empty").mkdir()
    (tmp_path / "inner.txt").write_text(f"{tmp_path / 'a.png'}\n")
    (tmp_path / "outer.txt").write_text(f"@{tmp_path / 'inner.txt'}\n")
    (tmp_path / "self.txt").write_text(f"@{tmp_path / 'self.txt'}\n")
    (tmp_path / "l1.txt").write_text(f"{tmp_path / 'a.png'}\n@{tmp_path / 'missing.txt'}\n")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "pipes").mkdir()
    os.mkfifo(tmp_path / "pipes" / "only.png")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(predicting, "load_image", lambda *a: pytest.fail("a picture was decoded"))
    args = ["@" + str(tmp_path / p[1:]) if p.startswith("@") else tmp_path / p for p in paths]
    model_flags = [] if "--onnx" in flags else ["--checkpoint", best]
    monkeypatch.chdir(tmp_path)  # (where a file named "-" would be written)
    proc = run_here("predict.py", *args, *model_flags, "--out", out if out == "-" else tmp_path / out,
                    *flags)
    assert says.format(tmp=tmp_path) in _refused(proc)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert (tmp_path / "pipe.png").is_fifo()  # not replaced by a table


def test_a_pipe_beside_pictures_or_matched_by_a_glob_is_skipped(tmp_path):
    """Reading a pipe waits for ever: skipped at a folder's top as in its sub-folders."""
    picture(tmp_path / "p1" / "a.png")
    os.mkfifo(tmp_path / "p1" / "fifo.png")
    for path in (tmp_path / "p1", str(tmp_path / "p1" / "*.png")):
        assert [p for p, _ in predicting.expand([path])] == [str(tmp_path / "p1" / "a.png")]


def test_each_file_is_read_once_however_it_is_spelled(tmp_path, monkeypatch):
    """Relative, ./, absolute, and through a link to its own folder (`again -> .`): the
    first spelling kept."""
    from machinery.imagefolder import images_under
    picture(tmp_path / "p1" / "a.png")
    picture(tmp_path / "p3" / "b.png")
    os.symlink(".", tmp_path / "p3" / "again")
    monkeypatch.chdir(tmp_path)
    assert images_under("p3") == ["p3/b.png"]
    found = predicting.expand(["p1/a.png", "./p1/a.png", str(tmp_path / "p1"), "p3", "p3/again/b.png"])
    assert [p for p, _ in found] == ["p1/a.png", "p3/b.png"]


def test_a_link_from_one_class_folder_into_another_is_not_followed(model, tmp_path):
    """As --dataset folder lists them: the linked folder's pictures are its own."""
    best, _, names, _ = model
    for c, name in enumerate(names[:2]):
        for i in range(2):
            picture(tmp_path / "photos" / name / f"{i}.png", 10 * c + i)
    os.symlink(f"../{names[1]}", tmp_path / "photos" / names[0] / "more")
    found = predicting.expand([tmp_path / "photos"])
    assert sorted(os.path.relpath(p, tmp_path / "photos") for p, _ in found) == sorted(
        f"{n}/{i}.png" for n in names[:2] for i in range(2))


def test_a_glob_and_a_file_named_twice_give_each_file_once(model, tmp_path):
    best, _, _, _ = model
    for i in range(2):
        picture(tmp_path / "t" / "a" / f"{i}.png", i)
    found = predicting.expand([str(tmp_path / "t" / "**"), tmp_path / "t" / "a" / "0.png"])
    assert sorted(os.path.basename(p) for p, _ in found) == ["0.png", "1.png"]


def test_odd_ids_and_lists_still_make_a_table(model, tmp_path):
    """A name that is not UTF-8 (a zip from Windows), a superscript digit, an @list saved
    with a byte order mark, --out's ending choosing the format."""
    best, _, _, _ = model
    folder = tmp_path / "test"
    picture(folder / "².png", 1)
    picture(folder / "2.png", 2)
    odd = os.fsencode(str(folder)) + b"/\xe9t\xe9.png"
    with open(odd, "wb") as f:
        f.write((folder / "2.png").read_bytes())
    proc = run_here("predict.py", folder, "--checkpoint", best, "--format", "submission",
                    "--out", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr
    ids = [row[0] for row in csv.reader(open(tmp_path / "s.csv", encoding="utf-8"))][1:]
    assert ids == ["2", "\\xe9t\\xe9", "²"]
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + str(folder / "2.png").encode() + b"\n")
    proc = run_here("predict.py", "@" + str(tmp_path / "bom.txt"), "--checkpoint", best,
                    "--out", tmp_path / "p.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])["path"].endswith("2.png")


def test_a_file_whose_name_starts_with_a_dash_is_told_how_to_name_it(model, tmp_path, monkeypatch):
    """`predict.py -dash.png` read as a flag used to end in 'the following arguments are
    required: PATH'; now the line says how to name it, and ./-dash.png works."""
    best, _, _, _ = model
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "-dash.png")
    proc = run_here("predict.py", "-dash.png", "--checkpoint", best, "--out", "p.csv")
    assert proc.returncode == 2 and "write ./-dash.png, or put the files last, after --" in proc.stderr
    assert not (tmp_path / "p.csv").exists()
    assert run_here("predict.py", "--checkpoint", best, "--out", "p.csv", "--", "-dash.png").returncode == 0
    assert "-dash.png," in (tmp_path / "p.csv").read_text()


def test_an_at_list_comment_that_names_a_file_is_said_not_guessed(model, tmp_path, monkeypatch):
    """`#` starts a comment in an @list; where a file of that very name exists, one note
    says so (and how to name it: ./#name) rather than a silent skip."""
    best, _, _, _ = model
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "#a.png", 1)
    picture(tmp_path / "b.png", 2)
    (tmp_path / "l.txt").write_text("#a.png\n# just a comment\nb.png\n")
    proc = run_here("predict.py", "@l.txt", "--checkpoint", best, "--out", "p.csv")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "line 1: #a.png is a comment" in notes[0] and "./#a.png" in notes[0]
    assert [r[0] for r in csv.reader(open(tmp_path / "p.csv"))][1:] == ["b.png"]
    (tmp_path / "l.txt").write_text("./#a.png\n")
    assert run_here("predict.py", "@l.txt", "--checkpoint", best, "--out", "p.csv", "--force").returncode == 0
    assert [r[0] for r in csv.reader(open(tmp_path / "p.csv"))][1:] == ["./#a.png"]


def test_predict_takes_one_path_as_one_picture(model, tmp_path):
    from model import load_classifier, predict
    best, _, _, _ = model
    clf = load_classifier(str(best))
    path = picture(tmp_path / "1.png", 1)
    assert predict(clf, str(path), k=1) == predict(clf, [path], k=1)
    assert len(predict(clf, Image.open(path), k=1)) == 1


def test_names_that_do_not_fit_the_network_are_one_line(model, tmp_path):
    best, _, _, _ = model
    ckpt = torch.load(best, weights_only=True)
    torch.save({**ckpt, "class_names": ckpt["class_names"][:50]}, tmp_path / "short.pt")
    picture(tmp_path / "a.png", 0)
    proc = run_here("predict.py", tmp_path / "a.png", "--checkpoint", tmp_path / "short.pt",
                    "--out", tmp_path / "p.csv")
    assert "its class_names name 50 classes, and its network has 100" in _refused(proc)


BAD_MEANS = [  # (case, mean): each a CheckpointError from load_classifier, not a TypeError later
    ("a string", "abc"),
    ("None", None),
    ("two numbers", (0.5, 0.5)),
    ("a NaN", (0.5, float("nan"), 0.5)),
    ("a word among numbers", (0.5, "x", 0.5)),
]


@pytest.mark.parametrize("case, mean", BAD_MEANS, ids=[r[0] for r in BAD_MEANS])
def test_a_mean_that_is_not_three_numbers_is_a_checkpoint_error(model, tmp_path, case, mean):
    from model import load_classifier
    from machinery.checkpoint_files import CheckpointError
    best, _, _, _ = model
    ckpt = torch.load(best, weights_only=True)
    torch.save({**ckpt, "mean": mean}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="its mean .* is no data set's"):
        load_classifier(str(tmp_path / "bad.pt"))


def test_a_link_to_another_picture_is_a_row_of_its_own(model, tmp_path):
    """Hugging Face snapshots, DVC and git-annex keep identical pictures as links to one
    file: each name is a picture of its own (once, 2.png and 3.png were dropped from the
    submission without a word: Kaggle refuses one with ids missing)."""
    best, _, _, _ = model
    sub = tmp_path / "sub"
    picture(sub / "1.png", 1)
    os.symlink("1.png", sub / "2.png")
    os.link(sub / "1.png", sub / "3.png")
    picture(sub / "4.png", 4)
    proc = run_here("predict.py", sub, "--checkpoint", best, "--format", "submission",
                    "--out", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr
    assert [r[0] for r in csv.reader(open(tmp_path / "s.csv"))][1:] == ["1", "2", "3", "4"]


@pytest.mark.parametrize("out, says", [
    ("{tmp}/newdir/", "ends with /, a folder's name"),  # (once: every picture decoded, then exit 1)
    ("", "--out '': give the table's file name"),  # (once: predictions.csv, silently)
    ("{tmp}/sticky/p.csv", "another user's file in a folder where only its owner may replace it"),
])
def test_an_out_that_cannot_be_written_is_one_line_before_any_picture(model, tmp_path, monkeypatch,
                                                                       out, says):
    best, _, _, _ = model
    picture(tmp_path / "a.png")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    (sticky / "p.csv").write_text("theirs\n")
    os.chmod(sticky, 0o1777)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(sticky).st_uid + 4321)  # (CI runs as root)
    monkeypatch.setattr(predicting, "load_image", lambda *a: pytest.fail("a picture was decoded"))
    proc = run_here("predict.py", tmp_path / "a.png", "--checkpoint", best, "--force",
                    "--out", out.format(tmp=tmp_path))
    assert says in _refused(proc)
    assert (sticky / "p.csv").read_text() == "theirs\n"


def test_a_killed_predicts_half_table_is_removed_by_the_next(model, tmp_path):
    """kill -9 (or `timeout`) while the table was written left p.csv.tmp<pid> for good;
    the next table of that name removes it (not a live writer's)."""
    import subprocess
    import sys
    best, _, _, _ = model
    picture(tmp_path / "a.png")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "p.csv.tmp999999999").write_text("path,class_1\nhalf")
        (tmp_path / f"p.csv.tmp{live.pid}").write_text("being written")
        assert run_here("predict.py", tmp_path / "a.png", "--checkpoint", best,
                        "--out", tmp_path / "p.csv").returncode == 0
        assert sorted(os.listdir(tmp_path)) == ["a.png", "p.csv", f"p.csv.tmp{live.pid}"]
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("spelled", ["t3/**/*.png", "t3/*", "t3/*/*/*.png"])
def test_a_glob_gives_the_classes_its_folder_would(model, tmp_path, monkeypatch, spelled):
    """t3/apple/aquarium_fish/*.png are apples, as `predict.py t3` says; a glob of the
    same files once took each file's own folder (aquarium_fish) for its class, and the
    accuracy line said 17% where the folder's said 83%."""
    _, _, names, _ = model
    for i in range(2):
        picture(tmp_path / "t3" / names[0] / names[1] / f"{i}.png", i)
        picture(tmp_path / "t3" / names[1] / names[0] / f"{i}.png", 10 + i)
    monkeypatch.chdir(tmp_path)

    def classes(found):
        return sorted((p.replace(os.sep, "/").split("/")[-3:][0], predicting.truth(p, root, names))
                      for p, root in found)
    assert classes(predicting.expand([spelled])) == classes(predicting.expand(["t3"]))
    assert {c for _, c in classes(predicting.expand(["t3"]))} == {0, 1}


def test_class_folders_named_as_a_mac_writes_them_are_scored(model, tmp_path):
    """café/ in NFD (a Mac's) against a checkpoint whose class is café in NFC: the folder
    reader takes them as one; predict's accuracy line once did not."""
    import unicodedata
    best, _, names, _ = model
    ckpt = torch.load(best, weights_only=True)
    nfc = [unicodedata.normalize("NFC", n) for n in ["café", "thé", *names[2:]]]
    torch.save({**ckpt, "class_names": nfc}, tmp_path / "m.pt")
    for c, name in enumerate(("café", "thé")):
        for i in range(2):
            picture(tmp_path / "q" / unicodedata.normalize("NFD", name) / f"{i}.png", 10 * c + i)
    found = predicting.expand([tmp_path / "q"])
    assert sorted(predicting.truth(p, root, nfc) for p, root in found) == [0, 0, 1, 1]


def test_a_file_that_cannot_be_read_is_one_line_whatever_its_name(model, tmp_path):
    best, _, _, _ = model
    picture(tmp_path / "t" / "a.png")
    (tmp_path / "t" / "bad\nerror: everything is fine.png").write_bytes(b"junk")
    proc = run_here("predict.py", tmp_path / "t", "--checkpoint", best, "--out", tmp_path / "p.JSONL")
    assert proc.returncode == 1
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error: everything")]
    assert "bad\\nerror: everything is fine.png" in proc.stderr
    assert (tmp_path / "p.JSONL").read_text().startswith("{")  # (.JSONL is JSON Lines too)


@pytest.mark.parametrize("spelled", ["lp3/**/*.png", "lp3/**"])
def test_a_glob_does_not_follow_a_link_from_one_class_folder_into_another(model, tmp_path,
                                                                           monkeypatch, spelled):
    """bowl/more -> ../trout: the folder's walk leaves it; `**` once followed it, scored
    the trout pictures as bowl and dropped their own spelling."""
    _, _, names, _ = model
    for c, name in enumerate(names[:2]):
        picture(tmp_path / "lp3" / name / f"{c}.png", c)
    os.symlink(f"../{names[1]}", tmp_path / "lp3" / names[0] / "more")
    monkeypatch.chdir(tmp_path)
    got = sorted(p for p, _ in predicting.expand([spelled]))
    assert got == sorted(p for p, _ in predicting.expand(["lp3/*/*.png"])) and len(got) == 2
    assert not [p for p in got if "more" in p]


def test_class_folders_named_one_by_one_get_a_note_on_how_to_score_them(model, tmp_path):
    """`predict.py test/*` unquoted: the shell names each class folder alone, and a
    folder named alone labels nothing. No accuracy line then, but a note saying how."""
    best, _, names, _ = model
    for c, name in enumerate(names[:2]):
        picture(tmp_path / "test" / name / "0.png", c)
    proc = run_here("predict.py", *[tmp_path / "test" / n for n in names[:2]], "--checkpoint",
                    best, "--out", tmp_path / "p.csv")
    assert proc.returncode == 0 and "against their class folders" not in proc.stdout
    assert "are named like classes, but a folder named alone labels nothing" in proc.stderr


def test_a_folder_given_as_the_checkpoint_is_said_to_be_one(tmp_path):
    (tmp_path / "run").mkdir()
    picture(tmp_path / "a.png")
    proc = run_here("predict.py", tmp_path / "a.png", "--checkpoint", tmp_path / "run",
                    "--out", tmp_path / "p.csv")
    assert "is a folder, not a checkpoint" in _refused(proc)


@pytest.mark.slow
@pytest.mark.fresh_python  # (its workers: children of the process it started)
def test_kill_9_of_predict_takes_its_decoding_workers_with_it(model, tmp_path):
    """Its DataLoader's workers once decoded on for seconds as orphans after kill -9."""
    import signal
    import subprocess
    import sys
    import time
    best, _, _, _ = model
    for i in range(600):
        picture(tmp_path / "many" / f"{i}.png", i)
    proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "predict.py"), str(tmp_path / "many"), "--checkpoint", str(best),
        "--num-workers", "2", "--batch-size", "8", "--out", str(tmp_path / "p.csv")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    children = []
    while not children and time.monotonic() < deadline:  # the decoders started
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = [int(c) for c in f.read().split()]
        time.sleep(0.1)
    assert children and proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    alive = [c for c in children if os.path.exists(f"/proc/{c}") and
             open(f"/proc/{c}/stat").read().split(")")[1].split()[0] != "Z"]
    assert not alive, alive


def test_out_json_is_one_json_list_and_jsonl_a_json_object_a_line(model, tmp_path):
    """The fifth review: --out preds.json wrote JSON Lines, which json.load cannot read."""
    best, _, _, _ = model
    for i in range(3):
        picture(tmp_path / "photos" / f"{i}.png", i)
    for out in ("preds.json", "preds.jsonl"):
        proc = run_here("predict.py", tmp_path / "photos", "--checkpoint", best, "--num-workers", "0",
                        "--out", tmp_path / out)
        assert proc.returncode == 0, proc.stderr
    table = json.loads((tmp_path / "preds.json").read_text())
    assert [os.path.basename(r["path"]) for r in table] == ["0.png", "1.png", "2.png"]
    lines = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert lines == table


def test_an_explicit_num_workers_is_capped_at_the_files_and_said(model, tmp_path, monkeypatch):
    """The fifth review: --num-workers 1000 on 7 files started 1000 processes (164 s)."""
    import predict
    from machinery.workers import usable_cpus
    best, _, _, _ = model
    for i in range(3):
        picture(tmp_path / "photos" / f"{i}.png", i)
    asked = []
    real = predicting.batches
    monkeypatch.setattr(predicting, "batches", lambda sources, size, batch_size, workers: (
        asked.append(workers), real(sources, size, batch_size, 0))[1])
    proc = run_here("predict.py", tmp_path / "photos", "--checkpoint", best, "--num-workers", "1000",
                    "--out", tmp_path / "p.csv")
    cap = min(3, usable_cpus())
    assert proc.returncode == 0 and asked == [cap], (asked, proc.stderr)
    assert f"note: --num-workers 1000 capped at {cap} (3 files, " in proc.stderr
    assert predict.workers_for(1, 3) == 1 and predict.workers_for(-1, 3) is None
    monkeypatch.setattr(predict, "usable_cpus", lambda: 1)  # taskset -c 0: one core to use
    assert predict.workers_for(8, 100) == 1


def test_tiny_imagenets_val_folder_is_scored_against_its_annotations(model, tmp_path):
    """The fifth review: predict.py tiny/val/ (val/images/ + val_annotations.txt) gave no
    accuracy and no note, though train.py labels that folder."""
    _, with_ids, _, ids = model
    val = tmp_path / "tiny" / "val"
    rows = []
    for i in range(6):
        picture(val / "images" / f"val_{i}.JPEG", i)
        rows.append(f"val_{i}.JPEG\t{ids[i % 3]}\t0\t0\t20\t20")
    (val / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    proc = run_here("predict.py", val, "--checkpoint", with_ids, "--out", tmp_path / "p.csv")
    assert proc.returncode == 0, proc.stderr
    assert "against val_annotations.txt (6 files): top-1 " in proc.stdout
    proc = run_here("predict.py", val / "images", "--checkpoint", with_ids, "--out", tmp_path / "i.csv")
    assert "against val_annotations.txt (6 files): top-1 " in proc.stdout  # val/'s, one up
    (val / "val_annotations.txt").write_text("val_0.JPEG\tnot_a_class\n")  # another set's labels
    proc = run_here("predict.py", val, "--checkpoint", with_ids, "--out", tmp_path / "q.csv")
    assert proc.returncode == 0 and "against" not in proc.stdout
    assert "not one of train/'s classes: no accuracy against it" in proc.stderr


@pytest.mark.parametrize("code, says", [(28, "free the disk, or give another --out"),  # ENOSPC
                                        (5, "give another --out and run it again")])  # EIO
def test_a_table_that_cannot_be_written_says_why_in_its_own_words(model, tmp_path, monkeypatch,
                                                                  code, says):
    """The fifth review: every failed write said 'free the disk'."""
    import predict
    best, _, _, _ = model
    picture(tmp_path / "photos" / "0.png")

    def fail(path, table, fmt):
        raise OSError(code, os.strerror(code), path)
    monkeypatch.setattr(predict, "write_table", fail)
    proc = run_here("predict.py", tmp_path / "photos", "--checkpoint", best, "--out", tmp_path / "p.csv")
    assert proc.returncode == 1 and says in proc.stderr, proc.stderr
    assert ("free the disk" in proc.stderr) == (code == 28)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "submission"])
def test_a_class_name_that_is_not_utf8_is_written_as_ls_shows_it(tmp_path, fmt):
    """The hostile pass: a class folder named caf\\xe9 (a zip from Windows) crashed every
    table write with a traceback, and train.py's per-class report after training."""
    import types

    import predict
    from machinery import metrics
    cafe = os.fsdecode(b"caf\xe9")
    p = types.SimpleNamespace(top=[(cafe, 0.75), ("dog", 0.25)], classes=[0, 1], error="")
    predict.write_table(tmp_path / "t", predict.rows([("a/1.png", None)], [p], 2, fmt), fmt)
    text = (tmp_path / "t").read_text(encoding="utf-8")
    if fmt.startswith("json"):  # (JSON writes the backslash as \\)
        text = json.dumps([json.loads(line) for line in text.splitlines()] if fmt == "jsonl"
                          else json.loads(text), ensure_ascii=False).replace("\\\\", "\\")
    assert "caf\\xe9" in text
    report = metrics.write_evaluation_report(np.array([0, 1, 1]), np.array([0, 1, 0]), [cafe, "dog"],
                                             str(tmp_path / "report"))
    assert "caf\\xe9" in (tmp_path / "report" / "per_class_accuracy.csv").read_text(encoding="utf-8")
    assert report["pairs"] == [("caf\\xe9", "dog", 1)]
