"""LoRA merged into the UNet weights, with a bit-exact restore.

FaceID ships a LoRA for q, k, v, out of every attention layer, either embedded in the adapter (`N.to_q_lora.down
.weight` with N the index in `unet.attn_processors`) or as a separate `*_lora.safetensors` in kohya/A1111 format.
The reference applies it as `W x + lora_scale * up(down(x))` (IP-Adapter's LoRALinearLayer, network_alpha None,
so no alpha/rank factor); merging `W += strength * up @ down` gives the same output with no per-step cost.

Generic LoRA files (LCM-LoRA, Lightning, styles) are read in the usual formats:
- kohya / A1111: `lora_unet_<path with _>.lora_down.weight`, `.lora_up.weight`, `.alpha` (scale alpha / rank),
  the path being the LDM name (`input_blocks_4_1_...`) or the diffusers name (`down_blocks_1_attentions_0_...`);
- PEFT / diffusers: `[unet.]<module>.lora_A.weight` / `.lora_B.weight` (optional `.alpha`), the older
  `<module>.lora.down.weight` / `.lora.up.weight`, and attention-processor dicts (`...processor.to_q_lora.*`);
- IP-Adapter FaceID numbered keys (`N.to_q_lora.down.weight`).
Text-encoder keys (`lora_te*`, `text_encoder.*`) do not touch the UNet: they are reported in `skipped_keys`.

Every merge saves the original tensors of the weights it changes; `LoraHandle.remove()` puts them back, so the
UNet is bit-for-bit what it was. Remove stacked LoRAs in reverse order of application.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from idforge.errors import ModelFormatError, check_range
from idforge.identity.ldm_keys import unet_name_to_ldm

DEFAULT_FACEID_LORA_STRENGTH = 0.6
_FACEID_LORA_KEY = re.compile(r"^(\d+)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "te_", "lora_te1", "lora_te2", "text_encoder_2")


@dataclass
class LoraHandle:
    """Undo record of one merge: the original tensors of every changed weight."""

    unet: nn.Module
    originals: dict[str, torch.Tensor]
    strength: float
    source: str
    skipped_keys: list[str] = field(default_factory=list)
    removed: bool = False

    @property
    def modules(self) -> list[str]:
        return sorted(self.originals)

    def remove(self) -> None:
        """Restore the saved weights exactly (idempotent)."""
        if self.removed:
            return
        modules = dict(self.unet.named_modules())
        with torch.no_grad():
            for name, original in self.originals.items():
                modules[name].weight.data.copy_(original)
        self.removed = True


@dataclass
class LoraPart:
    """One low-rank update for a module: delta = scale * up @ down (conv kernels flattened)."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float = 1.0

    def check(self, weight_shape: torch.Size) -> None:
        """Refuse a part whose rank or size does not fit, from the shapes alone (nothing is computed)."""
        down_shape = self.down.flatten(1).shape
        up_shape = self.up.flatten(1).shape
        if up_shape[1] != down_shape[0]:
            raise ModelFormatError(
                f"LoRA up {tuple(self.up.shape)} and down {tuple(self.down.shape)} ranks differ"
            )
        if up_shape[0] * down_shape[1] != torch.Size(weight_shape).numel():
            raise ModelFormatError(
                f"LoRA delta {(up_shape[0], down_shape[1])} does not fit weight {tuple(weight_shape)}"
            )

    def delta(self, weight_shape: torch.Size, device: torch.device | None = None) -> torch.Tensor:
        """scale * up @ down in float32, on `device` (the weight's: a GPU merges on the GPU)."""
        self.check(weight_shape)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        return (self.scale * (up @ down)).reshape(weight_shape)


