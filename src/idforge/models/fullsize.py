"""Full-size SDXL-family networks with random weights, built from the configs that ship with idforge.

Real weights cannot be downloaded here, but speed and memory depend only on the architecture: a UNet built from
`configs/sdxl-base/unet/config.json` with random weights runs the same kernels on the same shapes, and counts the
same FLOPs, as stabilityai's. Every network the methods use is here: the SDXL UNet, VAE and both CLIP text
encoders, IdentityNet, the depth ControlNets (full / mid / small), InstantID's Resampler and IP weights, and
IP-Adapter FaceID SDXL's MLP projection, IP weights and LoRA.

Networks are built straight in the target dtype and device (a 2.6 B-parameter UNet never exists in fp32), seeded
per part. ControlNet zero convolutions get small random values so that every ControlNet changes the output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).resolve().parent / "configs"
DEPTH_CONFIGS = {
    "full": "controlnet-depth-sdxl-1.0",
    "mid": "controlnet-depth-sdxl-1.0-mid",
    "small": "controlnet-depth-sdxl-1.0-small",
}
# Parameter counts of the published checkpoints (SPEC.md section 9), checked by the tests.
PUBLISHED_PARAMS_M = {"unet": 2567.5, "identitynet": 1251.0, "depth_mid": 272.6}
ZERO_LAYER_GAIN = 0.1
ZERO_LAYERS = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")


def _read(rel: str) -> dict[str, Any]:
    return json.loads((CONFIGS / rel).read_text(encoding="utf-8"))


@dataclass
class FullConfigs:
    """The architecture of every network: diffusers / transformers config dicts and the adapter widths."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    identitynet: dict[str, Any]
    depth: dict[str, dict[str, Any]]  # "full" | "mid" | "small" -> ControlNet config
    adapters: dict[str, Any]  # "instantid", "faceid_sdxl" -> published widths


def shipped_configs() -> FullConfigs:
    """The configs that ship under idforge/models/configs (public facts of the published models)."""
    return FullConfigs(
        unet=_read("sdxl-base/unet/config.json"),
        vae=_read("sdxl-base/vae/config.json"),
        text_encoder=_read("sdxl-base/text_encoder/config.json"),
        text_encoder_2=_read("sdxl-base/text_encoder_2/config.json"),
        identitynet=_read("instantid-identitynet/config.json"),
        depth={size: _read(f"{name}/config.json") for size, name in DEPTH_CONFIGS.items()},
        adapters=_read("identity-adapters-sdxl/config.json"),
    )


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in `dtype` (parameters are created in the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}


@torch.no_grad()
def _build(make: Callable[[], torch.nn.Module], dtype: torch.dtype, device: torch.device, seed: int):
    """Construct with the libraries' own random init (seeded), in `dtype` on `device`."""
    torch.manual_seed(seed)
    with default_dtype(dtype), torch.device(device):
        model = make()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def wake_zero_layers(controlnet: torch.nn.Module, seed: int) -> None:
    """ControlNet zero convolutions start at zero; small random values make the ControlNet matter."""
    generator = torch.Generator("cpu").manual_seed(seed)
    for name, param in controlnet.named_parameters():
        if name.startswith(ZERO_LAYERS):
            fan_in = max(param[0].numel(), 1) if param.ndim > 1 else 1
            values = torch.randn(param.shape, generator=generator) * (ZERO_LAYER_GAIN / fan_in**0.5)
            param.copy_(values.to(param.dtype))


def build_unet(config: dict[str, Any], dtype: torch.dtype, device: torch.device, seed: int = 0):
    from diffusers import UNet2DConditionModel

    return _build(lambda: UNet2DConditionModel.from_config(_clean(config)), dtype, device, seed)


def build_vae(config: dict[str, Any], dtype: torch.dtype, device: torch.device, seed: int = 1):
    from diffusers import AutoencoderKL

    return _build(lambda: AutoencoderKL.from_config(_clean(config)), dtype, device, seed)


def build_controlnet(config: dict[str, Any], dtype: torch.dtype, device: torch.device, seed: int):
    from diffusers import ControlNetModel

    model = _build(lambda: ControlNetModel.from_config(_clean(config)), dtype, device, seed)
    wake_zero_layers(model, seed)
    return model


