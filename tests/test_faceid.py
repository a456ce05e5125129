"""FaceID on the engine: batch mode (no mixing, seed + i), refusals, LoRA handling, parameters, InstantID combined.

All runs use the tiny kit at 64x64 with 2 denoising steps on the CPU in float32. Latents of the random tiny
models reach magnitudes of ~50, and a batched matmul rounds differently from a single one, so "equal" means a
max difference below 1e-5 relative to the largest magnitude (observed: ~6e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.errors import ModelFormatError, NoFaceError, ParameterError
from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest, load_faceid_models, prepare_faceid
from idforge.methods.faceid.generate import generate_faceid
from instantid_fixtures import square_face

SIZE = 64
STEPS = 2
SEED = 11
TOL = 1e-5
SD15 = "ip-adapter-faceid_sd15.bin"
SDXL = "ip-adapter-faceid_sdxl.bin"
PLUSV2_SDXL = "ip-adapter-faceid-plusv2_sdxl.bin"


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Three faces with different textures (different embeddings) and one image with no face."""
    folder = tmp_path_factory.mktemp("faces")
    made = [square_face(folder / f"face{i}.png", stripes=s) for i, s in enumerate((0, 3, 6))]
    dark = folder / "noface.png"
    Image.new("RGB", (96, 96), (10, 10, 10)).save(dark)
    return made + [dark]


def gen(seed: int = SEED, num_images: int = 1, guidance: float = 5.0) -> GenerationParams:
    return GenerationParams(
        prompt="a photo",
        steps=STEPS,
        guidance=guidance,
        seed=seed,
        width=SIZE,
        height=SIZE,
        num_images=num_images,
        score=False,  # identity scoring is tested in test_identity_score.py; here it would only cost time
    )


def run(engine, faces, adapter=SD15, generation=None, **kwargs):
    params = kwargs.pop("params", FaceIDParams())
    request = FaceIDRequest(
        faces=faces, generation=generation or gen(), faceid=params, adapter=adapter, **kwargs
    )
    return generate_faceid(engine, request)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return maxdiff(a, b) <= TOL * max(1.0, a.abs().max().item())


@pytest.mark.parametrize("adapter", [SD15, PLUSV2_SDXL])
def test_batch_output_i_equals_single_run_with_reference_i(engine, faces, adapter):
    batch = run(engine, faces[:2], adapter, params=FaceIDParams(batch=True))
    assert batch.seeds == [SEED, SEED + 1]
    assert batch.recipe["inputs"]["batch_references"] == [0, 1]
    for i in range(2):
        single = run(engine, [faces[i]], adapter, generation=gen(seed=SEED + i))
        assert same(batch.latents[i], single.latents[0])
    # guard: output 1 conditioned on reference 0 instead would differ (identities do not mix)
    crossed = run(engine, [faces[0]], adapter, generation=gen(seed=SEED + 1))
    assert maxdiff(batch.latents[1], crossed.latents[0]) > 1e-3


def test_fewer_references_than_outputs_repeat_the_last(engine, faces):
    result = run(engine, faces[:2], params=FaceIDParams(batch=True), generation=gen(num_images=3))
    assert result.recipe["inputs"]["batch_references"] == [0, 1, 1]
    last = run(engine, [faces[1]], generation=gen(seed=SEED + 2))
    assert same(result.latents[2], last.latents[0])


def test_more_references_than_outputs_is_an_error(engine, faces):
    with pytest.raises(ParameterError, match="3 batch references"):
        run(engine, faces[:3], params=FaceIDParams(batch=True), generation=gen(num_images=2))


def test_missing_face_names_the_image_or_is_skipped(engine, faces):
    with pytest.raises(NoFaceError, match="noface.png.*skip"):
        run(engine, [faces[0], faces[3]], params=FaceIDParams(batch=True))
    result = run(engine, [faces[0], faces[3], faces[1]], params=FaceIDParams(batch=True, skip_missing=True))
    assert len(result.images) == 2
    assert any("noface.png" in w for w in result.warnings)
    alone = run(engine, [faces[1]], generation=gen(seed=SEED + 1))
    assert same(result.latents[1], alone.latents[0])


