"""A demo page for a trained model: drop a photo, see the five classes the network finds
most likely and where it looked (Grad-CAM).

    python app.py --checkpoint checkpoints/best_model.pt    # http://127.0.0.1:7860
    python app.py --onnx best_model.onnx                    # an export, no Grad-CAM then
    python app.py --share                                   # a public link too (Colab)

The page is machinery/space_app.py, the same one a Hugging Face Space of the model runs
(`python export.py CHECKPOINT --format space`). Here the checkpoint itself answers, with
Grad-CAM: the top classes come from predict()'s own path, so the page, predict(),
--evaluate and the exported files agree. The model is loaded once, when the page starts.
Examples come from the test split the model was trained on when it is on disk, or from
--examples. Nothing reaches the internet (Gradio serves its page from its package;
analytics off) unless --share asks for a public link. Needs `pip install gradio`
(requirements-app.txt).
"""
import os
import re
import sys

from machinery.stops import quiet_ctrl_c

quiet_ctrl_c(__name__)  # before torch loads (seconds): a Ctrl-C there is one line, not a traceback

import numpy as np
from PIL import Image

from machinery import data
from machinery.card import summary
from machinery.checkpoint_files import CheckpointError, load_checkpoint
from machinery.config import UserError
from machinery.gradcam import gradcam_maps, overlay
from machinery.images import load_image, normalize
from machinery.predicting import torch_probabilities
from machinery.runtime import pick_device
from machinery.space_app import (OneLineParser, OnnxModel, PageError, address, copied, page_folder, reason, serve,
                                 stop_cleanly_on_sigterm)
from model import load_classifier

EXAMPLES = 6


class TorchModel:
    """A checkpoint on its device, with Grad-CAM: what the page calls."""

    no_explaining = "Grad-CAM is off (--no-gradcam)."

    def __init__(self, path, device, explains=True):
        self.explains = explains
        ckpt = load_checkpoint(path)
        self.clf = load_classifier(path, device)
        self.names, self.size = self.clf.class_names, self.clf.image_size
        self.summary = summary({**ckpt, "class_names": self.names, "image_size": self.size})
        self.config = ckpt.get("config") or {}
        self.run = torch_probabilities(self.clf)

    def probabilities(self, square):
        import torch
        return self.run(torch.from_numpy(square[None]))[0].numpy()

    def explain(self, square):
        """(probabilities as predict() computes them, the square as the network saw it
        beside its Grad-CAM overlay, both upscaled to be seen)."""
        maps, _ = gradcam_maps(self.clf.model, normalize(square[None], self.clf.mean,
                                                         self.clf.std).to(self.clf.device))
        heat = overlay(square, maps[0])
        seen = np.asarray(Image.fromarray(square).resize(heat.shape[:2][::-1], Image.NEAREST))
        return self.probabilities(square), np.hstack([seen, heat])


def test_examples(model, folder, n=EXAMPLES):
    """A few pictures of the test split the model was trained on, one per class, as PNG
    files in `folder`; none when that data set is not on this disk."""
    cfg = model.config
    name, root = cfg.get("dataset", "cifar100"), cfg.get("data_dir", "./data")
    try:
        if name != data.FOLDER and not data.dataset_present(root, name):
            return []
        classes = {"class_names": model.names, "class_ids": model.clf.class_ids}
        images, labels = data.read_split_for(classes, root, name, "test", model.size,
                                             **data.folder_options(cfg))
    except (data.DataError, OSError):
        return []
    paths, seen = [], set()
    for image, label in zip(images, labels):
        if int(label) in seen:
            continue
        seen.add(int(label))
        paths.append(os.path.join(folder, f"{len(paths)}_{file_name(model.names[int(label)])}.png"))
        Image.fromarray(image).save(paths[-1])
        if len(paths) == n:
            break
    return paths


