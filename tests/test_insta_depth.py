"""Insta Depth on the tiny kit: depth maps, the keypoint source, the depth ControlNet's effect, recipe, CLI, parity.

The parity test builds an independent loop from diffusers' own components (the pipeline's `load_ip_adapter`, two
stock `ControlNetModel`s: IdentityNet called with the face tokens, the depth ControlNet with the text, residuals
summed), insightface 2.1 for the faces and transformers for the depth map. Tolerance 1e-4 on the final latents
(float32 CPU; the two paths differ only in operation order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from idforge.cli import main
from idforge.control.depth import DepthEstimator, normalise_depth
from idforge.engine.params import GenerationParams
from idforge.engine.result import read_recipe
from idforge.engine.session import Engine, ModelChoice
from idforge.engine.sizing import scale_kps
from idforge.errors import ModelFormatError, ModelNotFoundError, ParameterError
from idforge.faces.draw import draw_kps
from idforge.methods.insta_depth.generate import (
    NO_POSE_FACE_WARNING,
    InstaDepthParams,
    InstaDepthRequest,
    generate_insta_depth,
)
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid
from idforge.methods.instantid.params import InstantIDParams

SIZE = 64
STEPS = 3
SEED = 11
PROMPT = "a portrait photo"
POSE_SIZE = (320, 256)
DEPTH_FOLDER = "depth/tiny-depth-anything"


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A face (identity), a pose photo whose face sits elsewhere, and a pose photo without any face."""
    folder = tmp_path_factory.mktemp("insta_depth")
    face_array = np.full((320, 256, 3), 20, dtype=np.uint8)
    face_array[100:201, 78:179] = 255
    face_array[108:200:10, 84:173] = 232  # texture, so the embedding is not that of a blank square
    face = folder / "face.png"
    Image.fromarray(face_array).save(face)
    # The pose: a horizontal ramp (a depth map that is not flat) with a bright square "face" on its right.
    ramp = np.linspace(10, 120, POSE_SIZE[0], dtype=np.float32)
    pose_array = np.repeat(np.tile(ramp[None, :, None], (POSE_SIZE[1], 1, 1)), 3, axis=2).astype(np.uint8)
    pose_array[50:130, 170:250] = 255
    pose = folder / "pose.png"
    Image.fromarray(pose_array).save(pose)
    noface = folder / "noface.png"
    Image.fromarray(np.tile(np.linspace(0, 150, 200, dtype=np.uint8)[None, :, None], (160, 1, 3))).save(
        noface
    )
    return {"face": face, "pose": pose, "noface": noface}


def gen(**overrides) -> GenerationParams:
    # score=False: identity scoring is tested in test_identity_score.py; here it would only cost time
    values = dict(prompt=PROMPT, steps=STEPS, guidance=3.0, seed=SEED, width=SIZE, height=SIZE, score=False)
    return GenerationParams(**(values | overrides))


def transformers_depth(folder, image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The SPEC recipe written out with transformers' own pieces: uint8 (H, W, 3)."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = model(**processor(images=image.convert("RGB"), return_tensors="pt"))
    resized = processor.post_process_depth_estimation(outputs, target_sizes=[(size[1], size[0])])
    depth = resized[0]["predicted_depth"].numpy().astype(np.float64)
    depth = (depth - depth.min()) / (depth.max() - depth.min())
    return (np.repeat(depth[:, :, None], 3, axis=2) * 255.0).clip(0, 255).astype(np.uint8)


# ---- depth maps ----------------------------------------------------------------------------------------------------
def test_depth_map_matches_transformers(tiny_kit, images):
    pose = Image.open(images["pose"])
    size = (80, 48)
    ours = DepthEstimator(tiny_kit / DEPTH_FOLDER).estimate(pose, size)
    expected = transformers_depth(tiny_kit / DEPTH_FOLDER, pose, size)
    array = np.asarray(ours)
    assert ours.mode == "RGB" and ours.size == size
    assert array.min() == 0 and array.max() == 255
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all()
    # float32 vs float64 normalisation may flip a truncation boundary; nothing more.
    assert np.abs(array.astype(int) - expected.astype(int)).max() <= 1
    assert (array == expected).mean() > 0.99


def test_normalise_depth_per_image_and_flat():
    depth = torch.stack([torch.rand(7, 9) * 50 + 3, torch.rand(7, 9) * 0.01 - 2, torch.full((7, 9), 4.0)])
    out = normalise_depth(depth, (20, 12))
    assert out.shape == (3, 3, 12, 20)
    for i in range(2):
        assert out[i].min().item() == pytest.approx(0.0, abs=1e-7)
        assert out[i].max().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(out[2], torch.zeros_like(out[2]))  # flat depth: zeros, not NaN
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_bad_depth_estimator_folder(tiny_kit, tmp_path):
    with pytest.raises(ModelFormatError, match="tiny-depth-sdxl.*not a transformers depth"):
        DepthEstimator(tiny_kit / "controlnet/tiny-depth-sdxl")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="broken: config.json is unreadable"):
        DepthEstimator(broken)