def test_folder_of_faces_is_read_in_name_order(engine, faces):
    folder = faces[0].parent
    request = FaceIDRequest(
        faces=[folder], generation=gen(), faceid=FaceIDParams(skip_missing=True), adapter=SD15
    )
    models = load_faceid_models(engine, request)
    prepared = prepare_faceid(engine, request, models, 1)
    assert [info["image"].rsplit("/", 1)[-1] for info in prepared.faces_info] == [
        "face0.png",
        "face1.png",
        "face2.png",
    ]


def test_adapter_that_does_not_fit_the_base_is_refused_naming_both(engine, faces, tiny_kit):
    steps = []
    request = FaceIDRequest(
        faces=[faces[0]], generation=gen(), adapter=SD15, base=str(tiny_kit / "diffusers/tiny-sdxl")
    )
    with pytest.raises(ModelFormatError, match=r"ip-adapter-faceid_sd15\.bin.*tiny-sdxl"):
        generate_faceid(engine, request, progress=lambda s, t: steps.append(s))
    assert steps == []
    with pytest.raises(ModelFormatError, match="needs an IP-Adapter FaceID checkpoint"):
        run(engine, [faces[0]], adapter=str(tiny_kit / "instantid/ip-adapter.bin"))


def test_base_follows_the_adapter_family(engine, faces):
    assert "tiny-sd15" in run(engine, [faces[0]], SD15).recipe["models"]["base"]["source"]
    assert "tiny-sdxl" in run(engine, [faces[0]], SDXL).recipe["models"]["base"]["source"]


def test_lora_is_merged_for_the_call_and_restored_exactly(engine, faces):
    models = load_faceid_models(engine, FaceIDRequest(faces=[faces[0]], adapter=SD15))
    before = {k: v.clone() for k, v in models.base.unet.state_dict().items()}
    default = run(engine, [faces[0]])
    after = models.base.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    no_lora = run(engine, [faces[0]], params=FaceIDParams(lora_strength=0.0))
    assert default.recipe["models"]["lora"] == {"source": "embedded", "strength": 0.6}
    assert maxdiff(default.latents, no_lora.latents) > 1e-4


def test_separate_lora_file_equals_the_embedded_keys(engine, faces, tiny_kit):
    embedded = run(engine, [faces[0]], SDXL)
    lora_file = tiny_kit / "loras/ip-adapter-faceid_sdxl_lora.safetensors"
    separate = run(engine, [faces[0]], SDXL, lora=str(lora_file))
    assert separate.recipe["models"]["lora"]["source"] == str(lora_file)
    assert same(embedded.latents, separate.latents)


def test_combine_embeds_token_counts(engine, faces):
    def tokens(adapter, mode):
        request = FaceIDRequest(faces=faces[:2], faceid=FaceIDParams(combine_embeds=mode), adapter=adapter)
        prepared = prepare_faceid(engine, request, load_faceid_models(engine, request), 1)
        assert prepared.cond_tokens.shape == prepared.uncond_tokens.shape
        return prepared.cond_tokens.shape[1]

    assert tokens(SD15, "concat") == 8 and tokens(SD15, "average") == 4
    for mode in ("add", "subtract", "norm average"):
        assert tokens(SD15, mode) == 4
    assert tokens("ip-adapter-faceid-portrait-v11_sd15.bin", "concat") == 32  # 16 tokens per face


def test_combine_modes_change_the_result(engine, faces):
    latents = {
        mode: run(engine, faces[:2], params=FaceIDParams(combine_embeds=mode)).latents
        for mode in ("concat", "average", "subtract")
    }
    assert maxdiff(latents["concat"], latents["average"]) > 1e-4
    assert maxdiff(latents["average"], latents["subtract"]) > 1e-4


