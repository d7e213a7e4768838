"""export.py's card and Space folder under hostile input (issue: hostile input): nothing it
did not write is replaced without --force, a card says only what is true and names no
local path, a Space re-exported keeps no stale examples. One row per case."""
import os
import shutil
import sys

import pytest
import torch
import yaml

from conftest import run_here
from machinery import own_files
from machinery.card import card, summary, written_card

SPACE_ONLY = {"title", "sdk", "sdk_version", "app_file", "emoji", "colorFrom", "colorTo", "pinned"}


def front(text):
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def best(smoke_run):
    return smoke_run[0] / "checkpoints" / "best_model.pt"


def _real(best, **config):
    """The smoke model's checkpoint as if trained on CIFAR-100 itself (not --smoke)."""
    ckpt = torch.load(best, weights_only=True)
    return {**ckpt, "config": {**ckpt["config"], "smoke": False, **config}}


HAND_WRITTEN = "---\nlicense: apache-2.0\n---\n# My model\nWritten by hand.\n"
REPLACED = [  # (what --out holds, extra flags, replaced?)
    ("a hand-written card", HAND_WRITTEN, [], False),
    ("a hand-written card, --force", HAND_WRITTEN, ["--force"], True),
    ("notes that are no card at all", "shopping list\n", [], False),
]


@pytest.mark.parametrize("what, before, flags, replaced", REPLACED, ids=[r[0] for r in REPLACED])
def test_the_card_replaces_only_its_own_card_without_force(best, tmp_path, what, before, flags,
                                                           replaced):
    out = tmp_path / "README.md"
    out.write_text(before)
    proc = run_here("export.py", best, "--format", "card", "--out", out, *flags)
    assert proc.returncode == (0 if replaced else 2), proc.stderr
    assert (out.read_text() != before) == replaced
    if not replaced:
        assert proc.stderr.strip().splitlines() == [
            f"error: refusing to replace {out}: not a model card export.py wrote, or changed "
            f"since (by hand, or a Space's card); add --force to replace it, or choose another --out"]
    assert os.listdir(tmp_path) == ["README.md"]  # no temporary file left


def test_a_card_it_wrote_is_replaced_and_one_edited_since_is_not(best, tmp_path):
    out = tmp_path / "card.md"
    assert run_here("export.py", best, "--format", "card", "--out", out).returncode == 0
    assert "<!-- written by export.py as model card from best_model.pt, digest" in out.read_text()
    assert run_here("export.py", best, "--format", "card", "--out", out).returncode == 0
    out.write_text(out.read_text().replace("## Use", "## Use (my notes)"))
    proc = run_here("export.py", best, "--format", "card", "--out", out)
    assert proc.returncode == 2 and "(my notes)" in out.read_text()


CARDS = [  # (case, checkpoint changes, kind, what the front matter must hold / lack)
    ("a smoke model claims no result", {}, "model", {}, {"model-index", "datasets"}),
    ("a model repository's card", {"smoke": False}, "model",
     {"license": "mit", "library_name": "pytorch", "pipeline_tag": "image-classification",
      "datasets": ["uoft-cs/cifar100"]}, SPACE_ONLY),
    ("a Space's card", {"smoke": False}, "space",
     {"sdk": "gradio", "sdk_version": "6.31.0", "datasets": ["uoft-cs/cifar100"]},
     {"library_name", "model-index"}),
]


@pytest.mark.parametrize("case, changes, kind, holds, lacks", CARDS, ids=[c[0] for c in CARDS])
def test_the_front_matter_is_hugging_faces_for_the_kind(best, case, changes, kind, holds, lacks):
    ckpt = _real(best, **changes) if changes else torch.load(best, weights_only=True)
    meta = front(card(ckpt, kind=kind, sdk_version="6.31.0"))
    assert {k: meta.get(k) for k in holds} == holds
    assert not lacks & set(meta), lacks & set(meta)
    if kind == "model" and changes:
        result = meta["model-index"][0]["results"][0]
        assert result["metrics"][0]["value"] == round(ckpt["test_acc"][ckpt["epoch"]], 2)


def test_a_card_names_no_path_of_the_machine_it_was_made_on(best):
    ckpt = _real(best, data_dir="/home/someone/private/cifar", out_dir="/home/someone/runs/r1",
                 init_from="/home/someone/runs/r0/best_model.pt")
    text = card(ckpt)
    assert "/home/someone" not in text
    assert "--data-dir cifar" in text and "--init-from best_model.pt" in text


