"""Few-step presets: the scheduler settings their model cards state, the kit's LoRA/UNet files in the published
layouts load (and are removed afterwards), the recipe names everything, missing files and unknown names are
one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler, TCDScheduler
from PIL import Image
from safetensors.torch import load_file, save_file

from faces_util import square_image
from idforge.cli import main
from idforge.engine.fewstep import FEW_STEP_PRESETS
from idforge.engine.params import GenerationParams
from idforge.engine.result import read_recipe
from idforge.engine.schedulers import make_scheduler
from idforge.engine.session import Engine, ModelChoice
from idforge.errors import ModelNotFoundError, ParameterError
from idforge.identity import ldm_keys
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid
from idforge.methods.instantid.params import InstantIDParams


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    path = tmp_path_factory.mktemp("fewstep") / "face.png"
    Image.fromarray(square_image(200, 200, [(50, 50, 150, 150, 255)])).save(path)
    return path


SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


@pytest.mark.parametrize(
    ("preset", "cls", "steps", "guidance", "timesteps"),
    [
        ("lightning-4", EulerDiscreteScheduler, 4, 0.0, [999, 749, 499, 249]),
        ("lightning-2", EulerDiscreteScheduler, 2, 0.0, [999, 499]),
        ("lightning-8-unet", EulerDiscreteScheduler, 8, 0.0, [999, 874, 749, 624, 499, 374, 249, 124]),
        ("lightning-1", EulerDiscreteScheduler, 1, 0.0, [999]),
        ("hyper-4", DDIMScheduler, 4, 0.0, [999, 749, 499, 249]),
        ("hyper-8-cfg", DDIMScheduler, 8, 5.0, [999, 874, 749, 624, 499, 374, 249, 124]),
        ("hyper-1", TCDScheduler, 1, 0.0, None),
        ("lcm", LCMScheduler, 5, 1.5, None),
    ],
)
def test_scheduler_settings_are_the_model_cards(preset, cls, steps, guidance, timesteps):
    gen = GenerationParams(preset=preset)
    assert (gen.steps, gen.guidance) == (steps, guidance)
    scheduler = make_scheduler(
        gen.scheduler,
        SDXL_SCHEDULER,
        timestep_spacing=gen.timestep_spacing,
        prediction_type=gen.prediction_type,
    )
    assert type(scheduler) is cls
    if timesteps is not None:
        assert scheduler.config.timestep_spacing == "trailing"
        scheduler.set_timesteps(steps)
        assert [int(t) for t in scheduler.timesteps] == timesteps
    assert scheduler.config.prediction_type == ("sample" if preset == "lightning-1" else "epsilon")
    assert gen.eta == (1.0 if preset == "hyper-1" else None)
    assert gen.do_cfg == (guidance > 1.0)


def test_explicit_values_win_over_the_preset():
    gen = GenerationParams(preset="lightning-4", steps=6, guidance=1.0)
    assert (gen.steps, gen.guidance, gen.scheduler, gen.timestep_spacing) == (6, 1.0, "euler", "trailing")


def test_unknown_preset_names_the_input():
    with pytest.raises(
        ParameterError, match=r"^preset: unknown preset 'turbo'; known presets: lcm, lightning-1"
    ):
        GenerationParams(preset="turbo")


def _gen(**extra) -> GenerationParams:
    return GenerationParams(**({"prompt": "p", "seed": 2, "width": 64, "height": 64} | extra))


def _run(engine, face, instantid=None, **extra):
    params = instantid if instantid is not None else InstantIDParams()
    return generate_instantid(
        engine, InstantIDRequest(faces=[face], generation=_gen(**extra), instantid=params)
    )


def _unet_state(engine):
    return {k: v.clone() for k, v in engine.base_model().unet.state_dict().items()}


@pytest.mark.parametrize("preset", ["lightning-4", "hyper-8", "lcm", "hyper-1", "hyper-12-cfg"])
def test_lora_presets_load_their_file_change_the_output_and_are_removed(engine, face, tiny_kit, preset):
    settings = FEW_STEP_PRESETS[preset]
    before = _unet_state(engine)
    with_preset = _run(engine, face, preset=preset)
    after = _unet_state(engine)
    assert all(torch.equal(before[k], after[k]) for k in before)  # LoRA merged for the call only
    same_sampler = dict(
        steps=settings.steps,
        guidance=settings.guidance,
        scheduler=settings.scheduler,
        timestep_spacing=settings.timestep_spacing,
        eta=settings.eta,
    )
    without_lora = _run(engine, face, **same_sampler)
    assert (with_preset.latents - without_lora.latents).abs().max().item() > 1e-4
    recipe = with_preset.recipe
    lora = recipe["models"]["preset_lora"]
    assert lora["name"] == settings.model and lora["source"].startswith(str(tiny_kit / "loras"))
    assert len(lora["sha256"]) == 64
    params = recipe["params"]
    assert params["preset"] == preset and params["steps"] == settings.steps
    assert params["preset_settings"]["scheduler"] == settings.scheduler
    assert params["preset_settings"]["identity"] == settings.identity


def test_unet_preset_is_the_file_in_the_unet_and_restores_it(engine, face, tiny_kit):
    before = _unet_state(engine)
    result = _run(engine, face, preset="lightning-4-unet")
    assert all(torch.equal(before[k], v) for k, v in _unet_state(engine).items())
    # by hand: the file's tensors in the UNet, the same sampler settings, no preset
    unet = engine.base_model().unet
    file_state = load_file(str(tiny_kit / "unet" / "sdxl_lightning_4step_unet.safetensors"))
    unet.load_state_dict({k: v.float() for k, v in file_state.items()})
    try:
        # the preset's identity strengths (methods/presets.py), given by hand
        strengths = InstantIDParams(
            **{k: v for k, v in FEW_STEP_PRESETS["lightning-4-unet"].identity.items() if k != "faceid_weight"}
        )
        by_hand = _run(engine, face, instantid=strengths, steps=4, guidance=0.0, timestep_spacing="trailing")
    finally:
        unet.load_state_dict(before)
    assert torch.equal(result.latents, by_hand.latents)
    unet_entry = result.recipe["models"]["unet"]
    assert unet_entry["source"] == str(tiny_kit / "unet" / "sdxl_lightning_4step_unet.safetensors")
    assert result.recipe["params"]["unet"] == "sdxl-lightning-4step-unet"


def test_x0_unet_runs_with_sample_prediction(engine, face):
    result = _run(engine, face, preset="lightning-1")
    assert result.recipe["params"]["prediction_type"] == "sample" and len(result.images) == 1


def test_unet_file_with_original_ldm_keys_gives_the_same_result(engine, face, tiny_kit, tmp_path):
    source = load_file(str(tiny_kit / "unet" / "sdxl_lightning_4step_unet.safetensors"))
    layers = engine.base_model().unet.config.layers_per_block
    ldm = ldm_keys.unet_to_ldm(source, layers)
    assert all(k.startswith("model.diffusion_model.") for k in ldm)
    path = tmp_path / "unet" / "lightning-ldm.safetensors"
    path.parent.mkdir()
    save_file(ldm, str(path))
    kw = dict(steps=4, guidance=0.0, timestep_spacing="trailing")
    identity = FEW_STEP_PRESETS["lightning-4-unet"].identity  # the preset's strengths, given by hand
    strengths = InstantIDParams(ip_weight=identity["ip_weight"], cn_strength=identity["cn_strength"])
    assert torch.equal(
        _run(engine, face, instantid=strengths, unet=str(path), **kw).latents,
        _run(engine, face, preset="lightning-4-unet").latents,
    )


def test_missing_preset_file_is_the_usual_not_found_message(engine, face, tiny_kit):
    with pytest.raises(ModelNotFoundError) as info:
        _run(engine, face, preset="lightning-8-unet")
    message = str(info.value)
    assert "sdxl-lightning-8step-unet" in message and str(tiny_kit / "unet") in message
    assert "put sdxl_lightning_8step_unet.safetensors in" in message and "idforge models fetch" in message


def test_wrong_unet_file_is_refused(engine, face, tmp_path):
    path = tmp_path / "bad_unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(Exception, match="not a UNet for this base model"):
        _run(engine, face, unet=str(path), steps=1)


def test_cli_preset_sets_sampler_and_recommended_strengths(tiny_kit, face, tmp_path, capsys):
    out = tmp_path / "p.png"
    args = [
        "instantid",
        "--face",
        str(face),
        "--prompt",
        "p",
        "--preset",
        "lightning-2",
        "--width",
        "64",
        "--height",
        "64",
        "--seed",
        "1",
        "--models",
        str(tiny_kit),
        "-o",
        str(out),
        "--quiet",
        "--json",
    ]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    params = read_recipe(out)["params"]
    assert (params["steps"], params["guidance"], params["scheduler"]) == (2, 0.0, "euler")
    assert params["ip_weight"] == FEW_STEP_PRESETS["lightning-2"].identity["ip_weight"]
    assert printed["models"]["preset_lora"]["name"] == "sdxl-lightning-2step-lora"
    assert main([*args[:-4], "-o", str(out), "--quiet", "--steps", "3", "--ip-weight", "0.5"]) == 0
    params = read_recipe(out)["params"]
    assert params["steps"] == 3 and params["ip_weight"] == 0.5


def test_cli_unknown_preset_is_one_line_error(tiny_kit, face, tmp_path, capsys):
    code = main(
        [
            "instantid",
            "--face",
            str(face),
            "--prompt",
            "p",
            "--preset",
            "turbo",
            "--models",
            str(tiny_kit),
            "-o",
            str(tmp_path / "o.png"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and err.startswith("idforge: error: preset: unknown preset 'turbo'")
        and len(err.splitlines()) == 1
    )
