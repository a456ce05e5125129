"""InstantID behaviour on the tiny kit: parameters, reproducibility, metadata, keypoints, mask, LoRA, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from idforge.cli import main
from idforge.engine.params import GenerationParams, LoraSpec
from idforge.engine.result import read_recipe
from idforge.engine.session import Engine, ModelChoice
from idforge.engine.sizing import instantid_size
from idforge.errors import ModelFormatError, NoFaceError, ParameterError
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid
from idforge.methods.instantid.params import InstantIDParams
from instantid_fixtures import square_face

SIZE = 64


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    return {
        "a": square_face(folder / "a.png", stripes=3),
        "b": square_face(folder / "b.png", box=(60, 90, 190, 220), stripes=6),
        "pose": square_face(folder / "pose.png", size=(320, 256), box=(30, 40, 110, 120)),
        "empty": _dark(folder / "empty.png"),
    }


def _dark(path):
    Image.new("RGB", (200, 200), (15, 15, 15)).save(path)
    return path


def gen(**overrides) -> GenerationParams:
    # score=False: identity scoring is tested in test_identity_score.py; here it would only cost time
    values = dict(prompt="a photo", steps=3, guidance=5.0, seed=11, width=SIZE, height=SIZE, score=False)
    values.update(overrides)
    return GenerationParams(**values)


def run(engine, faces_list, **kwargs):
    return generate_instantid(engine, InstantIDRequest(faces=faces_list, **kwargs))


def test_same_inputs_and_seed_give_the_same_image(engine, faces):
    first = run(engine, [faces["a"]], generation=gen())
    second = run(engine, [faces["a"]], generation=gen())
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))
    other = run(engine, [faces["a"]], generation=gen(seed=12))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))


def test_image_i_of_a_batch_is_seed_plus_i(engine, faces):
    batch = run(engine, [faces["a"]], generation=gen(num_images=3, seed=40))
    assert batch.seeds == [40, 41, 42]
    alone = run(engine, [faces["a"]], generation=gen(seed=42))
    # Batched and single UNet calls differ by float rounding only (~1e-6 on CPU).
    assert (batch.latents[2] - alone.latents[0]).abs().max().item() < 1e-4
    assert (batch.latents[0] - batch.latents[1]).abs().max().item() > 1e-3


def test_random_seed_is_reported_and_reproduces(engine, faces):
    result = run(engine, [faces["a"]], generation=gen(seed=None))
    again = run(engine, [faces["a"]], generation=gen(seed=result.seeds[0]))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(again.images[0]))


def test_png_carries_the_full_recipe(engine, faces, tmp_path):
    result = run(
        engine, [faces["a"]], generation=gen(num_images=2, seed=5), instantid=InstantIDParams(ip_weight=1.1)
    )
    written = result.save(tmp_path / "out.png")
    assert [p.name for p in written] == ["out_0.png", "out_1.png"]
    recipe = read_recipe(written[1])
    assert recipe["method"] == "instantid"
    assert recipe["seed"] == 6 and recipe["params"]["num_images"] == 1
    assert recipe["params"]["ip_weight"] == 1.1 and recipe["params"]["cn_strength"] == 0.8
    assert recipe["params"]["prompt"] == "a photo"
    for part in ("base", "identitynet", "ip_adapter"):
        assert len(recipe["models"][part]["sha256"]) == 64
    assert recipe["idforge_version"]
    with Image.open(written[1]) as image:
        assert "Seed: 6" in image.info["parameters"]


@pytest.mark.parametrize(
    ("field", "value", "name"),
    [
        ("ip_weight", 3.5, "ip_weight"),
        ("ip_weight", -0.1, "ip_weight"),
        ("cn_strength", 10.5, "cn_strength"),
        ("start_at", -0.2, "start_at"),
        ("end_at", 1.2, "end_at"),
        ("noise", 1.1, "noise"),
        ("combine_embeds", "median", "combine_embeds"),
    ],
)
def test_out_of_range_parameters_name_the_parameter(field, value, name):
    with pytest.raises(ParameterError) as info:
        InstantIDParams(**{field: value})
    assert str(info.value).startswith(f"{name}:")


def test_start_after_end_is_refused():
    with pytest.raises(ParameterError, match="end_at"):
        InstantIDParams(start_at=0.8, end_at=0.2)


def test_generation_parameter_ranges():
    with pytest.raises(ParameterError, match="steps"):
        GenerationParams(steps=0)
    with pytest.raises(ParameterError, match="scheduler"):
        GenerationParams(scheduler="plms")
    with pytest.raises(ParameterError, match="width"):
        GenerationParams(width=100)


def test_noise_changes_the_result_deterministically(engine, faces):
    plain = run(engine, [faces["a"]], generation=gen())
    noisy = run(engine, [faces["a"]], generation=gen(), instantid=InstantIDParams(noise=0.5))
    noisy_again = run(engine, [faces["a"]], generation=gen(), instantid=InstantIDParams(noise=0.5))
    assert torch.equal(noisy.latents, noisy_again.latents)
    assert (plain.latents - noisy.latents).abs().max().item() > 1e-4


def test_combine_modes_differ_and_concat_feeds_all_faces(engine, faces):
    results = {
        mode: run(
            engine, [faces["a"], faces["b"]], generation=gen(), instantid=InstantIDParams(combine_embeds=mode)
        )
        for mode in ("average", "norm average", "concat")
    }
    assert (results["average"].latents - results["concat"].latents).abs().max().item() > 1e-4
    assert (results["average"].latents - results["norm average"].latents).abs().max().item() > 0
    assert len(results["concat"].recipe["inputs"]["faces"]) == 2


def test_pose_image_gives_the_keypoints(engine, faces):
    own = run(engine, [faces["a"]], generation=gen())
    posed = run(engine, [faces["a"]], generation=gen(), pose=faces["pose"])
    own_kps = np.asarray(own.extras["kps_image"])
    posed_kps = np.asarray(posed.extras["kps_image"])
    assert not np.array_equal(own_kps, posed_kps)
    # The pose face sits in the left part of its image, so its keypoints do too.
    columns = np.nonzero(posed_kps.sum(axis=(0, 2)))[0]
    assert columns.max() < SIZE * 0.6


def test_pose_without_face_is_an_error_unless_fallback_requested(engine, faces):
    with pytest.raises(NoFaceError) as info:
        run(engine, [faces["a"]], generation=gen(), pose=faces["empty"])
    assert "empty.png" in str(info.value) and "640" in str(info.value)
    result = run(engine, [faces["a"]], generation=gen(), pose=faces["empty"], pose_fallback=True)
    assert any("no face" in w for w in result.warnings)


def test_ready_keypoint_image_is_used_as_is(engine, faces, tmp_path):
    posed = run(engine, [faces["a"]], generation=gen(), pose=faces["pose"])
    drawn = tmp_path / "kps.png"
    posed.extras["kps_image"].save(drawn)
    from_ready = run(engine, [faces["a"]], generation=gen(), kps_image=drawn)
    assert torch.allclose(from_ready.latents, posed.latents, atol=1e-6)


def test_zero_mask_removes_every_identity_effect(engine, faces, tmp_path):
    mask = tmp_path / "mask.png"
    Image.new("L", (SIZE, SIZE), 0).save(mask)
    masked = run(engine, [faces["a"]], generation=gen(), mask=mask)
    off = run(
        engine, [faces["a"]], generation=gen(), instantid=InstantIDParams(ip_weight=0.0, cn_strength=0.0)
    )
    full = run(engine, [faces["a"]], generation=gen())
    assert (masked.latents - off.latents).abs().max().item() < 1e-5
    assert (masked.latents - full.latents).abs().max().item() > 1e-3


def test_enhance_face_region_limits_identitynet(engine, faces):
    plain = run(engine, [faces["a"]], generation=gen())
    enhanced = run(
        engine, [faces["a"]], generation=gen(), instantid=InstantIDParams(enhance_face_region=True)
    )
    assert (plain.latents - enhanced.latents).abs().max().item() > 1e-5


def test_window_outside_the_schedule_turns_identity_off(engine, faces):
    # 3 Euler steps hit t = 999, 666, 333: a window [0.9, 0.95] -> t in [49.95, 99.9] contains none of them.
    late = run(engine, [faces["a"]], generation=gen(), instantid=InstantIDParams(start_at=0.9, end_at=0.95))
    off = run(
        engine, [faces["a"]], generation=gen(), instantid=InstantIDParams(ip_weight=0.0, cn_strength=0.0)
    )
    assert (late.latents - off.latents).abs().max().item() < 1e-6


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "lcm"])
def test_every_scheduler_runs_and_is_reproducible(engine, faces, scheduler):
    first = run(engine, [faces["a"]], generation=gen(scheduler=scheduler, steps=2))
    second = run(engine, [faces["a"]], generation=gen(scheduler=scheduler, steps=2))
    assert torch.isfinite(first.latents).all()
    assert torch.equal(first.latents, second.latents)


def test_extra_lora_changes_the_unet_and_is_removed_after(engine, faces, tiny_kit):
    before = run(engine, [faces["a"]], generation=gen())
    lora = str(tiny_kit / "loras/ip-adapter-faceid_sdxl_lora.safetensors")
    with_lora = run(engine, [faces["a"]], generation=gen(loras=[LoraSpec(lora, 1.0)]))
    after = run(engine, [faces["a"]], generation=gen())
    assert (before.latents - with_lora.latents).abs().max().item() > 1e-4
    assert torch.equal(before.latents, after.latents)


def test_sd15_base_is_refused_before_generation(engine, faces, tiny_kit):
    with pytest.raises(ModelFormatError, match="SDXL"):
        run(engine, [faces["a"]], generation=gen(), base=str(tiny_kit / "diffusers/tiny-sd15"))


def test_reference_faces_are_analysed_once(engine, faces):
    run(engine, [faces["b"]], generation=gen(steps=1))
    cached = len(engine.face_cache)
    run(engine, [faces["b"]], generation=gen(steps=1, seed=3))
    assert len(engine.face_cache) == cached


def test_default_size_follows_instantid_resize_rule():
    assert instantid_size(256, 320) == (1024, 1280)
    assert instantid_size(1000, 1000) == (1280, 1280)  # never exactly 1024x1024
    assert instantid_size(1920, 1080) == (1280, 704)


def test_cli_writes_image_and_prints_recipe(tiny_kit, faces, tmp_path, capsys):
    out = tmp_path / "cli.png"
    code = main(
        [
            "instantid", "--face", str(faces["a"]), "--prompt", "a photo", "--models", str(tiny_kit),
            "--steps", "2", "--width", "64", "--height", "64", "--seed", "9", "--quiet", "--json", "-o", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seed"] == 9 and printed["files"] == [str(out)]
    assert read_recipe(out)["params"]["steps"] == 2


def test_cli_out_of_range_is_one_line_error(tiny_kit, faces, tmp_path, capsys):
    code = main(
        [
            "instantid", "--face", str(faces["a"]), "--prompt", "x", "--models", str(tiny_kit),
            "--ip-weight", "4", "--quiet", "-o", str(tmp_path / "x.png"),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "--ip-weight: 4.0" in err and "[0.0, 3.0]" in err


def test_cli_missing_face_file_is_one_line_error(tiny_kit, tmp_path, capsys):
    code = main(
        [
            "instantid", "--face", str(tmp_path / "nope.png"), "--prompt", "x", "--models", str(tiny_kit),
            "--quiet", "-o", str(tmp_path / "x.png"),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "nope.png" in err[0]


def test_memory_switches_keep_the_result(engine, faces):
    """CPU offload is a no-op on a CPU device and VAE tiling must not change a small image; both must run."""
    plain = run(engine, [faces["a"]], generation=gen())
    switched = run(engine, [faces["a"]], generation=gen(cpu_offload=True, vae_tiling=True))
    assert torch.equal(plain.latents, switched.latents)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(switched.images[0]))
    assert not engine.base_model().pipe.vae.use_tiling  # tiling was for that call only