@pytest.mark.parametrize("weight_type", ["linear", "ease in", "style transfer", "composition precise"])
@pytest.mark.parametrize("scaling", ["V only", "K+mean(V) w/ C penalty"])
def test_weight_type_and_scaling_reach_the_attention(engine, faces, monkeypatch, weight_type, scaling):
    from idforge.identity.attention import IdentityAttention
    from idforge.identity.weight_types import layer_weights

    seen = {}
    original = IdentityAttention.set_adapter_inputs

    def spy(self, name, *args, **kwargs):
        original(self, name, *args, **kwargs)
        seen[name] = (self.adapter_inputs(name), layer_weights(weight_type, 0.7, self.cross_layers))

    monkeypatch.setattr(IdentityAttention, "set_adapter_inputs", spy)
    params = FaceIDParams(
        weight=0.7, weight_type=weight_type, embeds_scaling=scaling, start_at=0.2, end_at=0.9
    )
    run(engine, [faces[0]], SDXL, params=params)
    inputs, expected = seen["faceid"]
    assert inputs.weights == expected and inputs.scaling == scaling
    assert inputs.window == pytest.approx((0.8 * 999, 0.1 * 999))


def test_all_parameter_names_are_accepted():
    from idforge.identity.weight_types import WEIGHT_TYPES

    assert len(WEIGHT_TYPES) == 15
    for name in WEIGHT_TYPES:
        assert FaceIDParams(weight_type=name).weight_type == name
    assert FaceIDParams(embeds_scaling="k+v-w/-c-penalty").embeds_scaling == "K+V w/ C penalty"
    assert FaceIDParams(combine_embeds="norm-average").combine_embeds == "norm average"
    for bad in (
        {"weight": 3.5},
        {"weight_faceidv2": 5.5},
        {"weight_type": "heavy"},
        {"start_at": 0.5, "end_at": 0.2},
    ):
        with pytest.raises(ParameterError):
            FaceIDParams(**bad)


def test_black_attn_mask_equals_zero_weight(engine, faces):
    black = np.zeros((SIZE, SIZE), dtype=np.float32)
    masked = run(engine, [faces[0]], attn_mask=black)
    off = run(engine, [faces[0]], params=FaceIDParams(weight=0.0))
    on = run(engine, [faces[0]])
    assert same(masked.latents, off.latents)
    assert maxdiff(on.latents, off.latents) > 1e-4


def test_plusv2_reads_weight_faceidv2_and_the_negative_image(engine, faces):
    base = run(engine, [faces[0]], PLUSV2_SDXL)
    stronger = run(engine, [faces[0]], PLUSV2_SDXL, params=FaceIDParams(weight_faceidv2=2.5))
    negative = run(engine, [faces[0]], PLUSV2_SDXL, negative_image=faces[1])
    assert base.recipe["models"]["clip_vision"] is not None
    assert maxdiff(base.latents, stronger.latents) > 1e-5
    assert maxdiff(base.latents, negative.latents) > 1e-5
    plain = run(engine, [faces[0]], SD15, negative_image=faces[1])
    assert any("negative image is ignored" in w for w in plain.warnings)


def test_face_images_are_the_aligned_crops(engine, faces):
    from idforge.faces.align import norm_crop

    result = run(engine, faces[:2])
    analyzer = engine.face_analyzer(None, default="buffalo_l")
    for crop, path in zip(result.extras["face_images"], faces[:2], strict=True):
        image = Image.open(path).convert("RGB")
        face = analyzer.get_face(image, pick="score")
        expected = norm_crop(np.asarray(image), face.kps, 224)
        assert crop.size == (224, 224)
        assert np.array_equal(np.asarray(crop), expected)


