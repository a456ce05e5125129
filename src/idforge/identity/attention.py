"""IP cross-attention for identity adapters (InstantID, IP-Adapter FaceID), any number at once.

Every cross-attention layer of the UNet gets one `IdentityAttnProcessor`. It computes the text attention exactly
as diffusers' `AttnProcessor2_0` does, then adds, for each identity adapter active at the current timestep,

    w_t * mask * Attn(q, to_k_ip(tokens), to_v_ip(tokens))          (SPEC.md sections 2 and 3)

before the output projection, with w_t the adapter's weight for the layer's transformer block (weight types),
the tokens of each sample's own reference (cond/uncond halves of the CFG batch, swapped on the layers a
"precise" weight type marks), and the embeds-scaling mode deciding where w_t enters. PuLID's adapters also set a
`projection` (none | ortho | ortho_v2: how their output joins the text attention's, `_project_out`) and
`zero_tokens` (zero tokens appended to their tokens, whose keys and values are zeros). All per-call state lives
in one `IdentityAttention` controller that installs and removes the processors; the processors only read it.

The start/end window and the mask rule are shared with the engine's ControlNet gating: `timestep_window` and
`is_active` here, `mask_for_tokens` in masks.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from idforge.errors import ModelFormatError, ParameterError, check_choice, check_range
from idforge.identity.layers import AttentionLayer, attention_layers, detect_family
from idforge.identity.masks import mask_for_tokens
from idforge.identity.weight_types import layer_weights as weight_type_layers

ScalingMode = Literal["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]
SCALING_MODES: tuple[str, ...] = get_args(ScalingMode)
# How an adapter's output joins the text attention's (PuLID): added as is, or its part orthogonal to the text
# output (ortho), or that with a per-position gate from the attention on the first ID tokens (ortho_v2).
PROJECTIONS: tuple[str, ...] = ("none", "ortho", "ortho_v2")
ORTHO_V2_GATE_TOKENS = 5  # PuLID's official gate sums the attention on the first 5 ID tokens

# The width at which the "C penalty" modes leave the weight unchanged (ComfyUI_IPAdapter_plus).
PENALTY_WIDTH = 1280.0

Window = tuple[float, float]


def timestep_window(start_at: float, end_at: float) -> Window:
    """(t_start, t_end) in model timesteps for start/end percents of the schedule (ComfyUI's mapping).

    A percent p maps to t = (1 - p) * 999; p <= 0 is "always started" (t_start = +inf) and p >= 1 is "never
    ended" (t_end = -inf), so schedules with timesteps outside [0, 999] are still covered.
    """
    t_start = math.inf if start_at <= 0.0 else (1.0 - start_at) * 999.0
    t_end = -math.inf if end_at >= 1.0 else (1.0 - end_at) * 999.0
    return t_start, t_end


def is_active(t: float, window: Window) -> bool:
    """True when timestep `t` lies in the window: t_end <= t <= t_start."""
    t_start, t_end = window
    return t_end <= float(t) <= t_start


@dataclass
class AdapterInputs:
    """What one adapter contributes during one generation call."""

    cond: torch.Tensor  # (B or 1, T, C)
    uncond: torch.Tensor  # (B or 1, T, C)
    weights: dict[int, tuple[float, bool]]  # transformer block t -> (weight, swap cond/uncond)
    scaling: str
    window: Window
    mask: torch.Tensor | None  # (H, W) or (B, H, W), any resolution
    projection: str = "none"  # PROJECTIONS
    zero_tokens: int = 0  # zero tokens appended to the adapter's tokens (PuLID's NUM_ZERO)


@dataclass
class _Adapter:
    """An adapter's per-layer IP weights (master copies plus the last device/dtype cast of them)."""

    cross_dim: int
    ip_layers: dict[int, tuple[torch.Tensor, torch.Tensor]]
    cast: dict[int, tuple[torch.Tensor, torch.Tensor]]
    source: Mapping[int, tuple[torch.Tensor, torch.Tensor]]  # the mapping given to add_adapter
    inputs: AdapterInputs | None = None


def _fit_batch(x: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """`x` with batch n: as is, or a batch of 1 broadcast; anything else is the caller's mistake."""
    if x.shape[0] == n:
        return x
    if x.shape[0] == 1:
        return x.expand(n, *x.shape[1:])
    raise ParameterError(what, f"batch of {x.shape[0]} does not match the generation batch of {n}")


class IdentityAttnProcessor:
    """Text attention (as `AttnProcessor2_0`) plus the IP attention of every active identity adapter."""

    def __init__(self, controller: IdentityAttention, layer: AttentionLayer) -> None:
        self.controller = controller
        self.layer = layer

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        if getattr(attn, "fused_projections", False) and getattr(attn, "to_kv", None) is not None:
            key, value = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)  # engine/fastpath.py fuse_qkv
        else:
            key = attn.to_k(encoder_hidden_states)
            value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        text_out = out
        for name in self.controller.active_adapters:
            ip_out = self._ip_attention(name, query, attn.heads, head_dim, out.shape[1], text_out)
            if ip_out is not None:
                out = out + ip_out

        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _ip_attention(
        self,
        name: str,
        query: torch.Tensor,
        heads: int,
        head_dim: int,
        num_tokens: int,
        text_out: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """One adapter's scaled (and masked) IP attention for this layer (None: nothing on this layer)."""
        controller = self.controller
        inputs = controller.adapter_inputs(name)
        weight, swap = inputs.weights.get(self.layer.t, (0.0, False))
        if weight == 0.0:
            return None
        batch_size = query.shape[0]
        ip_key, ip_value = controller.ip_key_value(
            name, self.layer.index, swap, batch_size, query.dtype, query.device
        )

        scaling = inputs.scaling
        if scaling != "V only":
            kv_weight = weight
            if scaling != "K+V":
                kv_weight = weight * ip_key.shape[-1] / PENALTY_WIDTH
            ip_key = ip_key * kv_weight
            if scaling == "K+mean(V) w/ C penalty":
                mean = ip_value.mean(dim=1, keepdim=True)
                ip_value = (ip_value - mean) + mean * kv_weight
            else:
                ip_value = ip_value * kv_weight

        ip_key = ip_key.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        ip_value = ip_value.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        ip_out = F.scaled_dot_product_attention(query, ip_key, ip_value, dropout_p=0.0)
        ip_out = ip_out.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(query.dtype)
        if inputs.projection != "none" and text_out is not None:
            ip_out = _project_out(inputs.projection, query, ip_key, text_out, ip_out) * weight
        elif scaling == "V only":
            ip_out = ip_out * weight

        mask = controller.batch_mask(name, num_tokens, batch_size)
        if mask is not None:
            ip_out = ip_out * mask.to(device=ip_out.device, dtype=ip_out.dtype)
        return ip_out


def _project_out(
    mode: str, query: torch.Tensor, ip_key: torch.Tensor, text_out: torch.Tensor, ip_out: torch.Tensor
) -> torch.Tensor:
    """PuLID's ortho / ortho_v2 (official attention_processor.py), in float32, before the weight: the projection of
    the ID output onto the text output is taken per channel over the positions (dim -2); ortho keeps the ID output
    minus it; ortho_v2 subtracts it scaled by (1 - g), g per position the attention mass (softmax of the unscaled
    q.k over the ID tokens, mean over heads) on the first 5 ID tokens."""
    out = text_out.float()
    ip = ip_out.float()
    # A channel whose text output is zero at every position (SDXL's zeroed embeddings of an empty negative prompt)
    # has nothing to project onto: its projection is 0 (the official code divides by zero there: NaN).
    energy = (out * out).sum(dim=-2, keepdim=True)
    ratio = (out * ip).sum(dim=-2, keepdim=True) / torch.where(energy > 0, energy, torch.ones_like(energy))
    projection = torch.where(energy > 0, ratio, torch.zeros_like(ratio)) * out
    if mode == "ortho":
        result = ip - projection
    else:
        scores = query @ ip_key.transpose(-2, -1)  # (B, heads, L, T), unscaled as the official code
        gate = scores.softmax(dim=-1).mean(dim=1)[:, :, :ORTHO_V2_GATE_TOKENS].sum(dim=-1, keepdim=True)
        result = ip + (gate.float() - 1.0) * projection
    return result.to(ip_out.dtype)


def attach_prepared(
    attention: IdentityAttention,
    name: str,
    ip_layers: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    prepared: Any,
    params: Any,
    mask: np.ndarray | None,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """One adapter of an adapter method (FaceID's adapter, PuLID's ID branch) on the identity attention: its
    prepared tokens moved to where the UNet runs, its optional mask (a region, (H, W)) and how it acts
    (`params.adapter_inputs()`). The single-image path attaches one; several people one per person."""
    attention.add_adapter(name, ip_layers)
    attention.set_adapter_inputs(
        name,
        cond_tokens=prepared.cond_tokens.to(device=device, dtype=dtype),
        uncond_tokens=prepared.uncond_tokens.to(device=device, dtype=dtype),
        mask=None if mask is None else torch.from_numpy(mask),
        **params.adapter_inputs(),
    )


class IdentityAttention:
    """Installs identity IP attention on a UNet and holds the per-call state its processors read.

    Typical use by the engine::

        ida = IdentityAttention(unet)
        ida.add_adapter("instantid", ckpt.ip_layers)
        ida.set_adapter_inputs("instantid", cond, uncond, weight=0.8, start_at=0.0, end_at=1.0)
        ida.set_cfg(guidance_scale > 1); ida.set_latent_size(latents.shape[-2:])
        with ida:                              # install(); remove() on exit
            for t in timesteps:
                ida.set_timestep(t)
                unet(...)
    """

    def __init__(self, unet: torch.nn.Module, *, cache_kv: bool = True) -> None:
        self.unet = unet
        # The face tokens are fixed for a call: their K/V per layer are computed on the first step and reused
        # (bit-exact; `cache_kv=False` recomputes them every step, as the tests compare).
        self.cache_kv = cache_kv
        self._kv_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.layers = attention_layers(unet)
        self.cross_layers = [layer for layer in self.layers if layer.is_cross]
        self.family = detect_family(self.cross_layers)
        self._adapters: dict[str, _Adapter] = {}
        self._original: dict[str, object] | None = None
        self._cfg = True
        self._timestep: float | None = None
        self._latent_hw: tuple[int, int] | None = None
        self._mask_cache: dict[tuple[str, int], torch.Tensor] = {}
        self.active_adapters: list[str] = []

    # ---- adapters -------------------------------------------------------------------------------------

    def add_adapter(self, name: str, ip_layers: Mapping[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Register an adapter's IP weights: N -> (to_k_ip.weight, to_v_ip.weight), each (hidden_N, C)."""
        expected = {layer.index: layer for layer in self.cross_layers}
        given = set(ip_layers)
        if given != set(expected):
            missing = sorted(set(expected) - given)
            extra = sorted(given - set(expected))
            raise ModelFormatError(
                f"adapter '{name}': IP layers do not match this UNet's {len(expected)} cross-attention layers "
                f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                f"unexpected {extra[:4]}{'...' if len(extra) > 4 else ''}); wrong base model?"
            )
        cross_dim = None
        for index, (to_k_ip, to_v_ip) in sorted(ip_layers.items()):
            hidden = expected[index].hidden
            if to_k_ip.ndim != 2 or to_k_ip.shape != to_v_ip.shape or to_k_ip.shape[0] != hidden:
                raise ModelFormatError(
                    f"adapter '{name}': layer {index} IP weights have shapes {tuple(to_k_ip.shape)} and "
                    f"{tuple(to_v_ip.shape)}, this UNet needs ({hidden}, C); wrong base model?"
                )
            if cross_dim is None:
                cross_dim = int(to_k_ip.shape[1])
            elif to_k_ip.shape[1] != cross_dim:
                raise ModelFormatError(
                    f"adapter '{name}': layer {index} has C={to_k_ip.shape[1]}, others {cross_dim}"
                )
        self._kv_cache = {}
        # Several adapters from one checkpoint (one per person in a multi-person image) share the weights and
        # their device/dtype casts, so N persons cost one copy of the IP weights on the GPU, not N.
        shared = next((other for other in self._adapters.values() if other.source is ip_layers), None)
        self._adapters[name] = _Adapter(
            cross_dim=int(cross_dim or 0),
            ip_layers=shared.ip_layers
            if shared is not None
            else {index: (k.detach(), v.detach()) for index, (k, v) in ip_layers.items()},
            cast=shared.cast if shared is not None else {},
            source=ip_layers,
        )
        self._refresh_active()

    def remove_adapter(self, name: str) -> None:
        """Forget an adapter (its weights and inputs)."""
        self._adapters.pop(name, None)
        self._kv_cache = {}
        self._mask_cache = {key: value for key, value in self._mask_cache.items() if key[0] != name}
        self._refresh_active()

    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    def set_adapter_inputs(
        self,
        name: str,
        cond_tokens: torch.Tensor,
        uncond_tokens: torch.Tensor,
        weight: float = 1.0,
        weight_type: str = "linear",
        scaling: str = "V only",
        start_at: float = 0.0,
        end_at: float = 1.0,
        mask: torch.Tensor | None = None,
        layer_weights: Mapping[int, tuple[float, bool]] | None = None,
        projection: str = "none",
        zero_tokens: int = 0,
    ) -> None:
        """Set what adapter `name` contributes for the next generation call.

        cond/uncond tokens are (B, T, C) (batch element i uses its own reference) or (1, T, C) for all.
        `layer_weights` (t -> (weight, swap)) overrides `weight`/`weight_type` when given. `projection` and
        `zero_tokens` are PuLID's (PROJECTIONS; zero tokens appended to the tokens, whose K/V are zeros).
        """
        adapter = self._adapter(name)
        for label, tokens in (("cond_tokens", cond_tokens), ("uncond_tokens", uncond_tokens)):
            if tokens.ndim != 3 or tokens.shape[-1] != adapter.cross_dim:
                raise ParameterError(
                    label,
                    f"expected (B, T, {adapter.cross_dim}) tokens for '{name}', got {tuple(tokens.shape)}",
                )
        if cond_tokens.shape[1] != uncond_tokens.shape[1]:
            raise ParameterError(
                "uncond_tokens",
                f"{uncond_tokens.shape[1]} tokens per sample, cond has {cond_tokens.shape[1]}",
            )
        check_choice("embeds_scaling", scaling, SCALING_MODES)
        check_choice("projection", projection, PROJECTIONS)
        if projection != "none" and scaling != "V only":
            raise ParameterError("projection", f"{projection} needs embeds scaling 'V only', not {scaling!r}")
        if zero_tokens < 0:
            raise ParameterError("zero_tokens", f"{zero_tokens} is negative")
        check_range("start_at", start_at, 0.0, 1.0)
        check_range("end_at", end_at, 0.0, 1.0)
        if start_at > end_at:
            raise ParameterError("start_at", f"{start_at} is after end_at {end_at}")
        if mask is not None:
            if mask.ndim not in (2, 3):
                raise ParameterError(
                    "mask", f"expected a (H, W) or (B, H, W) tensor, got shape {tuple(mask.shape)}"
                )
            if mask.dtype == torch.bool:
                mask = mask.float()
            elif not mask.is_floating_point():
                raise ParameterError("mask", f"expected float values in [0, 1], got {mask.dtype}")
        if layer_weights is None:
            weights = weight_type_layers(weight_type, weight, self.cross_layers)
        else:
            weights = {int(t): (float(w), bool(swap)) for t, (w, swap) in layer_weights.items()}
        self._kv_cache = {}
        adapter.inputs = AdapterInputs(
            cond=cond_tokens,
            uncond=uncond_tokens,
            weights=weights,
            scaling=scaling,
            window=timestep_window(start_at, end_at),
            mask=mask,
            projection=projection,
            zero_tokens=int(zero_tokens),
        )
        self._mask_cache = {key: value for key, value in self._mask_cache.items() if key[0] != name}
        self._refresh_active()

    def clear_adapter_inputs(self, name: str | None = None) -> None:
        """Disable one adapter (or all) until its inputs are set again; its weights stay registered."""
        for key, adapter in self._adapters.items():
            if name is None or key == name:
                adapter.inputs = None
        self._kv_cache = {}
        self._mask_cache = {}
        self._refresh_active()

    def adapter_inputs(self, name: str) -> AdapterInputs:
        inputs = self._adapter(name).inputs
        if inputs is None:
            raise ParameterError(name, "adapter inputs are not set")
        return inputs

    # ---- per-call state --------------------------------------------------------------------------------

    def set_cfg(self, enabled: bool) -> None:
        """True when the UNet batch is [uncond (B), cond (B)]; False when it is the cond batch only."""
        self._cfg = bool(enabled)

    def set_timestep(self, t: float | torch.Tensor | None) -> None:
        """The model timestep of the coming UNet call (None: ignore the start/end windows)."""
        self._timestep = None if t is None else float(t)
        self._refresh_active()

    def set_latent_size(self, latent_hw: tuple[int, int]) -> None:
        """The latent's (h, w): masks are fitted to each layer's token grid from it."""
        self._latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self._mask_cache = {}

    def _adapter(self, name: str) -> _Adapter:
        if name not in self._adapters:
            listed = ", ".join(repr(key) for key in self._adapters) or "none"
            raise ParameterError("adapter", f"{name!r} is not registered (registered: {listed})")
        return self._adapters[name]

    def ip_key_value(
        self, name: str, index: int, swap: bool, batch_size: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer N's IP key and value of adapter `name` for the UNet batch (unscaled), cached per call."""
        key = (name, index, swap, batch_size, self._cfg, dtype, device)
        cached = self._kv_cache.get(key) if self.cache_kv else None
        if cached is None:
            to_k_ip, to_v_ip = self.layer_ip_weights(name, index, dtype, device)
            tokens = self.batch_tokens(name, swap, batch_size).to(device=device, dtype=dtype)
            zeros = self.adapter_inputs(name).zero_tokens
            if zeros:  # K/V of zero tokens through bias-free projections are zeros, as the official code's
                pad = tokens.new_zeros(tokens.shape[0], zeros, tokens.shape[-1])
                tokens = torch.cat([tokens, pad], dim=1)
            cached = (F.linear(tokens, to_k_ip), F.linear(tokens, to_v_ip))
            if self.cache_kv:
                self._kv_cache[key] = cached
        return cached

    def _refresh_active(self) -> None:
        """Recompute which adapters contribute at the current timestep (read by every processor)."""
        active = []
        for name, adapter in self._adapters.items():
            inputs = adapter.inputs
            if inputs is None or not any(w != 0.0 for w, _ in inputs.weights.values()):
                continue
            if self._timestep is not None and not is_active(self._timestep, inputs.window):
                continue
            active.append(name)
        self.active_adapters = active

    # ---- read by the processors ---------------------------------------------------------------------------

    def layer_ip_weights(
        self, name: str, index: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer N's (to_k_ip, to_v_ip) on the hidden states' device and dtype (cast once, then reused)."""
        adapter = self._adapters[name]
        cached = adapter.cast.get(index)
        if cached is None or cached[0].dtype != dtype or cached[0].device != device:
            to_k_ip, to_v_ip = adapter.ip_layers[index]
            cached = (to_k_ip.to(device=device, dtype=dtype), to_v_ip.to(device=device, dtype=dtype))
            adapter.cast[index] = cached
        return cached

    def batch_tokens(self, name: str, swap: bool, batch_size: int) -> torch.Tensor:
        """IP tokens lined up with the UNet batch: [uncond, cond] under CFG, cond alone without (swap flips)."""
        inputs = self.adapter_inputs(name)
        first, second = (inputs.cond, inputs.uncond) if swap else (inputs.uncond, inputs.cond)
        if not self._cfg:
            return _fit_batch(second, batch_size, "cond_tokens")
        if batch_size % 2:
            raise ParameterError("batch", f"a CFG batch must be even, got {batch_size}")
        half = batch_size // 2
        return torch.cat([_fit_batch(first, half, "uncond_tokens"), _fit_batch(second, half, "cond_tokens")])

    def batch_mask(self, name: str, num_tokens: int, batch_size: int) -> torch.Tensor | None:
        """The adapter's mask on this layer's token grid, (1 or batch, L, 1), or None without a mask."""
        mask = self.adapter_inputs(name).mask
        if mask is None:
            return None
        key = (name, num_tokens)
        fitted = self._mask_cache.get(key)
        if fitted is None:
            if self._latent_hw is None:
                raise ParameterError(
                    "mask", "the latent size is unknown: call set_latent_size before the UNet"
                )
            fitted = mask_for_tokens(mask, self._latent_hw, num_tokens)
            fitted = fitted.unsqueeze(0) if fitted.ndim == 2 else fitted
            self._mask_cache[key] = fitted
        if fitted.shape[0] == 1:
            return fitted
        if not self._cfg:
            return _fit_batch(fitted, batch_size, "mask")
        half = _fit_batch(fitted, batch_size // 2, "mask")
        return torch.cat([half, half])

    # ---- install / remove -------------------------------------------------------------------------------

    @property
    def installed(self) -> bool:
        return self._original is not None

    def install(self) -> None:
        """Put an `IdentityAttnProcessor` on every cross-attention layer, keeping the originals to restore."""
        if self._original is not None:
            return
        original = dict(self.unet.attn_processors)
        replaced = dict(original)
        for layer in self.cross_layers:
            replaced[layer.name] = IdentityAttnProcessor(self, layer)
        self.unet.set_attn_processor(replaced)
        self._original = original

    def remove(self) -> None:
        """Restore the exact processor objects the UNet had before `install`."""
        if self._original is None:
            return
        self.unet.set_attn_processor(dict(self._original))
        self._original = None

    def __enter__(self) -> IdentityAttention:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