def _space(best, out, *flags):
    return run_here("export.py", best, "--format", "space", "--out", out, *flags)


@pytest.mark.slow
def test_a_space_re_exported_keeps_nothing_stale_and_nothing_of_its_owners(best, tmp_path):
    out = tmp_path / "space"
    assert _space(best, out).returncode == 0  # with examples: the smoke data's test pictures
    (out / "examples" / "0.png").write_bytes(b"an owner's picture now")  # changed since
    proc = _space(best, out)
    assert proc.returncode == 2 and "refusing to replace examples/0.png" in proc.stderr
    os.remove(out / "examples" / "0.png")
    mine = {k: v for k, v in own_files.written(out).items() if k != "examples/0.png"}
    (out / "examples" / ".DS_Store").write_bytes(b"\0\0")
    (out / "LICENSE").write_text("mine")  # the owner's, beside the export's files
    shutil.copy(out / "model.onnx", out / "examples" / "9.png")  # as an old export's example
    mine["examples/9.png"] = own_files.sha256(out / "examples" / "9.png")
    own_files.record(out, list(mine))
    assert _space(best, out).returncode == 0
    assert (out / "LICENSE").read_text() == "mine"
    assert not (out / "examples" / "9.png").exists()  # the earlier export's, gone
    sys.path.insert(0, str(out))
    repos = sys.modules.pop("app", None)  # (the repo's app.py, if a test imported it before)
    try:
        import app as space_app_copy  # the Space's own app.py
        listed = space_app_copy.pictures_in(str(out / "examples"))
    finally:
        sys.path.remove(str(out))
        sys.modules.pop("app", None)
        if repos is not None:
            sys.modules["app"] = repos
    assert not [p for p in listed if os.path.basename(p).startswith(".")]


@pytest.mark.slow
def test_a_space_folder_of_someone_elses_files_is_refused_without_force(best, tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "README.md").write_text(HAND_WRITTEN)
    proc = _space(best, out)
    assert proc.returncode == 2 and (out / "README.md").read_text() == HAND_WRITTEN
    assert proc.stderr.startswith(f"error: refusing to replace README.md in {out}")
    assert _space(best, out, "--force").returncode == 0
    assert (out / "README.md").read_text() != HAND_WRITTEN


@pytest.mark.slow
def test_the_spaces_page_serves_on_gradios_own_port(best, tmp_path):
    from pages import free_port, serve, stop
    out = tmp_path / "space"
    assert _space(best, out).returncode == 0
    port = free_port()
    proc, url = serve([sys.executable, str(out / "app.py")], cwd=out,
                      env={"PYTHONPATH": "", "GRADIO_SERVER_PORT": str(port)}, port=port)
    stop(proc)
    assert url.endswith(f":{port}/")


