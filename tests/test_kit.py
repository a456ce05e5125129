"""The tiny model kit: real layouts, shapes derived from configs, loadable by diffusers/transformers, runnable,
deterministic. The kit is built once per session (a few seconds on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from idforge.cli import main as cli_main
from idforge.errors import ParameterError
from idforge.models import kit as kit_module
from idforge.models.kit import MANIFEST_NAME, build_kit, file_hashes, is_kit, kit_path, read_manifest

SEED = 0
FACEID_FILES = {
    # file: (base, tokens, kind, lora)
    "ip-adapter-faceid_sdxl.bin": ("sdxl", 4, "mlp", True),
    "ip-adapter-faceid-plusv2_sdxl.bin": ("sdxl", 4, "plus", True),
    "ip-adapter-faceid-portrait_sdxl.bin": ("sdxl", 16, "mlp", False),
    "ip-adapter-faceid-portrait_sdxl_unnorm.bin": ("sdxl", 16, "resampler", False),
    "ip-adapter-faceid_sd15.bin": ("sd15", 4, "mlp", True),
    "ip-adapter-faceid-plus_sd15.bin": ("sd15", 4, "plus", True),
    "ip-adapter-faceid-plusv2_sd15.bin": ("sd15", 4, "plus", True),
    "ip-adapter-faceid-portrait-v11_sd15.bin": ("sd15", 16, "mlp", False),
}
EXPECTED_PATHS = [
    "kit.json",
    "diffusers/tiny-sdxl/model_index.json",
    "diffusers/tiny-sd15/model_index.json",
    "InstantX-InstantID/ControlNetModel/config.json",
    "InstantX-InstantID/ControlNetModel/diffusion_pytorch_model.safetensors",
    "InstantX-InstantID/ip-adapter.bin",
    "instantid/ip-adapter.bin",
    "instantid/ip-adapter.safetensors",
    "controlnet/instantid-controlnet.safetensors",
    "controlnet/tiny-depth-sdxl/config.json",
    "controlnet/tiny-depth-sdxl/diffusion_pytorch_model.safetensors",
    "clip_vision/tiny-clip-vit-h/config.json",
    "clip_vision/tiny-clip-vit-h/model.safetensors",
    "clip_vision/tiny-clip-vit-h/preprocessor_config.json",
    "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    "depth/tiny-depth-anything/config.json",
    "depth/tiny-depth-anything/preprocessor_config.json",
    *(f"ipadapter/{name}" for name in FACEID_FILES),
]


@pytest.fixture(scope="session")
def kit(tiny_kit: Path) -> Path:
    """The session's tiny kit (conftest.py builds it once, all parts, seed 0 = SEED)."""
    assert SEED == 0
    return tiny_kit


