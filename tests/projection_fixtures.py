"""Shared builders for the identity projection/checkpoint/LoRA tests (helper "projection").

Tiny UNets with the kit's block structure, and random checkpoints in the published key layouts written from the
SPEC's description of those layouts (not from our loader), so the tests check our reading against them.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types

import pytest
import torch

CLIP_HIDDEN = 64
ID_DIM = 512


@functools.cache
def tiny_sdxl_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=128,
        attention_head_dim=(2, 4, 4),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=112,
        norm_num_groups=8,
        use_linear_projection=True,
    ).eval()


@functools.cache
def tiny_sd15_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        cross_attention_dim=64,
        attention_head_dim=2,
        norm_num_groups=8,
    ).eval()


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * 0.2


def _layer_norm(gen, prefix: str, dim: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + _rand(gen, dim), f"{prefix}.bias": _rand(gen, dim)}


def perceiver_layers_sd(
    gen, prefix: str, dim: int, depth: int, inner: int, ff: int
) -> dict[str, torch.Tensor]:
    """`layers.i.0` PerceiverAttention (norm1, norm2, to_q, to_kv, to_out) and `layers.i.1` FeedForward."""
    sd: dict[str, torch.Tensor] = {}
    for i in range(depth):
        a = f"{prefix}layers.{i}.0"
        sd |= _layer_norm(gen, f"{a}.norm1", dim) | _layer_norm(gen, f"{a}.norm2", dim)
        sd[f"{a}.to_q.weight"] = _rand(gen, inner, dim)
        sd[f"{a}.to_kv.weight"] = _rand(gen, 2 * inner, dim)
        sd[f"{a}.to_out.weight"] = _rand(gen, dim, inner)
        f = f"{prefix}layers.{i}.1"
        sd |= _layer_norm(gen, f"{f}.0", dim)
        sd[f"{f}.1.weight"] = _rand(gen, ff, dim)
        sd[f"{f}.3.weight"] = _rand(gen, dim, ff)
    return sd


def resampler_sd(dim=128, depth=4, queries=16, in_dim=ID_DIM, out_dim=128, seed=0) -> dict[str, torch.Tensor]:
    """InstantID `image_proj` layout (SPEC section 2), heads = dim // 64."""
    gen = torch.Generator().manual_seed(seed)
    sd = {
        "latents": torch.randn(1, queries, dim, generator=gen) / dim**0.5,
        "proj_in.weight": _rand(gen, dim, in_dim),
        "proj_in.bias": _rand(gen, dim),
        "proj_out.weight": _rand(gen, out_dim, dim),
        "proj_out.bias": _rand(gen, out_dim),
    }
    sd |= _layer_norm(gen, "norm_out", out_dim)
    return sd | perceiver_layers_sd(gen, "", dim, depth, dim, 4 * dim)


