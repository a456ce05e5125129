"""Tiny UNets and IP weights for the identity attention tests (same block layout as the real families)."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from idforge.identity.layers import AttentionLayer


def tiny_sdxl_unet() -> UNet2DConditionModel:
    """SDXL block layout (11 transformer blocks), widths 64/96 so the C penalty differs per layer."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 96),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=2,
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=128,
        attention_head_dim=(1, 2, 3),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=112,
        norm_num_groups=8,
    )
    return unet.eval()


def tiny_sd15_unet() -> UNet2DConditionModel:
    """SD1.5 block layout (16 transformer blocks)."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        cross_attention_dim=64,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    return unet.eval()


def cross_dim(unet: UNet2DConditionModel) -> int:
    return int(unet.config.cross_attention_dim)


def random_ip_layers(
    layers: list[AttentionLayer], width: int, seed: int, scale: float = 0.3
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """N -> (to_k_ip.weight, to_v_ip.weight) of shape (hidden_N, width), as AdapterCheckpoint.ip_layers holds."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in layers:
        if layer.is_cross:
            k = torch.randn(layer.hidden, width, generator=gen) * scale
            v = torch.randn(layer.hidden, width, generator=gen) * scale
            out[layer.index] = (k, v)
    return out


def tokens(batch: int, count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, count, width, generator=torch.Generator().manual_seed(seed))


def unet_call_inputs(unet: UNet2DConditionModel, batch: int, seed: int = 5, size: int = 16) -> dict:
    """Keyword inputs of one UNet call (latents, timestep, text, SDXL added conditions when needed)."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = {
        "sample": torch.randn(batch, 4, size, size, generator=gen),
        "timestep": 500,
        "encoder_hidden_states": torch.randn(batch, 7, cross_dim(unet), generator=gen),
    }
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 64, generator=gen),
            "time_ids": torch.randn(batch, 6, generator=gen),
        }
    return kwargs


def capture_cross_inputs(unet: UNet2DConditionModel, layers: list[AttentionLayer], call: dict) -> dict:
    """Run one forward and record each cross-attention layer's (hidden_states, encoder_hidden_states)."""
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for layer in layers:
        if not layer.is_cross:
            continue
        module = unet.get_submodule(layer.module_path)

        def hook(_module, args, kwargs, index=layer.index):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[index] = (hidden.detach().clone(), kwargs["encoder_hidden_states"].detach().clone())

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            unet(**call)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def single_thread():
    """Generator for a module-scoped fixture: one torch thread while the module runs, then restore.

    On the 2 shared cores here, tiny UNet forwards run ~20x faster with one thread than with the default.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