def merge_lora_parts(
    unet: nn.Module, parts: dict[str, list[LoraPart]], strength: float, source: str
) -> LoraHandle:
    """W += strength * sum(deltas) for each named module, computed in float32, saving the originals first.

    Every part is checked before any weight changes; then each module's delta is computed on the weight's device
    and merged at once, so at most one float32 delta exists at a time (not the whole LoRA's).
    """
    modules = dict(unet.named_modules())
    originals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, ps in parts.items():  # a malformed part fails before any weight has changed
            for part in ps:
                part.check(modules[name].weight.shape)
        for name, ps in parts.items():
            weight = modules[name].weight
            total = sum(p.delta(weight.shape, weight.device) for p in ps)
            originals[name] = weight.detach().clone()
            merged = weight.float() + strength * total
            weight.data.copy_(merged.to(weight.dtype))
    return LoraHandle(unet=unet, originals=originals, strength=strength, source=source)


def _attention_names(unet: nn.Module) -> list[str]:
    return [name.removesuffix(".processor") for name in unet.attn_processors]


def faceid_lora_parts(unet: nn.Module, lora: dict[int, dict[str, torch.Tensor]]) -> dict[str, list[LoraPart]]:
    """FaceID's per-index LoRA ({N: {"to_q_lora.down.weight": ...}}) as per-module parts."""
    attn_names = _attention_names(unet)
    parts: dict[str, list[LoraPart]] = {}
    for n, tensors in sorted(lora.items()):
        if n >= len(attn_names):
            raise ModelFormatError(
                f"FaceID LoRA layer {n}: the UNet has only {len(attn_names)} attention layers"
            )
        for proj in ("to_q", "to_k", "to_v", "to_out"):
            down = tensors.get(f"{proj}_lora.down.weight")
            up = tensors.get(f"{proj}_lora.up.weight")
            if down is None and up is None:
                continue
            if down is None or up is None:
                raise ModelFormatError(f"FaceID LoRA layer {n}.{proj}: down/up pair incomplete")
            target = f"{attn_names[n]}.{proj}" + (".0" if proj == "to_out" else "")
            parts.setdefault(target, []).append(LoraPart(down=down, up=up, scale=1.0))
    return parts


def apply_faceid_lora(
    unet: nn.Module,
    lora: dict[int, dict[str, torch.Tensor]],
    strength: float = DEFAULT_FACEID_LORA_STRENGTH,
    source: str = "faceid lora",
) -> LoraHandle:
    """Merge an adapter's embedded LoRA (AdapterCheckpoint.lora) with `strength` (ComfyUI default 0.6)."""
    check_range("lora_strength", strength, -4.0, 4.0)
    return merge_lora_parts(unet, faceid_lora_parts(unet, lora), strength, source)


# ---- generic LoRA files -------------------------------------------------------------------------------------


def ldm_module_name(unet: nn.Module, name: str) -> str | None:
    """The original (LDM / SGM) name of a diffusers UNet2DConditionModel module, or None if it has none.

    One mapping serves single-file writing and LoRA naming: `idforge.identity.ldm_keys`.
    """
    layers_per_block = unet.config.layers_per_block
    if not isinstance(layers_per_block, int):
        return None
    with_attention = {i for i, block in enumerate(unet.up_blocks) if hasattr(block, "attentions")}
    try:
        return unet_name_to_ldm(name, layers_per_block, with_attention)
    except KeyError:
        return None


def kohya_name_table(unet: nn.Module) -> dict[str, str]:
    """kohya key stem (`lora_unet_...`, LDM or diffusers spelling) -> diffusers module name, for every layer."""
    table: dict[str, str] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        table["lora_unet_" + name.replace(".", "_")] = name
        ldm = ldm_module_name(unet, name)
        if ldm is not None:
            table["lora_unet_" + ldm.replace(".", "_")] = name
    return table