def test_a_spaces_card_is_not_replaced_by_a_model_card(best, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(card(torch.load(best, weights_only=True), kind="space"))
    proc = run_here("export.py", best, "--format", "card", "--out", readme)
    assert proc.returncode == 2 and "sdk: gradio" in readme.read_text()


def test_a_card_replaces_a_link_never_the_file_it_points_to(best, tmp_path):
    (tmp_path / "precious.md").write_text(HAND_WRITTEN)
    os.symlink(tmp_path / "precious.md", tmp_path / "README.md")
    assert run_here("export.py", best, "--format", "card", "--out", tmp_path / "README.md",
                    "--force").returncode == 0
    assert (tmp_path / "precious.md").read_text() == HAND_WRITTEN
    assert not os.path.islink(tmp_path / "README.md")


def test_an_export_never_replaces_a_checkpoint_even_with_force(best, tmp_path):
    other = tmp_path / "other.pt"
    shutil.copy(best, other)
    blob = other.read_bytes()
    proc = run_here("export.py", best, "--out", other, "--force")
    assert proc.returncode == 2 and "it is a checkpoint" in proc.stderr
    assert other.read_bytes() == blob


def test_a_bare_state_dict_and_a_windows_path_make_no_claims(best, tmp_path):
    ckpt = torch.load(best, weights_only=True)
    bare = {"model_state_dict": ckpt["model_state_dict"], "class_names": ckpt["class_names"],
            "mean": ckpt["mean"], "std": ckpt["std"], "image_size": 32}
    text = card(bare)
    assert "datasets" not in front(text) and "model-index" not in front(text)
    assert "no training history" in text and "epoch | -1" not in text
    # nor the data set or the recipe: the file does not say them (once: "on CIFAR-100",
    # "Settings that differ from it: none (the reference recipe)")
    assert "CIFAR-100" not in text.split("\n# ", 1)[1].split(":", 1)[0] and "reference recipe" not in text
    assert "the data set and the recipe they were trained with are unknown" in text
    from machinery.checkpoint_files import fill_metadata
    weights = {"model_state_dict": ckpt["model_state_dict"], "bare_state_dict": True}
    fill_metadata(weights)  # (torch.save(model.state_dict()): the names are a guess)
    text = card(weights)
    assert "# ResNet (weights only)" in text and "assumed from the class count" in text
    assert "Weights only: the data set and recipe are unknown" in summary(weights)
    win = _real(best, data_dir="C:\\Users\\alice\\secret\\data")
    assert "alice" not in card(win) and "--data-dir data" in card(win)
    assert "--data-dir" not in card(_real(best, data_dir="./data"))  # the default, unreduced


@pytest.mark.slow
def test_a_manifest_cannot_make_a_space_export_remove_what_it_never_writes(best, tmp_path):
    """Out of its folder, or inside it (.git/, a file of the owner's): a crafted or stale
    manifest removes only names the export itself writes."""
    out = tmp_path / "space"
    assert _space(best, out).returncode == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("")
    (out / ".git").mkdir()
    (out / ".git" / "config").write_text("[core]\n")
    (out / "notes.txt").write_text("mine\n")
    mine = own_files.written(out)
    mine.update({str(victim): own_files.sha256(victim), "../victim.txt": own_files.sha256(victim),
                 ".git/config": own_files.sha256(out / ".git" / "config"),
                 "notes.txt": own_files.sha256(out / "notes.txt")})
    import json
    (out / own_files.MANIFEST).write_text(json.dumps({"files": mine}))
    assert _space(best, out).returncode == 0 and victim.exists()
    assert (out / ".git" / "config").exists() and (out / "notes.txt").exists()


@pytest.mark.slow
def test_a_space_export_that_fails_half_way_leaves_the_earlier_one_whole(best, tmp_path, monkeypatch):
    from machinery import metrics
    out = tmp_path / "space"
    assert _space(best, out).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    seen = {}

    def stopped(*a, **k):  # Ctrl-C while the curves are drawn, after model.onnx was made
        seen["inside"], seen["beside"] = os.listdir(out), os.listdir(tmp_path)
        raise KeyboardInterrupt
    monkeypatch.setattr(metrics, "write_metrics", stopped)
    proc = _space(best, out)
    assert proc.returncode == 130 and "nothing was changed" in proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["space"]
    # the half-made Space was beside it, never in it (where an upload would carry it)
    assert not [p for p in seen["inside"] if ".export-" in p]
    assert [p for p in seen["beside"] if p.startswith(".space.export-")]


@pytest.mark.slow
def test_the_exported_files_name_no_folder_of_this_machine(best, tmp_path):
    import zipfile
    assert run_here("export.py", best, "--format", "all", "--out", tmp_path / "m").returncode == 0
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__))).encode()
    assert here not in (tmp_path / "m.onnx").read_bytes()
    with zipfile.ZipFile(tmp_path / "m.pt2") as z:
        assert not [n for n in z.namelist() if here in z.read(n)]
        assert {n.split("/")[0] for n in z.namelist()} == {"archive"}  # no temporary name, no pid


def test_an_out_that_is_a_folder_is_one_line(best, tmp_path):
    for flags in (["--out", f"{tmp_path}/"], ["--format", "card", "--out", tmp_path]):
        proc = run_here("export.py", best, *flags)
        assert proc.returncode == 2 and "is a folder" in proc.stderr, proc.stderr


