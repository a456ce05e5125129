"""PuLID parity: our latents against an independent computation from diffusers components on the kit's weights.

Reference side, written here from the official pipelines (ToTheBeginning/PuLID pipeline.py / pipeline_v1_1.py):
insightface 2.1 (antelopev2, largest face, raw embedding); facexlib's FFHQ-512 alignment
(cv2.estimateAffinePartial2D with LMEDS onto the template below, grey border (135, 133, 132) in BGR); the face
parser's labels (our BiSeNet module is the one piece shared: facexlib needs torchvision here) whitening labels
0, 16, 18, 7, 8, 9, 14, 15 and greying the rest; bicubic resize and CLIP mean/std; EVA02-CLIP, the ID encoders and
the rotary embedding as plain formulas (tests/test_pulid.py); the PuLID files read by their own keys; the stock
diffusers StableDiffusionXLPipeline with the official IDAttnProcessor2_0 maths (below) on every attn2 and
AttnProcessor2_0 elsewhere, the ID tokens passed as `cross_attention_kwargs={"id_embedding", "id_scale"}` with
[uncond; cond] rows, `output_type="latent"`. A non-empty negative prompt keeps SDXL's zeroed empty-prompt
embeddings out (the official ortho divides by zero on them; ours sets that projection to 0, tested apart).

Tolerance on the final latents (float32 CPU, 3 Euler steps): 1e-4 absolute up to magnitude 10, 1e-5 relative
beyond (as the FaceID parity test); observed below 2e-5. A 1% change of id_scale moves the latents by >1e-3.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file

from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.identity.face_parser import load_face_parser
from idforge.methods.pulid.core import PulidParams, PulidRequest
from idforge.methods.pulid.generate import generate_pulid
from instantid_fixtures import square_face
from test_pulid import encoder_v1_reference, encoder_v11_reference, eva_reference

insightface_app = pytest.importorskip("insightface.app", reason="pip install --no-deps insightface==2.1")

SIZE = 64
STEPS = 3
SEED = 7
PROMPT, NEGATIVE = "a portrait photo", "blurry"
TOL = 1e-4
FFHQ = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)
BACKGROUND = (0, 16, 18, 7, 8, 9, 14, 15)
FILES = {
    "pulid-v1": "pulid/pulid_v1.bin",
    "pulid-v1.1": "pulid/pulid_v1.1.safetensors",
    "pulid-comfyui": "pulid/ip-adapter_pulid_sdxl_fp16.safetensors",
}
METHODS = {"fidelity": (8, False, True), "style": (16, True, False), "neutral": (0, False, False)}


def tolerance(reference: torch.Tensor) -> float:
    return TOL * max(1.0, reference.abs().max().item() / 10.0)


def read_file(kit, model):
    """(encoder state, {N: (k, v)}) read by the file's own keys."""
    path = kit / FILES[model]
    raw = torch.load(path, weights_only=True) if path.suffix == ".bin" else load_file(str(path))
    raw = {k: v.float() for k, v in raw.items()}
    if model == "pulid-comfyui":
        encoder = {k[len("image_proj.") :]: v for k, v in raw.items() if k.startswith("image_proj.")}
        kv = {int(k.split(".")[1]): k for k in raw if k.startswith("ip_adapter.") and "to_k_ip" in k}
        layers = {
            n: (raw[f"ip_adapter.{n}.to_k_ip.weight"], raw[f"ip_adapter.{n}.to_v_ip.weight"]) for n in kv
        }
    else:
        encoder = {k[len("id_adapter.") :]: v for k, v in raw.items() if k.startswith("id_adapter.")}
        kv = {int(k.split(".")[1]) for k in raw if k.startswith("id_adapter_attn_layers.")}
        layers = {
            n: (
                raw[f"id_adapter_attn_layers.{n}.id_to_k.weight"],
                raw[f"id_adapter_attn_layers.{n}.id_to_v.weight"],
            )
            for n in kv
        }
    return encoder, layers


