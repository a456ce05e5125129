"""`idforge faces compare REF IMAGE [...]`: the identity score of any image against a reference, ours or not.

REF is one photo or a folder of photos of the person (their mean normed embedding is the reference); each IMAGE
(or every image in a folder) is scored with the same rule as generation outputs (faces/scoring.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from idforge.errors import InputImageError, ParameterError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def expand_images(items: list[str]) -> list[Path]:
    """Files as given; folders become their image files in name order (an empty folder is an error)."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputImageError(item, "folder holds no images (.png, .jpg, .webp, ...)")
            paths.extend(files)
        else:
            paths.append(path)
    return paths


def run_compare(args: argparse.Namespace, analyzer, pick: str | int) -> int:
    from idforge.faces.scoring import reference_embedding, score_image

    items = args.images[1:]
    if len(items) < 2:
        raise ParameterError(
            "compare", "give a reference and at least one image: faces compare REF IMAGE [...]"
        )
    references = expand_images(items[:1])
    candidates = expand_images(items[1:])
    reference = reference_embedding(
        analyzer,
        [str(p) for p in references],
        [str(p) for p in references],
        pick=pick,
        det_size=args.det_size,
    )
    scores = [
        (path, score_image(analyzer, str(path), reference, det_size=args.det_size)) for path in candidates
    ]
    if args.json:
        payload = {
            "pack": reference.pack,
            "pack_dir": str(analyzer.pack_dir),
            "reference": {"description": reference.description, "images": [str(p) for p in references]},
            "face_choice": "largest",
            "images": [{"image": str(path), **score.to_json()} for path, score in scores],
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(f"reference: {items[0]} ({reference.description}, pack {reference.pack})")
    for path, score in scores:
        if score.score is None:
            print(f"{path}  none  ({score.reason})")
        else:
            print(f"{path}  {score.score:.4f}  (face {score.face_index} of {score.faces_found}, the largest)")
    return 0