def test_a_space_export_never_replaces_its_checkpoint_or_another_even_with_force(best, tmp_path):
    """The checkpoint copied in under a Space file's name, exported from there: refused in
    one line before any work, as is another checkpoint there."""
    space = tmp_path / "space"
    space.mkdir()
    shutil.copy(best, space / "model.onnx")
    shutil.copy(best, space / "README.md")
    blob = best.read_bytes()
    for source, says in ((space / "model.onnx", "its model.onnx is the checkpoint being exported"),
                         (best, "its model.onnx is a checkpoint")):
        proc = _space(source, space, "--force")
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1
    assert (space / "model.onnx").read_bytes() == blob == (space / "README.md").read_bytes()
    assert sorted(os.listdir(space)) == ["README.md", "model.onnx"]


SPECIAL = [  # (case, how --out is made, format)
    ("a FIFO, a card", lambda p: os.mkfifo(p), "card"),
    ("a link to /dev/null, a card", lambda p: os.symlink("/dev/null", p), "card"),
    ("a link to a link into /proc, a card",
     lambda p: (os.symlink("/proc/self/fd/1", f"{p}.hop"), os.symlink(f"{p}.hop", p)), "card"),
    ("a FIFO, onnx", lambda p: os.mkfifo(p), "onnx"),
]


@pytest.mark.parametrize("case, make, fmt", SPECIAL, ids=[r[0] for r in SPECIAL])
def test_an_out_that_is_no_regular_file_is_refused_even_with_force(best, tmp_path, case, make, fmt):
    out = tmp_path / "out"
    make(str(out))
    before = (os.lstat(out).st_mode, os.readlink(out) if os.path.islink(out) else None)
    proc = run_here("export.py", best, "--format", fmt, "--out", out, "--force")
    assert proc.returncode == 2 and "not a regular file" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and not proc.stdout
    assert (os.lstat(out).st_mode, os.readlink(out) if os.path.islink(out) else None) == before


LICENSES = [  # (case, --license, refused?)
    ("a key of its own after a colon", "cc-by-4.0: x", True),
    ("a new line with a key", "mit\ntitle: owned", True),
    ("capitals", "MIT", True),
    ("the Hub's apache-2.0", "apache-2.0", False),
    ("the Hub's cc-by-nc-sa-4.0", "cc-by-nc-sa-4.0", False),
    ("the Hub's other", "other", False),
    ("the Hub's llama3.1 (the hostile pass: refused)", "llama3.1", False),
    # the fifth review: written into the card, where the docstring promised a refusal
    ("an id of the right shape the Hub does not name", "definitely-not-a-licence", True),
    ("gpl-3.0+ (the Hub names gpl-3.0)", "gpl-3.0+", True),
]


@pytest.mark.parametrize("case, license, refused", LICENSES, ids=[r[0] for r in LICENSES])
def test_a_license_is_a_hub_id_or_one_line(best, tmp_path, case, license, refused):
    out = tmp_path / "card.md"
    proc = run_here("export.py", best, "--format", "card", "--out", out, "--license", license)
    if refused:
        assert proc.returncode == 2 and not out.exists()
        assert proc.stderr.startswith("error: --license ") and len(proc.stderr.splitlines()) == 1
        if license in ("MIT", "gpl-3.0+"):
            assert "did you mean mit?" in proc.stderr or "gpl-3.0" in proc.stderr.split("mean")[-1]
    else:
        assert proc.returncode == 0 and front(out.read_text())["license"] == license


BROKEN = [  # (case, key, its value, the line says)
    ("fewer class names than outputs", "class_names", ["apple", "bee", "cat"], "class_names"),
    ("an image size of 0", "image_size", 0, "image_size 0"),
    ("a std of zeros", "std", [0.0, 0.0, 0.0], "std"),
    ("a mean of letters", "mean", "abc", "its mean 'abc'"),
    ("a mean of one number", "mean", 0.5, "its mean 0.5"),
    ("a mean of three digits in a string", "mean", "123", "its mean '123'"),
    ("a mean with a NaN", "mean", [0.5, float("nan"), 0.5], "its mean"),
]


