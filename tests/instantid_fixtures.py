"""Synthetic face images the tiny kit's detector reads as faces (a bright square on a dark background)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw


def square_face(
    path: Path,
    size: tuple[int, int] = (256, 320),
    box: tuple[int, int, int, int] = (78, 100, 178, 200),
    stripes: int = 0,
) -> Path:
    """A dark image with one bright square; `stripes` adds texture so embeddings differ between faces."""
    image = Image.new("RGB", size, (20, 20, 20))
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, fill=(255, 255, 255))
    x1, y1, x2, y2 = box
    for i in range(stripes):
        y = y1 + 8 + i * 10
        if y < y2 - 4:
            draw.line([(x1 + 6, y), (x2 - 6, y)], fill=(232, 232, 232), width=3)
    image.save(path)
    return path
