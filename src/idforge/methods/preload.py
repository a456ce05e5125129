"""Serve the full-size networks (models/fullsize.py) through an Engine in place of a models folder's files.

It knows where each method looks for its default models, so it lives with the methods, above the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from idforge.engine.base import BaseModel
from idforge.identity.checkpoint import adapter_from_state
from idforge.identity.projection import build_projection
from idforge.methods.insta_depth.generate import depth_controlnet_path
from idforge.methods.instantid.core import instantid_paths
from idforge.models.fullsize import FullModels

FACEID_PRESET = "faceid-sdxl"


def preload_engine(engine: Any, full: FullModels, depth_size: str = "mid") -> dict[str, str]:
    """Make `engine` serve the full-size networks wherever it would load the default models of its models
    folder (a tiny kit gives the paths and the face packs): the methods then run end to end, unchanged, on the
    real architectures. Returns {role: path the network stands in for}."""

    def projection_of(adapter):
        return build_projection(adapter).to(device=engine.device, dtype=torch.float32).eval()

    base_path = Path(engine.store.default("base", "sdxl-base").path)
    base = BaseModel(pipe=full.pipeline(), family="sdxl", source=str(base_path))
    engine.cached("base", str(base_path), lambda: base)
    stands_in = {"base": str(base_path)}
    if full.identitynet is not None and full.instantid_adapter is not None:
        identitynet_path, adapter_path = instantid_paths(engine, None)
        engine.cached("controlnet", f"{identitynet_path}|{base.source}", lambda: full.identitynet)
        adapter = adapter_from_state(full.instantid_adapter, "full-size InstantID ip-adapter (random)")
        engine.cached("adapter", str(adapter_path), lambda: adapter)
        engine.cached("projection", str(adapter_path), lambda: projection_of(adapter))
        stands_in |= {"identitynet": str(identitynet_path), "instantid_adapter": str(adapter_path)}
    if depth_size in full.depth:
        depth_path = depth_controlnet_path(engine, None)
        engine.cached("controlnet", f"{depth_path}|{base.source}", lambda: full.depth[depth_size])
        stands_in["depth_controlnet"] = str(depth_path)
    if full.faceid_adapter is not None:
        faceid_path = Path(engine.store.resolve("ipadapter", FACEID_PRESET).path)
        faceid = adapter_from_state(full.faceid_adapter, "full-size ip-adapter-faceid_sdxl (random)")
        engine.cached("adapter", str(faceid_path), lambda: faceid)
        engine.cached("projection", str(faceid_path), lambda: projection_of(faceid))
        stands_in["faceid_adapter"] = str(faceid_path)
    if full.pulid is not None:
        from idforge.identity.eva_clip import EvaVisionTower
        from idforge.identity.face_parser import BiSeNet

        parts = full.pulid
        pulid_path = Path(engine.store.resolve("pulid", "pulid-v1.1").path)
        eva_path = Path(engine.store.resolve("eva_clip", None).path)
        parser_path = Path(engine.store.resolve("face_parser", None).path)
        engine.cached("pulid", str(pulid_path), lambda: parts["checkpoint"])
        engine.cached("pulid_encoder", str(pulid_path), lambda: parts["encoder"].to(engine.device))
        engine.cached(
            "eva_clip", str(eva_path), lambda: EvaVisionTower(parts["eva"]).eval().to(engine.device)
        )
        engine.cached(
            "face_parser", str(parser_path), lambda: BiSeNet(parts["parser"]).eval().to(engine.device)
        )
        stands_in |= {"pulid": str(pulid_path), "eva_clip": str(eva_path), "face_parser": str(parser_path)}
    return stands_in