@pytest.mark.parametrize("case, key, value, says", BROKEN, ids=[r[0] for r in BROKEN])
def test_a_checkpoint_app_py_refuses_is_not_exported(best, tmp_path, case, key, value, says):
    ckpt = {**torch.load(best, weights_only=True), key: value}
    torch.save(ckpt, tmp_path / "broken.pt")
    proc = run_here("export.py", tmp_path / "broken.pt", "--out", tmp_path / "m.onnx")
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_a_nan_difference_fails_the_check(best, tmp_path):
    """NaN > 1e-4 is False: a network that answers NaN must not pass as 'checked'."""
    ckpt = torch.load(best, weights_only=True)
    ckpt["model_state_dict"]["fc.bias"] = torch.full_like(ckpt["model_state_dict"]["fc.bias"],
                                                          float("nan"))
    torch.save(ckpt, tmp_path / "nan.pt")
    proc = run_here("export.py", tmp_path / "nan.pt", "--out", tmp_path / "m.onnx")
    assert proc.returncode == 1 and "does not match PyTorch" in proc.stderr, proc.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_the_spaces_examples_are_pictures_inside_its_folder(tmp_path, capsys):
    """The Space's page publishes its examples/: never a link out of it (to a .env), nor
    a file only named like a picture."""
    import numpy as np
    from PIL import Image
    from machinery.space_app import pictures_in
    examples = tmp_path / "examples"
    examples.mkdir()
    (tmp_path / ".env").write_text("API_KEY=secret\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(examples / "0.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / ".env", examples / "evil.png")
    os.symlink(tmp_path / "outside.png", examples / "out.png")  # a picture, but not the folder's
    (examples / "notes.jpg").write_text("my notes\n")
    assert pictures_in(str(examples)) == [str(examples / "0.png")]
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 3 and all(line.startswith("note: example ") for line in said), said


def test_a_second_space_export_leaves_the_firsts_build_folder(best, tmp_path):
    """Two exports into one folder at once: a build folder whose process lives stays; one
    whose process is gone (a killed export's) goes, as does an older export.py's."""
    import subprocess
    import export
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    space = tmp_path / "space"
    space.mkdir()
    try:  # inside the Space (a parent it could not write) and beside; and the user's own
        # folders named alike but not as a build is (mkdtemp's 8 characters after the id)
        for name in (f".export-{live.pid}-abc_1234", ".export-999999999-def_5678", ".export-old",
                     ".export-mine", ".export-12-x"):
            for home, name in ((space, name), (tmp_path, ".space" + name), (tmp_path, ".other" + name)):
                (home / name).mkdir()
                (home / name / "model.onnx").write_bytes(b"half")
        export.remove_dead_builds(str(space))
        kept = sorted([f".export-{live.pid}-abc_1234", ".export-12-x", ".export-mine", ".export-old"])
        assert sorted(os.listdir(space)) == kept
        assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".space")) == sorted(
            ".space" + name for name in kept)
        assert len([p for p in os.listdir(tmp_path) if p.startswith(".other")]) == 5  # not its own
    finally:
        live.kill()
        live.wait()


def test_a_smoke_models_summary_says_generated_data_first(best):
    from machinery.card import summary
    line = summary(torch.load(best, weights_only=True))
    assert line.startswith("**Generated CIFAR-100-format pictures**"), line
    assert summary(_real(best)).startswith("**CIFAR-100**")


def test_a_checkpoint_whose_epoch_is_past_its_history_still_gets_a_card(best, tmp_path):
    """The epoch it names is beyond the lists of accuracies (a hand-edited file): the card
    leaves those figures out instead of formatting a whole list as a number."""
    ckpt = torch.load(best, weights_only=False)
    ckpt["epoch"] = 99
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    proc = run_here("export.py", path, "--format", "card", "--out", tmp_path / "card.md")
    assert proc.returncode == 0, proc.stderr
    assert "%" not in "".join(line for line in (tmp_path / "card.md").read_text().splitlines()
                              if "[" in line and "]" in line and "BasicBlocks" not in line)


SPACE_TARGETS = [  # (case, what is made in the Space folder before the export)
    ("README.md a folder", lambda out: (out / "README.md").mkdir()),
    ("model.onnx a folder", lambda out: (out / "model.onnx").mkdir()),
    ("examples/3.png a folder", lambda out: (out / "examples" / "3.png").mkdir(parents=True)),
    ("the manifest a folder", lambda out: (out / own_files.MANIFEST).mkdir()),
    ("examples a file", lambda out: (out / "examples").write_text("mine")),
]