@torch.no_grad()
def reference_id_cond(kit, face_path):
    app = insightface_app.FaceAnalysis(
        name=str(kit / "insightface/models/antelopev2"), providers=["CPUExecutionProvider"]
    )
    app.prepare(ctx_id=-1, det_size=(640, 640))
    bgr = cv2.imread(str(face_path))
    face = max(app.get(bgr), key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    matrix = cv2.estimateAffinePartial2D(face.kps.astype(np.float32), FFHQ, method=cv2.LMEDS)[0]
    aligned = cv2.warpAffine(
        bgr, matrix, (512, 512), borderMode=cv2.BORDER_CONSTANT, borderValue=(135, 133, 132)
    )
    x = torch.from_numpy(aligned[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0
    parser = load_face_parser(kit / "facexlib/parsing_bisenet.pth")
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    labels = parser((x - mean) / std).argmax(dim=1, keepdim=True)
    background = sum(labels == i for i in BACKGROUND).bool()
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).repeat(1, 3, 1, 1)
    features = torch.where(background, torch.ones_like(x), gray)
    raw = torch.load(kit / "clip/EVA02_CLIP_L_336_psz14_s6B.pt", weights_only=True)
    eva = {k[len("visual.") :]: v.float() for k, v in raw.items() if k.startswith("visual.")}
    size = int(np.sqrt(eva["pos_embed"].shape[1] - 1)) * 14
    features = F.interpolate(features, (size, size), mode="bicubic", align_corners=False, antialias=True)
    clip_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    clip_std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    cls, hidden = eva_reference(eva, (features - clip_mean) / clip_std)
    cls = cls / cls.norm(2, 1, True)
    return torch.cat([torch.from_numpy(face.embedding.astype(np.float32))[None], cls], dim=-1), hidden


@torch.no_grad()
def reference_tokens(kit, model, face_paths, id_mix=False):
    encoder, _ = read_file(kit, model)
    conds = [reference_id_cond(kit, p) for p in face_paths]
    if model == "pulid-v1.1":
        id_cond = torch.stack([c for c, _ in conds], dim=1)
        hidden = [torch.cat([h[j] for _, h in conds], dim=1) for j in range(5)]
        cond = encoder_v11_reference(encoder, id_cond, hidden)
        uncond = encoder_v11_reference(
            encoder, torch.zeros_like(conds[0][0]), [torch.zeros_like(h) for h in conds[0][1]]
        )
        return uncond, cond
    parts = []
    for i, (c, h) in enumerate(conds):
        pair = torch.cat(
            [
                encoder_v1_reference(encoder, torch.zeros_like(c), [torch.zeros_like(t) for t in h]),
                encoder_v1_reference(encoder, c, h),
            ]
        )
        parts.append(pair if i == 0 or id_mix else pair[:, :5])  # app.py: auxiliary ids give 5 tokens
    both = torch.cat(parts, dim=1)
    return both[:1], both[1:]


class OfficialIDAttnProcessor:
    """PuLID's IDAttnProcessor2_0 maths (attention_processor.py), module-level switches as arguments."""

    def __init__(self, id_to_k, id_to_v, num_zero, ortho, ortho_v2):
        self.id_to_k, self.id_to_v = id_to_k, id_to_v
        self.num_zero, self.ortho, self.ortho_v2 = num_zero, ortho, ortho_v2

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        id_embedding=None,
        id_scale=1.0,
    ):
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def split(t):
            return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = split(query), split(key), split(value)
        hidden = (
            F.scaled_dot_product_attention(query, key, value)
            .transpose(1, 2)
            .reshape(batch, -1, attn.heads * head_dim)
        )
        if id_embedding is not None:
            if self.num_zero:
                zeros = torch.zeros(id_embedding.size(0), self.num_zero, id_embedding.size(-1))
                id_embedding = torch.cat((id_embedding, zeros), dim=1)
            id_key = split(F.linear(id_embedding, self.id_to_k))
            id_value = split(F.linear(id_embedding, self.id_to_v))
            id_hidden = F.scaled_dot_product_attention(query, id_key, id_value)
            id_hidden = id_hidden.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
            if not self.ortho and not self.ortho_v2:
                hidden = hidden + id_scale * id_hidden
            else:
                projection = (
                    (hidden * id_hidden).sum(dim=-2, keepdim=True)
                    / (hidden * hidden).sum(dim=-2, keepdim=True)
                    * hidden
                )
                if self.ortho_v2:
                    attn_mean = (query @ id_key.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)
                    attn_mean = attn_mean[:, :, :5].sum(dim=-1, keepdim=True)
                    hidden = hidden + id_scale * (id_hidden + (attn_mean - 1) * projection)
                else:
                    hidden = hidden + id_scale * (id_hidden - projection)
        return attn.to_out[1](attn.to_out[0](hidden))


def reference_latents(kit, model, face_paths, method="fidelity", id_scale=0.8, num_zero=None, id_mix=False):
    zeros, ortho, ortho_v2 = METHODS[method]
    zeros = zeros if num_zero is None else num_zero
    pipe = StableDiffusionXLPipeline.from_pretrained(kit / "diffusers/tiny-sdxl", torch_dtype=torch.float32)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    _, layers = read_file(kit, model)
    processors = {}
    for index, name in enumerate(pipe.unet.attn_processors):
        if name.endswith("attn2.processor"):
            processors[name] = OfficialIDAttnProcessor(*layers[index], zeros, ortho, ortho_v2)
        else:
            processors[name] = AttnProcessor2_0()
    pipe.unet.set_attn_processor(processors)
    uncond, cond = reference_tokens(kit, model, face_paths, id_mix)
    out = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        width=SIZE,
        height=SIZE,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="latent",
        cross_attention_kwargs={"id_embedding": torch.cat([uncond, cond]), "id_scale": id_scale},
    )
    return out.images


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def face_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pulid_parity")
    return [square_face(folder / f"face{i}.png", stripes=s) for i, s in enumerate((3, 6))]


