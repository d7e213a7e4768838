"""Pictures read as they are displayed, in every mode Pillow opens: through load_image
(predict, Grad-CAM, the page) and the folder cache (training on a folder). One row per
mode in picture_modes.MODES: a new awkward picture is one line there. The page's own
rows are in test_hostile_app.py."""
import os

import numpy as np
import pytest
from PIL import Image

from machinery import imagefolder
from machinery.images import UnreadableMode, load_image
from picture_modes import MODES, SIDE


def _as_twin(got, twin):
    """Within one grey level of the 8-bit RGB twin. (At the pictures' own size, the
    network's: a bicubic resize would turn one level at a colour's edge into two.)"""
    return int(np.abs(got.astype(int) - twin).max()) <= 1


@pytest.mark.parametrize("name", MODES)
def test_load_image_reads_each_mode_as_a_viewer_shows_it(name, tmp_path):
    source, twin = MODES[name](tmp_path)
    if isinstance(twin, tuple):  # cannot be shown faithfully: an error that says why
        with pytest.raises(UnreadableMode, match=twin[1]):
            load_image(source, SIDE)
        return
    got = load_image(source, SIDE)
    assert _as_twin(got, twin), np.abs(got.astype(int) - twin).max()


def test_the_folder_cache_reads_every_mode_as_load_image_does(tmp_path):
    """Each mode's file in a class folder of its own; those that cannot be shown sit beside
    a readable picture in one more class, and are skipped with their reason."""
    root, made = tmp_path / "modes", {}
    for k, (name, write) in enumerate(MODES.items()):
        folder = tmp_path / "written" / str(k)
        folder.mkdir(parents=True)
        source, twin = write(folder)
        if not isinstance(source, Image.Image):  # (a PIL image is not a file to cache)
            made[name] = source, twin
    refused = root / "train" / "refused"
    refused.mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(refused / "plain.png")
    for k, (name, (source, twin)) in enumerate(made.items()):
        folder = refused if isinstance(twin, tuple) else root / "train" / f"mode{k:02d}"
        folder.mkdir(exist_ok=True)
        os.replace(source, folder / f"{k:02d}{source.suffix}")
    said = []
    images, labels, extra = imagefolder.Folder(str(root), SIDE, warn=said.append).read("train")
    readable = {f"mode{k:02d}": twin for k, (name, (_, twin)) in enumerate(made.items())
                if not isinstance(twin, tuple)}
    for image, label in zip(images, labels):
        cls = extra["classes"][label]
        if cls != "refused":
            assert _as_twin(image, readable.pop(cls)), cls
    assert not readable  # every readable mode was decoded
    [warning] = [w for w in said if "skipped" in w]
    for name, (_, twin) in made.items():
        if isinstance(twin, tuple):
            assert twin[1] in warning, (name, warning)


def test_postscript_is_never_opened_whatever_its_name(tmp_path):
    """Pillow hands PostScript to Ghostscript where it is installed: not a picture here."""
    from PIL import UnidentifiedImageError
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "x.eps")
    (tmp_path / "x.png").write_bytes((tmp_path / "x.eps").read_bytes())
    for name in ("x.eps", "x.png"):
        with pytest.raises(UnidentifiedImageError):
            load_image(tmp_path / name)


def test_a_picture_past_the_limit_is_refused_from_its_header(tmp_path):
    """What the page allows (Pillow's 89-megapixel warning, there an error): known from the
    header, before a byte of the picture is decoded."""
    from PIL import Image as PILImage
    from test_app import _png  # a PNG that says 12,000 x 12,000 with a tiny body
    big = _png(tmp_path / "big.png", 12_000, 12_000)
    with pytest.raises(PILImage.DecompressionBombError, match="12000 x 12000 pixels"):
        load_image(big, max_pixels=PILImage.MAX_IMAGE_PIXELS)


TURNED = [(mode, orientation, compression) for mode in ("L", "RGB", "I;16", "CMYK", "RGBA")
          for orientation in (5, 6, 7, 8) for compression in ("raw", "tiff_lzw")]


@pytest.mark.parametrize("mode, orientation, compression", TURNED)
def test_a_tiff_turned_by_its_orientation_tag_reads_as_its_png_twin(tmp_path, mode, orientation,
                                                                   compression):
    """A scanner's TIFF, uncompressed, with Orientation 5-8 (a quarter turn): Pillow 12.3's
    own reader came out scrambled (its size turned, its rows not). Read as the same
    picture saved as PNG with the same tag."""
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([(x * 4) % 256, (y * 5) % 256, (x + y) * 2 % 256], -1).astype(np.uint8)
    twin = Image.fromarray(rgb)
    exif = twin.getexif()
    exif[274] = orientation
    twin.save(tmp_path / "twin.png", exif=exif.tobytes())
    if mode == "I;16":
        picture = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
        Image.fromarray(rgb[..., 0]).convert("RGB").save(tmp_path / "twin.png", exif=exif.tobytes())
    elif mode == "RGBA":
        picture = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    else:
        picture = twin.convert(mode)
        if mode == "L":
            picture.convert("RGB").save(tmp_path / "twin.png", exif=exif.tobytes())
    kw = {} if compression == "raw" else {"compression": compression}
    picture.save(tmp_path / "scan.tif", exif=exif.tobytes(), **kw)
    got, want = load_image(str(tmp_path / "scan.tif"), 32), load_image(str(tmp_path / "twin.png"), 32)
    limit = 3 if mode == "CMYK" else 1  # (CMYK's round trip through Pillow's naive conversion)
    assert np.abs(got.astype(int) - want).max() <= limit
