"""Pictures in every mode Pillow opens, each with its 8-bit RGB twin: what a viewer shows
(tests/test_hostile_pictures.py reads them through load_image and the folder cache,
tests/test_hostile_app.py through the page). A row that cannot be shown faithfully
expects an error naming why instead.

    for name, write in MODES.items():
        source, expected = write(folder)   # a path (or a PIL image); a uint8 RGB twin,
                                           # or ("error", words the error must hold)
"""
import struct
import zlib

import numpy as np
from PIL import Image

SIDE, BLOCK = 32, 8  # 4 x 4 blocks of one colour each; the network's size: nothing resized
# black, white, greys, the primaries and secondaries, and a few colours between
COLOURS = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (64, 64, 64), (192, 192, 192),
           (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 255, 255), (255, 0, 255), (255, 255, 0),
           (200, 120, 40), (30, 90, 160), (90, 160, 90), (230, 200, 170), (20, 20, 60)]
GREYS = [0, 255, 17, 34, 51, 68, 85, 102, 119, 136, 153, 170, 187, 204, 221, 238]
ALPHAS = [255, 0, 128, 64, 192, 32, 255, 16, 240, 100, 200, 0, 255, 50, 150, 255]


def blocks(values):
    """(SIDE, SIDE, ...) of 16 blocks, the k-th (row by row) filled with values[k]."""
    v = np.asarray(values, dtype=np.uint8).reshape(4, 4, *np.shape(values)[1:])
    return np.repeat(np.repeat(v, BLOCK, 0), BLOCK, 1)


RGB = blocks(COLOURS)
GREY = blocks(GREYS)
# 8-bit L*a*b* cannot hold every sRGB colour within a level: next to the gamut's edge a
# step of a* or b* moves a channel near 0 by up to 10 (pure green comes back (10, 255, 0)).
# Its twin trades pure green and yellow for colours inside.
LAB_RGB = blocks([(60, 180, 60) if c == (0, 255, 0) else (240, 220, 80) if c == (255, 255, 0)
                  else c for c in COLOURS])


def on_white(rgb, alpha):
    """What a viewer shows for `rgb` with `alpha` over a white page, rounded."""
    a = alpha[..., None].astype(np.float64) / 255
    return np.round(rgb * a + 255 * (1 - a)).astype(np.uint8)


def grey3(grey):
    return np.repeat(grey[..., None], 3, -1)


def _saved(image, folder, name, **kw):
    path = folder / name
    image.save(path, **kw)
    return path


