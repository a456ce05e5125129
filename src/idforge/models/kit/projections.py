"""State dicts of the identity projections and IP attention weights, with the published key names.

Resampler (InstantID, FaceID portrait unnorm; `latents` present) and the FaceID Plus perceiver (no `latents`)
share the layer layout `layers.i.0.*` (PerceiverAttention) / `layers.i.1.*` (FeedForward: 0 LayerNorm,
1 Linear up, 3 Linear down). FaceID's MLP is `proj.0` / `proj.2` / `norm`.
"""

from __future__ import annotations

import torch

from .common import bias, linear_weight, norm_weight, randn
from .layout import AttentionSlot

DIM_HEAD = 64
FF_MULT = 4
ID_EMBEDDING_DIM = 512  # ArcFace embedding width
FACEID_MLP_HIDDEN = 1024  # published FaceID MLP hidden width (2 x 512)
LORA_UP_GAIN = 0.2  # published LoRA "up" weights start at zero; small random values make the LoRA matter


def resampler(
    g: torch.Generator,
    dim: int,
    input_dim: int,
    output_dim: int,
    depth: int = 4,
    num_queries: int | None = 16,
) -> dict[str, torch.Tensor]:
    """Resampler / perceiver keys; `num_queries=None` leaves out `latents` (FaceID Plus's perceiver)."""
    heads = dim // DIM_HEAD
    inner = heads * DIM_HEAD
    state: dict[str, torch.Tensor] = {}
    if num_queries is not None:
        state["latents"] = randn((1, num_queries, dim), g, std=dim**-0.5)
    state["proj_in.weight"] = linear_weight(dim, input_dim, g)
    state["proj_in.bias"] = bias(dim, g)
    state["proj_out.weight"] = linear_weight(output_dim, dim, g)
    state["proj_out.bias"] = bias(output_dim, g)
    state["norm_out.weight"] = norm_weight(output_dim, g)
    state["norm_out.bias"] = bias(output_dim, g)
    for i in range(depth):
        p = f"layers.{i}."
        state[p + "0.norm1.weight"] = norm_weight(dim, g)
        state[p + "0.norm1.bias"] = bias(dim, g)
        state[p + "0.norm2.weight"] = norm_weight(dim, g)
        state[p + "0.norm2.bias"] = bias(dim, g)
        state[p + "0.to_q.weight"] = linear_weight(inner, dim, g)
        state[p + "0.to_kv.weight"] = linear_weight(2 * inner, dim, g)
        state[p + "0.to_out.weight"] = linear_weight(dim, inner, g, gain=0.5)
        state[p + "1.0.weight"] = norm_weight(dim, g)
        state[p + "1.0.bias"] = bias(dim, g)
        state[p + "1.1.weight"] = linear_weight(dim * FF_MULT, dim, g)
        state[p + "1.3.weight"] = linear_weight(dim, dim * FF_MULT, g, gain=0.5)
    return state


def faceid_mlp(g: torch.Generator, width: int, tokens: int) -> dict[str, torch.Tensor]:
    """FaceID MLP projection: Linear(512, 1024), GELU, Linear(1024, width*tokens), LayerNorm(width)."""
    return {
        "proj.0.weight": linear_weight(FACEID_MLP_HIDDEN, ID_EMBEDDING_DIM, g),
        "proj.0.bias": bias(FACEID_MLP_HIDDEN, g),
        "proj.2.weight": linear_weight(width * tokens, FACEID_MLP_HIDDEN, g),
        "proj.2.bias": bias(width * tokens, g),
        "norm.weight": norm_weight(width, g),
        "norm.bias": bias(width, g),
    }


def faceid_plus(g: torch.Generator, width: int, tokens: int, clip_width: int) -> dict[str, torch.Tensor]:
    """FaceID Plus projection: the MLP plus `perceiver_resampler.*` reading CLIP hidden states of `clip_width`."""
    state = faceid_mlp(g, width, tokens)
    perceiver = resampler(g, dim=width, input_dim=clip_width, output_dim=width, num_queries=None)
    state.update({f"perceiver_resampler.{k}": v for k, v in perceiver.items()})
    return state


def _lora(g: torch.Generator, name: str, in_width: int, out_width: int, rank: int) -> dict[str, torch.Tensor]:
    return {
        f"{name}.down.weight": linear_weight(rank, in_width, g),
        f"{name}.up.weight": linear_weight(out_width, rank, g, gain=LORA_UP_GAIN),
    }


def ip_attention(
    g: torch.Generator, slots: list[AttentionSlot], token_width: int, lora_rank: int | None = None
) -> dict[str, torch.Tensor]:
    """`N.to_k_ip/to_v_ip.weight` (inner_N, token_width) for cross-attention slots; with `lora_rank`, also the
    FaceID LoRA `N.to_{q,k,v,out}_lora.{down,up}.weight` for every slot, in the published key order."""
    state: dict[str, torch.Tensor] = {}
    for slot in slots:
        n = slot.index
        if lora_rank is not None:
            state.update(_lora(g, f"{n}.to_q_lora", slot.q_in, slot.inner, lora_rank))
            state.update(_lora(g, f"{n}.to_k_lora", slot.k_in, slot.inner, lora_rank))
            state.update(_lora(g, f"{n}.to_v_lora", slot.k_in, slot.inner, lora_rank))
            state.update(_lora(g, f"{n}.to_out_lora", slot.out_in, slot.out_out, lora_rank))
        if slot.is_cross:
            state[f"{n}.to_k_ip.weight"] = linear_weight(slot.inner, token_width, g)
            state[f"{n}.to_v_ip.weight"] = linear_weight(slot.inner, token_width, g)
    return state
