"""The demo page: drop a picture, see the five classes the network finds most likely, the
picture as the network saw it and, with PyTorch, where it looked (Grad-CAM).

    python app.py                    # in a Space folder (export.py --format space)

This file is the page for the repo's app.py (which adds the checkpoint and Grad-CAM) and,
copied by `export.py --format space` beside `pictures.py` (a copy of images.py) and
`model.onnx`, a Hugging Face Space's app.py. There it needs only gradio, onnxruntime,
numpy and Pillow: nothing here imports PyTorch or the rest of the repo.

Every picture is read as predict() reads it (images.load_image: EXIF orientation, the
largest centred square, the model's size, the reduced JPEG decode), so the page,
predict(), --evaluate and the exported files give the same answer for the same file.
Nothing is fetched from the internet: Gradio serves its page from its package, and its
analytics are off.
"""
import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home, before import
try:
    from .images import load_image  # in the repo's package
except ImportError:
    from pictures import load_image  # in a Space folder, beside this file

DISPLAY = 256  # pixels per side of the picture as the network saw it, upscaled to be seen
TOP = 5


class OnnxModel:
    """An export.py ONNX file: uint8 squares in, probabilities out; its metadata names the
    classes, the size and, in `summary`, the card's numbers."""

    explains = False
    no_explaining = "No Grad-CAM here: it needs PyTorch and the checkpoint, and this model is an ONNX file."

    def __init__(self, path):
        import onnxruntime
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.names, self.size = json.loads(meta["class_names"]), int(meta["image_size"])
        self.summary = meta.get("summary") or f"{len(self.names)} classes, {self.size} px"
        # the metadata must fit the network, or every request would fail, not the start
        given = self.session.get_inputs()[0].shape[1:3]
        classes = {o.name: o.shape[-1] for o in self.session.get_outputs()}.get("probabilities")
        if not isinstance(self.names, list) or classes != len(self.names):
            raise ValueError(f"its metadata names {len(self.names)} classes, its network gives {classes}")
        if list(given) != [self.size, self.size]:
            raise ValueError(f"its metadata says {self.size} px, its network takes {given}")

    def probabilities(self, square):
        return self.session.run(["probabilities"], {"images": square[None]})[0][0]


def upscaled(square):
    return np.asarray(Image.fromarray(square).resize((DISPLAY, DISPLAY), Image.NEAREST))


def reason(e):
    """A picture's failure in words a visitor understands."""
    from PIL import UnidentifiedImageError
    if isinstance(e, UnidentifiedImageError):
        return "this file is not a picture (or in a format that cannot be read)"
    if isinstance(e, Image.DecompressionBombError):
        return "this picture is too large to open safely"
    return f"this picture cannot be read ({type(e).__name__}: {str(e).strip()[:120]})"


def classifier(model, folder):
    """The page's function: a picture's path -> (top classes, the picture as the network
    saw it, a note). It never raises: a bad file is a note, and the next picture is
    answered as usual. One picture at a time through the model (a lock): Grad-CAM's hooks
    on the network are not for two requests at once. One large picture decoded at a time
    (another lock): four visitors' 80-megapixel scans at once would take 6 GB.

    The picture shown is handed to Gradio as a file of its own in `folder` (a new name
    each time): Gradio writes an image it is given as an array into its cache under a
    name made from its content, so two requests with the same picture wrote, and read,
    one file at once, and one answer arrived truncated. A file it copies in whole."""
    lock, big = threading.Lock(), threading.Lock()

    def classify(path):
        if isinstance(path, Unreadable):  # a pasted picture Gradio could not decode
            return {}, None, f"**Could not read it:** {reason(path.error)}."
        if not path:
            return {}, None, "Drop a picture above first."
        try:  # (past Pillow's 89-megapixel warning: a visitor's 16-bit scan could take GBs)
            with big if pixels(path) > BIG_PIXELS else contextlib.nullcontext():
                square = load_image(path, model.size, max_pixels=Image.MAX_IMAGE_PIXELS)
        except Exception as e:  # noqa: BLE001 -- Pillow raises many kinds for a broken file
            return {}, None, f"**Could not read it:** {reason(e)}."
        with lock:
            if model.explains:
                probs, shown = model.explain(square)
            else:
                probs, shown = model.probabilities(square), upscaled(square)
        top = np.argsort(probs)[::-1][:TOP]
        note = "" if model.explains else model.no_explaining
        return {model.names[i]: float(probs[i]) for i in top}, own_file(shown, folder), note
    return classify


BIG_PIXELS = 16_000_000  # a picture this large is decoded alone: 80 MP of RGBA took 1.6 GB


def pixels(path):
    """The picture's pixel count from its header (0 where it has none: load_image says why)."""
    try:
        with Image.open(path) as im:
            return im.width * im.height
    except Exception:  # noqa: BLE001 -- not a picture: load_image gives the reason
        return 0


KEEP_S = 600  # how long an answer's picture stays in the page's folder for Gradio to copy