def read_lora_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Flat tensor dict of a `.safetensors` or torch `.bin`/`.pt` LoRA file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: not a file")
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFormatError(f"{path}: unreadable LoRA file ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelFormatError(f"{path}: not a flat dict of tensors")
    return data


def _rank_scale(alpha: torch.Tensor | None, down: torch.Tensor) -> float:
    return 1.0 if alpha is None else float(alpha) / down.shape[0]


def lora_parts_from_state_dict(unet: nn.Module, state_dict: dict[str, torch.Tensor], source: str):
    """Per-module LoRA parts and the skipped (text-encoder) keys of any supported LoRA layout."""
    modules = dict(unet.named_modules())
    attn_names = _attention_names(unet)
    table: dict[str, str] | None = None
    groups: dict[str, dict[str, torch.Tensor]] = {}  # module name -> {"down", "up", "alpha"}
    skipped: list[str] = []
    unknown: list[str] = []

    for key, tensor in state_dict.items():
        if key.startswith(_TEXT_ENCODER_PREFIXES):
            skipped.append(key)
            continue
        if m := _FACEID_LORA_KEY.match(key):
            n = int(m[1])
            if n >= len(attn_names):
                unknown.append(key)
                continue
            target = f"{attn_names[n]}.{m[2]}" + (".0" if m[2] == "to_out" else "")
            groups.setdefault(target, {})[m[3]] = tensor
            continue
        if key.startswith("lora_unet_"):
            stem, _, suffix = key.partition(".")
            role = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}.get(suffix)
            table = table if table is not None else kohya_name_table(unet)
            if role is None or stem not in table:
                unknown.append(key)
                continue
            groups.setdefault(table[stem], {})[role] = tensor
            continue
        bare = key.removeprefix("unet.").removeprefix("base_model.model.")
        for pattern, role in (
            (r"^(.+)\.lora_A(?:\.default)?\.weight$", "down"),
            (r"^(.+)\.lora_B(?:\.default)?\.weight$", "up"),
            (r"^(.+)\.lora\.down\.weight$", "down"),
            (r"^(.+)\.lora\.up\.weight$", "up"),
            (r"^(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$", None),
            (r"^(.+)\.alpha$", "alpha"),
        ):
            if m := re.match(pattern, bare):
                if role is None:
                    target = f"{m[1]}.{m[2]}" + (".0" if m[2] == "to_out" else "")
                    role = m[3]
                else:
                    target = m[1]
                if target in modules and hasattr(modules[target], "weight"):
                    groups.setdefault(target, {})[role] = tensor
                else:
                    unknown.append(key)
                break
        else:
            unknown.append(key)

    if unknown:
        raise ModelFormatError(
            f"{source}: {len(unknown)} LoRA keys match no UNet layer, e.g. {', '.join(sorted(unknown)[:3])}"
        )
    parts: dict[str, list[LoraPart]] = {}
    for target, group in groups.items():
        if "down" not in group or "up" not in group:
            raise ModelFormatError(
                f"{source}: LoRA for '{target}' lacks its {'down' if 'up' in group else 'up'} weight"
            )
        scale = _rank_scale(group.get("alpha"), group["down"])
        parts[target] = [LoraPart(down=group["down"], up=group["up"], scale=scale)]
    if not parts:
        raise ModelFormatError(
            f"{source}: no UNet LoRA weights found ({len(state_dict)} keys, {len(skipped)} text-encoder)"
        )
    return parts, skipped


def apply_lora_state_dict(
    unet: nn.Module, state_dict: dict[str, torch.Tensor], strength: float = 1.0, source: str = "lora"
) -> LoraHandle:
    """Merge a LoRA state dict of any supported layout into the UNet."""
    check_range("lora_strength", strength, -4.0, 4.0)
    parts, skipped = lora_parts_from_state_dict(unet, state_dict, source)
    handle = merge_lora_parts(unet, parts, strength, source)
    handle.skipped_keys = skipped
    return handle


def apply_lora_file(unet: nn.Module, path: str | os.PathLike, strength: float = 1.0) -> LoraHandle:
    """Merge a LoRA file (kohya, PEFT/diffusers or FaceID layout) with `strength`; `remove()` undoes it."""
    path = os.fspath(path)
    return apply_lora_state_dict(unet, read_lora_file(path), strength, source=path)
