"""Enumerate a UNet's attention layers with the indices identity adapters are keyed by.

Two numberings matter. Checkpoints (`ip-adapter.bin`, FaceID `.bin`) key their per-layer weights by N, the
position of the layer in `list(unet.attn_processors)` (diffusers order; self-attention `attn1`, cross-attention
`attn2`). Weight types (SPEC.md section 3) are keyed by t, ComfyUI's transformer-block index: one number per
attention module (Transformer2DModel), counted over input blocks, then the middle block, then output blocks;
every transformer layer inside one attention module shares its t. Both are derived from the module tree here,
never from a table, so tiny test UNets and real ones get the same treatment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idforge.errors import ModelFormatError

PROCESSOR_SUFFIX = ".processor"

# (input, middle, output) counts of attention modules that identify a family's layout.
FAMILY_LAYOUTS: dict[str, tuple[int, int, int]] = {"sdxl": (4, 1, 6), "sd15": (6, 1, 9)}


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of a UNet (one diffusers `Attention` module)."""

    index: int  # N: position in list(unet.attn_processors)
    name: str  # processor name, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    module_path: str  # the Attention module's path (name without ".processor")
    is_cross: bool  # attn2 (cross-attention) vs attn1 (self-attention)
    hidden: int  # inner width of keys/values (rows of to_k_ip for this layer)
    heads: int
    cross_dim: int  # width of the encoder_hidden_states it reads (columns of to_k)
    block: str  # "input" | "middle" | "output" (ComfyUI naming)
    t: int  # ComfyUI transformer-block index


def _attention_module_order(unet: torch.nn.Module) -> list[tuple[str, str]]:
    """(module path prefix, block kind) of every attention module, in ComfyUI's input/middle/output order."""
    order: list[tuple[str, str]] = []
    for i, block in enumerate(getattr(unet, "down_blocks", [])):
        for j, _ in enumerate(getattr(block, "attentions", None) or []):
            order.append((f"down_blocks.{i}.attentions.{j}.", "input"))
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        for j, _ in enumerate(getattr(mid, "attentions", None) or []):
            order.append((f"mid_block.attentions.{j}.", "middle"))
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        for j, _ in enumerate(getattr(block, "attentions", None) or []):
            order.append((f"up_blocks.{i}.attentions.{j}.", "output"))
    return order


def attention_layers(unet: torch.nn.Module) -> list[AttentionLayer]:
    """All attention layers of `unet` in processor order (index N), each with its transformer-block index t."""
    order = _attention_module_order(unet)
    layers: list[AttentionLayer] = []
    for index, name in enumerate(unet.attn_processors):
        module_path = name[: -len(PROCESSOR_SUFFIX)] if name.endswith(PROCESSOR_SUFFIX) else name
        found = [(t, kind) for t, (prefix, kind) in enumerate(order) if name.startswith(prefix)]
        if not found:
            raise ModelFormatError(f"unet: attention layer '{name}' is not inside a known attention block")
        t, kind = found[0]
        attn = unet.get_submodule(module_path)
        layers.append(
            AttentionLayer(
                index=index,
                name=name,
                module_path=module_path,
                is_cross=module_path.endswith("attn2"),
                hidden=int(attn.to_k.out_features),
                heads=int(attn.heads),
                cross_dim=int(attn.to_k.in_features),
                block=kind,
                t=t,
            )
        )
    return layers


def cross_attention_layers(unet: torch.nn.Module) -> list[AttentionLayer]:
    """The cross-attention layers only: the ones identity adapters add IP attention to."""
    return [layer for layer in attention_layers(unet) if layer.is_cross]


def block_layout(layers: list[AttentionLayer]) -> dict[int, str]:
    """Map t -> "input" | "middle" | "output" for the transformer blocks present in `layers`."""
    return {layer.t: layer.block for layer in layers}


def detect_family(layers: list[AttentionLayer]) -> str | None:
    """ "sdxl" or "sd15" when the attention-module layout matches that family's, else None."""
    layout = block_layout(layers)
    counts = tuple(
        sum(1 for kind in layout.values() if kind == part) for part in ("input", "middle", "output")
    )
    for family, expected in FAMILY_LAYOUTS.items():
        if counts == expected:
            return family
    return None
