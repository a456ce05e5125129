"""Identity adapter checkpoints: reading `.bin` / `.safetensors`, type detection, UNet compatibility.

Layouts (SPEC.md sections 2 and 3): a `.bin` is a torch pickle `{"image_proj": {...}, "ip_adapter": {...}}`; a
`.safetensors` is flat with the prefixes `image_proj.` and `ip_adapter.`. `ip_adapter` holds, per attention index
N of `list(unet.attn_processors)`, `N.to_k_ip.weight` / `N.to_v_ip.weight` (cross-attention layers, odd N) and for
FaceID / plus also `N.to_{q,k,v,out}_lora.{down,up}.weight` (every attention layer).

Type detection (keys and shapes first, the file name only where the published files are indistinguishable):
- `perceiver_resampler.proj_in.weight` in image_proj -> plus family. plus v1 and v2 share one layout (v2 only turns
  on the shortcut at run time), so: `plusv2` in the file name, or an SDXL width (no SDXL v1 was published) -> v2;
  otherwise v1.
- `proj.2.weight` + `norm.weight` (MLP): with LoRA keys -> `faceid`; without -> `faceid-portrait`.
- `latents` + `proj_in.weight` (Resampler): InstantID's `ip-adapter.bin` and h94's
  `ip-adapter-faceid-portrait_sdxl_unnorm.bin` have the same architecture and no LoRA, so the file name decides,
  as ComfyUI_IPAdapter_plus does: a name containing `faceid` or `unnorm` -> `faceid-portrait-unnorm`, else
  `instantid`. A renamed unnorm file reads as InstantID; pass `kind_hint` to override.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from idforge.errors import ModelFormatError

KINDS = (
    "instantid",
    "faceid",
    "faceid-plus",
    "faceid-plusv2",
    "faceid-portrait",
    "faceid-portrait-unnorm",
)
FACEID_KINDS = KINDS[1:]
SDXL_CROSS_DIM = 2048
SD15_CROSS_DIM = 768

_IP_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_LORA_KEY = re.compile(r"^(\d+)\.(to_(?:q|k|v|out)_lora\.(?:down|up)\.weight)$")


@dataclass
class AdapterCheckpoint:
    """A loaded identity adapter: projection weights, per-layer IP K/V weights, optional embedded LoRA."""

    kind: str
    path: str
    image_proj: dict[str, torch.Tensor]
    ip_layers: dict[int, tuple[torch.Tensor, torch.Tensor]]
    lora: dict[int, dict[str, torch.Tensor]]
    cross_dim: int
    num_tokens: int
    uses_raw_embedding: bool
    needs_clip: bool
    clip_width: int | None = None  # CLIP hidden width the plus perceiver expects (1280 for ViT-H)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def family(self) -> str:
        return family_name(self.cross_dim, len(self.ip_layers))


def family_name(cross_dim: int, num_layers: int) -> str:
    """SD1.5 / SDXL by cross-attention width, else the raw numbers (tiny kit models, other bases)."""
    if cross_dim == SD15_CROSS_DIM:
        return "SD1.5"
    if cross_dim == SDXL_CROSS_DIM:
        return "SDXL"
    return f"cross width {cross_dim}, {num_layers} layers"


def _read_raw(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """The two sub-dicts of a checkpoint file, whichever container it is."""
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: not a file")
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            flat = load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises its own error types for truncated/garbled headers
            raise ModelFormatError(f"{path}: unreadable safetensors file ({exc})") from exc
        parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        other = []
        for key, value in flat.items():
            prefix, _, rest = key.partition(".")
            if prefix in parts and rest:
                parts[prefix][rest] = value
            else:
                other.append(key)
        if other and not parts["image_proj"] and not parts["ip_adapter"]:
            raise ModelFormatError(
                f"{path}: no 'image_proj.' / 'ip_adapter.' keys; found e.g. {', '.join(sorted(other)[:4])}"
            )
        return parts
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, disallowed globals: all mean 'cannot read'
        raise ModelFormatError(f"{path}: unreadable torch checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ModelFormatError(
            f"{path}: expected a dict with 'image_proj' and 'ip_adapter', found {type(data).__name__}"
        )
    if "adapter_modules" in data and "ip_adapter" not in data:  # training-script dumps use this name
        data = {**data, "ip_adapter": data["adapter_modules"]}
    missing = [k for k in ("image_proj", "ip_adapter") if not isinstance(data.get(k), dict)]
    if missing:
        found = ", ".join(sorted(str(k) for k in data)[:6]) or "nothing"
        raise ModelFormatError(f"{path}: missing {' and '.join(missing)} (top-level keys found: {found})")
    return {"image_proj": dict(data["image_proj"]), "ip_adapter": dict(data["ip_adapter"])}


def _split_ip_adapter(path: str, ip_adapter: dict[str, torch.Tensor]):
    ip_k: dict[int, torch.Tensor] = {}
    ip_v: dict[int, torch.Tensor] = {}
    lora: dict[int, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in ip_adapter.items():
        if m := _IP_KEY.match(key):
            (ip_k if m.group(2) == "to_k_ip" else ip_v)[int(m.group(1))] = value
        elif m := _LORA_KEY.match(key):
            lora.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            unknown.append(key)
    if unknown:
        raise ModelFormatError(f"{path}: unknown ip_adapter keys, e.g. {', '.join(sorted(unknown)[:4])}")
    if not ip_k:
        raise ModelFormatError(
            f"{path}: ip_adapter has no 'N.to_k_ip.weight' keys ({len(ip_adapter)} keys found)"
        )
    if set(ip_k) != set(ip_v):
        odd = sorted(set(ip_k) ^ set(ip_v))
        raise ModelFormatError(f"{path}: to_k_ip / to_v_ip layers do not pair up (layers {odd[:6]})")
    ip_layers = {n: (ip_k[n], ip_v[n]) for n in sorted(ip_k)}
    for n, (k, v) in ip_layers.items():
        if k.dim() != 2 or k.shape != v.shape:
            raise ModelFormatError(
                f"{path}: layer {n} to_k_ip {tuple(k.shape)} / to_v_ip {tuple(v.shape)} malformed"
            )
    widths = {k.shape[1] for k, _ in ip_layers.values()}
    if len(widths) != 1:
        raise ModelFormatError(f"{path}: ip layers disagree on the cross-attention width ({sorted(widths)})")
    return ip_layers, lora


def _detect_kind(path: str, image_proj: dict[str, torch.Tensor], has_lora: bool, cross_dim: int) -> str:
    name = os.path.basename(path).lower()
    if "perceiver_resampler.proj_in.weight" in image_proj:
        if "plusv2" in name or cross_dim == SDXL_CROSS_DIM:
            return "faceid-plusv2"
        return "faceid-plus"
    if "proj.2.weight" in image_proj and "norm.weight" in image_proj and "proj.3.weight" not in image_proj:
        return "faceid" if has_lora else "faceid-portrait"
    if "latents" in image_proj and "proj_in.weight" in image_proj:
        latents = image_proj["latents"]
        in_dim = image_proj["proj_in.weight"].shape[1]
        if has_lora:
            raise ModelFormatError(
                f"{path}: Resampler projection with LoRA keys is not a known identity adapter"
            )
        if in_dim != 512:
            raise ModelFormatError(
                f"{path}: Resampler on a {in_dim}-wide input is an image (CLIP) IP-Adapter, not a face-embedding "
                "adapter (InstantID / FaceID expect 512)"
            )
        if "faceid" in name or "unnorm" in name:
            return "faceid-portrait-unnorm"
        if latents.dim() != 3:
            raise ModelFormatError(f"{path}: Resampler latents have shape {tuple(latents.shape)}")
        return "instantid"
    found = ", ".join(sorted(image_proj)[:5]) or "nothing"
    raise ModelFormatError(f"{path}: unknown image_proj layout (keys found: {found})")


def _num_tokens(kind: str, image_proj: dict[str, torch.Tensor], cross_dim: int) -> int:
    if kind in ("instantid", "faceid-portrait-unnorm"):
        return image_proj["latents"].shape[1]
    return image_proj["proj.2.weight"].shape[0] // image_proj["norm.weight"].shape[0]


def load_adapter_checkpoint(
    path: str | os.PathLike, *, expected_kind: str | None = None, kind_hint: str | None = None
) -> AdapterCheckpoint:
    """Read and classify an identity adapter file.

    expected_kind: "instantid", "faceid" (any FaceID variant) or one exact kind; a mismatch raises a
    ModelFormatError naming both. kind_hint: force one of the two kinds whose files are identical in layout
    (instantid / faceid-portrait-unnorm, faceid-plus / faceid-plusv2).
    """
    path = os.fspath(path)
    return adapter_from_state(_read_raw(path), path, expected_kind=expected_kind, kind_hint=kind_hint)


def adapter_from_state(
    parts: dict[str, dict[str, torch.Tensor]],
    path: str,
    *,
    expected_kind: str | None = None,
    kind_hint: str | None = None,
) -> AdapterCheckpoint:
    """Classify an adapter from its {"image_proj", "ip_adapter"} state dicts (a file's, or built in memory);
    `path` names it in messages."""
    image_proj, ip_adapter = parts["image_proj"], parts["ip_adapter"]
    if not image_proj:
        raise ModelFormatError(f"{path}: image_proj is empty")
    if not ip_adapter:
        raise ModelFormatError(f"{path}: ip_adapter is empty")
    ip_layers, lora = _split_ip_adapter(path, ip_adapter)
    cross_dim = next(iter(ip_layers.values()))[0].shape[1]
    kind = _detect_kind(path, image_proj, bool(lora), cross_dim)
    if kind_hint is not None:
        interchangeable = [{"instantid", "faceid-portrait-unnorm"}, {"faceid-plus", "faceid-plusv2"}]
        if not any({kind, kind_hint} <= pair for pair in interchangeable):
            raise ModelFormatError(
                f"{path}: kind_hint '{kind_hint}' does not fit the detected layout '{kind}'"
            )
        kind = kind_hint
    if expected_kind is not None:
        check_expected_kind(path, kind, expected_kind)

    clip_width = None
    if kind in ("faceid-plus", "faceid-plusv2"):
        clip_width = image_proj["perceiver_resampler.proj_in.weight"].shape[1]
    return AdapterCheckpoint(
        kind=kind,
        path=path,
        image_proj=image_proj,
        ip_layers=ip_layers,
        lora=lora,
        cross_dim=cross_dim,
        num_tokens=_num_tokens(kind, image_proj, cross_dim),
        uses_raw_embedding=kind in ("instantid", "faceid-portrait-unnorm"),
        needs_clip=kind in ("faceid-plus", "faceid-plusv2"),
        clip_width=clip_width,
    )


def check_expected_kind(path: str, kind: str, expected_kind: str) -> None:
    """Refuse a checkpoint of the wrong adapter family (an InstantID job given a FaceID file and vice versa)."""
    if expected_kind == "faceid":
        ok = kind in FACEID_KINDS
        wanted = "an IP-Adapter FaceID checkpoint"
    elif expected_kind in KINDS:
        ok = kind == expected_kind
        wanted = (
            "an InstantID checkpoint" if expected_kind == "instantid" else f"a '{expected_kind}' checkpoint"
        )
    else:
        raise ModelFormatError(
            f"unknown expected adapter kind '{expected_kind}' (known: faceid, {', '.join(KINDS)})"
        )
    if not ok:
        found = "an InstantID ip-adapter" if kind == "instantid" else f"an IP-Adapter FaceID '{kind}' file"
        raise ModelFormatError(f"{path}: this job needs {wanted}, but the file is {found}")


def _attention_modules(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """(processor name, Attention module) in `unet.attn_processors` order, which defines the index N."""
    modules = dict(unet.named_modules())
    out = []
    for name in unet.attn_processors:
        out.append((name, modules[name.removesuffix(".processor")]))
    return out


def check_compatible(ckpt: AdapterCheckpoint, unet: nn.Module, *, base_name: str) -> None:
    """Refuse, before any generation, a checkpoint whose layers or shapes do not fit this UNet."""
    attns = _attention_modules(unet)
    cross = [n for n, (name, _) in enumerate(attns) if name.endswith("attn2.processor")]
    base_cross_dim = unet.config.cross_attention_dim
    base_family = family_name(base_cross_dim, len(cross))

    def refuse(detail: str) -> None:
        raise ModelFormatError(
            f"adapter '{ckpt.name}' ({ckpt.kind}, {ckpt.family}) does not fit base '{base_name}' "
            f"({base_family}): {detail}"
        )

    if ckpt.cross_dim != base_cross_dim:
        refuse(f"adapter cross width {ckpt.cross_dim} != base cross width {base_cross_dim}")
    if set(ckpt.ip_layers) != set(cross):
        refuse(f"adapter has {len(ckpt.ip_layers)} IP layers, base has {len(cross)} cross-attention layers")
    for n, (k, _) in ckpt.ip_layers.items():
        hidden = attns[n][1].to_k.weight.shape[0]
        if tuple(k.shape) != (hidden, base_cross_dim):
            refuse(f"layer {n} to_k_ip is {tuple(k.shape)}, base needs {(hidden, base_cross_dim)}")
    for n, parts in ckpt.lora.items():
        if n >= len(attns):
            refuse(f"LoRA layer {n} beyond the base's {len(attns)} attention layers")
        attn = attns[n][1]
        for key, tensor in parts.items():
            target = _lora_target(attn, key)
            want_in, want_out = target.weight.shape[1], target.weight.shape[0]
            ok = tensor.shape[1] == want_in if key.endswith("down.weight") else tensor.shape[0] == want_out
            if not ok:
                refuse(
                    f"LoRA {n}.{key} is {tuple(tensor.shape)}, target weight is {tuple(target.weight.shape)}"
                )


def _lora_target(attn: nn.Module, key: str) -> nn.Module:
    """The Linear a FaceID LoRA key adapts: to_q_lora -> to_q, ..., to_out_lora -> to_out[0]."""
    proj = key.split("_lora.", 1)[0]
    return attn.to_out[0] if proj == "to_out" else getattr(attn, proj)
