"""Sample images the tiny kit's face detector reads as faces (a bright square on a dark background).

The kit's detector is random-weight-free by design: it fires on bright squares (see faces/kitpacks.py), so
the demo needs no bundled photos. With real models, use real photos instead.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw


def synthetic_face(
    size: tuple[int, int] = (256, 320),
    box: tuple[int, int, int, int] = (78, 100, 178, 200),
    stripes: int = 3,
    background: tuple[int, int, int] = (20, 20, 20),
) -> Image.Image:
    """A dark canvas with one bright, lightly striped square: one "face" for the kit's detector."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, fill=(255, 255, 255))
    x1, y1, x2, y2 = box
    for i in range(stripes):
        y = y1 + 8 + i * 10
        if y < y2 - 4:
            draw.line([(x1 + 6, y), (x2 - 6, y)], fill=(232, 232, 232), width=3)
    return image


def synthetic_pose(size: tuple[int, int] = (320, 256)) -> Image.Image:
    """A landscape "pose" photo: a face up and to the left, and a lighter body shape for the depth estimator."""
    image = synthetic_face(size=size, box=(40, 30, 120, 110), stripes=0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 120, 150, 250), fill=(90, 90, 90))
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def square_face_png(size: int = 192, box: tuple[int, int, int, int] = (56, 48, 136, 128)) -> bytes:
    """A square `synthetic_face` as PNG bytes (what API requests carry, base64-encoded)."""
    return png_bytes(synthetic_face(size=(size, size), box=box))


def write_samples(out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"face": out_dir / "sample_face.png", "pose": out_dir / "sample_pose.png"}
    synthetic_face().save(paths["face"])
    synthetic_pose().save(paths["pose"])
    return paths