@pytest.fixture(scope="session")
def sdxl_unet(kit: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(kit / "diffusers/tiny-sdxl/unet")


@pytest.fixture(scope="session")
def sd15_unet(kit: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(kit / "diffusers/tiny-sd15/unet")


def _config(path: Path) -> dict:
    return json.loads(path.read_text())


def _bin(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _attention_table(unet) -> list[tuple[int, str, torch.nn.Module]]:
    """(N, processor name, attention module) straight from diffusers' attn_processors order."""
    return [
        (n, name, unet.get_submodule(name.removesuffix(".processor")))
        for n, name in enumerate(unet.attn_processors)
    ]


# --- layout and manifest ------------------------------------------------------------------------------------


def test_manifest_lists_existing_parts(kit: Path) -> None:
    manifest = read_manifest(kit)
    assert manifest["format"] == 1 and manifest["seed"] == SEED and manifest["idforge_version"]
    assert is_kit(kit)
    for role, rel in manifest["parts"].items():
        assert (kit / rel).exists(), role
    assert kit_path(kit, "sdxl") == kit / "diffusers/tiny-sdxl"
    assert kit_path(kit, "instantid_ip_adapter") == kit / "InstantX-InstantID/ip-adapter.bin"


def test_layout_paths_and_readmes(kit: Path) -> None:
    for rel in EXPECTED_PATHS:
        assert (kit / rel).is_file(), rel
        assert (kit / rel).stat().st_mode & 0o044, f"{rel} is not readable by others"
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (kit / "diffusers/tiny-sdxl" / sub).is_dir(), sub
    folders = [kit, *(p for p in kit.rglob("*") if p.is_dir())]
    for folder in folders:
        readme = folder / "README.md"
        assert readme.is_file(), folder
        assert "not a real model" in readme.read_text()


def test_face_packs_written_through_faces_module(kit: Path) -> None:
    parts = read_manifest(kit)["parts"]
    for pack in ("antelopev2", "buffalo_l"):
        assert parts[pack] == f"insightface/models/{pack}"
        assert (kit / "insightface/models" / pack).is_dir()
        assert list((kit / "insightface/models" / pack).glob("*.onnx")), pack


# --- SDXL / SD1.5 configs and shapes --------------------------------------------------------------------------


def test_sdxl_configs(kit: Path) -> None:
    root = kit / "diffusers/tiny-sdxl"
    index = _config(root / "model_index.json")
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    unet = _config(root / "unet/config.json")
    te1 = _config(root / "text_encoder/config.json")
    te2 = _config(root / "text_encoder_2/config.json")
    assert te1["hidden_size"] == 64 and te2["hidden_size"] == 64 and te2["projection_dim"] == 64
    assert unet["cross_attention_dim"] == te1["hidden_size"] + te2["hidden_size"] == 128
    assert unet["addition_embed_type"] == "text_time" and unet["addition_time_embed_dim"] == 8
    assert (
        unet["projection_class_embeddings_input_dim"]
        == 6 * unet["addition_time_embed_dim"] + te2["projection_dim"]
    )
    assert unet["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert unet["up_block_types"] == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    assert unet["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    assert unet["layers_per_block"] == 2 and list(unet["transformer_layers_per_block"]) == [1, 1, 2]
    assert unet["sample_size"] == 8
    vae = _config(root / "vae/config.json")
    assert len(vae["block_out_channels"]) == 4 and vae["latent_channels"] == 4
    assert vae["scaling_factor"] == pytest.approx(0.13025)
    sched = _config(root / "scheduler/scheduler_config.json")
    assert sched["_class_name"] == "EulerDiscreteScheduler"
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"]) == (
        0.00085,
        0.012,
        "scaled_linear",
    )
    assert (sched["timestep_spacing"], sched["steps_offset"], sched["prediction_type"]) == (
        "leading",
        1,
        "epsilon",
    )


def test_sdxl_unet_weights_match_config(sdxl_unet) -> None:
    cfg = sdxl_unet.config
    sd = sdxl_unet.state_dict()
    assert sd["add_embedding.linear_1.weight"].shape[1] == cfg.projection_class_embeddings_input_dim
    blocks = sdxl_unet.down_blocks[2].attentions[0].transformer_blocks
    assert len(blocks) == 2  # transformer_layers_per_block 2 in the deepest level
    assert sd["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape == (
        cfg.block_out_channels[1],
        cfg.cross_attention_dim,
    )
    assert "mid_block.attentions.0.transformer_blocks.1.attn2.to_v.weight" in sd


def test_sd15_configs(kit: Path, sd15_unet) -> None:
    root = kit / "diffusers/tiny-sd15"
    index = _config(root / "model_index.json")
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    cfg = sd15_unet.config
    assert list(cfg.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert list(cfg.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert cfg.layers_per_block == 2
    te = _config(root / "text_encoder/config.json")
    assert cfg.cross_attention_dim == te["hidden_size"] == 64
    assert _config(root / "vae/config.json")["scaling_factor"] == pytest.approx(0.18215)
    assert len(sd15_unet.attn_processors) == 32  # 16 transformer blocks, as SD1.5


# --- tokenizers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub,pad", [("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")])
def test_tokenizers_work(kit: Path, sub: str, pad: str) -> None:
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    folder = kit / "diffusers/tiny-sdxl" / sub
    te = _config(kit / "diffusers/tiny-sdxl/text_encoder/config.json")
    for cls in (CLIPTokenizer, CLIPTokenizerFast):
        tok = cls.from_pretrained(folder)
        assert tok.model_max_length == 77 and tok.pad_token == pad
        assert len(tok) == te["vocab_size"]
        ids = tok("A photo of a smiling woman", padding="max_length", max_length=77).input_ids
        assert len(ids) == 77
        assert ids[0] == tok.convert_tokens_to_ids("<|startoftext|>")
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
        assert eos == max(tok.get_vocab().values())  # CLIP's argmax pooling finds the end token
        assert eos in ids[1:] and ids[-1] == tok.pad_token_id
        assert tok.decode(ids, skip_special_tokens=True) == "a photo of a smiling woman"
        assert max(ids) < te["vocab_size"]
        assert len(tok.tokenize("photo")) == 1  # merges are real: common words are single tokens


# --- InstantID ip-adapter -----------------------------------------------------------------------------------


def _resampler_expectations(
    dim: int, input_dim: int, output_dim: int, with_latents: bool
) -> dict[str, tuple]:
    inner = (dim // 64) * 64
    shapes: dict[str, tuple] = {}
    if with_latents:
        shapes["latents"] = (1, 16, dim)
    shapes |= {
        "proj_in.weight": (dim, input_dim),
        "proj_in.bias": (dim,),
        "proj_out.weight": (output_dim, dim),
        "proj_out.bias": (output_dim,),
        "norm_out.weight": (output_dim,),
        "norm_out.bias": (output_dim,),
    }
    for i in range(4):
        p = f"layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            shapes[f"{p}{norm}.weight"] = (dim,)
            shapes[f"{p}{norm}.bias"] = (dim,)
        shapes[p + "0.to_q.weight"] = (inner, dim)
        shapes[p + "0.to_kv.weight"] = (2 * inner, dim)
        shapes[p + "0.to_out.weight"] = (dim, inner)
        shapes[p + "1.1.weight"] = (dim * 4, dim)
        shapes[p + "1.3.weight"] = (dim, dim * 4)
    return shapes


def test_instantid_ip_adapter_layout(kit: Path, sdxl_unet) -> None:
    state = _bin(kit / "InstantX-InstantID/ip-adapter.bin")
    assert set(state) == {"image_proj", "ip_adapter"}
    cross = sdxl_unet.config.cross_attention_dim
    expected = _resampler_expectations(dim=128, input_dim=512, output_dim=cross, with_latents=True)
    assert {k: tuple(v.shape) for k, v in state["image_proj"].items()} == expected
    # N.to_k_ip / N.to_v_ip for exactly the cross-attention processors, N = index in attn_processors
    expected_ip = {}
    for n, name, attn in _attention_table(sdxl_unet):
        if name.endswith("attn2.processor"):
            assert n % 2 == 1  # self even, cross odd, as SPEC section 2
            for kv in ("k", "v"):
                expected_ip[f"{n}.to_{kv}_ip.weight"] = (attn.to_k.out_features, cross)
    assert {k: tuple(v.shape) for k, v in state["ip_adapter"].items()} == expected_ip
    assert len(expected_ip) == 2 * 17


def test_instantid_comfy_copies(kit: Path) -> None:
    official = (kit / "InstantX-InstantID/ip-adapter.bin").read_bytes()
    assert (kit / "instantid/ip-adapter.bin").read_bytes() == official
    state = _bin(kit / "instantid/ip-adapter.bin")
    flat = load_file(kit / "instantid/ip-adapter.safetensors")
    expected = {f"{group}.{k}": v for group, tensors in state.items() for k, v in tensors.items()}
    assert set(flat) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(flat[key], value, rtol=0, atol=0)


# --- FaceID -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file", sorted(FACEID_FILES))
def test_faceid_layout(kit: Path, sdxl_unet, sd15_unet, file: str) -> None:
    base, tokens, kind, has_lora = FACEID_FILES[file]
    unet = sdxl_unet if base == "sdxl" else sd15_unet
    width = unet.config.cross_attention_dim
    state = _bin(kit / "ipadapter" / file)
    proj = {k: tuple(v.shape) for k, v in state["image_proj"].items()}
    if kind == "resampler":
        assert proj == _resampler_expectations(width, 512, width, with_latents=True)
    else:
        mlp = {
            "proj.0.weight": (1024, 512),
            "proj.0.bias": (1024,),
            "proj.2.weight": (width * tokens, 1024),
            "proj.2.bias": (width * tokens,),
            "norm.weight": (width,),
            "norm.bias": (width,),
        }
        if kind == "plus":
            clip_hidden = _config(kit / "clip_vision/tiny-clip-vit-h/config.json")["hidden_size"]
            perceiver = _resampler_expectations(width, clip_hidden, width, with_latents=False)
            mlp |= {f"perceiver_resampler.{k}": v for k, v in perceiver.items()}
        assert proj == mlp
    expected: dict[str, tuple] = {}
    for n, name, attn in _attention_table(unet):
        if has_lora:
            for proj_name, layer in (
                ("q", attn.to_q),
                ("k", attn.to_k),
                ("v", attn.to_v),
                ("out", attn.to_out[0]),
            ):
                expected[f"{n}.to_{proj_name}_lora.down.weight"] = (4, layer.in_features)
                expected[f"{n}.to_{proj_name}_lora.up.weight"] = (layer.out_features, 4)
        if name.endswith("attn2.processor"):
            expected[f"{n}.to_k_ip.weight"] = (attn.to_k.out_features, width)
            expected[f"{n}.to_v_ip.weight"] = (attn.to_k.out_features, width)
    assert {k: tuple(v.shape) for k, v in state["ip_adapter"].items()} == expected
    if has_lora:  # published "up" weights start at zero; the kit's must not, or the LoRA would not matter
        ups = [v for k, v in state["ip_adapter"].items() if k.endswith("up.weight")]
        assert all(v.abs().max() > 0 for v in ups)
    # SPEC section 3's detection rule: SDXL iff 1.to_k_ip.weight has the SDXL cross width
    assert (state["ip_adapter"]["1.to_k_ip.weight"].shape[1] == 128) == (base == "sdxl")


# --- ControlNets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["InstantX-InstantID/ControlNetModel", "controlnet/tiny-depth-sdxl"])
def test_controlnets_match_unet_and_are_not_zero(kit: Path, sdxl_unet, folder: str) -> None:
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_pretrained(kit / folder)
    cfg = controlnet.config
    assert cfg.cross_attention_dim == sdxl_unet.config.cross_attention_dim == 128
    assert cfg.conditioning_channels == 3
    assert list(cfg.block_out_channels) == list(sdxl_unet.config.block_out_channels)
    assert cfg.addition_embed_type == "text_time"
    sd = controlnet.state_dict()
    zero_init = [k for k in sd if k.startswith(("controlnet_down_blocks", "controlnet_mid_block"))]
    zero_init.append("controlnet_cond_embedding.conv_out.weight")
    assert all(sd[k].abs().max() > 0 for k in zero_init)
    # the residuals are not negligible
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        out = controlnet(
            torch.randn(1, 4, 8, 8, generator=g),
            10,
            encoder_hidden_states=torch.randn(1, 16, 128, generator=g),
            controlnet_cond=torch.rand(1, 3, 64, 64, generator=g),
            added_cond_kwargs={
                "text_embeds": torch.randn(1, 64, generator=g),
                "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
            },
            return_dict=False,
        )
    down, mid = out
    assert len(down) == 9 and all(torch.isfinite(r).all() for r in down)
    assert mid.abs().mean() > 1e-3


def test_comfy_identitynet_file_is_the_diffusers_file(kit: Path) -> None:
    comfy = kit / "controlnet/instantid-controlnet.safetensors"
    original = kit / "InstantX-InstantID/ControlNetModel/diffusion_pytorch_model.safetensors"
    assert comfy.read_bytes() == original.read_bytes()
    assert "controlnet_cond_embedding.conv_in.weight" in load_file(comfy)


# --- CLIP vision and depth ------------------------------------------------------------------------------------


def test_clip_vision_folder_and_single_file(kit: Path) -> None:
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    folder = kit / "clip_vision/tiny-clip-vit-h"
    model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    processor = CLIPImageProcessor.from_pretrained(folder)
    pixels = processor(images=Image.new("RGB", (300, 256), (120, 80, 40)), return_tensors="pt").pixel_values
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    assert tuple(out.hidden_states[-2].shape) == (1, 257, model.config.hidden_size)
    assert tuple(out.image_embeds.shape) == (1, model.config.projection_dim)
    single = load_file(kit / "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    folder_weights = load_file(folder / "model.safetensors")
    assert set(single) == set(folder_weights) and "visual_projection.weight" in single
    assert all(torch.equal(single[k], folder_weights[k]) for k in single)


def test_depth_estimator_loads_and_runs(kit: Path) -> None:
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    folder = kit / "depth/tiny-depth-anything"
    processor_cfg = _config(folder / "preprocessor_config.json")
    assert processor_cfg["keep_aspect_ratio"] is True and processor_cfg["ensure_multiple_of"] == 14
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    assert type(model).__name__ == "DepthAnythingForDepthEstimation"
    assert model.config.backbone_config.model_type == "dinov2"
    processor = AutoImageProcessor.from_pretrained(folder)
    inputs = processor(images=Image.new("RGB", (96, 64), (200, 100, 50)), return_tensors="pt")
    assert inputs.pixel_values.shape[-1] % 14 == 0 and inputs.pixel_values.shape[-2] % 14 == 0
    with torch.no_grad():
        depth = model(**inputs).predicted_depth
    assert depth.ndim == 3 and torch.isfinite(depth).all()


# --- pipelines ------------------------------------------------------------------------------------------------


def test_sdxl_controlnet_pipeline_with_identitynet(kit: Path) -> None:
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
    from PIL import Image

    controlnet = ControlNetModel.from_pretrained(kit / "InstantX-InstantID/ControlNetModel")
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
        kit / "diffusers/tiny-sdxl", controlnet=controlnet
    )
    pipe.set_progress_bar_config(disable=True)
    kps = Image.new("RGB", (64, 64))
    kps.paste((255, 0, 0), (20, 20, 28, 28))

    def run(scale: float) -> np.ndarray:
        return pipe(
            "a photo of a woman",
            image=kps,
            num_inference_steps=4,
            height=64,
            width=64,
            controlnet_conditioning_scale=scale,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    with_cn, without_cn = run(0.8), run(0.0)
    assert with_cn.shape == (1, 64, 64, 3) and np.isfinite(with_cn).all()
    assert np.abs(with_cn - without_cn).mean() > 1e-3  # IdentityNet visibly changes the output


def test_sd15_pipeline_runs(kit: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(kit / "diffusers/tiny-sd15")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a photo", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all() and images.std() > 0


def test_diffusers_loads_instantid_ip_adapter(kit: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(kit / "diffusers/tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(
        str(kit / "InstantX-InstantID"),
        subfolder="",
        weight_name="ip-adapter.bin",
        image_encoder_folder=None,
        low_cpu_mem_usage=False,
    )
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(projection).__name__ == "IPAdapterPlusImageProjection"
    # [uncond, cond] x 1 image x 1 token (the face embedding) x 512
    embeds = torch.randn(2, 1, 1, 512, generator=torch.Generator().manual_seed(1))

    def run(scale: float) -> np.ndarray:
        pipe.set_ip_adapter_scale(scale)
        return pipe(
            "a photo",
            ip_adapter_image_embeds=[embeds],
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    images, no_ip = run(0.8), run(0.0)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    assert np.abs(images - no_ip).mean() > 1e-3  # the IP attention weights visibly change the output


@pytest.mark.parametrize(
    "base,file",
    [
        ("sd15", "ip-adapter-faceid_sd15.bin"),
        ("sdxl", "ip-adapter-faceid_sdxl.bin"),
        ("sd15", "ip-adapter-faceid-plusv2_sd15.bin"),
    ],
)
def test_diffusers_loads_faceid_with_lora(kit: Path, base: str, file: str) -> None:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(kit / f"diffusers/tiny-{base}")
    pipe.load_ip_adapter(
        str(kit / "ipadapter"),
        subfolder="",
        weight_name=file,
        image_encoder_folder=None,
        low_cpu_mem_usage=False,
    )
    unet = pipe.unet
    assert any("lora" in name for name, _ in unet.named_modules())
    if "plus" in file:
        return  # the Plus projection needs CLIP embeddings; loading is what is checked here
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    image_embeds = [torch.randn(1, 1, 512, generator=g)]
    added = {"image_embeds": image_embeds}
    if base == "sdxl":
        added |= {
            "text_embeds": torch.randn(1, 64, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        }
    with torch.no_grad():
        with_lora = unet(sample, 500, context, added_cond_kwargs=added).sample
        unet.disable_lora()
        without_lora = unet(sample, 500, context, added_cond_kwargs=added).sample
    assert torch.isfinite(with_lora).all()
    assert (with_lora - without_lora).abs().mean() > 1e-3  # the embedded LoRA visibly changes the UNet


# --- determinism and the command ------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_weights(kit: Path, tmp_path: Path) -> None:
    again = build_kit(tmp_path / "again", seed=SEED).path
    reference = file_hashes(kit)
    assert file_hashes(again) == reference
    other = file_hashes(build_kit(tmp_path / "other", seed=SEED + 1).path)
    assert set(other) == set(reference)
    ours = [
        rel
        for rel in reference
        if rel.endswith((".safetensors", ".bin")) and not rel.startswith("insightface/")
    ]
    assert len(ours) > 20
    assert all(other[rel] != reference[rel] for rel in ours)
    assert json.loads((tmp_path / "other" / MANIFEST_NAME).read_text())["seed"] == SEED + 1


def _fake_part(kit_dir: Path, seed: int) -> dict[str, str]:
    (kit_dir / "fake").mkdir()
    (kit_dir / "fake" / "weights.txt").write_text(str(seed))
    return {"fake": "fake/weights.txt"}


def test_command_writes_and_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(kit_module, "PARTS", [_fake_part])
    out = tmp_path / "kit"
    assert cli_main(["kit", "tiny", "--out", str(out), "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    assert "fake/weights.txt" in printed and "seed 7" in printed
    assert read_manifest(out)["parts"] == {"fake": "fake/weights.txt"}
    # an existing kit needs --force; a folder that is not a kit is never overwritten
    assert cli_main(["kit", "tiny", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(["kit", "tiny", "--out", str(out), "--seed", "8", "--force"]) == 0
    assert (out / "fake/weights.txt").read_text() == "8"
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert cli_main(["kit", "tiny", "--out", str(precious), "--force"]) == 2
    assert "not an idforge kit" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".*building*"))


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(kit_dir: Path, seed: int) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        build_kit(tmp_path / "kit", parts=[_fake_part, broken])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ParameterError):
        build_kit(tmp_path / "kit", seed=-1)
