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
import numpy as np
from PIL import Image, ImageOps


def load_image(image, size=32):
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
        image = Image.fromarray(image).convert("RGB")
    elif isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image).convert("RGB")
    else:
        with Image.open(image) as f:  # OSError for unreadable or non-image files
            f.draft("RGB", (size, size))  # a no-op for every format but JPEG
            image = ImageOps.exif_transpose(f).convert("RGB")
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.array(image.resize((size, size), Image.BICUBIC, box=box), dtype=np.uint8)  # writable


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
