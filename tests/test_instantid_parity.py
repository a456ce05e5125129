"""InstantID parity: our latents against an independent loop built only from diffusers' own components.

The reference side uses insightface 2.1 for the face (embedding, keypoints), diffusers' `load_ip_adapter` (which
converts the Resampler into `IPAdapterPlusImageProjection` and installs `IPAdapterAttnProcessor2_0`), a stock
`ControlNetModel` called with the face tokens as context, and a plain Euler loop written here. Tolerance: 1e-4 on
the final latents (float32 CPU; the paths differ only in operation order).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLPipeline
from PIL import Image

from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid
from idforge.methods.instantid.params import InstantIDParams
from instantid_fixtures import square_face

insightface_app = pytest.importorskip(
    "insightface.app", reason="pip install --no-deps insightface==2.1 (make test does)"
)

SIZE = 64
STEPS = 4
SEED = 7
PROMPT = "a portrait photo"


def reference_draw_kps(image_pil: Image.Image, kps, color_list=None) -> Image.Image:
    """InstantID's own `draw_kps` (pipeline_stable_diffusion_xl_instantid.py, Apache-2.0), transcribed here so the
    reference never goes through idforge.faces.draw: limbs to the nose as ellipses of width 4 on a float canvas,
    the canvas dimmed x0.6, then radius-10 circles in the keypoint colours."""
    color_list = color_list or [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    stickwidth = 4
    limb_seq = np.array([[0, 2], [1, 2], [3, 2], [4, 2]])
    kps = np.array(kps)
    w, h = image_pil.size
    out_img = np.zeros([h, w, 3])
    for i in range(len(limb_seq)):
        index = limb_seq[i]
        color = color_list[index[0]]
        x = kps[index][:, 0]
        y = kps[index][:, 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly(
            (int(np.mean(x)), int(np.mean(y))), (int(length / 2), stickwidth), int(angle), 0, 360, 1
        )
        out_img = cv2.fillConvexPoly(out_img.copy(), polygon, color)
    out_img = (out_img * 0.6).astype(np.uint8)
    for idx_kp, kp in enumerate(kps):
        color = color_list[idx_kp]
        x, y = kp
        out_img = cv2.circle(out_img.copy(), (int(x), int(y)), 10, color, -1)
    return Image.fromarray(out_img.astype(np.uint8))


def reference_latents(kit, face_path, ip_weight, cn_strength, start_at, end_at, guidance=5.0):
    app = insightface_app.FaceAnalysis(
        name=str(kit / "insightface/models/antelopev2"), providers=["CPUExecutionProvider"]
    )
    app.prepare(ctx_id=-1, det_size=(640, 640))

    bgr = cv2.imread(str(face_path))
    faces = sorted(app.get(bgr), key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    face = faces[-1]
    height_src, width_src = bgr.shape[:2]

    pipe = StableDiffusionXLPipeline.from_pretrained(kit / "diffusers/tiny-sdxl", torch_dtype=torch.float32)
    pipe.load_ip_adapter(
        str(kit / "InstantX-InstantID"),
        subfolder="",
        weight_name="ip-adapter.bin",
        image_encoder_folder=None,
        low_cpu_mem_usage=False,
    )
    controlnet = ControlNetModel.from_pretrained(
        kit / "InstantX-InstantID/ControlNetModel", torch_dtype=torch.float32
    )
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]

    embedding = torch.from_numpy(face.embedding.astype(np.float32)).reshape(1, 1, 512)
    with torch.no_grad():
        cond_tokens = projection(embedding)
        uncond_tokens = projection(torch.zeros_like(embedding))
    face_context = torch.cat([uncond_tokens, cond_tokens])

    kps = face.kps * np.array([SIZE / width_src, SIZE / height_src], dtype=np.float32)
    kps_image = np.asarray(reference_draw_kps(Image.new("RGB", (SIZE, SIZE)), kps), dtype=np.float32) / 255.0
    control = torch.from_numpy(kps_image).permute(2, 0, 1)[None]
    control = torch.cat([control, control])

    with torch.no_grad():
        cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
        )
    text = torch.cat([uncond, cond])
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32).repeat(2, 1)
    image_embeds = torch.cat([torch.zeros_like(embedding), embedding]).unsqueeze(1)  # (2, 1, 1, 512)

    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    generator = torch.Generator("cpu").manual_seed(SEED)
    latents = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=generator) * scheduler.init_noise_sigma
    t_start = 999.0 * (1.0 - start_at) if start_at > 0 else float("inf")
    t_end = 999.0 * (1.0 - end_at) if end_at < 1 else float("-inf")
    added = {"text_embeds": torch.cat([pooled_uncond, pooled]), "time_ids": time_ids}
    with torch.no_grad():
        for t in scheduler.timesteps:
            active = t_end <= float(t) <= t_start
            x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            down = mid = None
            if active:
                down, mid = controlnet(
                    x,
                    t,
                    encoder_hidden_states=face_context,
                    controlnet_cond=control,
                    conditioning_scale=cn_strength,
                    added_cond_kwargs=added,
                    return_dict=False,
                )
            pipe.set_ip_adapter_scale(ip_weight if active else 0.0)
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


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.mark.parametrize(
    ("ip_weight", "cn_strength", "start_at", "end_at"),
    [(0.8, 0.8, 0.0, 1.0), (1.3, 2.0, 0.3, 0.7)],
    ids=["defaults", "window-0.3-0.7"],
)
def test_latents_match_diffusers_components(
    tiny_kit, engine, tmp_path, ip_weight, cn_strength, start_at, end_at
):
    face_path = square_face(tmp_path / "face.png", stripes=3)
    request = InstantIDRequest(
        faces=[face_path],
        generation=GenerationParams(
            prompt=PROMPT, steps=STEPS, guidance=5.0, seed=SEED, width=SIZE, height=SIZE
        ),
        instantid=InstantIDParams(
            ip_weight=ip_weight, cn_strength=cn_strength, start_at=start_at, end_at=end_at
        ),
    )
    ours = generate_instantid(engine, request).latents
    reference = reference_latents(tiny_kit, face_path, ip_weight, cn_strength, start_at, end_at)
    assert ours.shape == reference.shape
    difference = (ours - reference).abs().max().item()
    assert difference < 1e-4, f"max |ours - diffusers| = {difference}"


def test_identity_parts_change_the_result(engine, tmp_path):
    """Guards the parity test: with IP attention and IdentityNet off, the latents must differ."""
    face_path = square_face(tmp_path / "face.png", stripes=3)
    gen = GenerationParams(prompt=PROMPT, steps=STEPS, guidance=5.0, seed=SEED, width=SIZE, height=SIZE)
    with_identity = generate_instantid(engine, InstantIDRequest(faces=[face_path], generation=gen)).latents
    without = generate_instantid(
        engine,
        InstantIDRequest(
            faces=[face_path], generation=gen, instantid=InstantIDParams(ip_weight=0.0, cn_strength=0.0)
        ),
    ).latents
    assert (with_identity - without).abs().max().item() > 1e-3