def build_text_encoder(config: dict[str, Any], with_projection: bool, dtype, device, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    text_config = CLIPTextConfig(**_clean(config))
    return _build(lambda: cls(text_config), dtype, device, seed)


def sdxl_tokenizers():
    """SDXL's two CLIP tokenizers from the shipped tokenizer configs and the shipped CLIP BPE vocabulary."""
    from transformers import CLIPTokenizer

    from idforge.models.singlefile import shipped_config_dir

    folder = shipped_config_dir("sdxl")
    return CLIPTokenizer.from_pretrained(folder / "tokenizer"), CLIPTokenizer.from_pretrained(
        folder / "tokenizer_2"
    )


def sdxl_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(_read("sdxl-base/scheduler/scheduler_config.json"))


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {key: value.to(dtype) for key, value in state.items()}


def instantid_adapter_state(unet, widths: dict[str, Any], dtype: torch.dtype, seed: int = 5) -> dict:
    """InstantID's ip-adapter.bin at full size: Resampler (dim 1280, 16 queries) + N.to_k_ip/to_v_ip."""
    from idforge.models.kit.common import part_generator
    from idforge.models.kit.layout import attention_slots
    from idforge.models.kit.projections import ip_attention, resampler

    g = part_generator(seed, "full/instantid")
    image_proj = resampler(
        g,
        dim=widths["dim"],
        input_dim=widths["embedding_dim"],
        output_dim=widths["output_dim"],
        depth=widths["depth"],
        num_queries=widths["num_queries"],
    )
    ip_adapter: dict[str, torch.Tensor] = {}
    for slot in attention_slots(unet):  # one layer at a time: never the whole adapter in fp32
        ip_adapter.update(_cast(ip_attention(g, [slot], token_width=widths["output_dim"]), dtype))
    return {"image_proj": _cast(image_proj, dtype), "ip_adapter": ip_adapter}


def faceid_sdxl_adapter_state(unet, widths: dict[str, Any], dtype: torch.dtype, seed: int = 6) -> dict:
    """ip-adapter-faceid_sdxl.bin at full size: MLP projection, IP weights and the embedded rank-128 LoRA."""
    from idforge.models.kit.common import part_generator
    from idforge.models.kit.layout import attention_slots
    from idforge.models.kit.projections import faceid_mlp, ip_attention

    g = part_generator(seed, "full/faceid_sdxl")
    image_proj = faceid_mlp(g, widths["output_dim"], widths["tokens"])
    ip_adapter: dict[str, torch.Tensor] = {}
    for slot in attention_slots(unet):
        state = ip_attention(g, [slot], token_width=widths["output_dim"], lora_rank=widths["lora_rank"])
        ip_adapter.update(_cast(state, dtype))
    return {"image_proj": _cast(image_proj, dtype), "ip_adapter": ip_adapter}


@dataclass
class FullModels:
    """Every full-size network, in memory."""

    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    scheduler: Any
    identitynet: Any | None = None
    depth: dict[str, Any] = field(default_factory=dict)  # size -> ControlNetModel
    instantid_adapter: dict | None = None  # {"image_proj", "ip_adapter"} state dicts
    faceid_adapter: dict | None = None
    pulid: dict | None = None  # {"checkpoint": PulidCheckpoint, "eva": visual state, "parser": BiSeNet state}
    build_seconds: dict[str, float] = field(default_factory=dict)

    def pipeline(self):
        """diffusers' StableDiffusionXLPipeline over these components (no copy)."""
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=self.scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


# PuLID at its published sizes (ToTheBeginning/PuLID v1.1, EVA02-CLIP-L-14-336, facexlib's BiSeNet).
PULID_FULL = {"dim": 1024, "vit": 1024, "id": 512 + 768, "eva_depth": 24, "eva_mlp": 2730, "eva_grid": 24}


def pulid_full_parts(unet) -> dict[str, Any]:
    """PuLID v1.1 (IDFormer 1024 wide, 32 queries, ID K/V for every cross-attention layer of `unet`), EVA02-L at
    336 px and the 64-wide BiSeNet, random weights in their published layouts (float32: these run once a call)."""
    from idforge.identity.pulid import PulidCheckpoint, build_id_encoder
    from idforge.models.kit.pulid import bisenet, eva_visual, id_attention, id_former

    g = torch.Generator().manual_seed(8)
    context = unet.config.cross_attention_dim
    encoder = id_former(
        g, context, dim=PULID_FULL["dim"], vit_width=PULID_FULL["vit"], id_width=PULID_FULL["id"], hidden=1024
    )
    layers = id_attention(g, unet)
    module = build_id_encoder(encoder, "v1.1")
    checkpoint = PulidCheckpoint(
        "full-size pulid_v1.1 (random)", "v1.1", "official", encoder, layers, context, module.num_tokens
    )
    eva = eva_visual(g, 1024, PULID_FULL["eva_depth"], PULID_FULL["eva_mlp"], PULID_FULL["eva_grid"], 768)
    return {"checkpoint": checkpoint, "encoder": module, "eva": eva, "parser": bisenet(g, 64)}


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_full_models(
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    *,
    depth: Sequence[str] = ("mid",),
    identitynet: bool = True,
    instantid: bool = True,
    faceid: bool = True,
    pulid: bool = False,
    configs: FullConfigs | None = None,
    progress: Callable[[str], None] | None = print,
) -> FullModels:
    """Build the full-size networks (random weights) directly in `dtype` on `device`; about 10.5 GB in bf16
    with the mid depth ControlNet."""
    configs = configs or shipped_configs()
    device = torch.device(device)
    seconds: dict[str, float] = {}

    def timed(name: str, make: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = make()
        seconds[name] = round(time.perf_counter() - started, 2)
        if progress is not None:
            size = (
                f"{parameter_count(value) / 1e6:.1f} M params, " if isinstance(value, torch.nn.Module) else ""
            )
            progress(f"built {name} ({size}{seconds[name]} s)")
        return value

    # Each network by its FullModels field (depth ControlNets: `depth_<size>`), built in this order and timed by name.
    built: dict[str, Any] = {}
    makers: dict[str, Callable[[], Any]] = {
        "unet": lambda: build_unet(configs.unet, dtype, device),
        "vae": lambda: build_vae(configs.vae, dtype, device),
        "text_encoder": lambda: build_text_encoder(configs.text_encoder, False, dtype, device, 2),
        "text_encoder_2": lambda: build_text_encoder(configs.text_encoder_2, True, dtype, device, 3),
    }
    if identitynet:
        makers["identitynet"] = lambda: build_controlnet(configs.identitynet, dtype, device, 4)
    for size in depth:
        makers[f"depth_{size}"] = lambda size=size: build_controlnet(configs.depth[size], dtype, device, 7)
    if instantid:
        makers["instantid_adapter"] = lambda: instantid_adapter_state(
            built["unet"], configs.adapters["instantid"], dtype
        )
    if faceid:
        makers["faceid_adapter"] = lambda: faceid_sdxl_adapter_state(
            built["unet"], configs.adapters["faceid_sdxl"], dtype
        )
    if pulid:
        makers["pulid"] = lambda: pulid_full_parts(built["unet"])
    for name, make in makers.items():
        built[name] = timed(name, make)
    depth_nets = {size: built.pop(f"depth_{size}") for size in depth}
    tokenizer, tokenizer_2 = sdxl_tokenizers()
    return FullModels(
        **built,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=sdxl_scheduler(),
        depth=depth_nets,
        build_seconds=seconds,
    )


def meta_network(role: str, configs: FullConfigs | None = None) -> torch.nn.Module:
    """A weightless network (meta device) of a role: "unet", "vae", "identitynet", "depth_<size>",
    "text_encoder", "text_encoder_2" (parameter counts and FLOP counts without memory)."""
    configs = configs or shipped_configs()
    with torch.device("meta"):
        if role == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_config(_clean(configs.unet))
        if role == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_config(_clean(configs.vae))
        if role == "identitynet" or role.startswith("depth_"):
            from diffusers import ControlNetModel

            config = (
                configs.identitynet if role == "identitynet" else configs.depth[role.removeprefix("depth_")]
            )
            return ControlNetModel.from_config(_clean(config))
        if role in ("text_encoder", "text_encoder_2"):
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

            config = CLIPTextConfig(**_clean(getattr(configs, role)))
            return (CLIPTextModelWithProjection if role == "text_encoder_2" else CLIPTextModel)(config)
    raise ValueError(f"unknown network role {role!r}")
