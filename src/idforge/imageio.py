"""Image input: turn paths, bytes, PIL images or arrays into 8-bit RGB PIL images, or fail with one clear line.

Every loader in idforge goes through `load_image` so that bad inputs (missing, empty, not an image, truncated,
too large) raise `InputImageError` naming the input, and unusual modes (grayscale, palette, alpha, 16-bit, CMYK)
are converted instead of crashing deeper in the pipeline. Transparent pixels are composited on **white**
(`ALPHA_BACKGROUND`), the usual choice for photos cut out on a transparent background.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from idforge.errors import InputImageError

ImageSource = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray

DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "IDFORGE_MAX_PIXELS"
ALPHA_BACKGROUND = (255, 255, 255)


def max_pixels_default() -> int:
    """The pixel limit: IDFORGE_MAX_PIXELS when set to a positive integer, else 40 megapixels."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if value:
        try:
            parsed = int(value)
        except ValueError:
            parsed = 0
        if parsed > 0:
            return parsed
    return DEFAULT_MAX_PIXELS


def _source_name(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    if isinstance(source, np.ndarray):
        return "<array>"
    return "<image>"


def _check_size(width: int, height: int, max_pixels: int, name: str) -> None:
    if width <= 0 or height <= 0:
        raise InputImageError(name, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InputImageError(
            name,
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            f"(raise it with max_pixels or {MAX_PIXELS_ENV})",
        )


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map a 16-bit or float plane to 0..255: 16-bit ranges by their type, floats in 0..1 as such, else min-max."""
    values = values.astype(np.float64)
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0 and not np.all(values == np.round(values)):
        scaled = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    else:
        scaled = (values - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha composited on ALPHA_BACKGROUND, 16-bit/float scaled down."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        plane = _scale_to_uint8(np.asarray(img))
        return Image.fromarray(plane, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _from_array(array: np.ndarray, name: str, max_pixels: int) -> Image.Image:
    """Arrays are taken as RGB (H, W, 3), RGBA (H, W, 4) or gray (H, W); any dtype, scaled to 8-bit."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InputImageError(
            name, f"array of shape {tuple(array.shape)} is not an image (H, W), (H, W, 3/4)"
        )
    _check_size(array.shape[1], array.shape[0], max_pixels, name)
    if array.dtype != np.uint8:
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        else:
            array = _scale_to_uint8(array)
    array = np.ascontiguousarray(array)
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.shape[2] == 4:
        return to_rgb(Image.fromarray(array, mode="RGBA"))
    return Image.fromarray(array, mode="RGB")


def _open_bytes(data: bytes, name: str, max_pixels: int) -> Image.Image:
    if len(data) == 0:
        raise InputImageError(name, "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img.width, img.height, max_pixels, name)  # header only: nothing decoded yet
            img.load()  # force a full decode so truncated files fail here
            img = ImageOps.exif_transpose(img)
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(name, f"image is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise InputImageError(name, "not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputImageError(name, f"cannot decode image (truncated or corrupt: {problem})") from None
    return img


def load_image(source: ImageSource, *, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Load `source` as an 8-bit RGB PIL image, respecting EXIF orientation.

    `max_pixels` defaults to IDFORGE_MAX_PIXELS or 40 megapixels; the size is checked from the header before
    any decoding, so a huge image costs nothing to reject.
    """
    label = _source_name(source, name)
    limit = max_pixels if max_pixels is not None else max_pixels_default()
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, limit, label)
        return to_rgb(ImageOps.exif_transpose(source) or source)
    if isinstance(source, np.ndarray):
        return _from_array(source, label, limit)
    if isinstance(source, (bytes, bytearray)):
        return to_rgb(_open_bytes(bytes(source), label, limit))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputImageError(label, "file not found")
        if path.is_dir():
            raise InputImageError(label, "is a folder, not an image file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputImageError(label, f"cannot read file ({exc.strerror or exc})") from None
        return to_rgb(_open_bytes(data, label, limit))
    raise InputImageError(label, f"unsupported image source of type {type(source).__name__}")


def load_mask(
    source: ImageSource, size: tuple[int, int], *, name: str | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Load a mask as float32 0..1 of shape (height, width) for `size` = (width, height).

    The alpha channel is used when the image has one (transparent = 0), otherwise the luminance.
    """
    label = _source_name(source, name)
    limit = max_pixels if max_pixels is not None else max_pixels_default()
    if isinstance(source, np.ndarray):
        array = source.astype(np.float32)
        if array.ndim == 3:
            array = array[:, :, 3] if array.shape[2] == 4 else array.mean(axis=2)
        if array.ndim != 2:
            raise InputImageError(label, f"mask array of shape {tuple(source.shape)} is not 2-D")
        if array.max(initial=0.0) > 1.0:
            array = array / (65535.0 if array.max() > 255.0 else 255.0)
        img = Image.fromarray(np.clip(array, 0.0, 1.0).astype(np.float32), mode="F")
    else:
        if isinstance(source, Image.Image):
            raw = source
        elif isinstance(source, (bytes, bytearray)):
            raw = _open_bytes(bytes(source), label, limit)
        else:
            path = Path(source)
            if not path.is_file():
                raise InputImageError(label, "file not found")
            raw = _open_bytes(path.read_bytes(), label, limit)
        if raw.mode in ("RGBA", "LA", "PA") or (raw.mode == "P" and "transparency" in raw.info):
            plane = np.asarray(raw.convert("RGBA"))[:, :, 3].astype(np.float32) / 255.0
        elif raw.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            plane = _scale_to_uint8(np.asarray(raw)).astype(np.float32) / 255.0
        else:
            plane = np.asarray(raw.convert("L")).astype(np.float32) / 255.0
        img = Image.fromarray(plane, mode="F")
    width, height = int(size[0]), int(size[1])
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def pil_to_bgr(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> contiguous uint8 BGR array (H, W, 3), the layout OpenCV and the ONNX face models use."""
    rgb = np.asarray(to_rgb(img), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def bgr_to_pil(array: np.ndarray) -> Image.Image:
    """uint8 BGR array -> RGB PIL image."""
    return Image.fromarray(np.ascontiguousarray(array[:, :, ::-1]), mode="RGB")
