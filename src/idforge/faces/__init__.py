"""Face analysis on onnxruntime with insightface-format model packs: detect, pick, align, embed, draw.

Public entry points: `FaceAnalyzer` (analysis.py), `load_pack` (pack.py), `norm_crop`/`estimate_norm`
(align.py), `draw_kps`/`draw_faces` (draw.py), `write_face_packs` (kitpacks.py, tiny test packs).
"""

from idforge.faces.align import estimate_norm, norm_crop
from idforge.faces.analysis import Face, FaceAnalyzer, pick_index
from idforge.faces.draw import draw_faces, draw_kps
from idforge.faces.pack import load_pack, resolve_providers

__all__ = [
    "Face",
    "FaceAnalyzer",
    "draw_faces",
    "draw_kps",
    "estimate_norm",
    "load_pack",
    "norm_crop",
    "pick_index",
    "resolve_providers",
]
