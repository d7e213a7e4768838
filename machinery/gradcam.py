"""Grad-CAM pictures: where the network looks when it makes a prediction.

The heat maps and the pictures drawn from them; gradcam_utils.py is their command line,
and the end of a training run (evaluation.finish) calls the same functions. Grad-CAM is
taken at the last BasicBlock of layer4 (a 4x4 map for 32x32 inputs, upsampled).
"""
import math
import os

import cv2
import numpy as np
import torch

from .images import load_image, normalize
from .metrics import new_figure, save_figure

DISPLAY = 128  # pixels per side when drawing a 32x32 image


# -----------------------------------------------------------------------------
# Grad-CAM

def gradcam_maps(model, x):
    """Heat maps in [0, 1], (N, H, W), for each image's predicted class; plus softmax probs.

    x: normalised (N, 3, H, W) on the model's device. The model's train/eval mode is
    restored afterwards (the grad-cam package leaves the model in eval mode).
    """
    from pytorch_grad_cam import GradCAM

    was_training = model.training
    model.eval()
    # In the model's own memory format: normalize() hands over an NCHW view of NHWC memory,
    # and with NCHW weights torch 2.14's CPU backward crashes the process (a segfault) for
    # narrow networks (width 8, batches of 3 or 5: seen in tests/test_imagefolder.py).
    fmt = (torch.channels_last if next(model.parameters()).is_contiguous(
        memory_format=torch.channels_last) and x.dim() == 4 else torch.contiguous_format)
    x = x.contiguous(memory_format=fmt)
    with torch.no_grad():
        probs = model(x).float().softmax(1)
    # Grad-CAM needs gradients even when the caller runs under torch.no_grad()
    with torch.enable_grad(), GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
        maps = cam(input_tensor=x, targets=None)  # targets=None: the predicted class
    model.train(was_training)
    return maps, probs.cpu()


