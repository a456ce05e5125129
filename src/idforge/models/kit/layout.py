"""Attention layout of a UNet, read from the module: the index N used by IP-Adapter checkpoints and the widths.

N is the position of a processor in `unet.attn_processors` (diffusers order); cross-attention processors are
the names ending in `attn2.processor`. Widths come from the attention's own Linear layers, never from tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PROCESSOR_SUFFIX = ".processor"


@dataclass(frozen=True)
class AttentionSlot:
    index: int  # N in "N.to_k_ip.weight"
    name: str  # processor name, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    is_cross: bool
    q_in: int  # to_q input width (the layer's hidden width)
    k_in: int  # to_k/to_v input width: hidden for self-attention, the context width for cross-attention
    inner: int  # to_q/to_k/to_v output width (heads * head_dim)
    out_in: int  # to_out[0] input width
    out_out: int  # to_out[0] output width


def attention_slots(unet: torch.nn.Module) -> list[AttentionSlot]:
    """Every attention processor of `unet` with its index and widths."""
    slots = []
    for index, name in enumerate(unet.attn_processors.keys()):
        attn = unet.get_submodule(name[: -len(PROCESSOR_SUFFIX)])
        slots.append(
            AttentionSlot(
                index=index,
                name=name,
                is_cross=name.endswith("attn2" + PROCESSOR_SUFFIX),
                q_in=attn.to_q.in_features,
                k_in=attn.to_k.in_features,
                inner=attn.to_k.out_features,
                out_in=attn.to_out[0].in_features,
                out_out=attn.to_out[0].out_features,
            )
        )
    return slots