def file_name(name, most=40):
    """A class name as a part of a file name: a label table's names may hold '/' ("n/a"),
    a NUL or hundreds of characters, none of which a file's name may; what is left of the
    name is for the eye only."""
    return re.sub(r"[^\w.-]+", "_", name, flags=re.ASCII)[:most].strip("._") or "class"



def parse_args(argv=None):
    p = OneLineParser(description="A demo page for a trained model.")
    p.add_argument("--checkpoint", help="default: <out-dir>/checkpoints/best_model.pt")
    p.add_argument("--onnx", metavar="FILE", help="an export.py ONNX file instead (no Grad-CAM)")
    p.add_argument("--out-dir", default=".", help="where to look for the checkpoint (default .)")
    p.add_argument("--examples", nargs="+", metavar="FILE", help="example pictures to offer")
    p.add_argument("--host", default=None,
                   help="default 127.0.0.1, or GRADIO_SERVER_NAME (0.0.0.0: the network)")
    p.add_argument("--port", type=int, default=None,
                   help="default 7860, or GRADIO_SERVER_PORT (Docker's and hosts' setting)")
    p.add_argument("--share", action="store_true", help="also a public gradio.live link")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--no-gradcam", action="store_true",
                   help="the classes only (a faster answer on a busy CPU)")
    return p.parse_args(argv)


def load(args):
    if args.onnx and args.checkpoint:
        raise UserError("give --checkpoint or --onnx, not both")
    if args.onnx:
        if os.path.isdir(args.onnx) or not os.path.isfile(args.onnx):
            raise UserError(f"--onnx {args.onnx}: {'a folder' if os.path.isdir(args.onnx) else 'no such file'}; "
                            f"give the .onnx file export.py wrote")
        try:
            return OnnxModel(args.onnx)
        except Exception as e:  # noqa: BLE001 -- onnxruntime's load errors have no common type
            raise UserError(f"{args.onnx} is not an ONNX file of export.py ({type(e).__name__})") from None
    path = args.checkpoint or os.path.join(args.out_dir, "checkpoints", "best_model.pt")
    if os.path.isdir(path):
        raise UserError(f"--checkpoint {path} is a folder; give the checkpoint file "
                        f"(its checkpoints/best_model.pt, say)")
    if not args.checkpoint and not os.path.isfile(path):
        raise UserError(f"no model: {path} does not exist; give --checkpoint FILE, or train one "
                        f"(python train.py --smoke makes a demo model in seconds)")
    return TorchModel(path, pick_device(args.device), explains=not args.no_gradcam)


def main(argv=None):
    args = parse_args(argv)
    try:  # (a busy or impossible port: said before the model loads, and before gradio,
        address(args.host, args.port)  # whose import fails on a GRADIO_SERVER_PORT of letters)
        import gradio  # noqa: F401 -- said in one line before the model loads
    except ImportError:
        print("error: the page needs gradio: pip install -r requirements-app.txt", file=sys.stderr)
        return 2
    except PageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        pictures(args.examples or [])
        model = load(args)
        # the page serves its own folder and nothing else: the examples are copied in, so
        # the folders they came from (their .env, .ssh/, ...) are never served
        folder = page_folder()
        examples = (copied(args.examples, folder) if args.examples else
                    [] if args.onnx else test_examples(model, folder))
        serve(model, examples, folder, args.host, args.port, args.share)
    except (UserError, CheckpointError, PageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def pictures(paths):
    """--examples, each a picture the page can read: never a .env, a notes.txt or a link to
    a secret that a glob such as --examples photos/* would otherwise publish."""
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"--examples: {path} is not a file")
        try:
            load_image(path, max_pixels=Image.MAX_IMAGE_PIXELS)
        except Exception as e:  # noqa: BLE001 -- Pillow raises many kinds for a broken file
            raise UserError(f"--examples: {path} is not a picture the page can read "
                            f"({reason(e)})") from None
    return paths


if __name__ == "__main__":
    stop_cleanly_on_sigterm()
    sys.exit(main())