@pytest.mark.parametrize("case, make", SPACE_TARGETS, ids=[r[0] for r in SPACE_TARGETS])
def test_a_space_target_that_is_a_folder_is_refused_before_anything_changes(best, tmp_path, case,
                                                                            make):
    out = tmp_path / "space"
    out.mkdir()
    (out / "app.py").write_text("mine\n")
    make(out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    proc = _space(best, out, "--force")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: refusing to write {out}: its ")
    assert ".export-" not in proc.stderr  # (never the temporary folder's name)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "app.py").read_text() == "mine\n"


PATHS = [  # (case, what is made in tmp_path, the arguments after the checkpoint, the line says)
    ("a file on the way to --out", lambda t: (t / "ck.pt").write_bytes(b"x"),
     ["--out", "ck.pt/model.onnx"], "ck.pt exists and is not a folder"),
    ("a file on the way to a card", lambda t: (t / "ck.pt").write_bytes(b"x"),
     ["--format", "card", "--out", "ck.pt/card.md"], "ck.pt exists and is not a folder"),
    ("a folder as the checkpoint", None, ["--out", "m.onnx"],
     "is a folder; give the checkpoint file"),
]


@pytest.mark.parametrize("case, make, flags, says", PATHS, ids=[r[0] for r in PATHS])
def test_a_path_that_cannot_be_is_one_line_before_any_work(best, tmp_path, case, make, flags, says):
    if make:
        make(tmp_path)
    source = tmp_path if make is None else best
    proc = run_here("export.py", source, *[str(tmp_path / f) if f.startswith(("ck", "m."))
                                           else f for f in flags])
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "exporting" not in proc.stdout


def test_a_card_makes_the_folders_it_needs(best, tmp_path):
    out = tmp_path / "new" / "dir" / "card.md"
    proc = run_here("export.py", best, "--format", "card", "--out", out)
    assert proc.returncode == 0 and written_card(out.read_text()) == "model", proc.stderr


def test_a_dangling_link_as_out_is_replaced_with_force_and_refused_without(best, tmp_path):
    import export
    link = tmp_path / "m.onnx"
    os.symlink(tmp_path / "nowhere", link)
    export.check_out(str(link), "onnx", str(best), force=True)  # (no "No such file or directory")
    with pytest.raises(export.CheckpointError, match="add --force"):
        export.check_out(str(link), "onnx", str(best), force=False)


@pytest.mark.parametrize("name", ["evil-->.pt", "two\nlines.pt", "a\u2028b.pt", "x--!>y<!--.pt"])
def test_a_checkpoints_name_cannot_break_the_cards_marker(best, name):
    text = card(torch.load(best, weights_only=True), source=name)
    assert written_card(text) == "model"  # still known as its own card
    line = next(x for x in text.splitlines() if x.startswith("<!-- written by export.py"))
    assert line.endswith("-->") and ">" not in line[:-3]  # one comment, ended where it should


def test_a_setting_with_a_space_is_quoted_on_the_card(best):
    text = card(_real(best, out_dir="/home/me/exp 1", dataset="cifar10"))
    assert "--out-dir 'exp 1'" in text and "--dataset cifar10" in text


def test_a_killed_exports_file_being_checked_goes_and_a_live_ones_stays(tmp_path):
    """kill -9 while --format all checks: its <name>.checking<pid>.onnx, full size, is
    removed by the next export of that name; a live process's stays."""
    import subprocess
    import export
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name in (f"m.checking{live.pid}.onnx", "m.checking999999999.onnx",
                     "m.checking999999999.pt2", "other.checking999999999.onnx"):
            (tmp_path / name).write_bytes(b"half")
        export.remove_dead_checks(str(tmp_path / "m.onnx"), ".onnx")
        assert sorted(os.listdir(tmp_path)) == sorted([f"m.checking{live.pid}.onnx",
                                                       "m.checking999999999.pt2",
                                                       "other.checking999999999.onnx"])
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_a_space_without_examples_leaves_its_owners_examples_alone(best, tmp_path):
    """A bare state dict (no data to show): the export writes no examples/0.png, so an
    owner's picture there is not its business."""
    ckpt = torch.load(best, weights_only=True)
    bare = tmp_path / "bare.pt"
    torch.save({"model_state_dict": ckpt["model_state_dict"], "class_names": ckpt["class_names"],
                "mean": ckpt["mean"], "std": ckpt["std"], "image_size": 32}, bare)
    out = tmp_path / "space"
    (out / "examples").mkdir(parents=True)
    (out / "examples" / "0.png").write_bytes(b"my own picture")
    proc = _space(bare, out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "examples" / "0.png").read_bytes() == b"my own picture"


def test_sigterm_inside_an_import_is_a_stop_not_a_traceback(best, tmp_path, monkeypatch, capsys):
    """SIGTERM while onnxruntime is being imported surfaces as ImportError ("initialization
    failed"), not as the SystemExit the handler raised: still a stop, in one line."""
    import export
    from machinery import space_app

    def interrupted(*_):
        space_app._STOPPED.append(15)  # as the handler does, then the import fails
        raise ImportError("initialization failed")
    monkeypatch.setattr(space_app, "_STOPPED", [])
    monkeypatch.setattr(export, "deployable", interrupted)
    assert export.main([str(best), "--out", str(tmp_path / "m.onnx")]) == 143
    assert capsys.readouterr().err.strip() == "stopped: nothing was changed (an export is kept only whole)"
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_stop_half_way_through_format_all_leaves_both_files_as_they_were(best, tmp_path, monkeypatch):
    """Ctrl-C after the ONNX file is made and checked, while the .pt2 is: once, the new
    m.onnx was in place beside the old m.pt2 (two models, one name) under 'nothing was
    changed'. Now both are moved into place only once both are checked."""
    import export
    assert run_here("export.py", best, "--format", "all", "--out", tmp_path / "m").returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    ckpt = torch.load(best, weights_only=True)  # another file: its name and epoch inside
    torch.save({**ckpt, "epoch": ckpt.get("epoch", 0) + 1}, tmp_path / "other.pt")  # the exports

    def stopped(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setitem(export.FORMATS, "pt2", (".pt2", stopped, export.run_pt2))
    proc = run_here("export.py", tmp_path / "other.pt", "--format", "all", "--out", tmp_path / "m")
    assert proc.returncode == 130 and "nothing was changed" in proc.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "other.pt"}
    assert after == before  # (and no temporary file left)


def test_another_tools_onnx_file_is_not_taken_for_an_export(best, tmp_path):
    """A model of another tool that happens to carry class names is not this tool's export:
    replaced only with --force."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "detector",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, producer_name="my-detector")
    model.metadata_props.add(key="class_names", value='["car", "person"]')
    onnx.save(model, tmp_path / "detector.onnx")
    theirs = (tmp_path / "detector.onnx").read_bytes()
    proc = run_here("export.py", best, "--out", tmp_path / "detector.onnx")
    assert proc.returncode == 2 and "is not an ONNX export" in proc.stderr
    assert (tmp_path / "detector.onnx").read_bytes() == theirs


def test_a_space_whose_name_is_long_is_built_inside_it_not_beside(tmp_path):
    """A 250-character Space folder: `.<name>.export-<pid>-...` beside it would pass the
    file system's 255 bytes, after the whole export was made."""
    import export
    long, short = tmp_path / ("b" * 250), tmp_path / "space"
    long.mkdir()
    short.mkdir()
    assert export.build_home(str(long)) == (str(long), ".export-")
    assert export.build_home(str(short)) == (str(tmp_path), ".space.export-")


@pytest.mark.slow
def test_a_ctrl_c_while_the_files_move_into_place_waits_for_the_last(best, tmp_path, monkeypatch):
    """Ctrl-C between two of the final renames once left the new m.onnx beside the old
    m.pt2, under 'nothing was changed'. Now the renames finish, then the stop is said."""
    import signal
    import export
    assert run_here("export.py", best, "--format", "all", "--out", tmp_path / "m").returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    ckpt = torch.load(best, weights_only=True)  # another file: its name and epoch inside
    torch.save({**ckpt, "epoch": ckpt.get("epoch", 0) + 1}, tmp_path / "other.pt")  # the exports
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if str(dst).endswith("m.onnx"):  # the first of the two: Ctrl-C now
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(export.os, "replace", replace)
    proc = run_here("export.py", tmp_path / "other.pt", "--format", "all", "--out", tmp_path / "m")
    assert proc.returncode == 130 and "already in place, whole" in proc.stderr, proc.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "other.pt"}
    assert after.keys() == before.keys()
    assert all(after[n] != before[n] for n in ("m.onnx", "m.pt2"))  # both new: one file's


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_manifest_that_is_a_link_to_a_device_or_pipe_is_no_manifest(tmp_path, target):
    """A Space repo's .export.json can be a link (git keeps links): to /dev/zero it read
    until memory ran out, to a pipe it waited for ever. A manifest is a small regular file."""
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
        target = str(tmp_path / "fifo")
    os.symlink(target, tmp_path / own_files.MANIFEST)
    assert own_files.written(str(tmp_path)) == {}