def mlp_sd(cross_dim: int, tokens: int, seed=0) -> dict[str, torch.Tensor]:
    """FaceID MLP: proj.0 (1024, 512), proj.2 (C*T, 1024), norm (C)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {
        "proj.0.weight": _rand(gen, 2 * ID_DIM, ID_DIM),
        "proj.0.bias": _rand(gen, 2 * ID_DIM),
        "proj.2.weight": _rand(gen, cross_dim * tokens, 2 * ID_DIM) * 0.2,
        "proj.2.bias": _rand(gen, cross_dim * tokens),
    }
    return sd | _layer_norm(gen, "norm", cross_dim)


def plus_sd(cross_dim: int, clip_width: int = CLIP_HIDDEN, seed=0) -> dict[str, torch.Tensor]:
    """FaceID plus: the MLP (4 tokens) + `perceiver_resampler.*` (dim C, heads C // 64, ff x4)."""
    gen = torch.Generator().manual_seed(seed + 100)
    p = "perceiver_resampler."
    sd = mlp_sd(cross_dim, 4, seed)
    sd[f"{p}proj_in.weight"] = _rand(gen, cross_dim, clip_width)
    sd[f"{p}proj_in.bias"] = _rand(gen, cross_dim)
    sd[f"{p}proj_out.weight"] = _rand(gen, cross_dim, cross_dim)
    sd[f"{p}proj_out.bias"] = _rand(gen, cross_dim)
    sd |= _layer_norm(gen, f"{p}norm_out", cross_dim)
    return sd | perceiver_layers_sd(gen, p, cross_dim, 4, cross_dim, 4 * cross_dim)


def attention_modules(unet) -> list[tuple[str, torch.nn.Module]]:
    modules = dict(unet.named_modules())
    return [(n, modules[n.removesuffix(".processor")]) for n in unet.attn_processors]


def ip_layers_sd(unet, seed=0) -> dict[str, torch.Tensor]:
    """`N.to_k_ip.weight` / `N.to_v_ip.weight` (hidden_N, C) for every cross-attention index N."""
    gen = torch.Generator().manual_seed(seed + 200)
    cross = unet.config.cross_attention_dim
    sd = {}
    for n, (name, attn) in enumerate(attention_modules(unet)):
        if name.endswith("attn2.processor"):
            hidden = attn.to_k.weight.shape[0]
            sd[f"{n}.to_k_ip.weight"] = _rand(gen, hidden, cross)
            sd[f"{n}.to_v_ip.weight"] = _rand(gen, hidden, cross)
    return sd


def faceid_lora_sd(unet, rank=4, seed=0) -> dict[str, torch.Tensor]:
    """`N.to_{q,k,v,out}_lora.{down,up}.weight` for every attention index N (IP-Adapter FaceID)."""
    gen = torch.Generator().manual_seed(seed + 300)
    sd = {}
    for n, (_, attn) in enumerate(attention_modules(unet)):
        for proj, layer in (
            ("to_q", attn.to_q),
            ("to_k", attn.to_k),
            ("to_v", attn.to_v),
            ("to_out", attn.to_out[0]),
        ):
            out_features, in_features = layer.weight.shape
            sd[f"{n}.{proj}_lora.down.weight"] = _rand(gen, rank, in_features)
            sd[f"{n}.{proj}_lora.up.weight"] = _rand(gen, out_features, rank)
    return sd


def adapter_parts(kind: str, unet) -> dict[str, dict[str, torch.Tensor]]:
    """{"image_proj", "ip_adapter"} of a tiny checkpoint of `kind` for `unet`."""
    cross = unet.config.cross_attention_dim
    ip = ip_layers_sd(unet)
    if kind in ("instantid", "faceid-portrait-unnorm"):
        return {"image_proj": resampler_sd(dim=128, out_dim=cross), "ip_adapter": ip}
    if kind == "faceid":
        return {"image_proj": mlp_sd(cross, 4), "ip_adapter": ip | faceid_lora_sd(unet)}
    if kind == "faceid-portrait":
        return {"image_proj": mlp_sd(cross, 16), "ip_adapter": ip}
    if kind in ("faceid-plus", "faceid-plusv2"):
        return {"image_proj": plus_sd(cross), "ip_adapter": ip | faceid_lora_sd(unet)}
    raise ValueError(kind)


def save_bin(parts: dict, path: str) -> str:
    torch.save(parts, path)
    return path


def save_safetensors(parts: dict, path: str) -> str:
    from safetensors.torch import save_file

    flat = {f"{top}.{k}": v.contiguous() for top, sub in parts.items() for k, v in sub.items()}
    save_file(flat, path)
    return path


# ---- the ip-adapter 0.1.0 reference (tencent-ailab), loaded by file path -----------------------------------


def _ip_adapter_dir() -> str | None:
    spec = importlib.util.find_spec("ip_adapter")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _load_by_path(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def reference_resampler_module():
    """`ip_adapter/resampler.py`; skips the calling test only when the package is not installed."""
    folder = _ip_adapter_dir()
    if folder is None:
        pytest.skip("reference package absent: pip install --no-deps ip-adapter==0.1.0 einops")
    return _load_by_path("_ref_ip_adapter_resampler", os.path.join(folder, "resampler.py"))


@functools.cache
def reference_faceid_module():
    """`ip_adapter/ip_adapter_faceid.py` with its stale diffusers import stubbed and its package faked."""
    folder = _ip_adapter_dir()
    if folder is None:
        pytest.skip("reference package absent: pip install --no-deps ip-adapter==0.1.0 einops")
    package = types.ModuleType("_ref_ip_adapter")
    package.__path__ = [folder]
    sys.modules["_ref_ip_adapter"] = package
    procs = _load_by_path(
        "_ref_ip_adapter.attention_processor_faceid", os.path.join(folder, "attention_processor_faceid.py")
    )
    sys.modules["_ref_ip_adapter.attention_processor_faceid"] = procs
    stub_name = "diffusers.pipelines.controlnet"
    saved = sys.modules.get(stub_name)
    stub = types.ModuleType(stub_name)
    stub.MultiControlNetModel = type("MultiControlNetModel", (), {})
    sys.modules[stub_name] = stub
    try:
        spec = importlib.util.spec_from_file_location(
            "_ref_ip_adapter.ip_adapter_faceid", os.path.join(folder, "ip_adapter_faceid.py")
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is not None:
            sys.modules[stub_name] = saved
        else:
            del sys.modules[stub_name]
    return module


@functools.cache
def reference_lora_processors():
    """`ip_adapter/attention_processor_faceid.py` (LoRAAttnProcessor with LoRALinearLayer from diffusers)."""
    reference_faceid_module()
    return sys.modules["_ref_ip_adapter.attention_processor_faceid"]
