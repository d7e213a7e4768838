"""The demo page (app.py) and the Space folder (export.py --format space): a real browser,
the HTTP API, bad pictures, concurrent requests; the Space run from outside the repo."""
import os
import shutil
import struct
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import run_here
from model import load_classifier, predict
from pages import ask as _ask, rounds, serve, stop, top as _top

gradio_client = pytest.importorskip("gradio_client")
CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
def test_a_real_browser_uploads_a_photo_and_reads_the_top_class(page, photos, tmp_path):
    if not os.path.exists(CHROMIUM):  # CI must have it: .ci/run installs Debian's
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"no {CHROMIUM} here")
    from playwright.sync_api import sync_playwright
    url, best, _ = page
    want = predict(load_classifier(str(best)), [photos[0]], k=1)[0][0][0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        view = browser.new_page(viewport={"width": 1280, "height": 900})
        view.goto(url)
        view.set_input_files("input[type=file]", str(photos[0]))
        view.get_by_role("button", name="Submit").click()
        view.locator("[data-testid=label-output-value]").first.wait_for(timeout=60_000)
        shown = view.locator("[data-testid=label-output-value]").first.inner_text().strip()
        overlay = view.locator("img").count()
        view.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert shown == want
    assert overlay >= 2  # the upload and the Grad-CAM overlay
    assert (tmp_path / "page.png").stat().st_size > 10_000


def _png(path, width, height):
    """A PNG that says it is width x height (a decompression bomb's header), with a tiny body."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


def bad_pictures(folder, photo):
    """Every kind of awkward file a visitor drops, {name: path}."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    files = {}
    (folder / "notes.jpg").write_text("not a picture")
    files["not a picture"] = folder / "notes.jpg"
    blob = photo.read_bytes()
    (folder / "truncated.jpg").write_bytes(blob[: len(blob) // 3])
    files["truncated JPEG"] = folder / "truncated.jpg"
    Image.fromarray(rgb[:1, :1]).save(folder / "one.png")
    files["1x1"] = folder / "one.png"
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(folder / "sixteen.png")
    files["16-bit PNG"] = folder / "sixteen.png"
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    files["CMYK JPEG"] = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    files["palette PNG"] = folder / "palette.png"
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(folder / "alpha.png")
    files["transparent PNG"] = folder / "alpha.png"
    frames = [Image.fromarray(np.full((30, 30, 3), c, np.uint8)) for c in (0, 255)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    files["animated GIF"] = folder / "anim.gif"
    files["20,000 x 20,000 PNG"] = _png(folder / "bomb.png", 20000, 20000)
    return files


@pytest.mark.slow
def test_bad_pictures_get_a_message_or_an_answer_and_the_page_goes_on(page, photos, tmp_path):
    url, best, _ = page
    clf = load_classifier(str(best))
    want = predict(clf, [photos[0]], k=1)[0][0][0]
    readable = {"1x1", "16-bit PNG", "CMYK JPEG", "palette PNG", "transparent PNG", "animated GIF"}
    for name, path in bad_pictures(tmp_path, photos[0]).items():
        answer = _ask(url, path)
        if name in readable:
            assert _top(answer) == predict(clf, [path], k=1)[0][0][0], name
        else:
            assert _top(answer) is None and answer[2].startswith("**Could not read it:**"), name
        assert _top(_ask(url, photos[0])) == want, f"after the {name}"


@pytest.mark.slow
def test_sixteen_requests_at_once_each_get_their_own_answer(page, photos):
    url, best, _ = page
    clf = load_classifier(str(best))
    want = [p[0][0] for p in predict(clf, photos[1], k=1)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda path: _top(_ask(url, path)), photos[1]))
    assert got == want


@pytest.mark.slow
def test_the_space_folder_runs_alone_answers_crowds_whole_and_its_card_says_what_is_true(
        smoke_run, photos, tmp_path):
    import yaml
    import torch
    from importlib.metadata import version
    best = smoke_run[0] / "checkpoints" / "best_model.pt"
    made = run_here("export.py", best, "--format", "space", "--out", tmp_path / "made")
    assert made.returncode == 0, made.stderr[-2000:]
    space = tmp_path / "elsewhere" / "space"
    shutil.copytree(tmp_path / "made", space)  # nothing of the repo beside it
    readme = (space / "README.md").read_text()
    front = yaml.safe_load(readme.split("---\n")[1])
    ckpt = torch.load(best, weights_only=True)
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert front["sdk_version"] == version("gradio") and \
        f"gradio=={version('gradio')}" in (space / "requirements.txt").read_text()
    # a --smoke model's pictures were generated: no data set named, no result claimed
    assert "model-index" not in front and "datasets" not in front
    assert f"**{ckpt['test_accuracy']:.2f}%**" in readme and "--smoke" in readme
    assert "![training curves](training_curves.png)" in readme
    env = {"PYTHONPATH": ""}  # the Space folder alone: its own files, the packages
    proc, url = serve([sys.executable, str(space / "app.py")], cwd=space, env=env)
    try:
        answer = _ask(url, photos[0])
        clf = load_classifier(str(best))
        pictures = [photos[0], photos[1][0]]
        failures = rounds(url, pictures, {p: predict(clf, [p], k=1)[0][0][0] for p in pictures})
    finally:
        stop(proc)
    assert _top(answer) == predict(clf, [photos[0]], k=1)[0][0][0]
    assert "ONNX" in answer[2]  # no Grad-CAM there, and the page says so
    assert failures == []