def png16_rgb(path, rgb16, transparent=None):
    """A 48-bit RGB PNG (Pillow writes none): uint16 (H, W, 3) samples; transparent: the
    16-bit colour its tRNS chunk makes transparent."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    h, w = rgb16.shape[:2]
    rows = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    trns = chunk(b"tRNS", struct.pack(">HHH", *transparent)) if transparent else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + trns + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def _white_where(twin, colour):
    out = twin.copy()
    out[(twin == colour).all(-1)] = 255
    return out


def tiff16_rgb(path, rgb16):
    """A 48-bit RGB TIFF (Pillow writes none): little-endian, uncompressed, one strip."""
    h, w = rgb16.shape[:2]
    pixels = rgb16.astype("<u2").tobytes()
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, 134), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 140), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(pixels)),
               (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                 else struct.pack("<I", value))
        for tag, kind, count, value in entries) + struct.pack("<I", 0)
    assert 8 + len(ifd) == 134  # the header, then the IFD, the bits per sample at 134, pixels at 140
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<HHH", 16, 16, 16) + pixels)
    return path


def _palette(folder, transparent):
    image = Image.fromarray(RGB).quantize(len(COLOURS), method=Image.Quantize.MEDIANCUT)
    twin = np.asarray(image.convert("RGB"))
    assert np.array_equal(twin, RGB), "the palette holds every colour exactly"
    if not transparent:
        return _saved(image, folder, "palette.png"), RGB
    index = np.asarray(image)[0, 0]  # the first block's colour: transparent
    twin = RGB.copy()
    twin[np.asarray(image) == index] = 255
    return _saved(image, folder, "palette-transparent.png", transparency=int(index)), twin


def _pa(folder):
    image = Image.fromarray(RGB).quantize(len(COLOURS), method=Image.Quantize.MEDIANCUT).convert("PA")
    image.putalpha(Image.fromarray(blocks(ALPHAS)))
    return _saved(image, folder, "pa.tif"), on_white(RGB, blocks(ALPHAS))


MODES = {
    "1 (bilevel PNG)": lambda f: (_saved(Image.fromarray(GREY > 127).convert("1"), f, "bilevel.png"),
                                  grey3(np.where(GREY > 127, 255, 0).astype(np.uint8))),
    "L (grey PNG)": lambda f: (_saved(Image.fromarray(GREY), f, "grey.png"), grey3(GREY)),
    "LA (grey and alpha PNG)": lambda f: (
        _saved(Image.fromarray(np.dstack([GREY, blocks(ALPHAS)]), "LA"), f, "grey-alpha.png"),
        on_white(grey3(GREY), blocks(ALPHAS))),
    "P (palette PNG)": lambda f: _palette(f, transparent=False),
    "P with a transparent colour (PNG)": lambda f: _palette(f, transparent=True),
    "PA (palette and alpha TIFF)": _pa,
    "I;16 (16-bit grey PNG)": lambda f: (
        _saved(Image.fromarray(GREY.astype(np.uint16) * 257), f, "grey16.png"), grey3(GREY)),
    "I;16 (16-bit grey TIFF)": lambda f: (
        _saved(Image.fromarray(GREY.astype(np.uint16) * 257), f, "grey16.tif"), grey3(GREY)),
    "I;16B (16-bit big-endian grey TIFF)": lambda f: (
        _saved(Image.fromarray((GREY.astype(np.uint16) * 257).astype(">u2")), f, "grey16b.tif"),
        grey3(GREY)),
    "I (32-bit TIFF holding 16-bit grey)": lambda f: (
        _saved(Image.fromarray(GREY.astype(np.int32) * 257), f, "grey32.tif"), grey3(GREY)),
    "RGB (PNG)": lambda f: (_saved(Image.fromarray(RGB), f, "rgb.png"), RGB),
    "RGBA (PNG), composited on white": lambda f: (
        _saved(Image.fromarray(np.dstack([RGB, blocks(ALPHAS)])), f, "rgba.png"),
        on_white(RGB, blocks(ALPHAS))),
    "CMYK (TIFF)": lambda f: (_saved(Image.fromarray(RGB).convert("CMYK"), f, "cmyk.tif"), RGB),
    "YCbCr (a PIL image of greys)": lambda f: (Image.fromarray(grey3(GREY)).convert("YCbCr"),
                                              grey3(GREY)),
    "LAB (TIFF)": lambda f: (_saved(Image.fromarray(LAB_RGB).convert("LAB"), f, "lab.tif"), LAB_RGB),
    "RGB, 48-bit PNG": lambda f: (png16_rgb(f / "rgb48.png", RGB.astype(np.uint16) * 257), RGB),
    "RGB, 48-bit TIFF": lambda f: (tiff16_rgb(f / "rgb48.tif", RGB.astype(np.uint16) * 257), RGB),
    "I;16 with a transparent grey (PNG)": lambda f: (
        _saved(Image.fromarray(GREY.astype(np.uint16) * 257), f, "grey16-trns.png",
               transparency=GREYS[2] * 257), _white_where(grey3(GREY), GREYS[2])),
    "RGB, 48-bit PNG with a transparent colour": lambda f: (
        png16_rgb(f / "rgb48-trns.png", RGB.astype(np.uint16) * 257,
                  transparent=tuple(v * 257 for v in COLOURS[11])), _white_where(RGB, COLOURS[11])),
    "F (32-bit float TIFF): refused": lambda f: (
        _saved(Image.fromarray(GREY.astype(np.float32) / 255), f, "float.tif"),
        ("error", "floating-point pixels")),
    "I beyond 16 bits (TIFF): refused": lambda f: (
        _saved(Image.fromarray(GREY.astype(np.int32) * 70000), f, "grey-wide.tif"),
        ("error", "32-bit integer pixels")),
}
