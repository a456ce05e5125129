"""PuLID for SDXL: the three published checkpoint layouts and the two ID encoders.

Layouts (ToTheBeginning/PuLID, huchenlei/ipadapter_pulid):
- `pulid_v1.bin` (official v1): a torch pickle, flat keys `id_adapter.<IDEncoder key>` and
  `id_adapter_attn_layers.N.id_to_k.weight` / `.id_to_v.weight`, N the index in `unet.attn_processors` (the
  official code wraps every processor in one ModuleList; only the cross-attention ones, odd N, have weights);
- `pulid_v1.1.safetensors` (official v1.1): the same flat keys, the encoder an IDFormer (perceiver);
- `ip-adapter_pulid_sdxl_fp16.safetensors` (ComfyUI, v1 converted, fp16): `image_proj.<IDEncoder key>` and
  `ip_adapter.N.to_k_ip.weight` / `.to_v_ip.weight`, as InstantID's flat safetensors (a `.bin` holding
  {"image_proj", "ip_adapter"} is read too).
The version comes from the encoder's keys (`latents` + `id_embedding_mapping.*` -> v1.1, `body.*` -> v1); every
size is read from the shapes.

ID encoders (their inputs: `id_cond` = concat(ArcFace raw embedding (512), EVA02-CLIP normed cls embedding (768))
and the five EVA02 hidden states):
- v1 `IDEncoder`: `body` MLP (Linear, LayerNorm, LeakyReLU, x3) gives `num_token` (5) tokens; for each hidden state
  i, `mapping_i(cls token) + mean(mapping_patch_i(patch tokens))` one token more: 10 tokens of 2048;
- v1.1 `IDFormer`: `id_embedding_mapping` turns each reference's id_cond into 5 tokens of 1024; 32 learned queries
  plus those tokens are the latents; per hidden state i, `mapping_i(state)` with the id tokens is the context of
  depth/5 perceiver layers; the first 32 latents `@ proj_out` are the 32 output tokens. Several references enter in
  one pass (id_cond (1, N, 1280), hidden states concatenated along the tokens).
The negative ("uncond") embedding is the encoder run on zeros, as the official pipelines do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from idforge.errors import ModelFormatError
from idforge.identity.projection import DIM_HEAD, FeedForward, PerceiverAttention

VERSIONS = ("v1", "v1.1")
LAYOUTS = ("official", "comfyui")

_OFFICIAL_IP = re.compile(r"^(\d+)\.(id_to_k|id_to_v)\.weight$")
_COMFY_IP = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_MAPPING = re.compile(r"^mapping_(\d+)\.")


@dataclass
class PulidCheckpoint:
    """A loaded PuLID file: encoder weights, per-layer ID K/V weights, what it is."""

    path: str
    version: str  # "v1" | "v1.1"
    layout: str  # "official" | "comfyui"
    encoder: dict[str, torch.Tensor]
    ip_layers: dict[int, tuple[torch.Tensor, torch.Tensor]]  # N -> (id_to_k, id_to_v), each (hidden_N, C)
    cross_dim: int
    num_tokens: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def _read_flat(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: not a file")
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return dict(load_file(path, device="cpu"))
        except Exception as exc:  # safetensors' own error types for garbled headers
            raise ModelFormatError(f"{path}: unreadable safetensors file ({exc})") from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, disallowed globals
        raise ModelFormatError(f"{path}: unreadable torch checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    flat: dict[str, torch.Tensor] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # {"image_proj": {...}, "ip_adapter": {...}}
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, torch.Tensor):
            flat[str(key)] = value
    return flat


def _split(
    path: str, flat: dict[str, torch.Tensor]
) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        groups.setdefault(prefix, {})[rest] = value
    if "id_adapter" in groups and "id_adapter_attn_layers" in groups:
        return "official", groups["id_adapter"], groups["id_adapter_attn_layers"]
    if "image_proj" in groups and "ip_adapter" in groups:
        return "comfyui", groups["image_proj"], groups["ip_adapter"]
    found = ", ".join(sorted(groups)[:6]) or "nothing"
    raise ModelFormatError(
        f"{path}: not a PuLID checkpoint (expected 'id_adapter.' + 'id_adapter_attn_layers.' keys, or ComfyUI's "
        f"'image_proj.' + 'ip_adapter.'; found prefixes: {found})"
    )


def _ip_layers(
    path: str, layout: str, state: dict[str, torch.Tensor]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    pattern = _OFFICIAL_IP if layout == "official" else _COMFY_IP
    ks: dict[int, torch.Tensor] = {}
    vs: dict[int, torch.Tensor] = {}
    for key, value in state.items():
        m = pattern.match(key)
        if m is None:
            raise ModelFormatError(f"{path}: unexpected attention key '{key}' for the {layout} layout")
        (ks if m.group(2) in ("id_to_k", "to_k_ip") else vs)[int(m.group(1))] = value.float()
    if not ks or set(ks) != set(vs):
        raise ModelFormatError(
            f"{path}: ID K/V weights missing or unpaired (layers {sorted(set(ks) ^ set(vs))[:6]})"
        )
    layers = {n: (ks[n], vs[n]) for n in sorted(ks)}
    widths = {k.shape[1] for k, _ in layers.values()}
    if len(widths) != 1 or any(k.shape != v.shape or k.dim() != 2 for k, v in layers.values()):
        raise ModelFormatError(f"{path}: ID K/V weights disagree in shape (token widths {sorted(widths)})")
    return layers


def detect_version(encoder: dict[str, torch.Tensor], path: str = "checkpoint") -> str:
    if "latents" in encoder and "id_embedding_mapping.0.weight" in encoder and "proj_out" in encoder:
        return "v1.1"
    if "body.0.weight" in encoder and "mapping_0.0.weight" in encoder:
        return "v1"
    found = ", ".join(sorted(encoder)[:5]) or "nothing"
    raise ModelFormatError(f"{path}: not a PuLID checkpoint (unknown ID encoder layout; keys: {found})")


def load_pulid_checkpoint(path: str | os.PathLike) -> PulidCheckpoint:
    """Read any of the three published PuLID files (see the module docstring)."""
    path = os.fspath(path)
    layout, encoder, attn = _split(path, _read_flat(path))
    encoder = {k: v.float() for k, v in encoder.items()}
    version = detect_version(encoder, path)
    ip_layers = _ip_layers(path, layout, attn)
    cross_dim = next(iter(ip_layers.values()))[0].shape[1]
    module = build_id_encoder(encoder, version)
    if module.output_dim != cross_dim:
        raise ModelFormatError(
            f"{path}: the encoder makes {module.output_dim}-wide tokens, the ID K/V weights read {cross_dim}"
        )
    return PulidCheckpoint(path, version, layout, encoder, ip_layers, cross_dim, module.num_tokens)


def check_pulid_fits(ckpt: PulidCheckpoint, cross_layers, base_name: str) -> None:
    """Refuse a PuLID file whose ID layers or widths do not fit the base's cross-attention layers."""
    expected = {layer.index: layer for layer in cross_layers}
    if set(ckpt.ip_layers) != set(expected):
        raise ModelFormatError(
            f"PuLID '{ckpt.name}' has ID weights for {len(ckpt.ip_layers)} layers, base '{base_name}' has "
            f"{len(expected)} cross-attention layers (PuLID is for SDXL)"
        )
    for n, (k, _) in ckpt.ip_layers.items():
        layer = expected[n]
        if tuple(k.shape) != (layer.hidden, layer.cross_dim):
            raise ModelFormatError(
                f"PuLID '{ckpt.name}' layer {n} id_to_k is {tuple(k.shape)}, base '{base_name}' needs "
                f"{(layer.hidden, layer.cross_dim)}"
            )


