"""The demo page under hostile input (issue: hostile input): what it serves, pictures in
every mode, the same pictures at once. One running page for all (conftest.page), whose
example comes from a folder holding a .env and a .ssh/."""
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_here
from model import load_classifier, predict
from pages import ask, fetch, free_port, rounds, serve, stop
from picture_modes import MODES, SIDE

pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow  # a running page


@pytest.mark.parametrize("name", [".env", ".ssh/id_rsa", "cat.jpg"])
def test_the_page_serves_no_file_of_the_folder_an_example_came_from(page, name):
    url, _, home = page
    status, body = fetch(url, home / name)
    assert status == 403 and not body.startswith((b"API_KEY", b"PRIVATE", b"\xff\xd8")), body[:80]


def test_the_example_is_still_offered_and_served_whole(page):
    url, _, home = page
    with urllib.request.urlopen(f"{url}config", timeout=30) as r:
        config = json.loads(r.read())
    served = [v for v in json.dumps(config).split('"') if v.endswith("cat.jpg") and os.path.isabs(v)]
    status, body = fetch(url, served[0])
    assert status == 200 and body == (home / "cat.jpg").read_bytes()


def _square(shown, size):
    """The square the network saw, from the page's picture: the left DISPLAY x DISPLAY
    (Grad-CAM's overlay beside it), upscaled from size x size by repeating pixels."""
    image = np.asarray(Image.open(shown).convert("RGB"))
    side = image.shape[0]
    return image[::side // size, :side:side // size][:size, :size]


@pytest.mark.parametrize("name", [n for n, write in MODES.items() if "PIL image" not in n])
def test_every_mode_is_shown_as_a_viewer_shows_it(page, name, tmp_path):
    url, _, _ = page
    source, twin = MODES[name](tmp_path)
    label, shown, note = ask(url, source)
    if isinstance(twin, tuple):
        assert shown is None and note.startswith("**Could not read it:**") and twin[1] in note, note
        return
    seen = _square(shown, SIDE)
    assert int(np.abs(seen.astype(int) - twin).max()) <= 1, name
    assert label["label"] in {c["label"] for c in label["confidences"]}


def test_the_same_two_pictures_sixteen_at_once_each_get_their_whole_answer(page, photos):
    url, best, _ = page
    pictures = [photos[0], photos[1][0]]
    clf = load_classifier(str(best))
    want = {p: predict(clf, [p], k=1)[0][0][0] for p in pictures}
    assert rounds(url, pictures, want) == []


def test_gradios_own_port_setting_is_obeyed(smoke_run):
    """Docker images and hosts set GRADIO_SERVER_PORT: without --port, the page serves there."""
    port = free_port()
    best = smoke_run[0] / "checkpoints" / "best_model.pt"
    proc, url = serve([sys.executable, os.path.join(ROOT, "app.py"), "--checkpoint", str(best),
                       "--no-gradcam"], cwd=ROOT, env={"GRADIO_SERVER_PORT": str(port)}, port=port)
    stop(proc)
    assert url.endswith(f":{port}/")


def app_here(monkeypatch, *args, env=None):
    """`python app.py ARGS` in this process, for the refusals that come before any page is
    served, with the machine's own PORT and GRADIO_SERVER_PORT left out (env: set these)."""
    for name in ("PORT", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    return run_here("app.py", *args)


def test_a_missing_example_is_one_line_before_the_model_loads(tmp_path, monkeypatch):
    proc = app_here(monkeypatch, "--checkpoint", tmp_path / "none.pt", "--examples",
                    tmp_path / "gone.jpg")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --examples: {tmp_path / 'gone.jpg'} is not a file"]


EXAMPLES_REFUSED = [  # (case, what --examples gets, the line says)
    ("a .env", ".env", "is not a picture the page can read"),
    ("a link to a secret, named .png", "link.png", "is not a picture the page can read"),
    ("a folder", "folder", "is not a file"),
]


@pytest.mark.parametrize("case, name, says", EXAMPLES_REFUSED, ids=[r[0] for r in EXAMPLES_REFUSED])
def test_examples_that_are_not_pictures_are_refused_before_anything_is_served(tmp_path, case,
                                                                              name, says,
                                                                              monkeypatch):
    (tmp_path / ".env").write_text("SECRET=1\n")
    (tmp_path / "secret.txt").write_text("root:x:0:0\n")
    os.symlink(tmp_path / "secret.txt", tmp_path / "link.png")
    (tmp_path / "folder").mkdir()
    proc = app_here(monkeypatch, "--checkpoint", tmp_path / "none.pt", "--examples", tmp_path / name)
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.splitlines()) == 1


PORTS = [  # (case, flags, environment, the line says)
    ("a port out of range", ["--port", "70000"], {}, "a port is a number from 1 to 65535"),
    ("GRADIO_SERVER_PORT not a number", [], {"GRADIO_SERVER_PORT": "abc"}, "GRADIO_SERVER_PORT=abc"),
    ("a host that does not exist", ["--host", "bogus.invalid", "--port", "7999"], {},
     "cannot serve on host bogus.invalid"),
    ("a host that does not exist, no port", ["--host", "bogus.invalid"], {},
     "cannot serve on host bogus.invalid"),
    ("a port of letters", ["--port", "abc"], {}, "argument --port: invalid int value: 'abc'"),
    ("a port of a superscript digit", [], {"PORT": "\u00b2"}, "PORT=\u00b2: a port is a number"),
]


@pytest.mark.parametrize("case, flags, env, says", PORTS, ids=[r[0] for r in PORTS])
def test_a_port_or_host_that_cannot_serve_is_one_line(tmp_path, case, flags, env, says,
                                                      monkeypatch):
    proc = app_here(monkeypatch, "--checkpoint", tmp_path / "none.pt", *flags, env=env)
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_port_in_use_is_one_line_not_another_port(tmp_path, monkeypatch):
    import socket
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = app_here(monkeypatch, "--checkpoint", tmp_path / "none.pt",
                        env={"GRADIO_SERVER_PORT": str(port)})
    assert proc.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in proc.stderr


def test_sigterm_removes_the_pages_folder(smoke_run, tmp_path):
    """docker stop, systemd and kill send SIGTERM: the visitors' pictures go as on Ctrl-C."""
    import signal
    best = smoke_run[0] / "checkpoints" / "best_model.pt"
    env = {"TMPDIR": str(tmp_path)}
    proc, url = serve([sys.executable, os.path.join(ROOT, "app.py"), "--checkpoint", str(best),
                       "--no-gradcam"], cwd=ROOT, env=env)
    assert [p for p in os.listdir(tmp_path) if p.startswith("page-")]
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert not [p for p in os.listdir(tmp_path) if p.startswith("page-")]


def test_class_names_no_file_may_have_still_give_examples(smoke_run, tmp_path):
    """A labels table's names ("n/a", one of 250 characters) name the examples' files too:
    made safe and short, not a crash at start-up."""
    from types import SimpleNamespace

    import torch

    import app
    ckpt = torch.load(smoke_run[0] / "checkpoints" / "best_model.pt", weights_only=True)
    names = ["n/a", "x" * 250, "..", *ckpt["class_names"][3:]]
    model = SimpleNamespace(config=ckpt["config"], names=names, size=32,
                            clf=SimpleNamespace(class_ids=None))
    paths = app.test_examples(model, str(tmp_path), n=100)
    assert len(paths) == len(set(paths)) > 3
    assert all(os.path.dirname(p) == str(tmp_path) and len(os.path.basename(p)) < 60 for p in paths)


SPACE_MODELS = [  # (case, what model.onnx holds, the line says)
    ("no model.onnx", None, "no such file"),
    ("a Git LFS pointer", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n",
     "a Git LFS pointer"),
    ("not an ONNX file", b"garbage", "is not an ONNX file of export.py"),
]


@pytest.mark.parametrize("case, holds, says", SPACE_MODELS, ids=[r[0] for r in SPACE_MODELS])
def test_the_spaces_page_without_its_model_is_one_line(tmp_path, case, holds, says):
    import shutil
    shutil.copy(os.path.join(ROOT, "machinery", "space_app.py"), tmp_path / "app.py")
    shutil.copy(os.path.join(ROOT, "machinery", "images.py"), tmp_path / "pictures.py")
    if holds is not None:
        (tmp_path / "model.onnx").write_bytes(holds)
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "GRADIO_SERVER_PORT")}
    proc = subprocess.run([sys.executable, str(tmp_path / "app.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_a_pasted_picture_is_read_as_an_upload_is(tmp_path):
    """A data URL (the clipboard, an API client) goes through load_image too: a 16-bit
    mid-grey stays mid-grey (Gradio's own decode made it white), and a huge picture is
    refused from its header before it is decoded."""
    import base64
    import io
    from gradio.data_classes import FileData
    from machinery.images import load_image
    from machinery.space_app import Unreadable, picture_input

    def as_data_url(picture, **kw):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", **kw)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    preprocess = picture_input().preprocess
    grey = Image.fromarray(np.full((40, 40), 32768, np.uint16))  # I;16, mid-grey
    got = preprocess(FileData(path=str(tmp_path / "pasted.png"), url=as_data_url(grey)))
    assert np.abs(load_image(got, 32).astype(int) - 128).max() <= 1
    huge = Image.new("1", (12500, 12500))  # a few hundred KB of PNG, 156 megapixels
    got = preprocess(FileData(path=str(tmp_path / "huge.png"), url=as_data_url(huge, optimize=True)))
    with pytest.raises(Image.DecompressionBombError, match="more than"):
        load_image(got, 32, max_pixels=Image.MAX_IMAGE_PIXELS)
    with pytest.raises(OSError):  # (the page says "Could not read it" and why)
        load_image(preprocess(FileData(path=str(tmp_path / "bad.png"),
                                       url="data:image/png;base64,@@@")), 32)
    assert isinstance(preprocess(FileData(path=str(tmp_path / "no.png"), url="data:image/png")),
                      Unreadable)


@pytest.mark.parametrize("mean", ["abc", "123", 0.5, [0.5, float("nan"), 0.5]])
def test_a_mean_that_is_no_numbers_is_refused_before_the_page(smoke_run, tmp_path, mean):
    import torch
    import app
    from machinery.checkpoint_files import CheckpointError
    path = tmp_path / "broken.pt"
    ckpt = torch.load(smoke_run[0] / "checkpoints" / "best_model.pt", weights_only=True)
    torch.save({**ckpt, "mean": mean}, path)
    with pytest.raises(CheckpointError, match="its mean"):
        app.TorchModel(str(path), torch.device("cpu"))


def test_large_pictures_are_decoded_one_at_a_time_small_ones_side_by_side(tmp_path, monkeypatch):
    """Four visitors' 80-megapixel scans decoded at once would take 6 GB (1.6 GB each): a
    picture over BIG_PIXELS waits for the one before it; ordinary photos do not wait."""
    import threading
    import time
    from types import SimpleNamespace
    from machinery import space_app
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("1", (5000, 4000)).save(big)  # 20 MP, a few kB on disk
    Image.new("RGB", (64, 64)).save(small)
    at_once, most, counting = [0], {}, threading.Lock()

    def decoding(path, size, max_pixels=None):
        with counting:
            at_once[0] += 1
            most[path] = max(most.get(path, 0), at_once[0])
        time.sleep(0.3)
        with counting:
            at_once[0] -= 1
        return np.zeros((size, size, 3), np.uint8)
    monkeypatch.setattr(space_app, "load_image", decoding)
    model = SimpleNamespace(size=8, explains=False, names=["a", "b"], no_explaining="",
                            probabilities=lambda square: np.array([0.5, 0.5]))
    classify = space_app.classifier(model, str(tmp_path))
    for path in (big, small):
        threads = [threading.Thread(target=classify, args=(str(path),)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert most[str(big)] == 1 and most[str(small)] > 1


def test_gradios_cache_of_the_visitors_pictures_lives_in_the_pages_folder(monkeypatch):
    """Uploads and answers in the shared /tmp/gradio outlived the page (its pruning stops
    with it) and were served to any page on the machine: now they are in the page's own
    folder, removed with it; a GRADIO_TEMP_DIR the user set is theirs to keep."""
    import gradio as gr
    from machinery.space_app import page_folder
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    folder = page_folder()
    with gr.Blocks() as blocks:
        gr.Markdown("a page")
    assert blocks.GRADIO_CACHE.startswith(folder + os.sep)
    monkeypatch.setenv("GRADIO_TEMP_DIR", "/srv/mine")
    page_folder()
    assert os.environ["GRADIO_TEMP_DIR"] == "/srv/mine"


def test_an_example_with_a_long_name_is_copied_under_a_name_that_fits(tmp_path):
    """A 249-character example name (legal): 'example0_' before it passed the file system's
    255 bytes, and app.py ended in a traceback."""
    from machinery.space_app import copied
    picture = tmp_path / ("a" * 249 + ".png")
    Image.new("RGB", (8, 8)).save(picture)
    (tmp_path / "page").mkdir()
    [got] = copied([str(picture)], str(tmp_path / "page"))
    assert got.endswith(".png") and len(os.path.basename(got)) < 255 and os.path.isfile(got)


@pytest.mark.slow
def test_the_spaces_page_and_export_say_a_bad_flag_in_one_line(tmp_path):
    import shutil
    shutil.copy(os.path.join(ROOT, "machinery", "space_app.py"), tmp_path / "app.py")  # (a Space)
    shutil.copy(os.path.join(ROOT, "machinery", "images.py"), tmp_path / "pictures.py")
    for command in ([os.path.join(ROOT, "export.py"), "x.pt", "--format", "xyz"],
                    [str(tmp_path / "app.py"), "--port", "abc"]):
        proc = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
