"""idforge.imageio: every bad input gives one InputImageError line naming it; odd modes are converted."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from faces_util import antelope, kit_packs, square_image  # noqa: F401
from idforge.errors import InputImageError
from idforge.imageio import ALPHA_BACKGROUND, load_image, load_mask, pil_to_bgr


def _png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_with_header_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims width x height (CRC recomputed), so only the header is large."""
    data = bytearray(_png_bytes(Image.new("RGB", (4, 4))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def _assert_one_line(exc: pytest.ExceptionInfo, name: str, words: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(name)
    assert words in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(InputImageError) as exc:
        load_image(path)
    _assert_one_line(exc, str(path), "file not found")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputImageError) as exc:
        load_image(path)
    _assert_one_line(exc, str(path), "empty")


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, I am not a picture\n")
    with pytest.raises(InputImageError) as exc:
        load_image(path)
    _assert_one_line(exc, str(path), "not an image")


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(InputImageError, match="folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError) as exc:
        load_image(path)
    _assert_one_line(exc, str(path), "truncated or corrupt")


def test_header_over_the_pixel_limit_is_rejected_before_decoding():
    data = _png_with_header_size(8000, 6000)  # 48 MP > 40 MP default, below PIL's own bomb limit
    with pytest.raises(InputImageError) as exc:
        load_image(data, name="big.png")
    _assert_one_line(exc, "big.png", "8000x6000")
    assert "40000000" in str(exc.value)


def test_decompression_bomb_is_an_input_error():
    data = _png_with_header_size(50000, 50000)  # PIL refuses this itself
    with pytest.raises(InputImageError) as exc:
        load_image(data, name="bomb.png", max_pixels=10**10)
    _assert_one_line(exc, "bomb.png", "too large")


def test_pixel_limit_argument_and_env(monkeypatch):
    img = Image.new("RGB", (100, 100))
    with pytest.raises(InputImageError, match="over the limit of 5000"):
        load_image(_png_bytes(img), name="x", max_pixels=5000)
    monkeypatch.setenv("IDFORGE_MAX_PIXELS", "9999")
    with pytest.raises(InputImageError, match="over the limit of 9999"):
        load_image(_png_bytes(img), name="x")
    monkeypatch.setenv("IDFORGE_MAX_PIXELS", "10000")
    assert load_image(_png_bytes(img), name="x").size == (100, 100)


def test_gray_and_palette_become_rgb():
    gray = Image.fromarray(np.full((5, 7), 90, dtype=np.uint8), mode="L")
    out = load_image(_png_bytes(gray))
    assert out.mode == "RGB" and out.size == (7, 5)
    assert np.asarray(out)[0, 0].tolist() == [90, 90, 90]
    palette = Image.new("P", (4, 4))
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert np.asarray(load_image(_png_bytes(palette)))[0, 0].tolist() == [10, 20, 30]


def test_rgba_and_la_are_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = [200, 10, 10, 255]  # opaque red stays
    rgba[1, 1] = [0, 0, 0, 0]  # transparent black becomes the background
    rgba[0, 1] = [0, 0, 0, 128]  # half-transparent black: half way to white
    out = np.asarray(load_image(_png_bytes(Image.fromarray(rgba, mode="RGBA"))))
    assert out[0, 0].tolist() == [200, 10, 10]
    assert out[1, 1].tolist() == list(ALPHA_BACKGROUND)
    assert 120 <= int(out[0, 1, 0]) <= 135
    la = Image.fromarray(np.stack([np.zeros((2, 2)), np.zeros((2, 2))], -1).astype(np.uint8), mode="LA")
    assert np.asarray(load_image(_png_bytes(la)))[0, 0].tolist() == list(ALPHA_BACKGROUND)
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(palette))[0, 0].tolist() == list(ALPHA_BACKGROUND)


def test_sixteen_bit_png_is_scaled_to_8_bit():
    plane = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    img16 = Image.fromarray(plane)  # mode I;16
    assert img16.mode.startswith("I")
    out = np.asarray(load_image(_png_bytes(img16)))
    assert out[:, :, 0].tolist() == [[0, 255], [100, 200]]


def test_int32_and_float_modes(tmp_path):
    ints = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    assert np.asarray(load_image(ints))[0, :, 0].tolist() == [0, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    path = tmp_path / "f.tiff"
    floats.save(path)
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink = white
    buffer = io.BytesIO()
    cmyk.save(buffer, format="JPEG", quality=95)
    out = np.asarray(load_image(buffer.getvalue()))
    assert out.shape == (8, 8, 3)
    assert out.min() >= 250


def test_arrays_of_any_dtype():
    assert load_image(np.full((3, 4), 65535, dtype=np.uint16)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((3, 4, 3), 0.5, dtype=np.float32)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(np.ones((3, 4), dtype=bool)).getpixel((1, 1)) == (255, 255, 255)
    with pytest.raises(InputImageError, match="<array>: array of shape"):
        load_image(np.zeros((3, 4, 5), dtype=np.uint8))


def test_pil_to_bgr_swaps_channels():
    img = Image.fromarray(np.array([[[1, 2, 3]]], dtype=np.uint8))
    bgr = pil_to_bgr(img)
    assert bgr.tolist() == [[[3, 2, 1]]] and bgr.flags["C_CONTIGUOUS"]


def test_load_mask_luminance_alpha_and_resize():
    mask = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8), mode="L")
    out = load_mask(_png_bytes(mask), (2, 2))
    assert out.dtype == np.float32 and out.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 3] = [[255, 0], [0, 255]]
    rgba[..., :3] = 255  # luminance says 1 everywhere: alpha must win
    alpha = load_mask(Image.fromarray(rgba, mode="RGBA"), (2, 2))
    assert alpha.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    big = load_mask(_png_bytes(mask), (8, 6))
    assert big.shape == (6, 8) and 0.0 <= big.min() and big.max() <= 1.0
    assert load_mask(np.array([[0, 255]], dtype=np.uint8), (2, 1)).tolist() == [[0.0, 1.0]]


def test_exif_orientation_is_applied_and_moves_the_detected_face(antelope):  # noqa: F811
    # A white square in the top-left of a 640x320 landscape JPEG, stored with EXIF orientation 6
    # ("rotate 90 degrees clockwise to display"): displayed, the image is 320x640 and the square top-right.
    pixels = square_image(640, 320, [(32, 32, 160, 160, 255)])
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=100, exif=exif.tobytes())
    img = load_image(buffer.getvalue(), name="rotated.jpg")
    assert img.size == (320, 640)
    faces = antelope.analyze(img, det_size=640)
    assert len(faces) == 1
    # rotate 90 clockwise: (x, y) -> (H - 1 - y, x) with H = 320, so the box becomes x 160..288, y 32..160
    np.testing.assert_allclose(faces[0].bbox, [160, 32, 288, 160], atol=2.0)
    raw = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))  # pixels as stored
    unrotated = antelope.analyze(raw, det_size=640)
    np.testing.assert_allclose(unrotated[0].bbox, [32, 32, 160, 160], atol=2.0)
