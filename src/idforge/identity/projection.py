"""Image-projection models that turn face embeddings into IP tokens.

Three published shapes (SPEC.md sections 2 and 3):
- `Resampler`: InstantID and FaceID portrait-unnorm, a perceiver over learned latents fed with the raw ArcFace vector.
- `FaceIDMLPProjection`: FaceID and FaceID portrait, Linear -> GELU -> Linear -> reshape -> LayerNorm.
- `FaceIDPlusProjection`: FaceID plus / plusv2, the MLP tokens refined by a perceiver over CLIP features.

Every model is built from a state dict whose keys are exactly the published ones, with all sizes read from
the tensor shapes, and loaded strictly, so a checkpoint that does not fit fails loudly here.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from idforge.errors import ModelFormatError

DIM_HEAD = 64  # every published Resampler/perceiver uses 64-wide heads; heads = inner width // 64


class FeedForward(nn.Sequential):
    """LayerNorm, Linear (x mult, no bias), GELU, Linear (no bias): keys `0.*`, `1.weight`, `3.weight`."""

    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, inner_dim, bias=False),
            nn.GELU(),
            nn.Linear(inner_dim, dim, bias=False),
        )


class PerceiverAttention(nn.Module):
    """Latents attend to concat(inputs, latents); q and k each scaled by dim_head**-0.25, softmax in float32."""

    def __init__(self, dim: int, inner_dim: int, dim_head: int = DIM_HEAD) -> None:
        super().__init__()
        if inner_dim % dim_head:
            raise ModelFormatError(f"perceiver attention width {inner_dim} is not a multiple of {dim_head}")
        self.dim_head = dim_head
        self.heads = inner_dim // dim_head
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, length, _ = t.shape
        return t.view(batch, length, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        batch, num_latents, _ = latents.shape

        q = self._split_heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        k = self._split_heads(k)
        v = self._split_heads(v)

        scale = self.dim_head**-0.25  # split over q and k: steadier in float16 than one division afterwards
        scores = (q * scale) @ (k * scale).transpose(-2, -1)
        weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        out = (weights @ v).transpose(1, 2).reshape(batch, num_latents, -1)
        return self.to_out(out)


def _layer_count(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"layers\.(\d+)\.")
    found = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    if not found or found != set(range(len(found))):
        raise ModelFormatError(
            f"projection has no contiguous '{prefix}layers.N' blocks (found {sorted(found)})"
        )
    return len(found)


def _need(state_dict: dict[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state_dict:
        raise ModelFormatError(f"{what} state dict lacks '{key}' (has {len(state_dict)} keys)")
    return state_dict[key]


def _load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first_line[:3])
        raise ModelFormatError(f"{what} weights do not load: {detail}") from exc


class PerceiverStack(nn.Module):
    """proj_in, N x [PerceiverAttention, FeedForward] with residuals on the latents, proj_out, norm_out."""

    def __init__(self, in_dim: int, dim: int, inner_dim: int, ff_dim: int, out_dim: int, depth: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, inner_dim), FeedForward(dim, ff_dim)])
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def run(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))

    @staticmethod
    def dims_from(state_dict: dict[str, torch.Tensor], prefix: str, what: str) -> dict[str, int]:
        proj_in = _need(state_dict, f"{prefix}proj_in.weight", what)
        to_q = _need(state_dict, f"{prefix}layers.0.0.to_q.weight", what)
        ff_in = _need(state_dict, f"{prefix}layers.0.1.1.weight", what)
        proj_out = _need(state_dict, f"{prefix}proj_out.weight", what)
        return {
            "in_dim": proj_in.shape[1],
            "dim": proj_in.shape[0],
            "inner_dim": to_q.shape[0],
            "ff_dim": ff_in.shape[0],
            "out_dim": proj_out.shape[0],
            "depth": _layer_count(state_dict, prefix),
        }


class Resampler(PerceiverStack):
    """InstantID's projection: learned latents (1, Q, dim) read the projected face embedding(s)."""

    def __init__(
        self, in_dim: int, dim: int, inner_dim: int, ff_dim: int, out_dim: int, depth: int, num_queries: int
    ):
        super().__init__(in_dim, dim, inner_dim, ff_dim, out_dim, depth)
        self.latents = nn.Parameter(torch.zeros(1, num_queries, dim))

    @property
    def num_tokens(self) -> int:
        return self.latents.shape[1]

    @property
    def output_dim(self) -> int:
        return self.proj_out.out_features

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> Resampler:
        latents = _need(state_dict, "latents", "Resampler")
        dims = PerceiverStack.dims_from(state_dict, "", "Resampler")
        model = cls(**dims, num_queries=latents.shape[1])
        _load_strict(model, state_dict, "Resampler")
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n, embedding_dim) -> (B, Q, output_dim); a (B, embedding_dim) input counts as n = 1."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        x = x.to(self.latents.dtype)
        latents = self.latents.repeat(x.shape[0], 1, 1)
        return self.run(x, latents)


