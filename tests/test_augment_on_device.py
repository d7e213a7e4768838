"""--aug-on-device must draw from the same distribution as the albumentations pipeline."""
import random

import numpy as np
import pytest
import torch

import data
from model import normalize

SPEC = data.DATASETS["cifar100"]
N = 20_000  # samples from each pipeline: 5,000 of each of 4 images


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("aug"))
    data.write_synthetic_dataset(root, "cifar100", n_train=100, n_test=10, seed=0)
    x, _ = data.read_split(root, "cifar100", "train")
    images = np.repeat(x[:4], N // 4, 0)
    t = data.train_transform(SPEC["mean"])
    t.save_applied_params = True  # albumentations reports what it applied to each image
    t.set_random_state(np.random.default_rng(0), random.Random(0))
    outs, applied = [], []
    for im in images:
        r = t(image=im)
        outs.append(r["image"])
        applied.append({name: params for name, params in r["applied_transforms"]})
    batched, drawn = data.augment_batch(torch.from_numpy(images), 0, SPEC["mean"], SPEC["std"])
    return normalize(np.stack(outs), SPEC["mean"], SPEC["std"]), applied, batched, drawn


def rate(mask):
    return float(np.mean(mask))


def test_flip_affine_hole_and_noise_rates_match(both):
    _, applied, _, p = both
    pairs = [(rate(["HorizontalFlip" in a for a in applied]), rate(p["flip"]), 0.5),
             (rate(["Affine" in a for a in applied]), rate(p["affine"]), 0.5),
             (rate(["CoarseDropout" in a for a in applied]), rate(p["hole"]), 0.15),
             (rate(["GaussNoise" in a for a in applied]), rate(p["noise"]), 0.15)]
    for reference, ours, expected in pairs:  # 4 binomial standard deviations or less
        assert abs(reference - expected) < 0.015 and abs(ours - expected) < 0.015
        assert abs(reference - ours) < 0.02


def test_crop_offsets_have_the_same_histogram(both):
    _, applied, _, p = both
    coords = np.array([a["RandomCrop"]["crop_coords"][:2] for a in applied])  # (x0, y0)
    for axis, ours in ((0, p["crop_x"]), (1, p["crop_y"])):
        reference = np.bincount(coords[:, axis], minlength=9) / N
        mine = np.bincount(ours, minlength=9) / N
        assert len(reference) == len(mine) == 9  # offsets 0..8 in the 40x40 padded image
        assert np.abs(reference - mine).max() < 0.015 and np.abs(mine - 1 / 9).max() < 0.012


def test_holes_have_the_same_size_range(both):
    _, applied, _, p = both
    holes = np.array([a["CoarseDropout"]["holes"][0] for a in applied if "CoarseDropout" in a])
    sizes = np.stack([holes[:, 3] - holes[:, 1], holes[:, 2] - holes[:, 0]], 1)
    assert sizes.min() == 8 and sizes.max() == 16
    ours = np.stack([p["hole_h"], p["hole_w"]], 1)
    assert ours.min() == 8 and ours.max() == 16


def test_per_pixel_mean_and_variance_maps_match(both):
    reference, _, batched, _ = both
    a = reference.view(4, N // 4, 3, 32, 32)
    b = batched.view(4, N // 4, 3, 32, 32)
    # Two runs of the *same* pipeline differ by about 0.017 (mean map) and 0.015 (variance
    # map) here, averaged over pixels: the sampling noise of 5,000 draws per image. The
    # variance maps differ a little more (about 0.04 of an average variance of 0.7): the
    # two implementations interpolate the affine warp slightly differently.
    assert (a.mean(1) - b.mean(1)).abs().mean() < 0.04
    assert (a.var(1) - b.var(1)).abs().mean() < 0.08
    assert (a.mean(1) - b.mean(1)).abs().max() < 0.3


def _draws(**changes):
    p = {"crop_y": [4], "crop_x": [4], "flip": [False], "affine": [False], "angle": [0.0],
         "scale_x": [1.0], "scale_y": [1.0], "shift_x": [0.0], "shift_y": [0.0]}
    p.update(changes)
    return {k: np.array(v) for k, v in p.items()}


def test_without_random_changes_the_sampling_grid_is_the_identity_or_its_mirror():
    cols = torch.arange(32.0).expand(32, 32)
    for flip, want in ((False, cols), (True, 31 - cols)):
        grid = data._sampling_grid(_draws(flip=[flip]), 32, 32, "cpu")[0]
        pixels = (grid + 1) * 16 - 0.5  # back from -1..1 to pixel coordinates
        assert torch.allclose(pixels[..., 0], want, atol=1e-4)
        assert torch.allclose(pixels[..., 1], cols.T, atol=1e-4)


def test_the_crop_is_an_exact_shift_with_black_where_the_padding_was():
    img = torch.randint(1, 256, (1, 32, 32, 3), dtype=torch.uint8)  # no black pixels
    out = data._crop(img, _draws(crop_y=[8], crop_x=[0]))[0]
    assert torch.equal(out[:28, 4:], img[0, 4:, :28])  # 4 px up and 4 px right
    assert (out[28:] == 0).all() and (out[:, :4] == 0).all()
    assert torch.equal(data._crop(img, _draws())[0], img[0])  # centred crop: unchanged
