"""EVA02-CLIP vision tower (EVA02-CLIP-L-14-336, as PuLID uses it), written natively in torch.

No open_clip / timm (both need torchvision here): the tower is built from the original EVA-CLIP weight layout
(`EVA02_CLIP_L_336_psz14_s6B.pt`, keys `visual.*`; a file of the visual tower alone, unprefixed, is read too).

Architecture (EVA02-CLIP-L-14-336's config: width 1024, 24 blocks, 64-wide heads, patch 14, 336 px, xattn, rope,
subln, naive SwiGLU, output 768), every size but the head width read from the shapes:
- patch embedding (Conv 14x14 stride 14), class token, learned absolute position embedding (577 x 1024);
- each block: `x + attn(norm1(x))`, `x + mlp(norm2(x))`, LayerNorm eps 1e-6;
  attention: separate q/k/v projections (`q_bias`, `v_bias`, k without bias), 2D rotary embedding on the patch
  tokens (not the class token) of q and k, softmax attention at scale head_dim**-0.5, `inner_attn_ln`, `proj`;
  MLP: `w3(ffn_ln(silu(w1(x)) * w2(x)))`;
- `norm` then the class token, `head` (Linear 1024 -> 768).
Rotary embedding (EVA's VisionRotaryEmbeddingFast): half a head (32) of frequencies 1/10000^(2i/32) for
i < 16, each repeated twice (interleaved pairs); the grid position of patch (r, c) is its index / grid * 16 (the
pretraining grid, `pt_hw_seq_len` 16, interpolated to the 24 x 24 grid); the head's 64 channels are the row
frequencies then the column frequencies; rotate_half pairs (x0, x1) -> (-x1, x0).

`forward` returns the class embedding and the hidden states entering the blocks PuLID reads (`HIDDEN_BLOCKS`,
1-based numbering: blocks 4, 8, 12, 16, 20), each (B, 1 + patches, width).
"""

from __future__ import annotations

import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from idforge.errors import ModelFormatError

