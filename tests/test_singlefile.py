"""Single-file checkpoints: our LDM writer read back by diffusers' own converter (exact weights), family
detection and refusal, shipped real configs and tokenizer, lone ControlNet files, the kohya FaceID LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from idforge.errors import ModelFormatError
from idforge.models.singlefile import (
    detect_family,
    load_controlnet_file,
    load_single_file_pipeline,
    shipped_config_dir,
    write_single_file,
)
from store_fixtures import tiny_pipeline_dir

COMPONENTS = {
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
    "sd15": ("unet", "vae", "text_encoder"),
}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sf")
    return {fam: tiny_pipeline_dir(root / f"tiny-{fam}", fam) for fam in ("sdxl", "sd15")}


@pytest.fixture(scope="session")
def kit(tiny_kit) -> Path:
    """The session's tiny kit (built once in conftest.py; it has every part, our single_files one included)."""
    return tiny_kit


def _assert_same_weights(pipe, folder: Path, family: str) -> None:
    reference = type(pipe).from_pretrained(folder)
    for name in COMPONENTS[family]:
        got, want = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert set(got) == set(want), name
        for key, value in want.items():
            assert torch.equal(got[key], value), f"{name}.{key}"  # exact: a conversion, no arithmetic


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_round_trip_is_exact(tiny, tmp_path, family):
    path = write_single_file(tiny[family], tmp_path / f"{family}.safetensors")
    keys = load_file(str(path))
    assert detect_family(keys) == family
    assert any(k.startswith("model.diffusion_model.output_blocks.") for k in keys)
    pipe = load_single_file_pipeline(path, config=tiny[family])
    _assert_same_weights(pipe, tiny[family], family)
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_kit_checkpoints_load_with_sidecar(kit):
    # no config given: the sidecar diffusers/<stem>/ (ComfyUI's diffusers folder) describes the tiny shapes
    for family in ("sdxl", "sd15"):
        pipe = load_single_file_pipeline(kit / "checkpoints" / f"tiny-{family}.safetensors")
        _assert_same_weights(pipe, kit / "diffusers" / f"tiny-{family}", family)


def test_shape_mismatch_without_sidecar_is_refused(tiny, tmp_path):
    path = write_single_file(tiny["sdxl"], tmp_path / "lonely" / "custom.safetensors")
    with pytest.raises(ModelFormatError) as err:
        load_single_file_pipeline(path, cache_dir=tmp_path / "cache")
    assert "do not match the SDXL config" in str(err.value) and "custom.yaml" in str(err.value)


@pytest.mark.parametrize(
    "keys, words",
    [
        (
            {
                "cond_stage_model.model.token_embedding.weight": 1,
                "model.diffusion_model.input_blocks.0.0.weight": 1,
            },
            "SD2",
        ),
        ({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": 1}, "LoRA"),
        ({"double_blocks.0.img_attn.qkv.weight": 1}, "Flux"),
        ({"foo.bar": 1}, "top-level keys: foo"),
    ],
)
def test_other_families_are_refused_by_name(keys, words):
    with pytest.raises(ModelFormatError) as err:
        detect_family(keys, name="x.safetensors")
    assert words in str(err.value) and "x.safetensors" in str(err.value)


def test_refusal_from_a_file(tmp_path):
    path = tmp_path / "sd2.safetensors"
    save_file(
        {
            "cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2),
        },
        str(path),
    )
    with pytest.raises(ModelFormatError, match="SD2"):
        load_single_file_pipeline(path)


def test_shipped_configs_describe_the_real_models(tmp_path):
    """Parameter counts of the published models (meta tensors, nothing allocated)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    sdxl, sd15 = shipped_config_dir("sdxl", tmp_path), shipped_config_dir("sd15", tmp_path)
    with torch.device("meta"):
        assert (
            count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sdxl / "unet")))
            == 2_567_463_684
        )
        assert (
            count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd15 / "unet")))
            == 859_520_964
        )
        assert count(AutoencoderKL.from_config(AutoencoderKL.load_config(sd15 / "vae"))) == 83_653_863
        assert count(CLIPTextModel(CLIPTextConfig.from_pretrained(sdxl / "text_encoder"))) == 123_060_480
        big_g = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(sdxl / "text_encoder_2"))
        assert count(big_g) == 694_659_840
    from transformers import CLIPTokenizer

    tok2 = CLIPTokenizer.from_pretrained(sdxl / "tokenizer_2")
    assert tok2.pad_token == "!" and len(tok2) == 49408


def test_lone_controlnet_file(tiny, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny["sdxl"] / "unet")
    reference = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01)  # zero convolutions would hide a wrong mapping
    path = tmp_path / "instantid-controlnet.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    with pytest.raises(ModelFormatError, match="base model"):
        load_controlnet_file(path)
    model = load_controlnet_file(path, base_unet_config=dict(unet.config))
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_kit_faceid_lora_loads_in_diffusers(kit):
    """The kohya LoRA file changes every attention projection by exactly up @ down of the .bin's LoRA."""
    from diffusers import StableDiffusionXLPipeline

    from idforge.models.kit.single_files import attention_module_names

    folder = kit / "diffusers" / "tiny-sdxl"
    lora_path = kit / "loras" / "ip-adapter-faceid_sdxl_lora.safetensors"
    keys = load_file(str(lora_path))
    assert all(k.startswith("lora_unet_") for k in keys)
    assert any("_input_blocks_" in k for k in keys) and any(k.endswith("_to_out_0.alpha") for k in keys)
    embedded = torch.load(kit / "ipadapter" / "ip-adapter-faceid_sdxl.bin", weights_only=True)["ip_adapter"]
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    modules = attention_module_names(json.loads((folder / "unet" / "config.json").read_text()))
    g = torch.Generator().manual_seed(0)
    before = {}
    for n, name in enumerate(modules):
        linear = pipe.unet.get_submodule(name).to_v
        x = torch.randn(3, linear.in_features, generator=g)
        before[n] = (x, linear(x).detach())
    pipe.load_lora_weights(str(lora_path))
    for n, name in enumerate(modules):
        x, base = before[n]
        delta = (x @ embedded[f"{n}.to_v_lora.down.weight"].T) @ embedded[f"{n}.to_v_lora.up.weight"].T
        assert delta.abs().max() > 1e-4
        got = pipe.unet.get_submodule(name).to_v(x).detach()
        torch.testing.assert_close(got, base + delta, rtol=1e-5, atol=1e-5)
