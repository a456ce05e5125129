"""The CLIP vision encoder FaceID plus / plusv2 read the face crop with: a transformers folder or ComfyUI's file.

ComfyUI keeps the encoder as one file (`clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`, the weights of
h94/IP-Adapter's `models/image_encoder` in transformers key names) with no config beside it. The config is then
rebuilt from the tensor shapes; the two things shapes cannot say (attention heads, activation) come from the
published ViT family with that width, else from a transformers config of the same width in a sibling folder
(the tiny kit keeps one there). OpenCLIP-format files (`visual.transformer...`) are refused with a message.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from idforge.errors import ModelFormatError

if TYPE_CHECKING:
    from transformers import CLIPVisionModelWithProjection

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PREFIX = "vision_model."

# hidden width -> (heads, activation) of the published CLIP ViTs (H/14 laion, L/14 OpenAI, bigG/14, B).
KNOWN_WIDTHS: dict[int, tuple[int, str]] = {
    1280: (16, "gelu"),
    1664: (16, "gelu"),
    1024: (16, "quick_gelu"),
    768: (12, "quick_gelu"),
}


def _sibling_config(path: Path, hidden: int, layers: int) -> dict | None:
    """A transformers CLIP vision config.json of the same width and depth next to a single file."""
    for candidate in sorted(path.parent.glob("*/config.json")):
        try:
            config = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        config = config.get("vision_config", config)
        if config.get("hidden_size") == hidden and config.get("num_hidden_layers") == layers:
            return config
    return None


def config_from_state_dict(path: Path, state: dict[str, torch.Tensor]):
    """A CLIPVisionConfig for a transformers-keyed single file, sizes read from its tensors."""
    from transformers import CLIPVisionConfig

    patch = state[f"{PREFIX}embeddings.patch_embedding.weight"]
    hidden, patch_size = patch.shape[0], patch.shape[-1]
    positions = state[f"{PREFIX}embeddings.position_embedding.weight"].shape[0]
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(rf"{PREFIX}encoder\.layers\.(\d+)\.", k))}
    layers = len(layer_ids)
    intermediate = state[f"{PREFIX}encoder.layers.0.mlp.fc1.weight"].shape[0]
    projection = state.get("visual_projection.weight")
    if hidden in KNOWN_WIDTHS:
        heads, act = KNOWN_WIDTHS[hidden]
    else:
        sibling = _sibling_config(path, hidden, layers)
        if sibling is None:
            raise ModelFormatError(
                f"{path}: CLIP vision width {hidden} is not a published one and no config.json of that width "
                "is beside it; use the transformers folder instead"
            )
        heads, act = sibling["num_attention_heads"], sibling.get("hidden_act", "gelu")
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=patch_size * math.isqrt(positions - 1),
        patch_size=patch_size,
        projection_dim=projection.shape[0] if projection is not None else hidden,
        hidden_act=act,
        layer_norm_eps=1e-5,
    )


def default_processor(image_size: int = 224):
    """CLIP preprocessing (short side to 224, centre crop, CLIP mean/std), as the published encoders use."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        resample=3,
    )


def load_clip_vision(path: str | Path, device: torch.device, dtype: torch.dtype):
    """(CLIPVisionModelWithProjection, CLIPImageProcessor) from a transformers folder or a single file."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelFormatError(f"{path}: not a transformers CLIP vision folder (no config.json)")
        model = CLIPVisionModelWithProjection.from_pretrained(path, dtype=torch.float32)
        processor = (
            CLIPImageProcessor.from_pretrained(path)
            if (path / "preprocessor_config.json").is_file()
            else default_processor(_image_size(model, path))
        )
        # transformers wraps Module.to in functools.wraps(torch.nn.Module.to): mypy types the call as unbound.
        return model.to(device=device, dtype=dtype).eval(), processor  # type: ignore[call-arg]

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or f"{PREFIX}embeddings.patch_embedding.weight" not in state:
        keys = ", ".join(sorted(state)[:3]) if isinstance(state, dict) else type(state).__name__
        raise ModelFormatError(
            f"{path}: not a CLIP vision model in transformers key names (found e.g. {keys}); OpenCLIP files "
            "need converting, or use h94/IP-Adapter's models/image_encoder"
        )
    model = CLIPVisionModelWithProjection(config_from_state_dict(path, state))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelFormatError(
            f"{path}: CLIP vision weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    processor = default_processor(_image_size(model, path))
    # transformers wraps Module.to in functools.wraps(torch.nn.Module.to): mypy types the call as unbound.
    return model.to(device=device, dtype=dtype).eval(), processor  # type: ignore[call-arg]


def _image_size(model: CLIPVisionModelWithProjection, path: Path) -> int:
    """The encoder's square input side (transformers types `image_size` loosely: int, pair or None)."""
    size = model.config.image_size
    if not isinstance(size, int):
        raise ModelFormatError(f"{path}: CLIP vision config has image_size {size!r}, expected one number")
    return size
