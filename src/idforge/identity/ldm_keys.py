"""Key names of the original (LDM / "single file") Stable Diffusion checkpoint layout, from diffusers names.

ComfyUI and A1111 users keep SDXL and SD1.5 as one `.safetensors` in the layout of the original training code
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*` / `conditioner.embedders.*`). This module
maps diffusers parameter names to that layout; it is used to write single files (the tiny kit, conversions) and to
name LoRA modules the kohya/A1111 way. Loading goes through diffusers' own converter, so a round trip checks both.
"""

from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet_rest(rest: str, table: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{table.get(head, head)}.{tail}" if tail else table.get(head, head)


def unet_name_to_ldm(name: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """Map a diffusers UNet2DConditionModel parameter or module name to its LDM name (without prefix).

    `layers_per_block` is the diffusers config value; LDM numbers its input blocks as one flat list of
    (resnet [+ transformer]) layers plus one downsampler per level, and output blocks as layers_per_block + 1
    layers per level with the upsampler appended to the last one (after the transformer when there is one).
    """
    n = layers_per_block
    simple = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for diffusers_name, ldm_name in simple.items():
        if name == diffusers_name or name.startswith(diffusers_name + "."):
            return ldm_name + name[len(diffusers_name) :]

    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.?(.*)$", name)
    if m:
        i, j = int(m[2]), int(m[4])
        block = (
            f"input_blocks.{1 + i * (n + 1) + j}" if m[1] == "down" else f"output_blocks.{i * (n + 1) + j}"
        )
        return _unet_layer(block, m[3], m[5])
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.?(.*)$", name)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}".rstrip(".")

    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.?(.*)$", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet_rest(rest, _UNET_RESNET)}".rstrip(".")
        return f"middle_block.1.{rest}".rstrip(".")

    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.?(.*)$", name)
    if m:
        i = int(m[1])
        slot = 2 if i in up_blocks_with_attention else 1
        return f"output_blocks.{i * (n + 1) + n}.{slot}.conv.{m[2]}".rstrip(".")
    raise KeyError(f"no LDM name for UNet parameter {name!r}")


def _unet_layer(block: str, kind: str, rest: str) -> str:
    """An LDM input or output block holds one layer: its resnet in slot 0, its transformer (if any) in slot 1."""
    if kind == "resnets":
        return f"{block}.0.{_resnet_rest(rest, _UNET_RESNET)}".rstrip(".")
    return f"{block}.1.{rest}".rstrip(".")


def up_blocks_with_attention(names: list[str] | set[str]) -> set[int]:
    """Indices of diffusers up_blocks that hold transformers (their upsampler sits one slot later in LDM)."""
    found = set()
    for name in names:
        m = re.match(r"up_blocks\.(\d+)\.attentions\.", name)
        if m:
            found.add(int(m[1]))
    return found


def unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict in the LDM layout, prefixed `model.diffusion_model.`."""
    with_attention = up_blocks_with_attention(list(state))
    return {UNET_PREFIX + unet_name_to_ldm(k, layers_per_block, with_attention): v for k, v in state.items()}


def vae_name_to_ldm(name: str, num_up_blocks: int) -> str:
    """Map a diffusers AutoencoderKL parameter name to its LDM name (without prefix)."""
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)$", name)
    if m:
        rest = _resnet_rest(m[3], _VAE_RESNET)
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{rest}"
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)$", name)
    if m:
        rest = m[2]
        for diffusers_part, ldm_part in _VAE_ATTENTION.items():
            if rest.startswith(diffusers_part + "."):
                rest = ldm_part + rest[len(diffusers_part) :]
                break
        return f"{m[1]}.mid.attn_1.{rest}"
    m = re.match(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", name)
    if m:
        return f"{_vae_level(m[1], m[2], num_up_blocks)}.block.{m[3]}.{_resnet_rest(m[4], _VAE_RESNET)}"
    m = re.match(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv\.(.*)$", name)
    if m and m[1].endswith(m[3]):  # encoder levels downsample, decoder levels upsample
        return f"{_vae_level(m[1], m[2], num_up_blocks)}.{m[3]}sample.conv.{m[4]}"
    m = re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)$", name)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    if re.match(
        r"(encoder\.conv_in|encoder\.conv_out|decoder\.conv_in|decoder\.conv_out|quant_conv|post_quant_conv)\.",
        name,
    ):
        return name
    raise KeyError(f"no LDM name for VAE parameter {name!r}")


def _vae_level(side: str, index: str, num_up_blocks: int) -> str:
    """A VAE level's LDM name: the encoder's levels count as in diffusers, the decoder's from the other end."""
    level = int(index) if side == "encoder.down" else num_up_blocks - 1 - int(index)
    return f"{side}.{level}"


def vae_to_ldm(state: dict[str, torch.Tensor], num_up_blocks: int) -> dict[str, torch.Tensor]:
    """A diffusers VAE state dict in the LDM layout; mid-block attention projections become 1x1 convolutions."""
    out = {}
    for k, v in state.items():
        name = vae_name_to_ldm(k, num_up_blocks)
        if ".mid.attn_1." in name and name.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]
        out[VAE_PREFIX + name] = v
    return out


def _with_text_model(key: str) -> str:
    """transformers >= 5.6 drops the `text_model.` level from CLIPTextModel's state dict; LDM files keep it."""
    if key.startswith("text_model.") or key.startswith("text_projection"):
        return key
    return "text_model." + key


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel state dict under an LDM prefix (the HF names are kept, as the originals do)."""
    return {prefix + _with_text_model(k): v for k, v in state.items() if not k.endswith("position_ids")}


def openclip_to_ldm(
    state: dict[str, torch.Tensor], prefix: str = SDXL_CLIP_G_PREFIX
) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection state dict in OpenCLIP's layout (SDXL's second text encoder).

    OpenCLIP keeps q, k, v as one `in_proj` matrix and applies `x @ text_projection`, so the projection is the
    transpose of the transformers Linear weight.
    """
    state = {_with_text_model(k): v for k, v in state.items() if not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {
        prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
        prefix + "text_projection": state["text_projection.weight"].T.contiguous(),
    }
    parts = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    layers = sorted({int(m[1]) for k in state if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))})
    for i in layers:
        src = f"text_model.encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
            for hf_part, oc_part in parts.items():
                out[f"{dst}{oc_part}.{kind}"] = state[f"{src}{hf_part}.{kind}"]
    return out
