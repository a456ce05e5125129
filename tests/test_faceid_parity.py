"""FaceID parity: our latents against diffusers' own FaceID path on the tiny kit's weights.

Reference side: insightface 2.1 for the face (buffalo_l, highest score, normed embedding), the stock SD1.5 / SDXL
pipelines with `load_ip_adapter(..., image_encoder_folder=None)` (diffusers converts the FaceID projection and
applies the embedded LoRA through PEFT; we set that LoRA's weight to our strength), `set_ip_adapter_scale` for the
weight, `ip_adapter_image_embeds` = [zeros; embedding] and `output_type="latent"`. For plusv2 the CLIP features
are computed here with transformers from the kit's encoder folder (insightface's `norm_crop` at 224 on the RGB
image, penultimate hidden states, black image for uncond) and set on diffusers' projection with its shortcut on.
Linear weights, 'V only' scaling (the only mode diffusers has).

Tolerance on the final latents (float32 CPU): 1e-4 absolute for latents up to magnitude 10, growing with the
magnitude beyond that (1e-5 * max|latents|), because float32 rounding grows with the values and the random tiny
SD1.5 reaches ~76. Observed: SDXL 2e-5 (max|latents| 14), SD1.5 1.3e-4 (max 76); the two sides differ only in
kernel paths (diffusers feeds 4-D token tensors to the IP projections; the LoRA is merged here, PEFT adds it
there). A 1% error in the weight or the LoRA strength moves the latents by 0.1 (SDXL) to 1.1 (SD1.5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
from idforge.methods.faceid.generate import generate_faceid
from instantid_fixtures import square_face

insightface_app = pytest.importorskip(
    "insightface.app", reason="pip install --no-deps insightface==2.1 (make test does)"
)
pytest.importorskip("peft", reason="diffusers applies the FaceID LoRA through peft")

SIZE = 64
STEPS = 3
SEED = 5
PROMPT = "a portrait photo"
TOL = 1e-4


def tolerance(reference: torch.Tensor) -> float:
    return TOL * max(1.0, reference.abs().max().item() / 10.0)


def reference_face(kit, face_path):
    import cv2

    app = insightface_app.FaceAnalysis(
        name=str(kit / "insightface/models/buffalo_l"), providers=["CPUExecutionProvider"]
    )
    app.prepare(ctx_id=-1, det_size=(640, 640))
    bgr = cv2.imread(str(face_path))
    return bgr[:, :, ::-1].copy(), max(app.get(bgr), key=lambda f: f.det_score)


def reference_clip(kit, rgb, face):
    from insightface.utils import face_align
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    folder = kit / "clip_vision/tiny-clip-vit-h"
    model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    processor = CLIPImageProcessor.from_pretrained(folder)
    crop = face_align.norm_crop(rgb, landmark=face.kps, image_size=224)
    black = np.zeros((224, 224, 3), dtype=np.uint8)
    pixels = processor(
        images=[Image.fromarray(black), Image.fromarray(crop)], return_tensors="pt"
    ).pixel_values
    with torch.no_grad():
        hidden = model(pixels, output_hidden_states=True).hidden_states[-2]
    return hidden.unsqueeze(1)  # (2, 1, 257, h): [uncond, cond]


def diffusers_latents(
    kit, family, adapter_file, face_path, weight, lora_strength, v2_scale=None, guidance=5.0
):
    rgb, face = reference_face(kit, face_path)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(
            kit / "diffusers/tiny-sdxl", torch_dtype=torch.float32
        )
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            kit / "diffusers/tiny-sd15",
            torch_dtype=torch.float32,
            safety_checker=None,
            requires_safety_checker=False,
        )
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.load_ip_adapter(
        str(kit / "ipadapter"),
        subfolder="",
        weight_name=adapter_file,
        image_encoder_folder=None,
        low_cpu_mem_usage=False,
    )
    pipe.set_adapters(["faceid_0"], adapter_weights=[lora_strength])
    pipe.set_ip_adapter_scale(weight)
    embedding = torch.from_numpy(face.normed_embedding.astype(np.float32)).reshape(1, 1, 512)
    embeds = torch.cat([torch.zeros_like(embedding), embedding])  # (2, 1, 512): [uncond, cond]
    if v2_scale is not None:
        projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        projection.clip_embeds = reference_clip(kit, rgb, face)
        projection.shortcut = True
        projection.shortcut_scale = v2_scale
    out = pipe(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        width=SIZE,
        height=SIZE,
        generator=torch.Generator("cpu").manual_seed(SEED),
        ip_adapter_image_embeds=[embeds],
        output_type="latent",
    )
    return out.images


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def face_path(tmp_path_factory):
    return square_face(tmp_path_factory.mktemp("parity") / "face.png", stripes=3)


def ours(engine, adapter_file, face_path, weight, lora_strength, v2_scale=1.0, guidance=5.0):
    request = FaceIDRequest(
        faces=[face_path],
        generation=GenerationParams(
            prompt=PROMPT, steps=STEPS, guidance=guidance, seed=SEED, width=SIZE, height=SIZE
        ),
        faceid=FaceIDParams(weight=weight, lora_strength=lora_strength, weight_faceidv2=v2_scale),
        adapter=adapter_file,
    )
    return generate_faceid(engine, request).latents


@pytest.mark.parametrize(
    ("family", "adapter_file", "weight", "lora_strength", "v2_scale"),
    [
        ("sd15", "ip-adapter-faceid_sd15.bin", 1.0, 0.6, None),
        ("sd15", "ip-adapter-faceid_sd15.bin", 0.7, 1.0, None),
        ("sdxl", "ip-adapter-faceid_sdxl.bin", 1.0, 0.6, None),
        ("sdxl", "ip-adapter-faceid-plusv2_sdxl.bin", 0.8, 0.6, 1.5),
    ],
    ids=["sd15-defaults", "sd15-w0.7-lora1", "sdxl-defaults", "sdxl-plusv2"],
)
def test_latents_match_diffusers_faceid(
    tiny_kit, engine, face_path, family, adapter_file, weight, lora_strength, v2_scale
):
    mine = ours(engine, adapter_file, face_path, weight, lora_strength, v2_scale or 1.0)
    reference = diffusers_latents(tiny_kit, family, adapter_file, face_path, weight, lora_strength, v2_scale)
    assert mine.shape == reference.shape
    difference = (mine - reference).abs().max().item()
    assert difference < tolerance(reference), f"max |ours - diffusers| = {difference}"


def test_faceid_changes_the_result(engine, face_path):
    """Guards the parity test: without the adapter and LoRA the latents must differ."""
    file = "ip-adapter-faceid_sd15.bin"
    assert (
        ours(engine, file, face_path, 1.0, 0.6) - ours(engine, file, face_path, 0.0, 0.0)
    ).abs().max() > 1e-3
