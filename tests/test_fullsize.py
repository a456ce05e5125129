"""Full-size architectures from the shipped configs, and `idforge kit full`'s file layout (written small here)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from idforge.models import fullsize
from idforge.models.kit import sdxl
from idforge.models.kit.full import (
    DEPTH_FOLDERS,
    FACEID_BIN,
    IDENTITYNET_FOLDER,
    INSTANTID_BIN,
    SDXL_FOLDER,
    build_full_kit,
)


@pytest.mark.parametrize(
    ("role", "millions"),
    [  # the published checkpoints' sizes (SPEC.md section 9), written here, not read from the code under test
        ("unet", 2567.5),
        ("identitynet", 1251.0),
        ("depth_full", 1251.0),  # a full SDXL ControlNet, like IdentityNet
        ("depth_mid", 272.6),
        ("depth_small", 168.3),
        ("vae", 83.7),
        ("text_encoder", 123.1),
        ("text_encoder_2", 694.7),
    ],
)
def test_shipped_configs_give_the_published_sizes(role, millions):
    network = fullsize.meta_network(role)
    count = sum(p.numel() for p in network.parameters())  # counted here, not by fullsize.parameter_count
    assert count / 1e6 == pytest.approx(millions, abs=0.1)
    assert fullsize.parameter_count(network) == count
    if role in fullsize.PUBLISHED_PARAMS_M:
        assert fullsize.PUBLISHED_PARAMS_M[role] == millions


def test_full_adapter_widths_fit_the_full_unet():
    """The adapter builders read the UNet's attention order: 70 cross-attention layers of SDXL, 16 tokens."""
    from idforge.identity.checkpoint import adapter_from_state

    unet = fullsize.meta_network("unet")
    widths = fullsize.shipped_configs().adapters
    instantid = adapter_from_state(
        fullsize.instantid_adapter_state(unet, widths["instantid"], torch.float16), "instantid"
    )
    assert instantid.kind == "instantid" and instantid.num_tokens == 16 and instantid.cross_dim == 2048
    assert len(instantid.ip_layers) == 70
    assert instantid.image_proj["latents"].shape == (1, 16, 1280)


def reduced_configs() -> fullsize.FullConfigs:
    """The full kit's writer with the tiny kit's architectures: same code path, kilobytes instead of 10 GB."""
    shipped = fullsize.shipped_configs()
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {**shipped.text_encoder, **small}  # the real vocabulary: the kit writes the real tokenizers
    text_2 = {**shipped.text_encoder_2, **small, "projection_dim": 64}
    control = {**sdxl.unet_config(), "conditioning_channels": 3}
    for key in ("out_channels", "up_block_types", "center_input_sample", "sample_size"):
        control.pop(key, None)
    control["conditioning_embedding_out_channels"] = [16, 32, 96, 256]
    return fullsize.FullConfigs(
        unet=sdxl.unet_config(),
        vae=sdxl.vae_config(),
        text_encoder=text,
        text_encoder_2=text_2,
        identitynet=control,
        depth={"mid": {**control, "transformer_layers_per_block": [0, 0, 1]}},
        adapters={
            "instantid": {"dim": 128, "depth": 4, "num_queries": 16, "embedding_dim": 512, "output_dim": 128},
            "faceid_sdxl": {"tokens": 4, "output_dim": 128, "lora_rank": 4},
        },
    )


@pytest.fixture(scope="module")
def small_full_kit(tmp_path_factory):
    out = tmp_path_factory.mktemp("fullkit") / "kit"
    build_full_kit(out, configs=reduced_configs(), dtype=torch.float16)
    return out


def test_full_kit_layout_is_the_published_one_in_fp16(small_full_kit):
    kit = small_full_kit
    for folder in ("unet", "vae"):
        assert (kit / SDXL_FOLDER / folder / "diffusion_pytorch_model.safetensors").is_file()
    for folder in ("text_encoder", "text_encoder_2"):
        assert (kit / SDXL_FOLDER / folder / "model.safetensors").is_file()
    assert (kit / SDXL_FOLDER / "tokenizer_2" / "vocab.json").is_file()
    assert json.loads((kit / SDXL_FOLDER / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusionXLPipeline"
    )
    weights = kit / IDENTITYNET_FOLDER / "diffusion_pytorch_model.safetensors"
    with safe_open(str(weights), "pt") as handle:
        keys = list(handle.keys())
        assert "controlnet_cond_embedding.conv_in.weight" in keys
        assert all(handle.get_tensor(key).dtype == torch.float16 for key in keys[:20])
    state = torch.load(kit / INSTANTID_BIN, weights_only=True)
    assert set(state) == {"image_proj", "ip_adapter"}
    assert state["image_proj"]["latents"].dtype == torch.float16
    assert (kit / DEPTH_FOLDERS["mid"] / "config.json").is_file()
    assert json.loads((kit / "kit.json").read_text())["parts"]["depth_controlnet"] == DEPTH_FOLDERS["mid"]


def test_engine_runs_insta_depth_and_faceid_from_the_full_kit_layout(small_full_kit, tmp_path):
    """The engine finds every default model in the full kit's folders and runs two methods end to end."""
    from PIL import Image

    from idforge.engine.params import GenerationParams
    from idforge.engine.session import Engine, ModelChoice
    from idforge.methods.faceid.core import FaceIDRequest
    from idforge.methods.faceid.generate import generate_faceid
    from idforge.methods.insta_depth.generate import InstaDepthRequest, generate_insta_depth
    from instantid_fixtures import square_face

    engine = Engine(ModelChoice(models_dirs=[str(small_full_kit)]), device="cpu", dtype="float32")
    face = square_face(tmp_path / "face.png")
    gen = GenerationParams(prompt="a photo", steps=2, seed=1, width=64, height=64)
    depth_map = Image.new("RGB", (64, 64), (90, 90, 90))
    result = generate_insta_depth(
        engine,
        InstaDepthRequest(
            face=face,
            pose=face,
            generation=gen,
            depth_map=depth_map,
            depth_controlnet="controlnet-depth-sdxl-mid",
        ),
    )
    models = result.recipe["models"]
    assert models["base"]["source"].endswith(SDXL_FOLDER)
    assert models["identitynet"]["source"].endswith(IDENTITYNET_FOLDER)
    assert models["depth_controlnet"]["source"].endswith(DEPTH_FOLDERS["mid"])
    faceid = generate_faceid(
        engine, FaceIDRequest(faces=[face], generation=gen, adapter=str(small_full_kit / FACEID_BIN))
    )
    assert faceid.images[0].size == (64, 64)
    assert faceid.recipe["models"]["ip_adapter"]["source"].endswith(FACEID_BIN)
    assert (
        faceid.recipe["adapter_kind"] == "faceid" and faceid.recipe["models"]["lora"]["source"] == "embedded"
    )
