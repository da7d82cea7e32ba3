"""Decoding one image cell into an 8-bit PIL image, whatever it holds (see the package docstring for the
mode and channel policies)."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

DEFAULT_MAX_ASPECT_RATIO = 64.0
"""The most elongated image (long side / short side) loaded by default; beyond it an image counts as unreadable."""


class ImageTooLargeError(ValueError):
    """An image's header declares more pixels, or a more extreme aspect ratio, than the limits allow (a
    decompression bomb, a corrupt header, or a strip no resize can turn into a useful model input)."""


# --- decoding ---------------------------------------------------------------------------------------

def check_image_size(size: tuple[int, int], max_aspect_ratio: float | None = None) -> None:
    """Raise `ImageTooLargeError` if a ``(width, height)`` is beyond PIL's ``Image.MAX_IMAGE_PIXELS`` (PIL itself
    only warns up to twice that) or more elongated than `max_aspect_ratio` (None or 0: no aspect limit)."""
    from PIL import Image

    width, height = (int(v) for v in size)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise ImageTooLargeError(
            f"{width} x {height} = {width * height} pixels is beyond PIL.Image.MAX_IMAGE_PIXELS={limit} (a possible "
            "decompression bomb); raise PIL.Image.MAX_IMAGE_PIXELS if such images are expected")
    if max_aspect_ratio and min(width, height) > 0 and max(width, height) / min(width, height) > max_aspect_ratio:
        ratio = max(width, height) / min(width, height)
        raise ImageTooLargeError(
            f"{width} x {height} pixels: aspect ratio {ratio:.4g}:1 is beyond max_aspect_ratio={max_aspect_ratio:g}; "
            "raise max_aspect_ratio (0 turns the check off) if such images are expected")


def load_image(value: Any, *, max_aspect_ratio: float | None = None):
    """Fully decode one dataset cell into a PIL image.

    Accepts what the ``Image(decode=False)`` feature stores (``{"bytes": ..., "path": ...}``), a path, raw
    bytes, a numpy array or a PIL image. Raises on corrupt or truncated data (the pixels are loaded here), and
    `ImageTooLargeError` for an image beyond the size limits (`check_image_size`), read from the file's header
    before any pixel is decoded.
    """
    from PIL import Image, ImageOps

    if isinstance(value, Image.Image):
        img = value
        check_image_size(img.size, max_aspect_ratio)
        img.load()
    elif isinstance(value, np.ndarray):
        img = Image.fromarray(value)
        check_image_size(img.size, max_aspect_ratio)
    else:
        if value is None:
            raise ValueError("the image cell is empty (None)")
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path is None:
                raise ValueError("the image cell has neither bytes nor a path")
            if data is None and not os.path.exists(path):
                import datasets  # remote/relative paths: let datasets resolve them

                img = datasets.Image(decode=True).decode_example(value)
                check_image_size(img.size, max_aspect_ratio)
                img.load()
                return _exif_upright(img, ImageOps)
            src = io.BytesIO(data) if data is not None else path
        elif isinstance(value, (bytes, bytearray, memoryview)):
            src = io.BytesIO(bytes(value))
        elif isinstance(value, (str, os.PathLike)):
            src = value
        else:
            raise TypeError(f"cannot read an image from a {type(value).__name__}")
        with Image.open(src) as opened:  # reads the header only
            check_image_size(opened.size, max_aspect_ratio)
            opened.load()  # decodes all pixels: raises on truncated/corrupt data
            img = opened
    return _exif_upright(img, ImageOps)


def _exif_upright(img, image_ops):
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # unparsable EXIF is not worth dropping the image for
        return img
    return image_ops.exif_transpose(img) if orientation not in (None, 1) else img


def _scale_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float64), nan=lo, posinf=hi, neginf=lo)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_8bit(img):
    """Convert a PIL image of any mode to 8-bit ``L`` (gray sources) or ``RGB`` (everything else).

    Alpha is composited on white. 16-bit and float data are rescaled to 0..255 (see the module docstring),
    never clipped.
    """
    from PIL import Image

    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        elif mode == "I":  # 32-bit ints: 8-bit values (numpy int arrays), 16-bit ones, or anything else
            amin, amax = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
            lo, hi = (0.0, 255.0) if amin >= 0 and amax <= 255 else (0.0, 65535.0) if amin >= 0 and amax <= 65535 \
                else (float(amin), float(amax))
        else:
            finite = arr[np.isfinite(arr)]
            amin, amax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            if amin >= 0 and amax <= 1:
                lo, hi = 0.0, 1.0
            elif amin >= 0 and amax <= 255:
                lo, hi = 0.0, 255.0
            else:
                lo, hi = amin, amax
        return Image.fromarray(_scale_to_uint8(arr, lo, hi), mode="L")
    if mode == "P":
        if "transparency" not in img.info:
            return img.convert("RGB")
        mode, img = "RGBA", img.convert("RGBA")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        gray = mode in ("LA", "La")
        rgba = img.convert("RGBA")
        out = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return out.convert("L") if gray else out
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ValueError(f"unsupported image mode {mode!r}: {err}") from err


def convert_image(image: Any, num_channels: int):
    """Decode (if needed) and convert an image to what a `num_channels` model is fed, before extra channels.

    Returns an 8-bit PIL image: ``L`` for 1 or 2 channels, ``RGB`` for 3 or more. The channels beyond those
    (2 -> 1 extra, N > 3 -> N - 3 extra) are added as zeros by `ImageTransform`.
    """
    if num_channels < 1:
        raise ValueError(f"num_channels={num_channels}; it must be at least 1.")
    from PIL import Image

    img = to_8bit(image if isinstance(image, Image.Image) else load_image(image))
    target = "L" if num_channels < 3 else "RGB"
    return img if img.mode == target else img.convert(target)


def cell_path(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("path")
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else None


def describe_cell(value: Any, index: int) -> str:
    path = cell_path(value)
    return f"{path} (index {index})" if path else f"index {index}"