# ---- generation ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_run(engine, images):
    return generate_insta_depth(
        engine, InstaDepthRequest(face=images["face"], pose=images["pose"], generation=gen())
    )


def test_depth_strength_zero_is_plain_instantid(engine, images, default_run):
    plain = generate_instantid(
        engine, InstantIDRequest(faces=[images["face"]], pose=images["pose"], generation=gen())
    ).latents
    no_depth = generate_insta_depth(
        engine,
        InstaDepthRequest(
            face=images["face"],
            pose=images["pose"],
            generation=gen(),
            depth=InstaDepthParams(depth_strength=0.0),
        ),
    ).latents
    assert (no_depth - plain).abs().max().item() < 1e-5
    assert (default_run.latents - plain).abs().max().item() > 1e-3


def test_depth_window_matters(engine, images, default_run):
    late = generate_insta_depth(
        engine,
        InstaDepthRequest(
            face=images["face"],
            pose=images["pose"],
            generation=gen(),
            depth=InstaDepthParams(depth_start_at=0.5),
        ),
    ).latents
    assert (late - default_run.latents).abs().max().item() > 1e-4


def test_pose_keypoints_drive_identitynet(engine, images, default_run):
    analyzer = engine.face_analyzer()
    pose_face = analyzer.get_face(Image.open(images["pose"]), pick="largest", det_size=640, name="pose")
    expected = draw_kps((SIZE, SIZE), scale_kps(pose_face.kps, POSE_SIZE, (SIZE, SIZE)))
    assert np.array_equal(np.asarray(default_run.extras["kps_image"]), np.asarray(expected))
    assert default_run.recipe["inputs"]["kps_source"] == "pose"
    assert default_run.warnings == []


def test_pose_without_face_uses_face_keypoints(engine, images):
    result = generate_insta_depth(
        engine, InstaDepthRequest(face=images["face"], pose=images["noface"], generation=gen())
    )
    face_image = Image.open(images["face"])
    face = engine.face_analyzer().get_face(face_image, pick="largest", det_size=640, name="face")
    expected = draw_kps((SIZE, SIZE), scale_kps(face.kps, face_image.size, (SIZE, SIZE)))
    assert NO_POSE_FACE_WARNING in result.warnings
    assert result.recipe["inputs"]["kps_source"] == "face"
    assert np.array_equal(np.asarray(result.extras["kps_image"]), np.asarray(expected))


def test_output_size_from_pose_image(engine, images):
    # 320x256 -> short side 1024 -> 1280x1024 (InstantID's resize rule); one step keeps it cheap.
    result = generate_insta_depth(
        engine,
        InstaDepthRequest(
            face=images["face"], pose=images["pose"], generation=gen(steps=1, width=None, height=None)
        ),
    )
    assert result.images[0].size == (1280, 1024)
    assert result.extras["depth_map"].size == (1280, 1024)


def test_supplied_depth_map_skips_the_estimator(engine, images, default_run, tmp_path):
    depth_path = tmp_path / "depth.png"
    default_run.extras["depth_map"].save(depth_path)
    result = generate_insta_depth(
        engine,
        InstaDepthRequest(
            face=images["face"],
            pose=images["pose"],
            generation=gen(),
            depth_map=depth_path,
            depth_estimator=str(tmp_path / "no-such-estimator"),  # would fail if it were resolved
        ),
    )
    assert torch.equal(result.latents, default_run.latents)
    assert result.recipe["models"]["depth_estimator"] is None
    assert result.recipe["inputs"]["depth_map"] == str(depth_path)
    with pytest.raises(ModelNotFoundError):  # the same request without the map does resolve it
        generate_insta_depth(
            engine,
            InstaDepthRequest(
                face=images["face"],
                pose=images["pose"],
                generation=gen(),
                depth_estimator=str(tmp_path / "no-such-estimator"),
            ),
        )


def test_depth_map_extra_is_the_estimator_output(tiny_kit, images, default_run):
    expected = transformers_depth(tiny_kit / DEPTH_FOLDER, Image.open(images["pose"]), (SIZE, SIZE))
    assert np.abs(np.asarray(default_run.extras["depth_map"]).astype(int) - expected).max() <= 1


