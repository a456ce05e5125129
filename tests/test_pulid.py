"""PuLID on the tiny kit: the three file layouts, the encoders, EVA02-CLIP and the parser against formulas written
here, the attention modes, the method through the registry (Python, CLI), best-of-N and the identity score.

Runs are 64x64, 2 steps, CPU float32. "Equal" for independent computations means within 1e-5 relative to the
largest magnitude (float32 rounding of different kernel orders; observed below 1e-6).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.errors import ModelFormatError, ParameterError
from idforge.identity.eva_clip import HIDDEN_BLOCKS, load_eva_tower, read_eva_state
from idforge.identity.pulid import build_id_encoder, load_pulid_checkpoint
from idforge.methods.pulid.core import PulidParams, PulidRequest
from idforge.methods.pulid.generate import generate_pulid
from instantid_fixtures import square_face

SIZE = 64
STEPS = 2
SEED = 3
FILES = {
    "pulid-v1": "pulid/pulid_v1.bin",
    "pulid-v1.1": "pulid/pulid_v1.1.safetensors",
    "pulid-comfyui": "pulid/ip-adapter_pulid_sdxl_fp16.safetensors",
}


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return (a - b).abs().max().item() <= rel * max(1.0, b.abs().max().item())


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pulid_faces")
    return [square_face(folder / f"face{i}.png", stripes=s) for i, s in enumerate((3, 6))]


def gen(**kwargs) -> GenerationParams:
    settings = dict(prompt="a photo", negative_prompt="blurry", steps=STEPS, guidance=5.0, seed=SEED)
    settings |= dict(width=SIZE, height=SIZE)
    return GenerationParams(**(settings | kwargs))


def run(engine, faces, model="pulid-v1.1", generation=None, **params):
    request = PulidRequest(
        faces=faces, generation=generation or gen(), pulid=PulidParams(**params), model=model
    )
    return generate_pulid(engine, request)


# ---- files ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "version", "layout", "tokens"),
    [
        ("pulid-v1", "v1", "official", 10),
        ("pulid-v1.1", "v1.1", "official", 32),
        ("pulid-comfyui", "v1", "comfyui", 10),
    ],
)
def test_the_three_layouts_load_with_their_version_and_tokens(
    tiny_kit, engine, model, version, layout, tokens
):
    ckpt = load_pulid_checkpoint(tiny_kit / FILES[model])
    assert (ckpt.version, ckpt.layout, ckpt.num_tokens) == (version, layout, tokens)
    unet = engine.base_model().unet
    cross = [i for i, name in enumerate(unet.attn_processors) if name.endswith("attn2.processor")]
    assert sorted(ckpt.ip_layers) == cross  # the odd indices N of unet.attn_processors, as InstantID's
    assert all(k.dtype == torch.float32 for k, _ in ckpt.ip_layers.values())


def test_comfyui_file_is_v1_in_fp16_with_renamed_keys(tiny_kit):
    from safetensors.torch import load_file

    raw = load_file(str(tiny_kit / FILES["pulid-comfyui"]))
    assert all(k.startswith(("image_proj.", "ip_adapter.")) for k in raw)
    assert all(v.dtype == torch.float16 for v in raw.values())
    official = torch.load(tiny_kit / FILES["pulid-v1"], weights_only=True)
    assert all(k.startswith(("id_adapter.", "id_adapter_attn_layers.")) for k in official)
    v1 = load_pulid_checkpoint(tiny_kit / FILES["pulid-v1"])
    comfy = load_pulid_checkpoint(tiny_kit / FILES["pulid-comfyui"])
    assert set(v1.encoder) == set(comfy.encoder)
    for n, (k, v) in v1.ip_layers.items():
        assert torch.equal(k.half().float(), comfy.ip_layers[n][0]) and torch.equal(
            v.half().float(), comfy.ip_layers[n][1]
        )


def test_other_files_are_refused_naming_the_layout(tiny_kit, tmp_path):
    with pytest.raises(ModelFormatError, match="not a PuLID checkpoint"):
        load_pulid_checkpoint(tiny_kit / "ipadapter/ip-adapter-faceid_sdxl.bin")
    state = torch.load(tiny_kit / FILES["pulid-v1"], weights_only=True)
    state.pop(next(k for k in state if k.startswith("id_adapter.body.3")))
    torch.save(state, tmp_path / "broken.bin")
    with pytest.raises(ModelFormatError, match="missing"):
        load_pulid_checkpoint(tmp_path / "broken.bin")


def test_a_pulid_file_that_does_not_fit_the_base_is_refused(tiny_kit, engine, faces):
    with pytest.raises(ModelFormatError, match="cross-attention layers"):
        generate_pulid(
            engine,
            PulidRequest(
                faces=faces[:1],
                generation=gen(),
                model=FILES["pulid-v1"],
                base=str(tiny_kit / "diffusers/tiny-sd15"),
            ),
        )


# ---- encoders, written again here ---------------------------------------------------------------------------------


def mlp(sd, p, x):
    for i in (0, 3):
        x = F.linear(x, sd[f"{p}.{i}.weight"], sd[f"{p}.{i}.bias"])
        x = F.layer_norm(x, (x.shape[-1],), sd[f"{p}.{i + 1}.weight"], sd[f"{p}.{i + 1}.bias"])
        x = F.leaky_relu(x, 0.01)
    return F.linear(x, sd[f"{p}.6.weight"], sd[f"{p}.6.bias"])


def encoder_v1_reference(sd, id_cond, hidden):
    context = sd["mapping_0.6.weight"].shape[0]
    tokens = mlp(sd, "body", id_cond).reshape(id_cond.shape[0], -1, context)
    extra = [
        mlp(sd, f"mapping_{i}", h[:, :1]) + mlp(sd, f"mapping_patch_{i}", h[:, 1:]).mean(dim=1, keepdim=True)
        for i, h in enumerate(hidden)
    ]
    return torch.cat([tokens, *extra], dim=1)


def perceiver_reference(sd, p, context, latents):
    dim = latents.shape[-1]
    heads = sd[f"{p}.to_q.weight"].shape[0] // 64
    x = F.layer_norm(context, (dim,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"])
    lat = F.layer_norm(latents, (dim,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"])
    q = lat @ sd[f"{p}.to_q.weight"].T
    k, v = (torch.cat([x, lat], dim=1) @ sd[f"{p}.to_kv.weight"].T).chunk(2, dim=-1)

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, -1).permute(0, 2, 1, 3)

    scale = 1 / math.sqrt(math.sqrt(64))
    weights = torch.softmax((split(q) * scale) @ (split(k) * scale).transpose(-1, -2), dim=-1)
    out = (weights @ split(v)).permute(0, 2, 1, 3).reshape(latents.shape[0], latents.shape[1], -1)
    return out @ sd[f"{p}.to_out.weight"].T


def encoder_v11_reference(sd, id_cond, hidden):
    dim = sd["latents"].shape[-1]
    refs = id_cond.shape[1] if id_cond.ndim == 3 else 1
    x = mlp(sd, "id_embedding_mapping", id_cond).reshape(id_cond.shape[0], -1, dim)
    assert x.shape[1] == 5 * refs
    latents = torch.cat([sd["latents"].repeat(id_cond.shape[0], 1, 1), x], dim=1)
    for i in range(5):
        context = torch.cat([x, mlp(sd, f"mapping_{i}", hidden[i])], dim=1)
        for layer in (2 * i, 2 * i + 1):
            p = f"layers.{layer}"
            latents = perceiver_reference(sd, f"{p}.0", context, latents) + latents
            h = F.layer_norm(latents, (dim,), sd[f"{p}.1.0.weight"], sd[f"{p}.1.0.bias"])
            latents = F.gelu(h @ sd[f"{p}.1.1.weight"].T) @ sd[f"{p}.1.3.weight"].T + latents
    return latents[:, :32] @ sd["proj_out"]


@pytest.mark.parametrize("references", [1, 2])
def test_encoders_match_the_formulas(tiny_kit, references):
    g = torch.Generator().manual_seed(0)
    v1 = load_pulid_checkpoint(tiny_kit / FILES["pulid-v1"])
    v11 = load_pulid_checkpoint(tiny_kit / FILES["pulid-v1.1"])
    width = v1.encoder["body.0.weight"].shape[1]
    vit = v1.encoder["mapping_0.0.weight"].shape[1]
    id_cond = torch.randn(1, width, generator=g)
    hidden = [torch.randn(1, 17, vit, generator=g) for _ in range(5)]
    with torch.no_grad():
        ours = build_id_encoder(v1.encoder)(id_cond, hidden)
        assert ours.shape == (1, 10, 128)
        assert close(ours, encoder_v1_reference(v1.encoder, id_cond, hidden))
        conds = torch.randn(1, references, width, generator=g)
        hid = [torch.randn(1, 17 * references, vit, generator=g) for _ in range(5)]
        ours = build_id_encoder(v11.encoder)(conds, hid)
        assert ours.shape == (1, 32, 128)
        assert close(ours, encoder_v11_reference(v11.encoder, conds, hid))


# ---- EVA02-CLIP, written again here --------------------------------------------------------------------------------


def rope_reference(x: torch.Tensor, grid: int) -> torch.Tensor:
    """EVA's 2D rotary embedding on (B, H, grid*grid, 64) by complex rotation: channel pair j (0..31) turns by
    pos * 16 / grid * 10000^(-2 (j mod 16) / 32), pos the patch's row for j < 16, its column otherwise."""
    b, h, n, d = x.shape
    angles = torch.zeros(n, d // 2, dtype=torch.float64)
    for p in range(n):
        row, col = divmod(p, grid)
        for j in range(d // 2):
            pos = row if j < d // 4 else col
            angles[p, j] = pos * 16.0 / grid * 10000.0 ** (-2.0 * (j % (d // 4)) / (d // 2))
    z = torch.view_as_complex(x.double().reshape(b, h, n, d // 2, 2).contiguous())
    return (
        torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).reshape(b, h, n, d).to(x.dtype)
    )


def eva_reference(sd, pixels):
    width = sd["cls_token"].shape[-1]
    heads = width // 64
    x = F.conv2d(pixels, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    grid = x.shape[-1]
    x = (
        torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], 1)
        + sd["pos_embed"]
    )
    hidden = []
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        if i + 1 in (4, 8, 12, 16, 20):
            hidden.append(x)
        p = f"blocks.{i}."

        def ln(t, name, p=p):
            return F.layer_norm(t, (t.shape[-1],), sd[p + name + ".weight"], sd[p + name + ".bias"], 1e-6)

        h = ln(x, "norm1")
        q = h @ sd[p + "attn.q_proj.weight"].T + sd[p + "attn.q_bias"]
        k = h @ sd[p + "attn.k_proj.weight"].T
        v = h @ sd[p + "attn.v_proj.weight"].T + sd[p + "attn.v_bias"]
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, 64).transpose(1, 2) for t in (q, k, v))
        q = torch.cat([q[:, :, :1], rope_reference(q[:, :, 1:], grid)], dim=2)
        k = torch.cat([k[:, :, :1], rope_reference(k[:, :, 1:], grid)], dim=2)
        a = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1) @ v
        a = ln(a.transpose(1, 2).reshape(x.shape), "attn.inner_attn_ln")
        x = x + a @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = ln(x, "norm2")
        m = F.silu(h @ sd[p + "mlp.w1.weight"].T + sd[p + "mlp.w1.bias"]) * (
            h @ sd[p + "mlp.w2.weight"].T + sd[p + "mlp.w2.bias"]
        )
        x = x + ln(m, "mlp.ffn_ln") @ sd[p + "mlp.w3.weight"].T + sd[p + "mlp.w3.bias"]
    x = F.layer_norm(x, (width,), sd["norm.weight"], sd["norm.bias"], 1e-6)
    return x[:, 0] @ sd["head.weight"].T + sd["head.bias"], hidden


def test_eva02_tower_matches_the_formula(tiny_kit):
    path = tiny_kit / "clip/EVA02_CLIP_L_336_psz14_s6B.pt"
    raw = torch.load(path, weights_only=True)
    assert "visual.patch_embed.proj.weight" in raw and "visual.rope.freqs_cos" in raw and "logit_scale" in raw
    sd = read_eva_state(path)
    tower = load_eva_tower(path)
    assert tower.image_size == 56 and len(HIDDEN_BLOCKS) == 5
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cls, hidden = tower(pixels)
        ref_cls, ref_hidden = eva_reference(sd, pixels)
    assert close(cls, ref_cls) and len(hidden) == 5
    assert all(close(a, b) for a, b in zip(hidden, ref_hidden, strict=True))


def test_eva_without_rope_tables_computes_the_same_ones(tiny_kit):
    sd = read_eva_state(tiny_kit / "clip/EVA02_CLIP_L_336_psz14_s6B.pt")
    from idforge.identity.eva_clip import EvaVisionTower

    computed = EvaVisionTower({k: v for k, v in sd.items() if not k.startswith("rope.")})
    assert torch.allclose(computed.rope_cos, sd["rope.freqs_cos"]) and torch.allclose(
        computed.rope_sin, sd["rope.freqs_sin"]
    )


def test_face_parser_whitens_the_background_and_greys_the_rest(tiny_kit):
    from idforge.identity.face_parser import BACKGROUND_LABELS, face_features_image, load_face_parser

    parser = load_face_parser(tiny_kit / "facexlib/parsing_bisenet.pth")
    image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        labels = parser(
            (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ).argmax(1)
        out = face_features_image(parser, image)
    assert labels.shape == (1, 512, 512)
    background = torch.isin(labels, torch.tensor(BACKGROUND_LABELS))[:, None].expand_as(out)
    gray = 0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]
    assert torch.all(out[background] == 1.0)
    assert torch.allclose(out[:, 0][~background[:, 0]], gray[~background[:, 0]])


def test_ffhq_alignment_maps_the_keypoints_onto_the_template():
    from idforge.faces.align import FFHQ_512_TEMPLATE, ffhq_crop

    kps = FFHQ_512_TEMPLATE / 2 - 40  # a face at half size near the corner: the crop reaches past the image
    image = np.zeros((300, 300, 3), dtype=np.uint8)
    for x, y in kps.astype(int):
        image[y - 2 : y + 3, x - 2 : x + 3] = 255
    crop = ffhq_crop(image, kps)
    assert crop.shape == (512, 512, 3)
    for x, y in FFHQ_512_TEMPLATE.astype(int):
        assert crop[y, x].min() > 200
    assert tuple(crop[0, 0]) != (0, 0, 0)  # grey border, as facexlib


# ---- attention -----------------------------------------------------------------------------------------------------


def test_ortho_on_a_zero_text_output_is_zero_not_nan():
    from idforge.identity.attention import _project_out

    text = torch.zeros(1, 4, 8)
    ip = torch.randn(1, 4, 8)
    q, k = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 6, 8)
    for mode in ("ortho", "ortho_v2"):
        out = _project_out(mode, q, k, text, ip)
        assert torch.isfinite(out).all()
        assert torch.allclose(out, ip)


def test_the_modes_zero_tokens_and_id_scale_change_the_image(engine, faces):
    base = run(engine, faces[:1]).latents
    for params in ({"method": "style"}, {"method": "neutral"}, {"fidelity": 0}, {"weight": 1.5}):
        assert (run(engine, faces[:1], **params).latents - base).abs().max() > 1e-4, params
    # the Advanced controls spell the same thing as the method: ortho_v2 + 8 zero tokens is "fidelity"
    same = run(engine, faces[:1], method="neutral", projection="ortho_v2", fidelity=8).latents
    assert torch.equal(same, base)


def test_weight_zero_is_plain_sdxl(engine, faces):
    from idforge.engine.sampling import sample_and_decode
    from idforge.identity.attention import IdentityAttention

    off = run(engine, faces[:1], weight=0.0)
    base = engine.base_model()
    plain, _ = sample_and_decode(engine, base, gen(), [SEED], (SIZE, SIZE), IdentityAttention(base.unet), [])
    assert torch.equal(off.latents, plain)
    assert (run(engine, faces[:1]).latents - plain).abs().max() > 1e-4


def test_noise_changes_only_the_negative_and_is_deterministic(engine, faces):
    a = run(engine, faces[:1], noise=0.3).latents
    assert torch.equal(a, run(engine, faces[:1], noise=0.3).latents)
    assert (a - run(engine, faces[:1]).latents).abs().max() > 1e-5


def test_v1_auxiliary_references_add_five_tokens_or_ten_with_id_mix(engine, faces):
    from idforge.methods.pulid.core import decode_inputs, load_pulid_models, prepare_pulid

    for model, mix, tokens in (("pulid-v1", False, 15), ("pulid-v1", True, 20), ("pulid-v1.1", False, 32)):
        request = decode_inputs(
            PulidRequest(faces=faces, pulid=PulidParams(id_mix=mix), model=model, generation=gen())
        )
        prepared = prepare_pulid(engine, request, load_pulid_models(engine, request))
        assert prepared.cond_tokens.shape == (1, tokens, 128)
        assert prepared.uncond_tokens.shape == prepared.cond_tokens.shape
        assert len(prepared.face_images) == 2 and prepared.face_images[0].size == (512, 512)


def test_parameters_are_checked():
    with pytest.raises(ParameterError, match="method"):
        PulidParams(method="strong")
    with pytest.raises(ParameterError, match="fidelity"):
        PulidParams(fidelity=40)
    with pytest.raises(ParameterError, match="end_at"):
        PulidParams(start_at=0.6, end_at=0.2)
    assert (
        PulidParams(method="style").zero_tokens == 16
        and PulidParams(method="style").projection_mode == "ortho"
    )


# ---- the method: recipe, presets, registry, CLI, best-of --------------------------------------------------------


def test_recipe_and_identity_score(engine, faces):
    result = run(engine, faces[:1], model="pulid-comfyui")
    recipe = result.recipe
    assert recipe["method"] == "pulid"
    assert recipe["models"]["pulid"]["layout"] == "comfyui" and recipe["models"]["pulid"]["version"] == "v1"
    assert recipe["params"]["resolved_zero_tokens"] == 8 and recipe["params"]["method"] == "fidelity"
    assert result.identity is not None and result.identity.pack == "antelopev2"
    assert isinstance(result.extras["face_images"][0], Image.Image)


def test_official_sampler_presets():
    from idforge.engine.fewstep import get_few_step_preset

    v1 = GenerationParams(prompt="x", preset="pulid-v1")
    assert (v1.steps, v1.guidance, v1.scheduler, v1.timestep_spacing) == (4, 1.2, "dpmpp_2m", "trailing")
    assert v1.unet == "sdxl-lightning-4step-unet"
    light = GenerationParams(prompt="x", preset="pulid-v1.1-lightning")
    assert (light.steps, light.guidance, light.scheduler, light.unet) == (5, 2.0, "dpmpp_2m_sde_karras", None)
    full = GenerationParams(prompt="x", preset="pulid-v1.1")
    assert (full.steps, full.guidance, full.scheduler) == (25, 7.0, "dpmpp_2m_karras")
    assert get_few_step_preset("pulid-v1").identity["pulid_weight"] == 0.8
    assert PulidRequest(generation=v1).pulid.weight == 0.8


def test_preset_run_on_the_kit(engine, faces):
    result = run(
        engine, faces[:1], generation=gen(preset="pulid-v1", steps=None, guidance=None), model="pulid-v1"
    )
    assert result.recipe["models"]["unet"]["name"] == "sdxl-lightning-4step-unet"
    assert torch.isfinite(result.latents).all()


def test_registry_and_cli(tiny_kit, faces, tmp_path):
    from idforge.cli import main
    from idforge.engine.result import read_recipe
    from idforge.methods.registry import get_method

    method = get_method("pulid")
    assert method.body.model_fields["model"].default == "pulid-v1.1"
    out = tmp_path / "out.png"
    argv = ["pulid", "--models", str(tiny_kit), "--face", str(faces[0]), "--prompt", "a photo"]
    argv += ["--steps", "4", "--width", "64", "--height", "64", "--seed", "5", "--device", "cpu"]
    assert main([*argv, "--method", "style", "--model", "pulid-v1", "-o", str(out), "--quiet"]) == 0
    recipe = read_recipe(out)
    assert recipe["method"] == "pulid"
    assert recipe["params"]["method"] == "style" and recipe["params"]["resolved_zero_tokens"] == 16


def test_cli_persons_take_their_own_weight_and_refuse_cn_strength(tiny_kit, faces, tmp_path, capsys):
    from idforge.cli import main
    from idforge.engine.result import read_recipe

    out = tmp_path / "two.png"
    argv = ["pulid", "--models", str(tiny_kit), "--prompt", "two people", "--model", "pulid-v1", "--quiet"]
    argv += [
        "--steps",
        "4",
        "--width",
        "96",
        "--height",
        "64",
        "--seed",
        "2",
        "--device",
        "cpu",
        "--no-score",
    ]
    people = [
        "--person",
        f"face={faces[0]},region=left",
        "--person",
        f"face={faces[1]},region=right,ip_weight=1.1",
    ]
    assert main([*argv, *people, "-o", str(out)]) == 0
    section = read_recipe(out)["persons"]
    assert [p["weight"] for p in section] == [0.8, 1.1]
    assert section[1]["region"]["box"] == [48, 0, 96, 64]
    bad = [
        "--person",
        f"face={faces[0]},region=left,cn_strength=0.5",
        "--person",
        f"face={faces[1]},region=right",
    ]
    capsys.readouterr()
    assert main([*argv, *bad, "-o", str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cn_strength" in err[0] and "PuLID has no ControlNet" in err[0]
    assert not (tmp_path / "bad.png").exists()


def test_best_of_two_returns_the_better_candidate(engine, faces):
    result = run(engine, faces[:1], generation=gen(best_of=2))
    assert len(result.images) == 1
    assert "best_of" in result.recipe or "best_of" in json.dumps(result.recipe)


def test_http_v2_pulid_runs_as_a_job_after_a_warm_up(tiny_kit, faces, tmp_path):
    import base64

    import httpx

    from server_fixtures import finished_result, running_server

    face = base64.b64encode(faces[0].read_bytes()).decode()
    with running_server(tmp_path / "s.db", None, models_dirs=[str(tiny_kit)], warm_up=("pulid",)) as (
        url,
        keys,
    ):
        _, token = keys.create_key(100)
        with httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=300) as client:
            schema = client.get("/openapi.json").json()
            assert {"/v1/pulid", "/v2/pulid"} <= set(schema["paths"])
            fields = schema["components"]["schemas"]["PulidBody"]["properties"]
            assert (
                '"maximum": 32' in json.dumps(fields["fidelity"])
                and fields["method"]["default"] == "fidelity"
            )
            bad = client.post("/v2/pulid", json={"prompt": "p", "face_image": face, "fidelity": 40})
            assert bad.status_code == 400 and bad.json()["field"] == "fidelity"
            body = {
                "prompt": "p",
                "face_image": face,
                "width": 64,
                "height": 64,
                "seed": 2,
                "num_inference_steps": 4,
            }
            response = client.post("/v2/pulid", json=body | {"model": "pulid-v1", "method": "neutral"})
            assert response.status_code == 202, response.text
            result = finished_result(client, response.json()["response_url"])
            assert result["status"] == "COMPLETED", json.dumps(result)[:500]
            assert result["recipe"]["method"] == "pulid"
            assert result["recipe"]["params"]["method"] == "neutral"
            sync = client.post("/v1/pulid", json=body)
            assert sync.status_code == 200, sync.text[:300]


def test_two_persons_one_branch_each_masked_and_scored(engine, faces):
    from idforge.methods.persons import Person

    persons = [
        Person(faces=[faces[0]], region="left"),
        Person(faces=[faces[1]], region="right", ip_weight=1.1),
    ]
    request = PulidRequest(persons=persons, generation=gen(width=96, height=64), model="pulid-v1")
    result = generate_pulid(engine, request)
    section = result.recipe["persons"]
    assert [p["label"] for p in section] == ["person 1", "person 2"]
    assert section[0]["weight"] == 0.8 and section[1]["weight"] == 1.1
    assert section[0]["region"]["box"] == [0, 0, 48, 64]
    assert len(result.identity.images) == 1
    single = run(engine, faces[:1], model="pulid-v1", generation=gen(width=96, height=64)).latents
    assert (result.latents - single).abs().max() > 1e-4
    with pytest.raises(ParameterError, match="cn_strength"):
        generate_pulid(
            engine, PulidRequest(persons=[Person(faces=[faces[0]], region="left", cn_strength=0.5)])
        )


def test_reproduce_regenerates_a_pulid_image_bit_for_bit(engine, faces, tiny_kit, tmp_path):
    from idforge.methods.reproduce import reproduce

    result = run(engine, faces, model="pulid-v1", method="style", weight=0.9, fidelity=4)
    written = result.save(tmp_path / "p.png")
    done = reproduce(written[0], faces=faces, models_dirs=[tiny_kit], engine=engine)
    assert np.array_equal(np.asarray(done.image), np.asarray(result.images[0]))
    assert done.recipe.params["fidelity"] == 4
