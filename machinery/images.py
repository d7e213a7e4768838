"""Pictures in, network input out: an image file (or PIL image, or array) decoded to the
uint8 RGB square every tool uses, and a batch of those normalised for the network.

The bottom floor of the house: it imports nothing of this project, so the network's
`predict`, the image-folder reader and Grad-CAM on your own pictures all decode a file
the same way, and training, evaluation and inference all normalise the same way. Decoding
needs only Pillow and numpy (PyTorch is imported where a tensor is made), so a copy of
this file reads pictures where PyTorch is not installed: the demo Space of export.py.

    square = load_image("cat.jpg")               # uint8 (32, 32, 3) RGB
    x = normalize(square[None], mean, std)       # float (1, 3, 32, 32), channels_last
"""
import threading
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, TiffImagePlugin


# What Pillow may open: raster formats alone (Image.open would hand an EPS, even named
# .png, to Ghostscript where it is installed). JPEG's reader takes the MPO of phones too.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM")


def load_image(image, size=32, max_pixels=None):
    """A file path, PIL image or uint8 array (H, W), (H, W, 3) or (H, W, 4), of any size ->
    uint8 (size, size, 3) RGB, the way a viewer shows it: turned by its EXIF orientation (a
    phone stores a portrait photo as a landscape picture plus that tag), then the largest
    centred square, resized with PIL's bicubic filter (antialiased when shrinking), so the
    picture is not squashed.

    A JPEG is decoded at the smallest of its DCT scales (1/2, 1/4, 1/8) that still gives
    at least size x size: a 12-megapixel photo then decodes about 10x faster, and the
    32-px result differs by under one grey level on average (benchmarks/decode.py)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"expected a uint8 (H, W[, C]) array, got {image.dtype} {image.shape}")
        image = as_shown(Image.fromarray(image))
    elif isinstance(image, Image.Image):
        image = as_shown(ImageOps.exif_transpose(image))
    else:
        with warnings.catch_warnings():  # (Pillow's warning past 89 megapixels: said below)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            f = _open(image)  # OSError for unreadable or non-image files
        with f:
            if max_pixels and f.width * f.height > max_pixels:
                raise Image.DecompressionBombError(
                    f"{f.width} x {f.height} pixels, more than the {max_pixels:,} allowed")
            f.draft("RGB", (size, size))  # a no-op for every format but JPEG
            image = as_shown(ImageOps.exif_transpose(f))
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.array(image.resize((size, size), Image.BICUBIC, box=box), dtype=np.uint8)  # writable


_LIBTIFF = threading.Lock()


def _open(path):
    """Image.open, but an uncompressed TIFF turned by its Orientation tag (5-8: a quarter
    turn) read through libtiff: Pillow's own reader (12.3) takes the turned size for the
    stored one, and the pixels come out scrambled, with no error. libtiff reads them
    right, as it does every compressed TIFF."""
    f = Image.open(path, formats=FORMATS)
    if f.format != "TIFF" or getattr(f, "use_load_libtiff", True) or \
            f.tag_v2.get(ExifTags.Base.Orientation) not in (5, 6, 7, 8):
        return f
    f.close()
    with _LIBTIFF:  # (Pillow's switch is global: one reopening at a time)
        TiffImagePlugin.READ_LIBTIFF = True
        try:
            return Image.open(path, formats=FORMATS)
        finally:
            TiffImagePlugin.READ_LIBTIFF = False


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # grey, 16 bits a pixel (I: 32)


class UnreadableMode(ValueError):
    """A picture whose pixels cannot be shown as 8-bit RGB without guessing (float pixels,
    32-bit integers beyond 16 bits)."""


def as_shown(image):
    """A PIL image of any mode -> 8-bit RGB, as a viewer shows it. Pillow's convert("RGB")
    alone clips 16-bit grey (I;16, I;16B, I) at 255, so a mid-grey scan turns white: those
    are scaled, 0..65535 -> 0..255. Transparent pixels (RGBA, LA, PA, P or L with a
    transparent colour) are composited on white, not shown as whatever colour they hide.
    48-bit RGB (PNG, TIFF) is already 8-bit RGB when Pillow opens it; CMYK, YCbCr, LAB,
    palettes and 1-bit pictures go through Pillow's own conversions."""
    if image.mode in SIXTEEN_BIT:
        grey = np.asarray(image)
        if image.mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise UnreadableMode(f"32-bit integer pixels ({grey.min()}..{grey.max()}), "
                                 f"beyond 16 bits: no agreed brightness scale")
        out = np.empty(grey.shape, np.uint8)
        for r in range(0, len(grey), 1024):  # a block of rows at a time: a 100-megapixel scan
            out[r:r + 1024] = (grey[r:r + 1024].astype(np.uint32) + 128) // 257  # needs no GBs
        if "transparency" in image.info:  # a 16-bit grey that is transparent: the page's white
            out[grey == image.info["transparency"]] = 255
        return Image.fromarray(out, "L").convert("RGB")
    if image.mode == "F":
        raise UnreadableMode("floating-point pixels (mode F): no agreed brightness scale")
    if image.mode == "LAB":
        return Image.fromarray(lab_to_srgb(np.asarray(image)), "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        key = image.info.get("transparency")
        if image.mode == "RGB" and isinstance(key, tuple) and max(key) > 255:
            image = image.copy()  # a 48-bit PNG's transparent colour, in 16-bit values
            image.info["transparency"] = tuple(v >> 8 for v in key)
        over = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(over, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


# CIE XYZ relative to D50 (the white of ICC's and Photoshop's L*a*b*) -> linear sRGB,
# Bradford-adapted to sRGB's D65, as ICC sRGB profiles do
D50 = np.array([0.96422, 1.0, 0.82521])
XYZ_D50_TO_SRGB = np.array([[3.1338561, -1.6168667, -0.4906146],
                            [-0.9787684, 1.9161415, 0.0334540],
                            [0.0719453, -0.2289914, 1.4052427]])


def lab_to_srgb(lab):
    """Pillow's LAB pixels, uint8 (..., 3): L* * 255/100 and a*, b* as signed bytes ->
    uint8 sRGB by the CIE formulas. Pillow's own LAB -> RGB is off by up to 20 levels
    (sRGB's blue comes back as (22, 7, 252)); this gives (0, 1, 254)."""
    L = lab[..., 0] * (100 / 255)
    a, b = lab[..., 1].view(np.int8), lab[..., 2].view(np.int8)
    fy = (L + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200], -1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * D50
    rgb = np.clip(xyz @ XYZ_D50_TO_SRGB.T, 0, 1)
    rgb = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb ** (1 / 2.4) - 0.055)
    return np.round(rgb * 255).astype(np.uint8)


def normalize(images, mean, std):
    """uint8 (N, H, W, 3) RGB images, a numpy array or a tensor on any device -> float
    (N, 3, H, W) normalised exactly as in training, computed where the images are.

    Training, evaluation and inference all go through this one function: loaders hand
    over uint8 (a quarter of the bytes of float32) and the conversion runs on the device
    as one batched op. The result is an NCHW view of NHWC memory, i.e. channels_last.
    """
    import torch
    x = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images))
    return standardize(x.permute(0, 3, 1, 2).float(), mean, std)


def standardize(x, mean, std):
    """float (N, 3, H, W) pixel values 0..255 -> (x / 255 - mean) / std per channel, as one
    multiply-add. mean/std: sequences, or tensors already on x's device (a host list would
    be copied to the device on every call, and on CUDA that copy waits for the GPU)."""
    import torch
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return torch.addcmul(-mean / std, x, 1 / (255 * std))
