"""Call site for the ONNX face packs (antelopev2, buffalo_l), which another module writes.

`idforge.faces.kitpacks.write_face_packs(dest, seed) -> dict[str, Path]` builds tiny SCRFD/ArcFace ONNX
files with the real signatures. This part only calls it with dest = KIT/insightface/models; while that
module does not exist yet, the kit is built without face packs and a warning says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DEST = "insightface/models"
FACES_MODULES = ("idforge.faces", "idforge.faces.kitpacks")


def write_face_packs(kit_dir: Path, seed: int) -> dict[str, str] | None:
    """Write KIT/insightface/models/{antelopev2,buffalo_l}/ through idforge.faces.kitpacks, when available."""
    try:
        from idforge.faces import kitpacks  # FACE PACKS CALL SITE (module owned by the faces helper)
    except ModuleNotFoundError as exc:
        if exc.name in FACES_MODULES:
            logger.warning("idforge.faces.kitpacks not available: kit built without insightface face packs")
            return None
        raise
    dest = kit_dir / DEST
    written = kitpacks.write_face_packs(dest, seed)
    roles = {}
    for name, path in written.items():
        path = Path(path)
        full = path if path.is_absolute() else dest / path
        roles[name] = full.resolve().relative_to(kit_dir.resolve()).as_posix()
    return roles
