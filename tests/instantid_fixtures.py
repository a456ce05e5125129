"""Synthetic face images for tests: the demo's samples (a bright square the kit's detector reads as a face)."""

from __future__ import annotations

from pathlib import Path

from idforge.demo.samples import synthetic_face


def square_face(
    path: Path,
    size: tuple[int, int] = (256, 320),
    box: tuple[int, int, int, int] = (78, 100, 178, 200),
    stripes: int = 0,
) -> Path:
    synthetic_face(size=size, box=box, stripes=stripes).save(path)
    return path
