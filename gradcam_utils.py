"""Grad-CAM pictures: where the network looks when it makes a prediction.

    python gradcam_utils.py --checkpoint checkpoints/best_model.pt [--num-images 6]
                            [--out-dir gradcam_outputs] [--misclassified]
    python gradcam_utils.py --checkpoint checkpoints/best_model.pt --images cat.jpg dog.png

The network is rebuilt from the checkpoint alone; the test images come from the data set
the checkpoint was trained on. Writes gradcam_grid.png (image and heat-map overlay per
sample, with predicted and true class) and gradcam_idx{i}_overlay.png for each sample.
With --images it explains your own pictures instead: the top-3 classes and an overlay,
gradcam_<name>.png, for each. The functions live in machinery/gradcam.py (imported here
too, so `gradcam_utils.gradcam_maps` & co. keep working); train.py calls the same ones
after training.
"""
import argparse
import sys

from machinery.stops import quiet_ctrl_c

quiet_ctrl_c(__name__)  # before torch loads (seconds): a Ctrl-C there is one line, not a traceback

from machinery import data
from machinery.checkpoint_files import CheckpointError, dataset_of, fill_metadata, load_checkpoint
from machinery.config import UserError
from machinery.failures import one_line, report
from machinery.gradcam import (DISPLAY, explain_pictures, explain_test_images,  # noqa: F401
                               gradcam_maps, overlay, pick_indices, save_grid, save_overlay,
                               save_picture_overlay)
from machinery.runtime import pick_device
from model import model_from_checkpoint


def print_table(rows):
    for src, guesses, path in rows:
        top = "  ".join(f"{n} {100 * p:5.1f}%" for n, p in guesses)
        print(f"{src}: {top}  -> {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description="Grad-CAM pictures for a trained checkpoint.")
    p.add_argument("--checkpoint", required=True, help="e.g. checkpoints/best_model.pt")
    p.add_argument("--images", nargs="+", metavar="FILE",
                   help="explain these pictures (any size; centre-cropped, resized to the "
                        "checkpoint's image size, 32x32 for CIFAR) "
                        "instead of test images")
    p.add_argument("--num-images", type=int, default=6, help="how many test images (default 6)")
    p.add_argument("--out-dir", default="gradcam_outputs", help="default: gradcam_outputs")
    p.add_argument("--misclassified", action="store_true",
                   help="explain images the model gets wrong instead of the first ones")
    p.add_argument("--data-dir", default=None,
                   help="data set folder (default: the one the checkpoint was trained from)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps")
    p.add_argument("--debug", action="store_true",
                   help="on a crash, print the full traceback too (it always goes to "
                        "<out-dir>/crash.log)")
    args = p.parse_args(argv)
    try:
        if args.num_images < 1:
            raise ValueError(f"--num-images must be at least 1 (got {args.num_images})")
        device = pick_device(args.device)
        ckpt = load_checkpoint(args.checkpoint)
        cfg = ckpt.get("config", {})
        name = dataset_of(ckpt) or "cifar100"
        root = args.data_dir or cfg.get("data_dir", "./data")
        note = fill_metadata(ckpt)  # the reference's files: names and statistics of CIFAR
        model, _ = model_from_checkpoint(ckpt, device,
                                         expected={"num_classes": len(ckpt["class_names"])})
        if not args.images:
            if name != data.FOLDER:
                data.ensure_dataset(root, name)
            x_test, y_test = data.read_split_for(ckpt, root, name, "test", ckpt["image_size"],
                                                 **data.folder_options(cfg))
        if note:  # said once everything is in place: a failure above gets its one line alone
            print(f"note: {args.checkpoint}: {note}", file=sys.stderr)
        if args.images:
            rows, errors = explain_pictures(model, ckpt, args.images, args.out_dir)
            print_table(rows)
            for line in errors:
                print(line, file=sys.stderr)
            return 1 if errors else 0
        paths = explain_test_images(model, ckpt, x_test, y_test, args.out_dir,
                                    args.num_images, args.misclassified)
    except (CheckpointError, data.DataError, UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # not the user's fault (out of memory, a bug): one line all the same
        return report(e, one_line(e, device=args.device), args.out_dir, debug=args.debug)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
