"""Parameter objects for every generation method, validated on construction.

Ranges and defaults come from the reference nodes (seed 000: Apply InstantID Advanced, seed 001: IPAdapter FaceID
Batch) and from SPEC.md. Validation happens here, before any model is loaded, so a bad request fails fast and costs
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from idforge.errors import check_choice, check_range
from idforge.identity.embeds import INSTANTID_COMBINE_MODES
from idforge.methods.controls import IdentityControls

INSTANTID_COMBINE = INSTANTID_COMBINE_MODES


def _normalise_combine(name: str) -> str:
    """Accept the CLI spelling ("norm-average") for the node's ("norm average")."""
    return name.replace("-", " ").replace("_", " ").strip()


@dataclass
class InstantIDParams(IdentityControls):
    """Every control of ComfyUI's "Apply InstantID Advanced" (seed 000) plus the official demo's extras."""

    PRESET_STRENGTHS = {"ip_weight": "ip_weight", "cn_strength": "cn_strength"}

    # None: the few-step preset's recommendation, else 0.8 (methods/presets.py; the request resolves them)
    ip_weight: float | None = None
    cn_strength: float | None = None
    start_at: float = 0.0
    end_at: float = 1.0
    noise: float = 0.0
    combine_embeds: str = "average"
    enhance_face_region: bool = False
    pick: str | int = "largest"
    det_size: int = 640

    def __post_init__(self) -> None:
        if self.ip_weight is not None:
            check_range("ip_weight", self.ip_weight, 0.0, 3.0)
        if self.cn_strength is not None:
            check_range("cn_strength", self.cn_strength, 0.0, 10.0)
        self.check_controls()
        check_range("noise", self.noise, 0.0, 1.0)
        self.combine_embeds = check_choice(
            "combine_embeds", _normalise_combine(self.combine_embeds), INSTANTID_COMBINE
        )


def resolved(strength: float | None) -> float:
    """A strength once its request is built (unset ones are resolved then, methods/presets.py): never None."""
    if strength is None:
        raise RuntimeError("an identity strength was used before its request resolved it")
    return strength