def test_recipe(default_run, tmp_path):
    recipe = default_run.recipe
    assert recipe["method"] == "insta_depth"
    assert recipe["params"]["depth_strength"] == 0.5
    assert recipe["params"]["depth_start_at"] == 0.0 and recipe["params"]["depth_end_at"] == 1.0
    assert recipe["params"]["cn_strength"] == 0.8 and recipe["params"]["ip_weight"] == 0.8
    models = recipe["models"]
    assert models["depth_controlnet"]["source"].endswith("tiny-depth-sdxl")
    assert models["depth_estimator"]["source"].endswith("tiny-depth-anything")
    for name in ("base", "identitynet", "ip_adapter", "depth_controlnet", "depth_estimator"):
        assert len(models[name]["sha256"]) == 64
    written = default_run.save(tmp_path / "out.png")
    assert read_recipe(written[0])["models"]["depth_controlnet"] == models["depth_controlnet"]


def test_parameter_ranges():
    with pytest.raises(ParameterError, match="depth_strength"):
        InstaDepthParams(depth_strength=10.5)
    with pytest.raises(ParameterError, match="depth_end_at"):
        InstaDepthParams(depth_start_at=0.6, depth_end_at=0.4)
    assert InstaDepthParams() == InstaDepthParams(0.5, 0.0, 1.0)


# ---- CLI -----------------------------------------------------------------------------------------------------------
def test_cli_writes_image_and_depth(tiny_kit, images, tmp_path, capsys):
    out, depth = tmp_path / "out.png", tmp_path / "maps" / "depth.png"
    argv = [
        "insta-depth", "--face", str(images["face"]), "--pose", str(images["pose"]), "--prompt", PROMPT,
        "--models", str(tiny_kit), "--steps", "2", "--width", str(SIZE), "--height", str(SIZE),
        "--seed", "5", "--depth-strength", "0.7", "--quiet", "-o", str(out), "--save-depth", str(depth),
    ]  # fmt: skip
    assert main(argv) == 0
    assert Image.open(out).size == (SIZE, SIZE)
    assert Image.open(depth).size == (SIZE, SIZE)
    recipe = read_recipe(out)
    assert recipe["params"]["depth_strength"] == 0.7 and recipe["params"]["steps"] == 2
    assert recipe["params"]["guidance"] == 3.0  # the Insta Depth API's default


def test_cli_bad_depth_estimator_is_one_line(tiny_kit, images, tmp_path, capsys):
    argv = [
        "insta-depth", "--face", str(images["face"]), "--pose", str(images["pose"]), "--prompt", PROMPT,
        "--models", str(tiny_kit), "--steps", "1", "--width", str(SIZE), "--height", str(SIZE),
        "--depth-estimator", str(tiny_kit / "controlnet/tiny-depth-sdxl"), "--quiet", "-o", str(tmp_path / "o.png"),
    ]  # fmt: skip
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("idforge: error")]
    assert len(lines) == 1
    assert "depth estimator" in lines[0] and "tiny-depth-sdxl" in lines[0]
    assert not (tmp_path / "o.png").exists()