EDITED = [  # (case, the checkpoint's keys changed by hand): a card and a summary, no traceback
    ("an epoch as text", {"epoch": "3"}),
    ("training time as text", {"train_seconds": "12"}),
    ("an accuracy as text, a history of text", {"test_accuracy": "high", "test_acc": ["x"]}),
    ("an accuracy that is True", {"test_accuracy": True}),
    ("a top-5 that is infinite", {"test_top5": [float("inf")]}),
    ("an epoch far past its history", {"epoch": 10**6}),
]


@pytest.mark.parametrize("case, edits", EDITED, ids=[r[0] for r in EDITED])
def test_a_checkpoint_edited_by_hand_still_gets_a_true_card(best, case, edits):
    ckpt = {**torch.load(best, weights_only=True), **edits}
    text, line = card(ckpt), summary(ckpt)
    for said in (text, line):
        assert "1.00%" not in said and "inf%" not in said and "1000000" not in said


def test_a_data_set_name_from_the_checkpoint_adds_no_key_to_the_cards_front_matter(best):
    import re
    ckpt = _real(best, dataset="cifar100\nlicense: evil")
    for kind in ("space", "model"):
        text = card(ckpt, kind=kind)
        assert not re.search(r"^license: evil", text.split("---\n")[1], re.M)  # (once a key)
        assert front(text)["license"] == "mit"
    assert "evil" in front(card(ckpt, kind="space"))["title"]  # kept, as text