def overlay(image, cam):
    """uint8 RGB image + [0, 1] map -> uint8 RGB overlay, both upscaled to DISPLAY pixels."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    big = cv2.resize(image, (DISPLAY, DISPLAY), interpolation=cv2.INTER_CUBIC)
    cam = cv2.resize(cam, (DISPLAY, DISPLAY), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(big.astype(np.float32) / 255, np.clip(cam, 0, 1), use_rgb=True)


def pick_indices(model, x_test, y_test, mean, std, n, misclassified=False, batch=256):
    """The first n test images, or the first n the model gets wrong (fewer if there are not)."""
    if not misclassified:
        return list(range(min(n, len(x_test))))
    device = next(model.parameters()).device
    wrong = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x_test), batch):
            x = normalize(x_test[start:start + batch], mean, std).to(device)
            pred = model(x).argmax(1).cpu().numpy()
            wrong += [start + i for i in np.flatnonzero(pred != y_test[start:start + batch])]
            if len(wrong) >= n:
                break
    return wrong[:n]


def explain_test_images(model, ckpt, x_test, y_test, out_dir, n=6, misclassified=False):
    """Grad-CAM for n test images; writes the grid and one overlay per image. Returns paths."""
    names, mean, std = ckpt["class_names"], ckpt["mean"], ckpt["std"]
    idx = pick_indices(model, x_test, y_test, mean, std, n, misclassified)
    if not idx:
        return []
    device = next(model.parameters()).device
    maps, probs = gradcam_maps(model, normalize(x_test[idx], mean, std).to(device))
    samples = []
    for k, i in enumerate(idx):
        pred = int(probs[k].argmax())
        samples.append(dict(image=x_test[i], cam=maps[k], pred=names[pred], true=names[y_test[i]],
                            prob=float(probs[k, pred]), index=i))
    os.makedirs(out_dir, exist_ok=True)
    paths = [save_overlay(s, os.path.join(out_dir, f"gradcam_idx{k}_overlay.png"))
             for k, s in enumerate(samples)]
    paths.append(save_grid(samples, os.path.join(out_dir, "gradcam_grid.png")))
    return paths


def _draw(ax_img, ax_cam, s):
    ax_img.imshow(cv2.resize(s["image"], (DISPLAY, DISPLAY), interpolation=cv2.INTER_NEAREST))
    ax_cam.imshow(overlay(s["image"], s["cam"]))
    ok = s["pred"] == s["true"]
    ax_img.set_title(f"pred: {s['pred']} ({100 * s['prob']:.0f}%)\ntrue: {s['true']}",
                     color="green" if ok else "red", fontsize=9, loc="left")
    ax_cam.set_title(f"Grad-CAM (test #{s['index']})", fontsize=9)
    for ax in (ax_img, ax_cam):
        ax.set_axis_off()


def save_overlay(sample, path):
    fig = new_figure(figsize=(4.4, 2.6))
    ax = fig.subplots(1, 2)
    _draw(ax[0], ax[1], sample)
    save_figure(fig, path)
    return path


def save_grid(samples, path, cols=3):
    """Rows of `cols` samples (2x3 for six), each as image | overlay."""
    rows = math.ceil(len(samples) / cols)
    fig = new_figure(figsize=(4.4 * cols, 2.7 * rows))
    axes = np.asarray(fig.subplots(rows, 2 * cols)).reshape(rows, 2 * cols)
    for ax in axes.flat:
        ax.set_axis_off()
    for k, s in enumerate(samples):
        r, c = divmod(k, cols)
        _draw(axes[r, 2 * c], axes[r, 2 * c + 1], s)
    fig.suptitle("Grad-CAM: where the network looks (red = most important)")
    save_figure(fig, path)
    return path


# -----------------------------------------------------------------------------
# The user's own pictures

def explain_pictures(model, ckpt, sources, out_dir, k=3):
    """Grad-CAM and top-k classes for the user's own pictures (paths, any size or format).

    Returns (rows, errors): rows of (source, [(class, probability)...], overlay path), and
    one line per picture that could not be read; the others are still explained.
    """
    images, kept, errors = [], [], []
    for src in sources:
        try:
            images.append(load_image(src, ckpt["image_size"]))
            kept.append(src)
        except (OSError, ValueError) as e:
            errors.append(f"error: cannot read {src}: {getattr(e, 'strerror', None) or e}")
    if not images:
        return [], errors
    device = next(model.parameters()).device
    maps, probs = gradcam_maps(model, normalize(np.stack(images), ckpt["mean"], ckpt["std"]).to(device))
    os.makedirs(out_dir, exist_ok=True)
    rows, used = [], set()
    for j, src in enumerate(kept):
        top = probs[j].topk(min(k, probs.shape[1]))
        guesses = [(ckpt["class_names"][i], float(p)) for p, i in zip(top.values, top.indices)]
        stem = os.path.splitext(os.path.basename(str(src)))[0]
        name = stem if stem not in used else f"{stem}_{j}"
        used.add(name)
        path = save_picture_overlay(images[j], maps[j], guesses, str(src),
                                    os.path.join(out_dir, f"gradcam_{name}.png"))
        rows.append((str(src), guesses, path))
    return rows, errors


def save_picture_overlay(image, cam, guesses, title, path):
    fig = new_figure(figsize=(4.4, 3.0))
    ax = fig.subplots(1, 2)
    ax[0].imshow(cv2.resize(image, (DISPLAY, DISPLAY), interpolation=cv2.INTER_NEAREST))
    ax[1].imshow(overlay(image, cam))
    ax[0].set_title("\n".join(f"{n} {100 * p:.1f}%" for n, p in guesses), fontsize=8, loc="left")
    ax[1].set_title(f"Grad-CAM: {guesses[0][0]}", fontsize=8)
    for a in ax:
        a.set_axis_off()
    fig.suptitle(os.path.basename(title), fontsize=9)
    save_figure(fig, path)
    return path