def own_file(picture, folder):
    """`picture` (uint8 RGB) as a PNG under a new name in `folder`; answers older than
    KEEP_S go, so the folder does not grow with the visitors."""
    fd, path = tempfile.mkstemp(suffix=".png", prefix="seen-", dir=folder)
    with os.fdopen(fd, "wb") as f:
        Image.fromarray(picture).save(f, format="PNG")
    now = time.time()
    for old in os.listdir(folder):
        old = os.path.join(folder, old)
        if old.endswith(".png") and os.path.basename(old).startswith("seen-"):
            with contextlib.suppress(OSError):
                if now - os.path.getmtime(old) > KEEP_S:
                    os.remove(old)
    return path


def picture_input():
    """gr.Image, but handing the function the file as it was uploaded. gr.Image opens it
    with Pillow first (a file that is not a picture, or a decompression bomb, would fail
    there with Gradio's bare "Error") and re-saves a picture not in RGB; load_image then
    reads the file itself, exactly as predict() reads it. (Set on the instance: a subclass
    of a Gradio component makes Gradio write a .pyi stub beside this file.)"""
    import gradio as gr
    picture = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                       label="A picture (upload, drop, paste or webcam)")
    opened = picture.preprocess

    def as_uploaded(payload):
        if payload is not None and (payload.url or "").startswith("data:"):
            return pasted(payload.url)  # a pasted picture: its own bytes, as an upload's
        if payload is not None and payload.path:
            return str(payload.path)
        try:
            return opened(payload)
        except Exception as e:  # noqa: BLE001 -- Gradio's decode raises what Pillow raises
            return Unreadable(e)
    picture.preprocess = as_uploaded
    return picture


MAX_PASTED = 64 << 20  # bytes of a pasted picture: far more than any photo, far less than a bomb


def pasted(url):
    """A data URL's bytes as a file object for load_image, which then reads them as it reads
    an upload: 16-bit pictures faithfully (Gradio's own decode clips them to white) and the
    size from the header, before decoding (Gradio's decodes a 12500 x 12500 PNG first)."""
    import base64
    import binascii
    import io
    import urllib.parse
    header, comma, body = url.partition(",")
    if not comma:
        return Unreadable(ValueError("a data URL without data"))
    if len(body) > MAX_PASTED * 4 // 3 + 4:
        return Unreadable(ValueError(f"more than {MAX_PASTED >> 20} MB pasted"))
    try:
        data = (base64.b64decode(body) if header.endswith(";base64")
                else urllib.parse.unquote_to_bytes(body))
    except (binascii.Error, ValueError) as e:
        return Unreadable(e)
    return io.BytesIO(data)


class Unreadable:
    """A picture Gradio could not decode before the page's function saw it."""

    def __init__(self, error):
        self.error = error


def page(model, folder, examples=(), title="What does the network see?"):
    """The Gradio page for a model (OnnxModel, or the repo's app.TorchModel); the pictures
    it shows are written into `folder`, the one folder it may serve (see serve)."""
    import gradio as gr
    # delete_cache: Gradio keeps every upload and every answer's picture in its cache
    # folder for good unless told; an hour's are kept, what is older goes every 10 minutes
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"# {title}\n{model.summary}")
        with gr.Row():
            with gr.Column():
                picture = picture_input()
                submit = gr.Button("Submit", variant="primary")
            with gr.Column():
                label = gr.Label(num_top_classes=TOP, label="What the network thinks")
                seen = gr.Image(label="As the network saw it" + (
                    ", and where it looked (Grad-CAM: red most)" if model.explains else ""),
                    type="filepath", interactive=False)
                note = gr.Markdown()
        submit.click(classifier(model, folder), inputs=picture, outputs=[label, seen, note],
                     api_name="classify")
        if examples:
            gr.Examples([[e] for e in examples], inputs=picture, label="Examples")
    return demo


def page_folder():
    """The page's own folder, removed when the process ends (not when launch() returns:
    in a notebook it returns at once, and the page goes on). Gradio's cache of uploads and
    answers goes inside it (unless GRADIO_TEMP_DIR names another): in the shared
    /tmp/gradio, the visitors' pictures outlived the page, and the page served files that
    other programs' pages had cached there."""
    folder = tempfile.mkdtemp(prefix="page-")
    atexit.register(shutil.rmtree, folder, True)
    os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(folder, "gradio"))  # (read per page)
    return folder


def copied(pictures, folder):
    """The pictures copied into the page's folder, under names of their own."""
    out = []
    for i, picture in enumerate(pictures):
        stem, ending = os.path.splitext(os.path.basename(picture))
        stem = os.fsencode(stem)[:120].decode("utf-8", "ignore")  # (a 250-byte name + example0_)
        out.append(os.path.join(folder, f"example{i}_{stem}{ending[:16]}"))
        shutil.copyfile(picture, out[-1])
    return out


class PageError(Exception):
    """The page cannot be served where it was asked to be: one line, exit status 2."""


