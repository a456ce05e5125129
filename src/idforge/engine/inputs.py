"""Input images decoded once, up front, with the names error messages use for them.

Every method decodes and checks all its images before loading any model, so a bad request fails fast and costs
nothing; the decoded image travels on as a `NamedImage` so later steps neither decode again nor lose the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from idforge.imageio import load_image

ImageSource = str | Path | bytes | Image.Image | np.ndarray


@dataclass(frozen=True)
class NamedImage:
    """A decoded input image and the name error messages use for it (its path, or its role)."""

    image: Image.Image
    name: str


# An input image as a request holds it: as given, or already decoded (the requests' decode steps replace each
# source by its NamedImage).
ImageInput = ImageSource | NamedImage


def image_name(source: ImageInput, fallback: str) -> str:
    """A path's text, a NamedImage's name, or `fallback` for in-memory images."""
    if isinstance(source, NamedImage):
        return source.name
    return str(source) if isinstance(source, str | Path) else fallback


def load_named(source: ImageInput, fallback: str) -> NamedImage:
    """Decode (and check) an input image once; a NamedImage passes through."""
    if isinstance(source, NamedImage):
        return source
    name = image_name(source, fallback)
    return NamedImage(load_image(source, name=name), name)
