"""PuLID's files for the tiny SDXL UNet, in the three published layouts, plus a tiny EVA02-CLIP and face parser.

- `pulid/pulid_v1.bin`: official v1, torch pickle, flat `id_adapter.*` (IDEncoder) and
  `id_adapter_attn_layers.N.id_to_k/id_to_v.weight` (cross-attention slots N of the tiny UNet);
- `pulid/pulid_v1.1.safetensors`: official v1.1, the same flat keys with an IDFormer (32 queries, 10 layers);
- `pulid/ip-adapter_pulid_sdxl_fp16.safetensors`: ComfyUI's conversion of v1 (the same weights as pulid_v1.bin,
  in fp16, `image_proj.*` / `ip_adapter.N.to_k_ip/to_v_ip.weight`);
- `clip/EVA02_CLIP_L_336_psz14_s6B.pt`: EVA-CLIP's file layout (`visual.*`, `text.*`, `logit_scale`) with a
  tiny visual tower (width 64, one 64-wide head, 20 blocks so that PuLID's 5 hidden states exist, patch 14,
  56 px = 4 x 4 patches, output 32) and a stub text part;
- `facexlib/parsing_bisenet.pth`: facexlib's BiSeNet keys with base width 8, 19 classes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from . import sdxl
from .common import bias, contiguous, linear_weight, norm_weight, part_generator, randn, write_readme
from .layout import attention_slots

FOLDER = "pulid"
V1_FILE = f"{FOLDER}/pulid_v1.bin"
V11_FILE = f"{FOLDER}/pulid_v1.1.safetensors"
COMFY_FILE = f"{FOLDER}/ip-adapter_pulid_sdxl_fp16.safetensors"
EVA_FILE = "clip/EVA02_CLIP_L_336_psz14_s6B.pt"
PARSER_FILE = "facexlib/parsing_bisenet.pth"

ID_EMBEDDING = 512  # ArcFace
EVA_WIDTH = 64  # EVA02-L: 1024
EVA_DEPTH = 20  # EVA02-L: 24; PuLID reads the input of blocks 4, 8, 12, 16, 20
EVA_MLP = 96  # EVA02-L: 2730
EVA_PATCH = 14
EVA_GRID = 4  # EVA02-L-336: 24
EVA_OUT = 32  # EVA02-L: 768
SCALES = 5
V1_HIDDEN = 64  # published: 1024
V1_BODY_TOKENS = 5
V11_DIM = 64  # published: 1024
V11_QUERIES = 32
V11_DEPTH = 10
V11_ID_TOKENS = 5
PARSER_WIDTH = 8  # published: 64
PARSER_CLASSES = 19


def _linear(state: dict, key: str, out: int, inp: int, g: torch.Generator, with_bias: bool = True) -> None:
    state[f"{key}.weight"] = linear_weight(out, inp, g)
    if with_bias:
        state[f"{key}.bias"] = bias(out, g)


def _layernorm(state: dict, key: str, width: int, g: torch.Generator) -> None:
    state[f"{key}.weight"] = norm_weight(width, g)
    state[f"{key}.bias"] = bias(width, g)


def _mlp(state: dict, prefix: str, widths: tuple[int, int, int, int], g: torch.Generator) -> None:
    a, b, c, d = widths
    _linear(state, f"{prefix}.0", b, a, g)
    _layernorm(state, f"{prefix}.1", b, g)
    _linear(state, f"{prefix}.3", c, b, g)
    _layernorm(state, f"{prefix}.4", c, g)
    _linear(state, f"{prefix}.6", d, c, g)


def id_encoder_v1(g: torch.Generator, context: int) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    _mlp(state, "body", (ID_EMBEDDING + EVA_OUT, V1_HIDDEN, V1_HIDDEN, context * V1_BODY_TOKENS), g)
    for i in range(SCALES):
        _mlp(state, f"mapping_{i}", (EVA_WIDTH, V1_HIDDEN, V1_HIDDEN, context), g)
        _mlp(state, f"mapping_patch_{i}", (EVA_WIDTH, V1_HIDDEN, V1_HIDDEN, context), g)
    return state


def id_former(
    g: torch.Generator,
    context: int,
    dim: int = V11_DIM,
    vit_width: int = EVA_WIDTH,
    id_width: int = ID_EMBEDDING + EVA_OUT,
    hidden: int = V11_DIM,
) -> dict[str, torch.Tensor]:
    """IDFormer keys (published: dim 1024, vit 1024, id 1280, hidden 1024, 32 queries, 10 layers, 5 id tokens)."""
    state: dict[str, torch.Tensor] = {
        "latents": randn((1, V11_QUERIES, dim), g, std=dim**-0.5),
        "proj_out": randn((dim, context), g, std=dim**-0.5),
    }
    for i in range(V11_DEPTH):
        p = f"layers.{i}."
        _layernorm(state, p + "0.norm1", dim, g)
        _layernorm(state, p + "0.norm2", dim, g)
        state[p + "0.to_q.weight"] = linear_weight(dim, dim, g)
        state[p + "0.to_kv.weight"] = linear_weight(2 * dim, dim, g)
        state[p + "0.to_out.weight"] = linear_weight(dim, dim, g, gain=0.5)
        _layernorm(state, p + "1.0", dim, g)
        state[p + "1.1.weight"] = linear_weight(4 * dim, dim, g)
        state[p + "1.3.weight"] = linear_weight(dim, 4 * dim, g, gain=0.5)
    for i in range(SCALES):
        _mlp(state, f"mapping_{i}", (vit_width, hidden, hidden, dim), g)
    _mlp(state, "id_embedding_mapping", (id_width, hidden, hidden, dim * V11_ID_TOKENS), g)
    return state


def id_attention(
    g: torch.Generator, unet, dtype: torch.dtype = torch.float32
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    width = unet.config.cross_attention_dim
    return {
        slot.index: (
            linear_weight(slot.inner, width, g).to(dtype),
            linear_weight(slot.inner, width, g).to(dtype),
        )
        for slot in attention_slots(unet)
        if slot.is_cross
    }


def official_state(encoder: dict, attn: dict) -> dict[str, torch.Tensor]:
    state = {f"id_adapter.{k}": v for k, v in encoder.items()}
    for n, (k, v) in attn.items():
        state[f"id_adapter_attn_layers.{n}.id_to_k.weight"] = k
        state[f"id_adapter_attn_layers.{n}.id_to_v.weight"] = v
    return state


def comfy_state(encoder: dict, attn: dict) -> dict[str, torch.Tensor]:
    state = {f"image_proj.{k}": v.half() for k, v in encoder.items()}
    for n, (k, v) in attn.items():
        state[f"ip_adapter.{n}.to_k_ip.weight"] = k.half()
        state[f"ip_adapter.{n}.to_v_ip.weight"] = v.half()
    return state


def eva_visual(
    g: torch.Generator,
    w: int = EVA_WIDTH,
    depth: int = EVA_DEPTH,
    mlp: int = EVA_MLP,
    grid: int = EVA_GRID,
    out: int = EVA_OUT,
) -> dict[str, torch.Tensor]:
    """An EVA02-CLIP visual tower in the original key layout (no prefix); tiny by default (published:
    width 1024, 24 blocks, MLP 2730, grid 24, output 768)."""
    from idforge.identity.eva_clip import HEAD_WIDTH, rope_tables

    state: dict[str, torch.Tensor] = {
        "cls_token": randn((1, 1, w), g, std=0.02),
        "pos_embed": randn((1, grid * grid + 1, w), g, std=0.02),
        "patch_embed.proj.weight": randn(
            (w, 3, EVA_PATCH, EVA_PATCH), g, std=(3 * EVA_PATCH * EVA_PATCH) ** -0.5
        ),
        "patch_embed.proj.bias": bias(w, g),
    }
    cos, sin = rope_tables(HEAD_WIDTH, grid)
    state["rope.freqs_cos"], state["rope.freqs_sin"] = cos, sin
    for i in range(depth):
        p = f"blocks.{i}."
        _layernorm(state, p + "norm1", w, g)
        for name in ("q_proj", "k_proj", "v_proj"):
            state[p + f"attn.{name}.weight"] = linear_weight(w, w, g)
        state[p + "attn.q_bias"] = bias(w, g)
        state[p + "attn.v_bias"] = bias(w, g)
        _layernorm(state, p + "attn.inner_attn_ln", w, g)
        _linear(state, p + "attn.proj", w, w, g)
        _layernorm(state, p + "norm2", w, g)
        _linear(state, p + "mlp.w1", mlp, w, g)
        _linear(state, p + "mlp.w2", mlp, w, g)
        _layernorm(state, p + "mlp.ffn_ln", mlp, g)
        _linear(state, p + "mlp.w3", w, mlp, g)
    _layernorm(state, "norm", w, g)
    _linear(state, "head", out, w, g)
    return state


def eva_clip_file(g: torch.Generator) -> dict[str, torch.Tensor]:
    state = {f"visual.{k}": v for k, v in eva_visual(g).items()}
    state["text.token_embedding.weight"] = randn((8, 16), g, std=0.02)  # a stub: PuLID uses the visual tower
    state["logit_scale"] = torch.tensor(4.6052)
    return state


def _bn(state: dict, key: str, width: int, g: torch.Generator) -> None:
    state[f"{key}.weight"] = norm_weight(width, g)
    state[f"{key}.bias"] = bias(width, g)
    state[f"{key}.running_mean"] = randn((width,), g, std=0.05)
    state[f"{key}.running_var"] = randn((width,), g, std=0.05, mean=1.0).abs() + 0.05
    state[f"{key}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)


def _conv(state: dict, key: str, cout: int, cin: int, k: int, g: torch.Generator) -> None:
    state[f"{key}.weight"] = randn((cout, cin, k, k), g, std=(cin * k * k) ** -0.5)


def _conv_bn(state: dict, key: str, cout: int, cin: int, k: int, g: torch.Generator) -> None:
    _conv(state, f"{key}.conv", cout, cin, k, g)
    _bn(state, f"{key}.bn", cout, g)


def bisenet(g: torch.Generator, w: int = PARSER_WIDTH) -> dict[str, torch.Tensor]:
    """facexlib's BiSeNet keys for base width w (published 64): ResNet-18, ARMs, FFM, three heads."""
    classes = PARSER_CLASSES
    mid, fuse, head_mid = 2 * w, 4 * w, w
    state: dict[str, torch.Tensor] = {}
    r = "cp.resnet."
    _conv(state, r + "conv1", w, 3, 7, g)
    _bn(state, r + "bn1", w, g)
    cin = w
    for layer, cout in enumerate((w, 2 * w, 4 * w, 8 * w), start=1):
        for block in range(2):
            p = f"{r}layer{layer}.{block}."
            block_in = cin if block == 0 else cout
            _conv(state, p + "conv1", cout, block_in, 3, g)
            _bn(state, p + "bn1", cout, g)
            _conv(state, p + "conv2", cout, cout, 3, g)
            _bn(state, p + "bn2", cout, g)
            if block == 0 and (block_in != cout or layer > 1):
                _conv(state, p + "downsample.0", cout, block_in, 1, g)
                _bn(state, p + "downsample.1", cout, g)
        cin = cout
    for name, width in (("arm16", 4 * w), ("arm32", 8 * w)):
        _conv_bn(state, f"cp.{name}.conv", mid, width, 3, g)
        _conv(state, f"cp.{name}.conv_atten", mid, mid, 1, g)
        _bn(state, f"cp.{name}.bn_atten", mid, g)
    _conv_bn(state, "cp.conv_head32", mid, mid, 3, g)
    _conv_bn(state, "cp.conv_head16", mid, mid, 3, g)
    _conv_bn(state, "cp.conv_avg", mid, 8 * w, 1, g)
    _conv_bn(state, "ffm.convblk", fuse, 2 * w + mid, 1, g)
    _conv(state, "ffm.conv1", fuse // 4, fuse, 1, g)
    _conv(state, "ffm.conv2", fuse, fuse // 4, 1, g)
    for name, cin_head, m in (
        ("conv_out", fuse, fuse),
        ("conv_out16", mid, head_mid),
        ("conv_out32", mid, head_mid),
    ):
        _conv_bn(state, f"{name}.conv", m, cin_head, 3, g)
        _conv(state, f"{name}.conv_out", classes, m, 1, g)
    return state


def write_pulid(kit_dir: Path, seed: int) -> dict[str, str]:
    """The three PuLID files, the EVA02-CLIP file and the face parser."""
    unet = sdxl.meta_unet()
    context = unet.config.cross_attention_dim
    g = part_generator(seed, "pulid/v1")
    v1_encoder, v1_attn = id_encoder_v1(g, context), id_attention(g, unet)
    g = part_generator(seed, "pulid/v1.1")
    v11_encoder, v11_attn = id_former(g, context), id_attention(g, unet)
    (kit_dir / FOLDER).mkdir(parents=True, exist_ok=True)
    torch.save(contiguous(official_state(v1_encoder, v1_attn)), kit_dir / V1_FILE)
    save_file(contiguous(official_state(v11_encoder, v11_attn)), str(kit_dir / V11_FILE))
    save_file(contiguous(comfy_state(v1_encoder, v1_attn)), str(kit_dir / COMFY_FILE))
    (kit_dir / EVA_FILE).parent.mkdir(parents=True, exist_ok=True)
    torch.save(contiguous(eva_clip_file(part_generator(seed, "pulid/eva02"))), kit_dir / EVA_FILE)
    (kit_dir / PARSER_FILE).parent.mkdir(parents=True, exist_ok=True)
    torch.save(contiguous(bisenet(part_generator(seed, "pulid/bisenet"))), kit_dir / PARSER_FILE)
    write_readme(
        kit_dir / FOLDER,
        "Tiny PuLID checkpoints: pulid_v1.bin and pulid_v1.1.safetensors (official layouts) and ComfyUI's fp16 "
        "ip-adapter_pulid_sdxl_fp16.safetensors (v1 converted), for the tiny SDXL UNet (cross width 128).",
        seed,
    )
    write_readme(
        kit_dir / "clip", "Tiny EVA02-CLIP-L-14-336 in EVA-CLIP's key layout (56 px, width 64).", seed
    )
    write_readme(kit_dir / "facexlib", "Tiny facexlib BiSeNet face parser (base width 8, 19 classes).", seed)
    return {
        "pulid_v1": V1_FILE,
        "pulid_v1_1": V11_FILE,
        "pulid_comfyui": COMFY_FILE,
        "eva_clip": EVA_FILE,
        "face_parser": PARSER_FILE,
    }