def address(host=None, port=None):
    """(host, port) to serve on: the flags, else GRADIO_SERVER_NAME and GRADIO_SERVER_PORT
    (Docker images and hosting services set them), else PORT (Cloud Run's, Heroku's), else
    127.0.0.1 and None (Gradio's 7860, or the next free port). A port asked for is that
    port or an error, never silently another: a port mapping would point at nothing."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    given = [(f"--port {port}", port)] if port is not None else [
        (f"{k}={os.environ[k]}", os.environ[k]) for k in ("GRADIO_SERVER_PORT", "PORT") if os.environ.get(k)]
    what, value = given[0] if given else (None, None)
    if given and not (str(value).isascii() and str(value).isdigit() and 1 <= int(value) <= 65535):
        raise PageError(f"{what}: a port is a number from 1 to 65535")
    try:  # with a port or without: Gradio would try a host that is not there for minutes
        socket.getaddrinfo(host, int(value) if given else None)
    except (socket.gaierror, UnicodeError):
        raise PageError(f"cannot serve on host {host}: no such address on this machine "
                        f"(--host or GRADIO_SERVER_NAME; 0.0.0.0 is every network)") from None
    if not given:
        return host, None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, int(value)))
        except OSError as e:
            raise PageError(f"cannot serve on {host}:{value} ({what}): {e.strerror}; "
                            f"another page or program may hold it") from None
    return host, int(value)


def serve(model, examples, folder, host=None, port=None, share=False):
    """The page, served until stopped. Gradio may serve files from `folder` only (the
    examples and the answers' pictures): never the folders the examples came from. Host
    and port: see address()."""
    host, port = address(host, port)
    page(model, folder, examples).queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, share=share, allowed_paths=[folder])


def stop_cleanly_on_sigterm():
    """`docker stop`, systemd and `kill` send SIGTERM: end as Ctrl-C does, so the page's
    folder (its visitors' pictures) is removed. (A command's __main__ only: a notebook's
    kernel keeps its own handlers.)"""
    def stop(*_):
        _STOPPED.append(signal.SIGTERM)
        sys.exit(128 + signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop)


_STOPPED = []  # the SIGTERM stop_cleanly_on_sigterm has seen


def stopped_by_signal():
    """Whether SIGTERM has arrived: whatever exception follows is how it surfaced (inside
    an extension's import, the SystemExit comes out as ImportError: initialization failed)."""
    return bool(_STOPPED)


def onnx_model(path):
    """OnnxModel(path), or one line (PageError) saying why not: a Space pushed without its
    model (or with Git LFS's pointer in its place) starts, and says so in its log."""
    if not os.path.isfile(path):
        raise PageError(f"{path}: no such file; export one with export.py --format space")
    try:
        return OnnxModel(path)
    except Exception as e:  # noqa: BLE001 -- onnxruntime's load errors have no common type
        with open(path, "rb") as f:
            pointer = f.read(40).startswith(b"version https://git-lfs")
        why = ("a Git LFS pointer: git lfs pull, or push the file itself" if pointer else
               f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}")
        raise PageError(f"{path} is not an ONNX file of export.py ({why})") from None


class OneLineParser(argparse.ArgumentParser):
    """argparse's, whose errors (--port abc) are one line and exit 2, not usage and all."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = OneLineParser(description="The demo page of an exported model.")
    p.add_argument("--onnx", default=os.path.join(here, "model.onnx"), help="default: model.onnx beside this file")
    p.add_argument("--host", default=None, help="default 127.0.0.1, or GRADIO_SERVER_NAME")
    p.add_argument("--port", type=int, default=None,
                   help="default 7860, or GRADIO_SERVER_PORT, or PORT (what Spaces, Docker and "
                        "hosts set)")
    p.add_argument("--share", action="store_true", help="a public link (from Colab, say)")
    args = p.parse_args(argv)
    try:
        address(args.host, args.port)  # (before gradio: its import fails on a port of letters)
        model, folder = onnx_model(args.onnx), page_folder()
        examples = copied(pictures_in(os.path.join(here, "examples")), folder)
        serve(model, examples, folder, args.host, args.port, args.share)
    except PageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


PICTURES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def pictures_in(folder):
    """The pictures of `folder`, sorted: what a file manager (.DS_Store), an editor or a
    download left beside them is not an example. The page publishes every example, so one
    is a picture inside the folder, as app.py's --examples must be: a link that leads out
    of it (to a .env) or a file only named like a picture (notes.jpg) is skipped, with a
    line saying so."""
    if not os.path.isdir(folder):
        return []
    here, out = os.path.realpath(folder), []
    for f in sorted(os.listdir(folder)):
        path = os.path.join(folder, f)
        if not f.lower().endswith(PICTURES) or f.startswith(".") or not os.path.isfile(path):
            continue
        if os.path.commonpath([os.path.realpath(path), here]) != here:
            why = "a link that leads out of the folder"
        else:
            try:
                load_image(path, max_pixels=Image.MAX_IMAGE_PIXELS)
                out.append(path)
                continue
            except Exception as e:  # noqa: BLE001 -- Pillow raises many kinds for a broken file
                why = reason(e)
        print(f"note: example {f} skipped: {why}; it is not offered on the page", file=sys.stderr)
    return out


if __name__ == "__main__":
    stop_cleanly_on_sigterm()
    sys.exit(main())