# ---- encoders -----------------------------------------------------------------------------------------------


def _mlp(widths: list[int]) -> nn.Sequential:
    """Linear, LayerNorm, LeakyReLU, Linear, LayerNorm, LeakyReLU, Linear (keys 0, 1, 3, 4, 6)."""
    a, b, c, d = widths
    return nn.Sequential(
        nn.Linear(a, b),
        nn.LayerNorm(b),
        nn.LeakyReLU(),
        nn.Linear(b, c),
        nn.LayerNorm(c),
        nn.LeakyReLU(),
        nn.Linear(c, d),
    )


def _mlp_widths(state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    try:
        return [
            state[f"{prefix}.0.weight"].shape[1],
            state[f"{prefix}.0.weight"].shape[0],
            state[f"{prefix}.3.weight"].shape[0],
            state[f"{prefix}.6.weight"].shape[0],
        ]
    except KeyError as exc:
        raise ModelFormatError(f"PuLID encoder: missing {exc.args[0]}") from None


def _scales(state: dict[str, torch.Tensor]) -> int:
    found = {int(m.group(1)) for key in state if (m := _MAPPING.match(key))}
    if not found or found != set(range(len(found))):
        raise ModelFormatError(f"PuLID encoder: mapping_i blocks not contiguous ({sorted(found)})")
    return len(found)


class IDEncoderV1(nn.Module):
    """PuLID v1's IDEncoder (sizes from the state dict)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        body = _mlp_widths(state, "body")
        self.scales = _scales(state)
        mapping = _mlp_widths(state, "mapping_0")
        self.context_dim = mapping[3]
        self.output_dim = self.context_dim
        if body[3] % self.context_dim:
            raise ModelFormatError(f"PuLID v1 body output {body[3]} is not a multiple of {self.context_dim}")
        self.body_tokens = body[3] // self.context_dim
        self.num_tokens = self.body_tokens + self.scales
        self.id_width = body[0]
        self.vit_width = mapping[0]
        self.body = _mlp(body)
        for i in range(self.scales):
            setattr(self, f"mapping_{i}", _mlp(_mlp_widths(state, f"mapping_{i}")))
            setattr(self, f"mapping_patch_{i}", _mlp(_mlp_widths(state, f"mapping_patch_{i}")))
        self.load_state_dict(state, strict=True)

    def forward(self, id_cond: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
        """id_cond (B, id_width), hidden: `scales` tensors (B, 1 + patches, vit_width) -> (B, num_tokens, C)."""
        if len(hidden) != self.scales:
            raise ModelFormatError(f"PuLID v1 encoder needs {self.scales} hidden states, got {len(hidden)}")
        tokens = self.body(id_cond).reshape(-1, self.body_tokens, self.context_dim)
        extra = [
            getattr(self, f"mapping_{i}")(h[:, :1])
            + getattr(self, f"mapping_patch_{i}")(h[:, 1:]).mean(dim=1, keepdim=True)
            for i, h in enumerate(hidden)
        ]
        return torch.cat([tokens, *extra], dim=1)


class IDFormer(nn.Module):
    """PuLID v1.1's perceiver ID encoder (sizes from the state dict)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        latents = state["latents"]
        self.dim = latents.shape[2]
        self.num_queries = latents.shape[1]
        self.output_dim = state["proj_out"].shape[1]
        self.num_tokens = self.num_queries
        self.scales = _scales(state)
        depth = len({int(m.group(1)) for key in state if (m := re.match(r"^layers\.(\d+)\.", key))})
        if depth == 0 or depth % self.scales:
            raise ModelFormatError(f"PuLID v1.1: {depth} layers do not split over {self.scales} scales")
        self.per_scale = depth // self.scales
        id_mapping = _mlp_widths(state, "id_embedding_mapping")
        self.id_width = id_mapping[0]
        if id_mapping[3] % self.dim:
            raise ModelFormatError(
                f"PuLID v1.1 id mapping output {id_mapping[3]} is not a multiple of {self.dim}"
            )
        self.num_id_token = id_mapping[3] // self.dim
        self.vit_width = _mlp_widths(state, "mapping_0")[0]
        inner = state["layers.0.0.to_q.weight"].shape[0]
        ff_inner = state["layers.0.1.1.weight"].shape[0]
        self.latents = nn.Parameter(torch.zeros_like(latents))
        self.proj_out = nn.Parameter(torch.zeros_like(state["proj_out"]))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(self.dim, inner, DIM_HEAD), FeedForward(self.dim, ff_inner)])
            for _ in range(depth)
        )
        for i in range(self.scales):
            setattr(self, f"mapping_{i}", _mlp(_mlp_widths(state, f"mapping_{i}")))
        self.id_embedding_mapping = _mlp(id_mapping)
        self.load_state_dict(state, strict=True)

    def forward(self, id_cond: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
        """id_cond (B, id_width) or (B, N, id_width) for N references; hidden: `scales` tensors
        (B, N * (1 + patches), vit_width) -> (B, num_queries, output_dim)."""
        if len(hidden) < self.scales:
            raise ModelFormatError(f"PuLID v1.1 encoder needs {self.scales} hidden states, got {len(hidden)}")
        references = id_cond.shape[1] if id_cond.ndim == 3 else 1
        latents = self.latents.repeat(id_cond.shape[0], 1, 1)
        x = self.id_embedding_mapping(id_cond).reshape(-1, self.num_id_token * references, self.dim)
        latents = torch.cat([latents, x], dim=1)
        for i in range(self.scales):
            context = torch.cat([x, getattr(self, f"mapping_{i}")(hidden[i])], dim=1)
            for attn, ff in self.layers[i * self.per_scale : (i + 1) * self.per_scale]:
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        return latents[:, : self.num_queries] @ self.proj_out


def build_id_encoder(state: dict[str, torch.Tensor], version: str | None = None) -> IDEncoderV1 | IDFormer:
    """The ID encoder for a PuLID encoder state dict, loaded strictly (eval mode, float32)."""
    version = version or detect_version(state)
    module = IDFormer(state) if version == "v1.1" else IDEncoderV1(state)
    return module.float().eval()