def _val_run(best, epoch, test_of_epoch):
    """The smoke model as a run with validation images (two epochs): the test set was
    evaluated once, at the end, with the best model (epoch test_of_epoch), and that
    figure written into last.pt as into best_model.pt, as evaluation.final_test does."""
    ckpt = _real(best, val_split=40)
    n = len(ckpt["train_acc"])
    return {**ckpt, "epoch": epoch, "val_acc": [40.0 + i for i in range(n)],
            "val_top5": [80.0 + i for i in range(n)], "test_accuracy": 50.0, "test_top5": 90.0,
            "test_images": 500, "test_of_epoch": test_of_epoch}


def test_a_checkpoint_never_reports_the_best_models_test_figure_as_its_own(best, tmp_path):
    """The fifth review: last.pt's card, ONNX metadata and page gave the best model's test
    accuracy (epoch 0) as last.pt's own, 'at epoch 3'; its own was 6 points higher."""
    import export
    last = _val_run(best, epoch=1, test_of_epoch=0)
    text = card(last)
    assert "| validation accuracy | **41.00%** |" in text
    assert "| measured on | 40 training images held out (--val-split) |" in text
    assert "| measured on | the val/ folder's images |" in card(
        {**last, "config": {**last["config"], "val_split": 0, "val_folder": True}})
    assert "| test accuracy | 50.00%, of the best model (epoch 0), not of this checkpoint" in text
    assert "**50.00%**" not in text and "model-index" not in front(text)  # claims no test result
    assert "validation accuracy 41.00% (test 50.00% is the best model's, epoch 0)" in summary(last)
    torch.save(last, tmp_path / "last.pt")
    meta = export.deployable(str(tmp_path / "last.pt"))[1]
    assert (meta["test_accuracy"], meta["validation_accuracy"]) == ("", "41.0")
    assert (meta["best_model_test_accuracy"], meta["best_model_epoch"]) == ("50.0", "0")
    assert "test 50.00% is the best model's" in meta["summary"]
    own = _val_run(best, epoch=0, test_of_epoch=0)  # best_model.pt: the figure is its own
    text = card(own)
    assert "| top-1 accuracy | **50.00%**" in text and "(40.00% there)" in text
    assert front(text)["model-index"][0]["results"][0]["metrics"][0]["value"] == 50.0
    assert "test accuracy 50.00%" in summary(own)
    torch.save(own, tmp_path / "best.pt")
    meta = export.deployable(str(tmp_path / "best.pt"))[1]
    assert meta["test_accuracy"] == "50.0" and "best_model_test_accuracy" not in meta
