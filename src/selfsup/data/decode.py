"""Decode any image file into an RGB uint8 array of a fixed square size.

Every PIL mode is mapped to RGB explicitly: palette and alpha images are composited on white,
16-bit and 32-bit integer images are scaled (not clipped) to 8 bits, CMYK is converted, EXIF
orientation is applied and animated files contribute their first frame.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # GIF: 1st frame
DECODER_VERSION = 1  # bump when decoding changes: caches built by older versions are rebuilt


class UnreadableImage(Exception):
    """The bytes are not a decodable image (truncated, empty, not an image, too large)."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        hi = float(np.nanmax(arr)) if arr.size else 1.0
        arr = arr * 255.0 if hi <= 1.0 else arr
    else:  # I, I;16, I;16B, I;16L ...: treat as 16-bit data
        arr = arr.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an opened PIL image of any mode to RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("F", "I") or img.mode.startswith("I;16"):
        return _high_bit_depth_to_l(img).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "RGBa", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_image(data: bytes, size: int) -> np.ndarray:
    """bytes -> [size, size, 3] uint8: shorter side resized to ``size`` then centre-cropped."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when much larger
            img = ImageOps.exif_transpose(img)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(f"image too large (decompression bomb guard): {e}") from None
    except Exception as e:  # PIL raises many types for corrupt data
        raise UnreadableImage(f"{type(e).__name__}: {e}") from None
    if img.width < 1 or img.height < 1:
        raise UnreadableImage("image has no pixels")
    img = to_rgb(img)
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).copy()
