"""Single-file SDXL / SD1.5 checkpoints (ComfyUI `checkpoints/`, A1111 `models/Stable-diffusion/`), offline.

Loading uses diffusers' own `from_single_file` with a local diffusers config folder, never the hub: the real
SDXL base and SD1.5 configs (and CLIP tokenizer files) ship under `configs/`. A checkpoint whose shapes do not fit
those configs (a fine-tune with another architecture, or the tiny kit) needs a sidecar: a diffusers folder next to
it with the same stem, one named in a `kit.json`, or an original `<name>.yaml` as A1111 and ComfyUI expect.
The writer goes the other way (diffusers folder -> one LDM-layout file) with our own key map in `ldm_keys`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from idforge.errors import ModelFormatError, ModelNotFoundError
from idforge.identity import ldm_keys

CONFIGS = Path(__file__).resolve().parent / "configs"
FAMILY_CONFIG = {"sdxl": "sdxl-base", "sd15": "sd15"}
FAMILY_NAMES = {"sdxl": "SDXL", "sd15": "SD1.5"}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")

# Key prefixes that identify what a file is when it is not an SDXL/SD1.5 checkpoint: reported to the user.
_OTHER_KINDS = (
    ("conditioner.embedders.0.model.", "an SDXL refiner checkpoint"),
    ("cond_stage_model.model.", "an SD2.x checkpoint (OpenCLIP text encoder)"),
    ("double_blocks.", "a Flux checkpoint"),
    ("model.diffusion_model.double_blocks.", "a Flux checkpoint"),
    ("joint_blocks.", "an SD3 checkpoint"),
    ("model.diffusion_model.joint_blocks.", "an SD3 checkpoint"),
    ("control_model.", "an original-layout ControlNet"),
    ("controlnet_cond_embedding.", "a diffusers-keyed ControlNet"),
    ("lora_unet_", "a LoRA (kohya/A1111 keys)"),
    ("lora_te", "a LoRA (kohya/A1111 keys)"),
    ("down_blocks.", "a diffusers-keyed UNet, not a single-file pipeline"),
    ("encoder.down.", "a lone VAE"),
    ("image_proj.", "an IP-Adapter"),
)


def read_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a checkpoint, without loading the tensors of a safetensors file."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for a truncated or foreign file
            raise ModelFormatError(f"{path}: not a readable safetensors file ({exc})") from exc
    state = _load_state(path)
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFormatError(f"{path}: cannot be read as a PyTorch checkpoint ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelFormatError(
            f"{path}: a checkpoint must hold a dict of tensors, found {type(state).__name__}"
        )
    return state


def detect_family(keys: Iterable[str], name: str = "checkpoint") -> str:
    """'sdxl' or 'sd15' from the key layout; anything else is refused with what it looks like."""
    keys = list(keys)
    has_unet = any(k.startswith(ldm_keys.UNET_PREFIX + "input_blocks.") for k in keys)
    if has_unet and any(k.startswith(ldm_keys.SDXL_CLIP_G_PREFIX) for k in keys):
        return "sdxl"
    if has_unet and any(k.startswith(ldm_keys.SD15_CLIP_PREFIX) for k in keys):
        return "sd15"
    for prefix, kind in _OTHER_KINDS:
        if any(k.startswith(prefix) for k in keys):
            raise ModelFormatError(
                f"{name}: looks like {kind}; expected an SDXL or SD1.5 single-file checkpoint"
            )
    prefixes = sorted({k.split(".")[0] for k in keys})[:6]
    raise ModelFormatError(
        f"{name}: not an SDXL or SD1.5 single-file checkpoint (top-level keys: {', '.join(prefixes) or 'none'})"
    )


def shipped_config_dir(family: str, cache_dir: Path | None = None) -> Path:
    """A complete diffusers config folder (configs + tokenizer files) for a family, built once in a cache.

    The package ships the CLIP vocabulary once; diffusers wants it in every tokenizer subfolder.
    """
    source = CONFIGS / FAMILY_CONFIG[family]
    root = Path(cache_dir) if cache_dir else _default_cache() / "configs"
    target = root / FAMILY_CONFIG[family]
    marker = target / ".complete"
    if marker.exists():
        return target
    tmp = root / f".{FAMILY_CONFIG[family]}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    for tokenizer in tmp.glob("tokenizer*"):
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(CONFIGS / "clip-bpe" / name, tokenizer / name)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _default_cache() -> Path:
    import os

    base = os.environ.get("IDFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "idforge"
    )
    return Path(base)


def sidecar_config(path: Path) -> Path | None:
    """A diffusers folder or original .yaml that describes this file's architecture, if one is next to it.

    Looked for: `<stem>/model_index.json` beside the file, `../diffusers/<stem>/` (ComfyUI's diffusers folder),
    `<stem>.yaml` beside it, and a `kit.json` in a parent
    folder whose "parts" map `single_file_configs.<file name>` (or the stem) to a diffusers folder.
    """
    folder = path.with_suffix("")
    if (folder / "model_index.json").is_file():
        return folder
    comfy_diffusers = (
        path.parent.parent / "diffusers" / path.stem
    )  # ComfyUI: models/checkpoints + models/diffusers
    if (comfy_diffusers / "model_index.json").is_file():
        return comfy_diffusers
    yaml = path.with_suffix(".yaml")
    if yaml.is_file():
        return yaml
    for parent in list(path.parents)[:3]:
        manifest = parent / "kit.json"
        if manifest.is_file():
            try:
                parts = json.loads(manifest.read_text()).get("parts", {})
            except (OSError, ValueError):
                continue
            for role in (f"single_file_configs.{path.name}", f"single_file_configs.{path.stem}"):
                rel = parts.get(role)
                if rel and (parent / rel / "model_index.json").is_file():
                    return parent / rel
    return None


def _config_mismatch(shapes: dict[str, tuple[int, ...]], config_dir: Path, family: str) -> str | None:
    """Why the checkpoint does not fit the diffusers config in `config_dir` (None if it fits)."""
    unet = json.loads((config_dir / "unet" / "config.json").read_text())
    conv_in = shapes.get(ldm_keys.UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        return "it has no UNet input convolution"
    if conv_in[0] != unet["block_out_channels"][0]:
        return f"UNet width {conv_in[0]}, config {unet['block_out_channels'][0]}"
    n = unet["layers_per_block"]
    levels = len(unet["block_out_channels"])
    last_input = 1 + (levels - 1) * (n + 1) + n - 1
    if not any(k.startswith(f"{ldm_keys.UNET_PREFIX}input_blocks.{last_input}.") for k in shapes):
        return f"UNet depth differs from the config's {levels} levels x {n} layers"
    cross = [
        s for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and k.startswith(ldm_keys.UNET_PREFIX)
    ]
    if cross and cross[0][1] != unet["cross_attention_dim"]:
        return f"cross-attention width {cross[0][1]}, config {unet['cross_attention_dim']}"
    te_prefix = ldm_keys.SDXL_CLIP_L_PREFIX if family == "sdxl" else ldm_keys.SD15_CLIP_PREFIX
    te = json.loads((config_dir / "text_encoder" / "config.json").read_text())
    token = shapes.get(te_prefix + "text_model.embeddings.token_embedding.weight")
    if token is not None and token[1] != te["hidden_size"]:
        return f"text encoder width {token[1]}, config {te['hidden_size']}"
    return None


def load_single_file_pipeline(
    path: str | Path,
    *,
    config: str | Path | None = None,
    torch_dtype: torch.dtype | None = None,
    cache_dir: Path | None = None,
) -> Any:
    """Load an SDXL or SD1.5 single-file checkpoint into a diffusers pipeline without network access.

    `config` overrides the config source (a diffusers folder or an original .yaml); by default a sidecar is
    used when present, else the shipped real config of the detected family.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(str(path), [str(path)], hint="give the path of a .safetensors or .ckpt file")
    shapes = read_keys(path)
    family = detect_family(shapes, name=str(path))
    pipeline_cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    source = Path(config) if config else sidecar_config(path)
    if source is None:
        source = shipped_config_dir(family, cache_dir)
        problem = _config_mismatch(shapes, source, family)
        if problem:
            raise ModelFormatError(
                f"{path}: shapes do not match the {FAMILY_NAMES[family]} config ({problem}); put a diffusers "
                f"folder named '{path.stem}' or an original config '{path.stem}.yaml' next to it"
            )
    kwargs: dict[str, Any] = {"local_files_only": True, "torch_dtype": torch_dtype}
    if source.suffix in (".yaml", ".yml"):
        # The original config describes the networks; tokenizers still come from the shipped files.
        from transformers import CLIPTokenizer

        shipped = shipped_config_dir(family, cache_dir)
        kwargs["original_config"] = str(source)
        kwargs["tokenizer"] = CLIPTokenizer.from_pretrained(shipped / "tokenizer")
        if family == "sdxl":
            kwargs["tokenizer_2"] = CLIPTokenizer.from_pretrained(shipped / "tokenizer_2")
        kwargs["config"] = str(shipped)
    else:
        kwargs["config"] = str(source)
        if family == "sdxl":
            kwargs["text_encoder_2"] = _openclip_text_encoder(path, source / "text_encoder_2", torch_dtype)
    if family == "sd15":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        return pipeline_cls.from_single_file(str(path), **kwargs)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelFormatError(f"{path}: cannot be loaded as {FAMILY_NAMES[family]} ({exc})") from exc


def _openclip_text_encoder(path: Path, config_dir: Path, torch_dtype: torch.dtype | None) -> Any:
    """SDXL's second text encoder, converted by diffusers' OpenCLIP converter.

    diffusers picks the converter for `text_encoder_2` by comparing widths with the first encoder (768 vs 1280
    in the real model); in a small model with equal widths it would load the first encoder's weights there.
    Building it here avoids that guess.
    """
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    prefix = ldm_keys.SDXL_CLIP_G_PREFIX
    state = {k: v for k, v in _load_state(path).items() if k.startswith(prefix)}
    model = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config_dir))
    converted = convert_open_clip_checkpoint(model, state, prefix=prefix)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ModelFormatError(
            f"{path}: second text encoder does not match its config (missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model.eval()


def _component_state(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        bins = sorted(folder.glob("*.bin"))
        if not bins:
            raise ModelNotFoundError(
                str(folder), [str(folder)], hint="expected weights in a diffusers component folder"
            )
        return {
            k: v for f in bins for k, v in torch.load(str(f), map_location="cpu", weights_only=True).items()
        }
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def single_file_state(pipeline_dir: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(family, LDM-layout state dict) of a diffusers SDXL or SD1.5 pipeline folder."""
    root = Path(pipeline_dir)
    index = json.loads((root / "model_index.json").read_text())
    family = "sdxl" if "text_encoder_2" in index else "sd15"
    unet_config = json.loads((root / "unet" / "config.json").read_text())
    vae_config = json.loads((root / "vae" / "config.json").read_text())
    out = ldm_keys.unet_to_ldm(_component_state(root / "unet"), unet_config["layers_per_block"])
    out.update(ldm_keys.vae_to_ldm(_component_state(root / "vae"), len(vae_config["block_out_channels"])))
    if family == "sdxl":
        out.update(ldm_keys.clip_to_ldm(_component_state(root / "text_encoder"), ldm_keys.SDXL_CLIP_L_PREFIX))
        out.update(ldm_keys.openclip_to_ldm(_component_state(root / "text_encoder_2")))
    else:
        out.update(ldm_keys.clip_to_ldm(_component_state(root / "text_encoder"), ldm_keys.SD15_CLIP_PREFIX))
    return family, out


def write_single_file(pipeline_dir: str | Path, out_path: str | Path) -> Path:
    """Write a diffusers SDXL/SD1.5 folder as one original-layout `.safetensors` (as ComfyUI/A1111 keep them)."""
    _, state = single_file_state(pipeline_dir)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_path), metadata={"format": "pt"})
    return out_path


def load_controlnet_file(
    path: str | Path,
    *,
    base_unet_config: dict[str, Any] | None = None,
    torch_dtype: torch.dtype | None = None,
) -> Any:
    """A lone diffusers-keyed ControlNet `.safetensors` (ComfyUI keeps IdentityNet so) as a ControlNetModel.

    The config is the shipped real IdentityNet config when the shapes fit it, else one derived from the base
    UNet's config (attention heads cannot be read from shapes) plus the conditioning sizes read from the file.
    """
    from diffusers import ControlNetModel

    path = Path(path)
    state = _load_state(path)
    if "controlnet_cond_embedding.conv_in.weight" not in state:
        detect_family(state, name=str(path))  # raises with what the file looks like
    config = json.loads((CONFIGS / "instantid-identitynet" / "config.json").read_text())
    config.pop("_class_name", None)
    if state["conv_in.weight"].shape[0] != config["block_out_channels"][0] or not _fits(state, config):
        if base_unet_config is None:
            raise ModelFormatError(
                f"{path}: ControlNet shapes do not match the IdentityNet config; give the base model so its UNet "
                "config can describe it"
            )
        config = _controlnet_config_from_unet(base_unet_config, state)
    model = ControlNetModel(**config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFormatError(
            f"{path}: ControlNet keys do not match (missing {len(missing)}, e.g. {missing[:2]}; "
            f"unexpected {len(unexpected)}, e.g. {unexpected[:2]})"
        )
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model.eval()


def _fits(state: dict[str, torch.Tensor], config: dict[str, Any]) -> bool:
    cross = state.get("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    return cross is not None and cross.shape[1] == config["cross_attention_dim"]


def _controlnet_config_from_unet(unet: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    keep = (
        "act_fn addition_embed_type addition_embed_type_num_heads addition_time_embed_dim attention_head_dim "
        "block_out_channels cross_attention_dim down_block_types downsample_padding flip_sin_to_cos freq_shift "
        "in_channels layers_per_block mid_block_scale_factor norm_eps norm_num_groups num_attention_heads "
        "projection_class_embeddings_input_dim resnet_time_scale_shift transformer_layers_per_block "
        "use_linear_projection upcast_attention only_cross_attention class_embed_type num_class_embeds "
        "encoder_hid_dim encoder_hid_dim_type mid_block_type"
    ).split()
    config = {k: unet[k] for k in keep if k in unet}
    conv_in = state["controlnet_cond_embedding.conv_in.weight"]
    channels = [conv_in.shape[0]]
    i = 1
    while f"controlnet_cond_embedding.blocks.{i}.weight" in state:
        channels.append(state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0])
        i += 2
    config["conditioning_channels"] = conv_in.shape[1]
    config["conditioning_embedding_out_channels"] = channels
    return config
