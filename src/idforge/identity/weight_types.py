"""Per-block IP weights ("weight types") as ComfyUI_IPAdapter_plus names them (SPEC.md section 3).

A weight type turns one user weight w into a weight per transformer block t (see `layers.py` for t), plus a
flag that swaps the conditional and unconditional IP tokens on that block. Blocks absent from the result get
no IP attention at all. L is the number of transformer blocks: 11 for SDXL, 16 for SD1.5.

Decisions of ours (SPEC.md gives SDXL only for the two "precise" types): on SD1.5 the style blocks are
t in 0-3 and 9-15 and the composition blocks are {4: 0.25, 5: 1}, and the precise types keep the SDXL shape:
- style transfer precise: style blocks at w, composition blocks at their composition weight, swapped;
- composition precise: composition blocks unswapped, style blocks at w swapped, every other block at 0.1w
  swapped.
On a UNet whose layout is neither SDXL's nor SD1.5's, the formula types (linear, ease, weak/strong) work from
the UNet's own block list; the style/composition types raise a ParameterError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from idforge.errors import ParameterError
from idforge.identity.layers import AttentionLayer, block_layout, detect_family

WeightType = Literal[
    "linear",
    "ease in",
    "ease out",
    "ease in-out",
    "reverse in-out",
    "weak input",
    "weak output",
    "weak middle",
    "strong middle",
    "style transfer",
    "composition",
    "strong style transfer",
    "style and composition",
    "style transfer precise",
    "composition precise",
]
WEIGHT_TYPES: tuple[str, ...] = get_args(WeightType)  # the node's 15 names, one source of truth

# t -> block part for the two known families (input blocks, middle, output blocks).
FAMILY_BLOCKS: dict[str, dict[int, str]] = {
    "sdxl": {t: ("input" if t < 4 else "middle" if t == 4 else "output") for t in range(11)},
    "sd15": {t: ("input" if t < 6 else "middle" if t == 6 else "output") for t in range(16)},
}

# Relative weights of the style and the composition blocks per family.
STYLE_BLOCKS: dict[str, dict[int, float]] = {
    "sdxl": {6: 1.0},
    "sd15": {t: 1.0 for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)},
}
COMPOSITION_BLOCKS: dict[str, dict[int, float]] = {
    "sdxl": {3: 1.0},
    "sd15": {4: 0.25, 5: 1.0},
}

LayerWeights = dict[int, tuple[float, bool]]


def _resolve_layout(family_or_layers: str | Sequence[AttentionLayer]) -> tuple[str | None, dict[int, str]]:
    """(family or None, t -> block part) from a family name or a UNet's attention layers."""
    if isinstance(family_or_layers, str):
        if family_or_layers not in FAMILY_BLOCKS:
            listed = ", ".join(repr(name) for name in FAMILY_BLOCKS)
            raise ParameterError("family", f"{family_or_layers!r} is not one of {listed}")
        return family_or_layers, dict(FAMILY_BLOCKS[family_or_layers])
    layers = list(family_or_layers)
    if not layers:
        raise ParameterError("layers", "the UNet has no attention layers")
    return detect_family(layers), block_layout(layers)


def _formula(weight_type: str, weight: float, t: int, count: int, part: str) -> float:
    """Weight of block t for the formula types (all blocks get some weight)."""
    half = count / 2
    if weight_type == "linear":
        return weight
    if weight_type == "ease in":
        return weight * (0.05 + 0.95 * (1 - t / count))
    if weight_type == "ease out":
        return weight * (0.05 + 0.95 * (t / count))
    if weight_type == "ease in-out":
        return weight * (0.05 + 0.95 * (1 - abs(t - half) / half))
    if weight_type == "reverse in-out":
        return weight * (0.05 + 0.95 * (abs(t - half) / half))
    if weight_type == "weak input":
        return weight * 0.2 if part == "input" else weight
    if weight_type == "weak middle":
        return weight * 0.2 if part == "middle" else weight
    if weight_type == "weak output":
        return weight * 0.2 if part == "output" else weight
    if weight_type == "strong middle":
        return weight * 0.2 if part in ("input", "output") else weight
    raise AssertionError(weight_type)


def _style_composition(weight_type: str, weight: float, family: str, all_t: list[int]) -> LayerWeights:
    """Weights of the style/composition types for a known family."""
    style = STYLE_BLOCKS[family]
    composition = COMPOSITION_BLOCKS[family]
    if weight_type == "style transfer":
        return {t: (weight * r, False) for t, r in style.items()}
    if weight_type == "composition":
        return {t: (weight * r, False) for t, r in composition.items()}
    if weight_type == "strong style transfer":
        return {t: (weight, False) for t in all_t if t not in composition}
    if weight_type == "style and composition":
        out = {t: (weight * r, False) for t, r in style.items()}
        out.update({t: (weight * r, False) for t, r in composition.items()})
        return out
    if weight_type == "style transfer precise":
        out = {t: (weight * r, False) for t, r in style.items()}
        out.update({t: (weight * r, True) for t, r in composition.items()})
        return out
    if weight_type == "composition precise":
        out = {t: (weight * 0.1, True) for t in all_t}
        out.update({t: (weight * r, True) for t, r in style.items()})
        out.update({t: (weight * r, False) for t, r in composition.items()})
        return out
    raise AssertionError(weight_type)


def layer_weights(
    weight_type: str, weight: float, family_or_layers: str | Sequence[AttentionLayer]
) -> LayerWeights:
    """Map transformer-block index t -> (weight, swap cond/uncond) for a weight type.

    `family_or_layers` is "sdxl", "sd15", or the UNet's `attention_layers(...)` (the family is then detected
    from the block layout). Blocks missing from the result get no IP attention.
    """
    if weight_type not in WEIGHT_TYPES:
        listed = ", ".join(repr(name) for name in WEIGHT_TYPES)
        raise ParameterError("weight_type", f"{weight_type!r} is not one of {listed}")
    family, layout = _resolve_layout(family_or_layers)
    all_t = sorted(layout)
    if WEIGHT_TYPES.index(weight_type) < WEIGHT_TYPES.index("style transfer"):
        count = len(all_t)
        return {t: (_formula(weight_type, float(weight), t, count, layout[t]), False) for t in all_t}
    if family is None:
        raise ParameterError(
            "weight_type",
            f"{weight_type!r} is defined only for SDXL and SD1.5 UNets (this UNet's layout is neither)",
        )
    return _style_composition(weight_type, float(weight), family, all_t)