# ---- parity with diffusers' components -----------------------------------------------------------------------------
def reference_latents(
    kit, face_path, pose_path, params: InstantIDParams, depth: InstaDepthParams, guidance=3.0
):
    insightface_app = pytest.importorskip("insightface.app", reason="pip install --no-deps insightface==2.1")
    import cv2
    from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLPipeline

    app = insightface_app.FaceAnalysis(
        name=str(kit / "insightface/models/antelopev2"), providers=["CPUExecutionProvider"]
    )
    app.prepare(ctx_id=-1, det_size=(640, 640))

    def largest(path):
        bgr = cv2.imread(str(path))
        faces = app.get(bgr)
        return max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])), bgr.shape[:2]

    face, _ = largest(face_path)
    pose_face, (pose_h, pose_w) = largest(pose_path)

    pipe = StableDiffusionXLPipeline.from_pretrained(kit / "diffusers/tiny-sdxl", dtype=torch.float32)
    pipe.load_ip_adapter(
        str(kit / "InstantX-InstantID"),
        subfolder="",
        weight_name="ip-adapter.bin",
        image_encoder_folder=None,
        low_cpu_mem_usage=False,
    )
    identitynet = ControlNetModel.from_pretrained(
        kit / "InstantX-InstantID/ControlNetModel", dtype=torch.float32
    )
    depth_net = ControlNetModel.from_pretrained(kit / "controlnet/tiny-depth-sdxl", dtype=torch.float32)
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]

    embedding = torch.from_numpy(face.embedding.astype(np.float32)).reshape(1, 1, 512)
    with torch.no_grad():
        face_context = torch.cat([projection(torch.zeros_like(embedding)), projection(embedding)])
    kps = pose_face.kps * np.array([SIZE / pose_w, SIZE / pose_h], dtype=np.float32)
    kps_image = torch.from_numpy(np.asarray(draw_kps((SIZE, SIZE), kps), dtype=np.float32) / 255.0)
    kps_control = kps_image.permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    depth_image = transformers_depth(kit / DEPTH_FOLDER, Image.open(pose_path), (SIZE, SIZE))
    depth_control = (
        torch.from_numpy(depth_image.astype(np.float32) / 255.0).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    )

    with torch.no_grad():
        cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
        )
    text = torch.cat([uncond, cond])
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32).repeat(2, 1)
    image_embeds = torch.cat([torch.zeros_like(embedding), embedding]).unsqueeze(1)
    added = {"text_embeds": torch.cat([pooled_uncond, pooled]), "time_ids": time_ids}

    def window(start, end):
        return (
            999.0 * (1 - start) if start > 0 else float("inf"),
            999.0 * (1 - end) if end < 1 else float("-inf"),
        )

    id_window = window(params.start_at, params.end_at)
    depth_window = window(depth.depth_start_at, depth.depth_end_at)
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    generator = torch.Generator("cpu").manual_seed(SEED)
    latents = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=generator) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            id_active = id_window[1] <= float(t) <= id_window[0]
            depth_active = depth_window[1] <= float(t) <= depth_window[0]
            parts = []
            if id_active:
                parts.append(identitynet(x, t, encoder_hidden_states=face_context, controlnet_cond=kps_control,
                                         conditioning_scale=params.cn_strength, added_cond_kwargs=added,
                                         return_dict=False))  # fmt: skip
            if depth_active:
                parts.append(depth_net(x, t, encoder_hidden_states=text, controlnet_cond=depth_control,
                                       conditioning_scale=depth.depth_strength, added_cond_kwargs=added,
                                       return_dict=False))  # fmt: skip
            down = mid = None
            if parts:
                down = [sum(res) for res in zip(*(p[0] for p in parts), strict=True)]
                mid = sum(p[1] for p in parts)
            pipe.set_ip_adapter_scale(params.ip_weight if id_active else 0.0)
            noise = pipe.unet(
                x,
                t,
                encoder_hidden_states=text,
                added_cond_kwargs=added | {"image_embeds": [image_embeds]},
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                return_dict=False,
            )[0]
            noise_uncond, noise_cond = noise.chunk(2)
            noise = noise_uncond + guidance * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
    return latents


@pytest.mark.parametrize(
    ("params", "depth"),
    [
        (InstantIDParams().with_preset(None), InstaDepthParams()),
        (
            InstantIDParams(ip_weight=1.2, cn_strength=1.5, start_at=0.1, end_at=0.9),
            InstaDepthParams(1.3, 0.4, 1.0),
        ),
    ],
    ids=["defaults", "windows"],
)
def test_latents_match_diffusers_components(tiny_kit, engine, images, params, depth):
    request = InstaDepthRequest(
        face=images["face"], pose=images["pose"], generation=gen(), instantid=params, depth=depth
    )
    ours = generate_insta_depth(engine, request).latents
    reference = reference_latents(tiny_kit, images["face"], images["pose"], params, depth)
    assert ours.shape == reference.shape
    difference = (ours - reference).abs().max().item()
    assert difference < 1e-4, f"max |ours - diffusers| = {difference}"


def test_bad_face_image_fails_before_any_model_loads(tmp_path):
    """Input images are decoded first: a broken face file is refused by an engine that has no models at all."""
    from idforge.engine.session import Engine, ModelChoice
    from idforge.errors import InputImageError
    from idforge.methods.insta_depth.generate import InstaDepthRequest, generate_insta_depth

    broken = tmp_path / "face.png"
    broken.write_bytes(b"not an image")
    pose = tmp_path / "pose.png"
    Image.new("RGB", (64, 64), (20, 20, 20)).save(pose)
    engine = Engine(ModelChoice(models_dirs=[str(tmp_path / "no-models-here")], offline=True), device="cpu")
    with pytest.raises(InputImageError, match="face.png"):
        generate_insta_depth(engine, InstaDepthRequest(face=broken, pose=pose))
    assert engine.loaded_models() == []
