"""Depth maps for the depth ControlNet: any transformers depth-estimation model folder.

Recipe (diffusers' SDXL depth ControlNet cards and the InstantID multi-ControlNet demo): run the estimator on the
pose image, resize the predicted depth bicubically to the output size, min-max normalise each image to 0..1,
repeat it to 3 channels and store it as an 8-bit image (the ControlNet sees that image, as in the references).
Presets: Depth Anything V2 Small and DPT hybrid MiDaS; any folder with a depth-estimation config works.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from idforge.errors import POSE, InputImageError, ModelFormatError


def normalise_depth(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) predicted depth -> (B, 3, H, W) in [0, 1] at `size` = (W, H): bicubic, then per-image min-max.

    A flat depth gives zeros rather than a division by zero; "flat" includes the rounding noise bicubic
    resampling leaves on a constant (a span below 1e-5 of the magnitude), which min-max would blow up to 0..1.
    """
    width, height = size
    resized = F.interpolate(depth[:, None].float(), size=(height, width), mode="bicubic", align_corners=False)
    low = torch.amin(resized, dim=(1, 2, 3), keepdim=True)
    high = torch.amax(resized, dim=(1, 2, 3), keepdim=True)
    span = high - low
    varied = span > 1e-5 * torch.maximum(low.abs(), high.abs())
    scaled = torch.where(varied, (resized - low) / torch.where(varied, span, 1.0), 0.0)
    return scaled.repeat(1, 3, 1, 1)


def depth_to_image(depth: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB PIL, truncating to uint8 as the reference demo does."""
    array = depth.permute(1, 2, 0).cpu().numpy() * 255.0
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


def _check_folder(folder: Path) -> None:
    """Fail early, in one line, for anything that is not a transformers depth-estimation folder."""
    if not folder.is_dir():
        raise ModelFormatError(
            f"depth estimator {folder}: not a folder (expected a transformers depth model folder with config.json)"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFormatError(
            f"depth estimator {folder}: no config.json; not a transformers depth model folder"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"depth estimator {folder}: config.json is unreadable ({exc})") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES

    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES:
        raise ModelFormatError(
            f"depth estimator {folder}: model_type {model_type!r} is not a transformers depth-estimation model "
            f"(known: {', '.join(sorted(MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES))})"
        )
    if not (folder / "preprocessor_config.json").is_file():
        raise ModelFormatError(f"depth estimator {folder}: no preprocessor_config.json next to config.json")


class DepthEstimator:
    """A loaded depth model and its image processor (AutoModelForDepthEstimation + AutoImageProcessor)."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.folder = Path(folder)
        _check_folder(self.folder)
        self.device = torch.device(device)
        try:
            self.processor = AutoImageProcessor.from_pretrained(self.folder, local_files_only=True)
            model = AutoModelForDepthEstimation.from_pretrained(
                self.folder, local_files_only=True, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise ModelFormatError(f"depth estimator {self.folder}: cannot load ({reason})") from None
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def predict(self, image: Image.Image, name: str = POSE) -> torch.Tensor:
        """The raw predicted depth (1, h, w) at the model's own resolution (float32)."""
        try:
            inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        except ValueError as exc:  # e.g. a 2x3000 strip resizes to a zero side: the input's fault, not a bug
            reason = " ".join(str(exc).split())[:160]
            raise InputImageError(
                name, f"{image.width}x{image.height} cannot go through the depth estimator ({reason})"
            ) from None
        pixels = inputs["pixel_values"].to(self.device, torch.float32)
        return self.model(pixel_values=pixels).predicted_depth.float()

    def estimate(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The depth map of `image` as a 3-channel 8-bit image of `size` = (W, H), normalised to 0..255."""
        return depth_to_image(normalise_depth(self.predict(image), size)[0])


def engine_depth_estimator(engine, spec: str | None = None) -> DepthEstimator:
    """The engine's depth estimator for `spec` (path, preset or hub id; None: the engine's choice, else the
    Depth Anything V2 Small preset), loaded once and kept with the engine's other models."""
    spec = spec if spec is not None else engine.models.depth_estimator
    if spec is None:
        resolved = engine.store.default("depth_estimator", "depth-anything-v2-small")
    else:
        resolved = engine.store.resolve("depth_estimator", spec)
    path = Path(resolved.path)
    return engine.cached("depth_estimator", str(path), lambda: DepthEstimator(path, engine.device))
