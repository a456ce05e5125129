"""Generation results and their recipes: every image carries what is needed to reproduce it.

The recipe is stored as JSON in the PNG text chunk `idforge`, and a one-line A1111-style summary in
`parameters` (which many image viewers and tools already show).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

RECIPE_KEY = "idforge"


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    recipe: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. kps_image, depth_map, face_images
    warnings: list[str] = field(default_factory=list)
    latents: Any = None  # final latents (CPU tensor) before VAE decoding: for parity checks and re-decoding
    identity: Any = (
        None  # faces.scoring.IdentityReport: the face-match score of every image (None: not scored)
    )

    @property
    def scores(self) -> list[float | None]:
        """Identity score per image (None where no face was found, or when scoring was off)."""
        if self.identity is None:
            return [None] * len(self.images)
        return self.identity.scores

    def image_recipe(self, index: int) -> dict[str, Any]:
        """The recipe of image `index` alone: its own seed and num_images = 1 regenerate it."""
        recipe = json.loads(json.dumps(self.recipe))
        recipe["seed"] = self.seeds[index]
        recipe["seeds"] = [self.seeds[index]]
        recipe["batch_seed"] = self.seeds[0]
        recipe["batch_index"] = index
        recipe["batch_size"] = len(self.images)  # reproduce.py regenerates the whole batch: bit for bit
        recipe.setdefault("params", {})["seed"] = self.seeds[index]
        recipe["params"]["num_images"] = 1
        identity = recipe.get("identity")
        if identity and len(identity.get("images", [])) == len(self.images):
            identity["images"] = [identity["images"][index]]  # this image's own score
            for person in identity.get("persons", []):  # several people: each person's score in this image
                person["images"] = [person["images"][index]]
        return recipe

    def save(self, path: str | Path) -> list[Path]:
        """Write the images as PNG with their recipes; several images become NAME_0.png, NAME_1.png, ..."""
        path = Path(path)
        if path.suffix == "" or path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            targets = [
                path / f"{self.recipe.get('method', 'image')}_{i:03d}.png" for i in range(len(self.images))
            ]
        elif len(self.images) == 1:
            targets = [path]
        else:
            targets = [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(len(self.images))]
        written = []
        for index, (image, target) in enumerate(zip(self.images, targets, strict=True)):
            target.parent.mkdir(parents=True, exist_ok=True)
            save_png_with_recipe(image, target, self.image_recipe(index))
            written.append(target)
        return written


def summary_line(recipe: dict[str, Any]) -> str:
    params = recipe.get("params", {})
    parts = [
        params.get("prompt", ""),
        f"Negative prompt: {params.get('negative_prompt', '')}",
        f"Steps: {params.get('steps')}, Sampler: {params.get('scheduler')}, CFG scale: {params.get('guidance')}, "
        f"Seed: {recipe.get('seed')}, Size: {recipe.get('width')}x{recipe.get('height')}, "
        f"Method: {recipe.get('method')}, idforge: {recipe.get('idforge_version')}",
    ]
    return "\n".join(parts)


def save_png_with_recipe(image: Image.Image, path: str | Path, recipe: dict[str, Any]) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True, default=str))
    info.add_text("parameters", summary_line(recipe))
    image.save(path, format="PNG", pnginfo=info)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe stored in an idforge PNG."""
    with Image.open(path) as image:
        text = image.info.get(RECIPE_KEY)
    if text is None:
        raise ValueError(f"{path}: no idforge recipe in this image")
    return json.loads(text)
