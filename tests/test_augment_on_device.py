"""--aug-on-device must draw from the same distribution as the albumentations pipeline."""
import random

import numpy as np
import pytest
import torch

from machinery import data
from machinery.images import normalize

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


@pytest.mark.slow  # (with every test of its fixture: it samples 20,000 images through each pipeline, 12 s)
def test_flip_affine_hole_and_noise_rates_match(both):
    _, applied, _, p = both
    pairs = [(rate(["HorizontalFlip" in a for a in applied]), rate(p["flip"]), 0.5),
             (rate(["Affine" in a for a in applied]), rate(p["affine"]), 0.5),
             (rate(["CoarseDropout" in a for a in applied]), rate(p["hole"]), 0.15),
             (rate(["GaussNoise" in a for a in applied]), rate(p["noise"]), 0.15)]
    for reference, ours, expected in pairs:  # 4 binomial standard deviations or less
        assert abs(reference - expected) < 0.015 and abs(ours - expected) < 0.015
        assert abs(reference - ours) < 0.02


@pytest.mark.slow
def test_crop_offsets_have_the_same_histogram(both):
    _, applied, _, p = both
    coords = np.array([a["RandomCrop"]["crop_coords"][:2] for a in applied])  # (x0, y0)
    for axis, ours in ((0, p["crop_x"]), (1, p["crop_y"])):
        reference = np.bincount(coords[:, axis], minlength=9) / N
        mine = np.bincount(ours, minlength=9) / N
        assert len(reference) == len(mine) == 9  # offsets 0..8 in the 40x40 padded image
        assert np.abs(reference - mine).max() < 0.015 and np.abs(mine - 1 / 9).max() < 0.012


@pytest.mark.slow
def test_holes_have_the_same_size_range(both):
    _, applied, _, p = both
    holes = np.array([a["CoarseDropout"]["holes"][0] for a in applied if "CoarseDropout" in a])
    sizes = np.stack([holes[:, 3] - holes[:, 1], holes[:, 2] - holes[:, 0]], 1)
    assert sizes.min() == 8 and sizes.max() == 16
    ours = np.stack([p["hole_h"], p["hole_w"]], 1)
    assert ours.min() == 8 and ours.max() == 16


@pytest.mark.slow
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


# Flat images show what the pixel-level steps do, with nothing else moving: a flat image
# stays flat through crop, flip and affine (away from the black border), so in one of
# the cut-out's fill colour only noise makes its centre vary, and in one of another
# colour only a hole puts fill-coloured pixels.
FILL = np.array([round(255 * m) for m in SPEC["mean"]], np.uint8)
OTHER = np.array([30, 200, 90], np.uint8)
FLAT = 10_000  # images of each colour per pipeline
CENTRE = (slice(None), slice(12, 20), slice(12, 20))  # inside the image after any affine


def _uint8(x):
    """Normalised (N, 3, H, W) -> the uint8 (N, H, W, 3) pixels it stands for."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (SPEC["mean"], SPEC["std"]))
    return ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _reference(images, seed):
    t = data.train_transform(SPEC["mean"])
    t.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return np.stack([t(image=im)["image"] for im in images])


@pytest.fixture(scope="module")
def flat():
    """{colour: (albumentations' outputs, ours, our draws)} for FLAT flat images each."""
    out = {}
    for name, colour, seed in (("fill", FILL, 1), ("other", OTHER, 2)):
        images = np.broadcast_to(colour, (FLAT, 32, 32, 3)).copy()
        x, drawn = data.augment_batch(torch.from_numpy(images), seed, SPEC["mean"], SPEC["std"])
        out[name] = (_reference(images, seed), _uint8(x), drawn)
    return out


def _noise_stats(images):
    """(share of images whose centre varies, mean spread of those), in grey levels."""
    sd = images[CENTRE].reshape(len(images), -1, 3).astype(float).std(1).mean(1)
    return float((sd > 1).mean()), float(sd[sd > 1].mean())


def _hole_stats(images):
    """(share of images with fill-coloured pixels, mean count of them in those)."""
    count = (images == FILL).all(-1).sum((1, 2))
    return float((count > 0).mean()), float(count[count > 0].mean())


# Bounds from run-to-run noise: four runs of albumentations on 10,000 flat images each
# (seeds 0-3) gave noise shares 0.149-0.154, spreads 4.62-4.74 grey levels, hole shares
# 0.148-0.152 and hole sizes 141.9-145.6 pixels; a share's binomial sd is 0.0036. The
# bounds are about four standard deviations of a difference of two such runs.
@pytest.mark.slow  # (with every test of its fixture: 10 s)
def test_noise_reaches_as_many_images_as_albumentations_and_as_strongly(flat):
    reference, ours, _ = flat["fill"]
    (ref_share, ref_sd), (our_share, our_sd) = _noise_stats(reference), _noise_stats(ours)
    assert abs(ref_share - 0.15) < 0.015 and abs(our_share - ref_share) < 0.02
    assert abs(our_sd - ref_sd) < 0.3


@pytest.mark.slow
def test_holes_reach_as_many_images_as_albumentations_and_are_as_large(flat):
    reference, ours, _ = flat["other"]
    (ref_share, ref_size), (our_share, our_size) = _hole_stats(reference), _hole_stats(ours)
    assert abs(ref_share - 0.15) < 0.015 and abs(our_share - ref_share) < 0.02
    assert abs(our_size - ref_size) < 10


@pytest.mark.slow
def test_every_drawn_hole_is_filled_with_the_mean_colour_and_nothing_else_is(flat):
    _, ours, p = flat["other"]
    filled = (ours == FILL).all(-1)  # (N, 32, 32)
    for i in np.flatnonzero(p["hole"]):
        y, x, h, w = (int(p[k][i]) for k in ("hole_y", "hole_x", "hole_h", "hole_w"))
        assert filled[i, y:y + h, x:x + w].all() and filled[i].sum() == h * w, i
    assert not filled[~p["hole"]].any()


def test_noisy_images_differ_from_the_same_images_without_noise_by_the_drawn_std(monkeypatch):
    images = torch.from_numpy(np.broadcast_to(FILL, (2000, 32, 32, 3)).copy())
    noisy, p = data.augment_batch(images, 5, SPEC["mean"], SPEC["std"])
    monkeypatch.setattr(data, "_noise", lambda x, p, gen: x)
    plain, _ = data.augment_batch(images, 5, SPEC["mean"], SPEC["std"])
    plain = _uint8(plain)
    diff = _uint8(noisy).astype(float) - plain
    inside = (plain == FILL).all(-1)  # away from the black border and its blend
    chosen = np.flatnonzero(p["noise"])
    assert len(chosen) > 200 and not diff[~p["noise"]].any()
    rng = np.random.default_rng(0)
    for i in chosen:  # ~2,000 pixel values each: their spread is known within ~2%
        sd = p["noise_std"][i]  # grey levels; added truncated towards zero, as albumentations
        expected = np.trunc(rng.normal(0, sd, 200_000)).std()
        assert abs(diff[i][inside[i]].std() / expected - 1) < 0.1, (i, sd)


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