HEAD_WIDTH = 64  # EVA02-CLIP's head_width; heads = width / 64
PT_HW_SEQ_LEN = 16  # the pretraining grid (224 / 14) the rotary positions are scaled to
ROPE_THETA = 10000.0
LN_EPS = 1e-6
HIDDEN_BLOCKS = (4, 8, 12, 16, 20)  # 1-based: PuLID takes the input of every 4th block, five of them
# OpenAI CLIP's mean/std (EVA-CLIP's constants), for images in [0, 1]
EVA_MEAN = (0.48145466, 0.4578275, 0.40821073)
EVA_STD = (0.26862954, 0.26130258, 0.27577711)

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def rope_tables(head_dim: int, grid: int, pt_grid: int = PT_HW_SEQ_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape (grid * grid, head_dim), row-major patches (see the module docstring)."""
    half = head_dim // 2
    freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, half, 2, dtype=torch.float32)[: half // 2] / half))
    positions = torch.arange(grid, dtype=torch.float32) / grid * pt_grid
    angles = torch.repeat_interleave(positions[:, None] * freqs[None, :], 2, dim=-1)  # (grid, half)
    rows = angles[:, None, :].expand(grid, grid, half)
    cols = angles[None, :, :].expand(grid, grid, half)
    table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, 2 * half)
    return table.cos(), table.sin()


class EvaAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.inner_attn_ln = nn.LayerNorm(width, eps=LN_EPS)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

        q = heads(F.linear(x, self.q_proj.weight, self.q_bias))
        k = heads(F.linear(x, self.k_proj.weight))
        v = heads(F.linear(x, self.v_proj.weight, self.v_bias))
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = torch.cat([q[:, :, :1], q[:, :, 1:] * cos + rotate_half(q[:, :, 1:]) * sin], dim=2)
        k = torch.cat([k[:, :, :1], k[:, :, 1:] * cos + rotate_half(k[:, :, 1:]) * sin], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, length, width)
        return self.proj(self.inner_attn_ln(out))


class EvaSwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(width, hidden)
        self.w2 = nn.Linear(width, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=LN_EPS)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class EvaBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = EvaAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = EvaSwiGLU(width, mlp_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class EvaVisionTower(nn.Module):
    """EVA02-CLIP's visual tower; sizes from a `visual.*` state dict (prefix removed)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        try:
            patch = state["patch_embed.proj.weight"]
            pos = state["pos_embed"]
            head = state["head.weight"]
            mlp_hidden = state["blocks.0.mlp.w1.weight"].shape[0]
        except KeyError as exc:
            raise ModelFormatError(f"EVA02-CLIP visual tower: missing '{exc.args[0]}'") from None
        self.width = patch.shape[0]
        if self.width % HEAD_WIDTH:
            raise ModelFormatError(f"EVA02-CLIP width {self.width} is not a multiple of {HEAD_WIDTH}")
        self.heads = self.width // HEAD_WIDTH
        self.patch_size = patch.shape[-1]
        patches = pos.shape[1] - 1
        self.grid = math.isqrt(patches)
        if self.grid * self.grid != patches:
            raise ModelFormatError(f"EVA02-CLIP pos_embed has {patches} patch positions, not a square grid")
        self.image_size = self.grid * self.patch_size
        self.output_dim = head.shape[0]
        depth = len({int(m.group(1)) for key in state if (m := _BLOCK.match(key))})
        self.depth = depth
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, self.width, self.patch_size, stride=self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, self.width))
        self.blocks = nn.ModuleList(EvaBlock(self.width, self.heads, mlp_hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(self.width, eps=LN_EPS)
        self.head = nn.Linear(self.width, self.output_dim)
        cos, sin = rope_tables(HEAD_WIDTH, self.grid)
        if "rope.freqs_cos" in state and "rope.freqs_sin" in state:  # the file's own tables win
            if tuple(state["rope.freqs_cos"].shape) != tuple(cos.shape):
                raise ModelFormatError(
                    f"EVA02-CLIP rope tables are {tuple(state['rope.freqs_cos'].shape)}, the grid needs "
                    f"{tuple(cos.shape)}"
                )
            cos, sin = state["rope.freqs_cos"].float(), state["rope.freqs_sin"].float()
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        weights = {k: v for k, v in state.items() if not k.startswith("rope.")}
        missing, unexpected = self.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ModelFormatError(
                f"EVA02-CLIP visual tower does not fit its weights (missing {missing[:4]}, unexpected "
                f"{unexpected[:4]})"
            )
        if max(HIDDEN_BLOCKS) > depth:
            raise ModelFormatError(
                f"EVA02-CLIP has {depth} blocks; PuLID reads the input of block {max(HIDDEN_BLOCKS)}"
            )

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """pixels (B, 3, S, S), normalised -> (class embedding (B, output_dim), hidden states)."""
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_embed
        hidden = []
        for number, block in enumerate(self.blocks, start=1):
            if number in HIDDEN_BLOCKS:
                hidden.append(x)
            x = block(x, self.rope_cos, self.rope_sin)
        return self.head(self.norm(x)[:, 0]), hidden


def read_eva_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The visual tower's tensors of an EVA-CLIP file (`visual.` prefix removed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: not a file")
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state = dict(load_file(path, device="cpu"))
        except Exception as exc:  # safetensors' own error types
            raise ModelFormatError(f"{path}: unreadable safetensors file ({exc})") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, bad pickle
            raise ModelFormatError(
                f"{path}: unreadable torch checkpoint ({str(exc).splitlines()[0]})"
            ) from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ModelFormatError(f"{path}: expected a state dict, found {type(state).__name__}")
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if not visual and "patch_embed.proj.weight" in state:
        visual = dict(state)
    if "patch_embed.proj.weight" not in visual:
        raise ModelFormatError(
            f"{path}: not an EVA-CLIP checkpoint (no 'visual.patch_embed.proj.weight'; found e.g. "
            f"{', '.join(sorted(map(str, state))[:4])})"
        )
    return {k: v.float() for k, v in visual.items()}


def load_eva_tower(path: str | os.PathLike) -> EvaVisionTower:
    return EvaVisionTower(read_eva_state(path)).eval()


def eva_preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> bicubic to size x size (antialiased), OpenAI CLIP mean/std."""
    if image.shape[-1] != size or image.shape[-2] != size:
        image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(EVA_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(EVA_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image - mean) / std