def test_clip_single_file_equals_the_transformers_folder(tiny_kit):
    from idforge.methods.faceid.clip import load_clip_vision

    cpu = torch.device("cpu")
    folder_model, _ = load_clip_vision(tiny_kit / "clip_vision/tiny-clip-vit-h", cpu, torch.float32)
    file_model, processor = load_clip_vision(
        tiny_kit / "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", cpu, torch.float32
    )
    pixels = processor(
        images=[Image.new("RGB", (224, 224), (200, 120, 40))], return_tensors="pt"
    ).pixel_values
    with torch.no_grad():
        a = folder_model(pixels, output_hidden_states=True).hidden_states[-2]
        b = file_model(pixels, output_hidden_states=True).hidden_states[-2]
    assert a.shape == (1, 257, 64)
    assert maxdiff(a, b) < 1e-6


def test_combined_with_instantid_reduces_to_each_method(engine, faces):
    from idforge.methods.instantid.core import InstantIDRequest
    from idforge.methods.instantid.generate import generate_instantid
    from idforge.methods.instantid.params import InstantIDParams

    def iid(ip_weight=0.8, cn_strength=0.8):
        return InstantIDRequest(
            faces=[faces[1]],
            generation=gen(),
            instantid=InstantIDParams(ip_weight=ip_weight, cn_strength=cn_strength),
        )

    instantid_only = generate_instantid(engine, iid()).latents
    faceid_off = FaceIDParams(weight=0.0, lora_strength=0.0)
    combined_off = generate_faceid(
        engine,
        FaceIDRequest(faces=[faces[1]], generation=gen(), faceid=faceid_off, adapter=PLUSV2_SDXL),
        instantid=iid(),
    )
    assert combined_off.recipe["method"] == "instantid+faceid"
    assert same(combined_off.latents, instantid_only)

    faceid_only = run(engine, [faces[1]], PLUSV2_SDXL).latents
    iid_off = generate_faceid(
        engine,
        FaceIDRequest(faces=[faces[1]], generation=gen(), adapter=PLUSV2_SDXL),
        instantid=iid(0.0, 0.0),
    ).latents
    assert same(iid_off, faceid_only)

    both = generate_faceid(
        engine, FaceIDRequest(faces=[faces[1]], generation=gen(), adapter=PLUSV2_SDXL), instantid=iid()
    )
    assert maxdiff(both.latents, instantid_only) > 1e-4 and maxdiff(both.latents, faceid_only) > 1e-4
    assert "kps_image" in both.extras and both.recipe["instantid"]["params"]["ip_weight"] == 0.8


def test_combined_refuses_batch_mode_and_sd15(engine, faces):
    from idforge.methods.instantid.core import InstantIDRequest

    with pytest.raises(ParameterError, match="batch"):
        generate_faceid(
            engine,
            FaceIDRequest(faces=[faces[0]], generation=gen(), faceid=FaceIDParams(batch=True)),
            instantid=InstantIDRequest(faces=[faces[0]]),
        )
    with pytest.raises(ModelFormatError, match="SDXL"):
        generate_faceid(
            engine,
            FaceIDRequest(faces=[faces[0]], generation=gen(), adapter=SD15),
            instantid=InstantIDRequest(faces=[faces[0]]),
        )


def test_default_size_follows_the_family():
    from idforge.methods.faceid.core import faceid_output_size

    assert faceid_output_size(GenerationParams(), "sdxl") == (1024, 1024)
    assert faceid_output_size(GenerationParams(), "sd15") == (512, 512)
    assert faceid_output_size(GenerationParams(width=640, height=448), "sd15") == (640, 448)
    with pytest.raises(ParameterError):
        faceid_output_size(GenerationParams(width=640), "sdxl")


def test_bad_inputs_fail_before_any_model_loads(tiny_kit, faces, tmp_path):
    from idforge.errors import InputImageError

    fresh = Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    for kwargs in ({"negative_image": broken}, {"attn_mask": tmp_path / "missing.png"}):
        with pytest.raises(InputImageError):
            generate_faceid(fresh, FaceIDRequest(faces=[faces[0]], generation=gen(), **kwargs))
    with pytest.raises(InputImageError, match="broken.png"):
        generate_faceid(fresh, FaceIDRequest(faces=[faces[0], broken], generation=gen()))
    assert fresh.loaded_models() == []