class FaceIDMLPProjection(nn.Module):
    """FaceID / portrait projection: (B, 512) -> (B, T, C), T = rows of proj.2 / C."""

    def __init__(self, id_dim: int, hidden_dim: int, cross_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.cross_dim = cross_dim
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(
            nn.Linear(id_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, cross_dim * num_tokens)
        )
        self.norm = nn.LayerNorm(cross_dim)

    @staticmethod
    def dims_from(state_dict: dict[str, torch.Tensor], what: str) -> dict[str, int]:
        proj0 = _need(state_dict, "proj.0.weight", what)
        proj2 = _need(state_dict, "proj.2.weight", what)
        cross_dim = _need(state_dict, "norm.weight", what).shape[0]
        if proj2.shape[0] % cross_dim:
            raise ModelFormatError(
                f"{what}: proj.2 rows {proj2.shape[0]} are not a multiple of C={cross_dim}"
            )
        return {
            "id_dim": proj0.shape[1],
            "hidden_dim": proj0.shape[0],
            "cross_dim": cross_dim,
            "num_tokens": proj2.shape[0] // cross_dim,
        }

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> FaceIDMLPProjection:
        model = cls(**cls.dims_from(state_dict, "FaceID MLP projection"))
        _load_strict(model, state_dict, "FaceID MLP projection")
        return model

    def tokens(self, face_embeds: torch.Tensor) -> torch.Tensor:
        x = self.proj(face_embeds.to(self.norm.weight.dtype))
        return self.norm(x.reshape(-1, self.num_tokens, self.cross_dim))

    def forward(self, face_embeds: torch.Tensor) -> torch.Tensor:
        return self.tokens(face_embeds)


class FaceIDPlusProjection(FaceIDMLPProjection):
    """FaceID plus(v2): MLP tokens as latents of a perceiver over CLIP penultimate features.

    `shortcut` (v2) returns `mlp_tokens + scale * perceiver(...)`, scale being weight_faceidv2; without it the
    perceiver output alone (plus v1).
    """

    def __init__(self, mlp: dict[str, int], perceiver: dict[str, int], shortcut: bool) -> None:
        super().__init__(**mlp)
        self.perceiver_resampler = PerceiverStack(**perceiver)
        self.shortcut = shortcut

    @property
    def clip_width(self) -> int:
        return self.perceiver_resampler.proj_in.in_features

    @classmethod
    def from_state_dict(
        cls, state_dict: dict[str, torch.Tensor], shortcut: bool = False
    ) -> FaceIDPlusProjection:
        what = "FaceID plus projection"
        mlp = FaceIDMLPProjection.dims_from(state_dict, what)
        perceiver = PerceiverStack.dims_from(state_dict, "perceiver_resampler.", what)
        model = cls(mlp, perceiver, shortcut)
        _load_strict(model, state_dict, what)
        return model

    def forward(
        self, face_embeds: torch.Tensor, clip_embeds: torch.Tensor, scale: float = 1.0
    ) -> torch.Tensor:
        """face_embeds (B, 512), clip_embeds (B, 257, clip width) -> (B, T, C)."""
        x = self.tokens(face_embeds)
        out = self.perceiver_resampler.run(clip_embeds.to(x.dtype), x)
        if self.shortcut:
            out = x + scale * out
        return out


def build_projection(ckpt) -> nn.Module:  # ckpt: AdapterCheckpoint (import cycle kept out of the signature)
    """The projection model for a loaded adapter checkpoint, chosen by its detected kind."""
    if ckpt.kind in ("instantid", "faceid-portrait-unnorm"):
        return Resampler.from_state_dict(ckpt.image_proj)
    if ckpt.kind in ("faceid", "faceid-portrait"):
        return FaceIDMLPProjection.from_state_dict(ckpt.image_proj)
    if ckpt.kind in ("faceid-plus", "faceid-plusv2"):
        return FaceIDPlusProjection.from_state_dict(ckpt.image_proj, shortcut=ckpt.kind == "faceid-plusv2")
    raise ModelFormatError(f"{ckpt.path}: no projection for adapter kind '{ckpt.kind}'")