def ours(engine, model, faces, method="fidelity", id_scale=0.8, num_zero=None, id_mix=False):
    request = PulidRequest(
        faces=faces,
        generation=GenerationParams(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            steps=STEPS,
            guidance=5.0,
            seed=SEED,
            width=SIZE,
            height=SIZE,
        ),
        pulid=PulidParams(method=method, weight=id_scale, fidelity=num_zero, id_mix=id_mix),
        model=model,
    )
    return generate_pulid(engine, request).latents


@pytest.mark.parametrize(
    ("model", "refs", "method", "id_scale", "num_zero", "id_mix"),
    [
        ("pulid-v1.1", 1, "fidelity", 0.8, None, False),
        ("pulid-v1.1", 2, "fidelity", 1.0, 20, False),
        ("pulid-v1", 1, "style", 0.8, None, False),
        ("pulid-v1", 2, "fidelity", 0.8, None, True),
        ("pulid-comfyui", 1, "neutral", 0.6, None, False),
        ("pulid-comfyui", 2, "fidelity", 1.2, 4, False),
    ],
    ids=["v1.1", "v1.1-two-refs-20-zeros", "v1-style", "v1-id-mix", "comfyui-neutral", "comfyui-aux-4-zeros"],
)
def test_latents_match_the_official_computation(
    tiny_kit, engine, face_paths, model, refs, method, id_scale, num_zero, id_mix
):
    faces = face_paths[:refs]
    mine = ours(engine, model, faces, method, id_scale, num_zero, id_mix)
    reference = reference_latents(tiny_kit, model, faces, method, id_scale, num_zero, id_mix)
    assert mine.shape == reference.shape
    difference = (mine - reference).abs().max().item()
    assert difference < tolerance(reference), f"max |ours - reference| = {difference}"


def test_id_scale_moves_the_result(engine, face_paths):
    """Guards the parity test: 1% of id_scale is far above its tolerance."""
    a = ours(engine, "pulid-v1.1", face_paths[:1], id_scale=0.8)
    b = ours(engine, "pulid-v1.1", face_paths[:1], id_scale=0.808)
    assert (a - b).abs().max() > 1e-3
