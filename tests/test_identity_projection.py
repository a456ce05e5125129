"""Projections (Resampler, FaceID MLP, FaceID plus), embedding combination, uncond noise, CLIP face features.

Parity: against the ip-adapter 0.1.0 reference code and diffusers' own IP-Adapter projections, same weights,
tolerance 1e-5 (float32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idforge.errors import ModelFormatError, ParameterError
from idforge.identity.embeds import (
    combine_faceid,
    combine_instantid,
    concat_token_sets,
    instantid_uncond_embedding,
    norm_average,
    uncond_seed,
)
from idforge.identity.projection import FaceIDMLPProjection, FaceIDPlusProjection, Resampler
from projection_fixtures import (
    CLIP_HIDDEN,
    mlp_sd,
    plus_sd,
    reference_faceid_module,
    reference_resampler_module,
    resampler_sd,
    tiny_sdxl_unet,
)

TOL = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol, f"max abs difference {err} > {tol}"


@pytest.fixture(scope="module")
def face_embeds() -> torch.Tensor:
    return torch.randn(3, 512, generator=torch.Generator().manual_seed(5)) * 3


# ---- Resampler ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,out_dim,n_inputs", [(128, 128, 1), (128, 128, 3), (192, 64, 2)])
def test_resampler_matches_reference_package(dim, out_dim, n_inputs, face_embeds):
    ref_mod = reference_resampler_module()
    sd = resampler_sd(dim=dim, out_dim=out_dim, seed=dim)
    ref = ref_mod.Resampler(
        dim=dim,
        depth=4,
        dim_head=64,
        heads=dim // 64,
        num_queries=16,
        embedding_dim=512,
        output_dim=out_dim,
        ff_mult=4,
    ).eval()
    ref.load_state_dict(sd, strict=True)
    ours = Resampler.from_state_dict(sd).eval()
    assert ours.num_tokens == 16 and ours.output_dim == out_dim
    assert set(ours.state_dict()) == set(ref.state_dict())  # published key names, both ways
    x = face_embeds[:n_inputs].unsqueeze(0)
    with torch.no_grad():
        _close(ours(x), ref(x))


def test_resampler_matches_diffusers_ip_adapter_plus_projection(face_embeds):
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    unet = tiny_sdxl_unet()
    sd = resampler_sd(dim=128, out_dim=128, seed=3)
    theirs = unet._convert_ip_adapter_image_proj_to_diffusers(sd, low_cpu_mem_usage=False).eval()
    assert isinstance(theirs, IPAdapterPlusImageProjection)
    ours = Resampler.from_state_dict(sd).eval()
    x = face_embeds[:1].unsqueeze(0)
    with torch.no_grad():
        _close(ours(x), theirs(x))


def test_resampler_two_dim_input_is_one_token(face_embeds):
    ours = Resampler.from_state_dict(resampler_sd()).eval()
    with torch.no_grad():
        assert torch.equal(ours(face_embeds[:2]), ours(face_embeds[:2].unsqueeze(1)))


def test_resampler_refuses_bad_state_dicts():
    sd = resampler_sd()
    missing = {k: v for k, v in sd.items() if k != "latents"}
    with pytest.raises(ModelFormatError, match="latents"):
        Resampler.from_state_dict(missing)
    extra = sd | {"layers.0.0.bogus": torch.zeros(1)}
    with pytest.raises(ModelFormatError, match="do not load"):
        Resampler.from_state_dict(extra)
    odd_width = dict(sd)
    odd_width["layers.0.0.to_q.weight"] = torch.zeros(100, 128)
    with pytest.raises(ModelFormatError):
        Resampler.from_state_dict(odd_width)


# ---- FaceID MLP --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cross_dim,tokens", [(128, 4), (64, 16)])
def test_mlp_projection_matches_reference_package(cross_dim, tokens, face_embeds):
    ref_mod = reference_faceid_module()
    sd = mlp_sd(cross_dim, tokens)
    ref = ref_mod.MLPProjModel(cross_attention_dim=cross_dim, id_embeddings_dim=512, num_tokens=tokens).eval()
    ref.load_state_dict(sd, strict=True)
    ours = FaceIDMLPProjection.from_state_dict(sd).eval()
    assert (ours.cross_dim, ours.num_tokens) == (cross_dim, tokens)
    with torch.no_grad():
        _close(ours(face_embeds), ref(face_embeds))


def test_mlp_projection_matches_diffusers_and_formula(face_embeds):
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

    sd = mlp_sd(128, 4, seed=9)
    theirs = tiny_sdxl_unet()._convert_ip_adapter_image_proj_to_diffusers(sd, low_cpu_mem_usage=False).eval()
    assert isinstance(theirs, IPAdapterFaceIDImageProjection)
    ours = FaceIDMLPProjection.from_state_dict(sd).eval()
    # SPEC formula written out: Linear, GELU (erf), Linear, reshape (B, T, C), LayerNorm(C)
    h = torch.nn.functional.gelu(face_embeds @ sd["proj.0.weight"].T + sd["proj.0.bias"])
    y = (h @ sd["proj.2.weight"].T + sd["proj.2.bias"]).reshape(-1, 4, 128)
    y = torch.nn.functional.layer_norm(y, (128,), sd["norm.weight"], sd["norm.bias"])
    with torch.no_grad():
        out = ours(face_embeds)
        _close(out, theirs(face_embeds))
        _close(out, y, 1e-4)


# ---- FaceID plus -------------------------------------------------------------------------------------------


class _ReferencePlus(torch.nn.Module):
    """ProjModelFaceIdPlus as published (not in ip-adapter 0.1.0): MLP tokens + FacePerceiverResampler,
    composed from the reference package's own PerceiverAttention and FeedForward."""

    def __init__(self, ref_mod, cross_dim: int, clip_width: int) -> None:
        super().__init__()
        self.cross_dim = cross_dim
        self.proj = torch.nn.Sequential(
            torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, cross_dim * 4)
        )
        self.norm = torch.nn.LayerNorm(cross_dim)
        pr = torch.nn.Module()
        pr.proj_in = torch.nn.Linear(clip_width, cross_dim)
        pr.proj_out = torch.nn.Linear(cross_dim, cross_dim)
        pr.norm_out = torch.nn.LayerNorm(cross_dim)
        pr.layers = torch.nn.ModuleList(
            torch.nn.ModuleList(
                [
                    ref_mod.PerceiverAttention(dim=cross_dim, dim_head=64, heads=cross_dim // 64),
                    ref_mod.FeedForward(dim=cross_dim, mult=4),
                ]
            )
            for _ in range(4)
        )
        self.perceiver_resampler = pr

    def forward(self, id_embeds, clip_embeds, shortcut=False, scale=1.0):
        x = self.norm(self.proj(id_embeds).reshape(-1, 4, self.cross_dim))
        pr = self.perceiver_resampler
        latents, feats = x, pr.proj_in(clip_embeds)
        for attn, ff in pr.layers:
            latents = attn(feats, latents) + latents
            latents = ff(latents) + latents
        out = pr.norm_out(pr.proj_out(latents))
        return x + scale * out if shortcut else out


@pytest.mark.parametrize("shortcut,scale", [(False, 1.0), (True, 1.0), (True, 2.5)])
def test_plus_projection_matches_reference(shortcut, scale, face_embeds):
    ref_mod = reference_resampler_module()
    sd = plus_sd(128)
    ref = _ReferencePlus(ref_mod, 128, CLIP_HIDDEN).eval()
    ref.load_state_dict(sd, strict=True)
    ours = FaceIDPlusProjection.from_state_dict(sd, shortcut=shortcut).eval()
    assert ours.clip_width == CLIP_HIDDEN and ours.num_tokens == 4
    clip = torch.randn(3, 257, CLIP_HIDDEN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _close(ours(face_embeds, clip, scale=scale), ref(face_embeds, clip, shortcut=shortcut, scale=scale))


@pytest.mark.parametrize("shortcut", [False, True])
def test_plus_projection_matches_diffusers(shortcut, face_embeds):
    from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection

    sd = plus_sd(128, seed=4)
    theirs = tiny_sdxl_unet()._convert_ip_adapter_image_proj_to_diffusers(sd, low_cpu_mem_usage=False).eval()
    assert isinstance(theirs, IPAdapterFaceIDPlusImageProjection)
    theirs.shortcut, theirs.shortcut_scale = shortcut, 1.5
    clip = torch.randn(1, 257, CLIP_HIDDEN, generator=torch.Generator().manual_seed(3))
    theirs.clip_embeds = clip.unsqueeze(1)  # diffusers takes (B, n_images, 257, h)
    ours = FaceIDPlusProjection.from_state_dict(sd, shortcut=shortcut).eval()
    with torch.no_grad():
        _close(ours(face_embeds[:1], clip, scale=1.5), theirs(face_embeds[:1]))


def test_plus_shortcut_changes_output(face_embeds):
    sd = plus_sd(64)
    clip = torch.randn(1, 257, CLIP_HIDDEN)
    with torch.no_grad():
        a = FaceIDPlusProjection.from_state_dict(sd, shortcut=False)(face_embeds[:1], clip)
        b = FaceIDPlusProjection.from_state_dict(sd, shortcut=True)(face_embeds[:1], clip)
    assert not torch.allclose(a, b)


# ---- combining embeddings ----------------------------------------------------------------------------------


def test_combine_instantid_modes(face_embeds):
    embeds = [e.numpy() for e in face_embeds]
    avg = combine_instantid(embeds, "average")
    assert avg.shape == (1, 1, 512)
    _close(avg[0, 0], face_embeds.mean(0))
    cat = combine_instantid(embeds, "concat")
    assert cat.shape == (1, 3, 512) and torch.equal(cat[0], face_embeds)
    nav = combine_instantid(embeds, "norm average")[0, 0]
    units = face_embeds / face_embeds.norm(dim=1, keepdim=True)
    direction = units.mean(0) / units.mean(0).norm()
    _close(nav, direction * face_embeds.norm(dim=1).mean(), 1e-4)
    single = combine_instantid([embeds[0]], "norm average")[0, 0]
    _close(single, face_embeds[0], 1e-4)
    with pytest.raises(ParameterError, match="combine_embeds"):
        combine_instantid(embeds, "add")


def test_combine_faceid_modes(face_embeds):
    e = face_embeds
    assert torch.equal(combine_faceid(list(e), "concat"), e)
    _close(combine_faceid(list(e), "add")[0], e[0] + e[1] + e[2])
    _close(combine_faceid(list(e), "subtract")[0], e[0] - (e[1] + e[2]) / 2)
    _close(combine_faceid(list(e), "average")[0], e.mean(0))
    _close(combine_faceid(list(e), "norm average"), norm_average(e))
    with pytest.raises(ParameterError, match="subtract"):
        combine_faceid([e[0]], "subtract")
    with pytest.raises(ParameterError):
        combine_faceid(list(e), "median")
    with pytest.raises(ParameterError, match="shapes"):
        combine_faceid([e[0], e[1, :10]], "add")


def test_combine_faceid_on_clip_features_and_token_concat():
    clip = torch.randn(2, 257, CLIP_HIDDEN)
    assert combine_faceid(clip, "average").shape == (1, 257, CLIP_HIDDEN)
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    cat = concat_token_sets(tokens)
    assert cat.shape == (1, 8, 3) and torch.equal(cat[0, 4:], tokens[1])


# ---- unconditional noise -----------------------------------------------------------------------------------


def test_uncond_zero_noise_is_zeros(face_embeds):
    x = combine_instantid([face_embeds[0]], "average")
    assert torch.equal(instantid_uncond_embedding(x, 0.0), torch.zeros(1, 1, 512))


def test_uncond_noise_deterministic_local_and_like_comfyui(face_embeds):
    x = combine_instantid(list(face_embeds), "concat")
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = instantid_uncond_embedding(x, 0.35)
    b = instantid_uncond_embedding(x.numpy(), 0.35)
    assert torch.equal(torch.get_rng_state(), state), "global RNG state was touched"
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() < 0.35
    seed = int(torch.sum(x).item()) % 1000000007
    assert uncond_seed(x) == seed
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        comfy = 0.35 * torch.rand_like(x)
    assert torch.equal(a, comfy)
    other = instantid_uncond_embedding(x + 7.0, 0.35)
    assert not torch.equal(a, other)
    with pytest.raises(ParameterError, match="noise"):
        instantid_uncond_embedding(x, 1.5)


# ---- CLIP face features ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=CLIP_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=224,
        patch_size=14,
        projection_dim=32,
    )
    model = CLIPVisionModelWithProjection(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return model, processor


def test_clip_penultimate_features(tiny_clip):
    from idforge.identity.clip_face import (
        clip_face_features,
        clip_face_inputs,
        crop_size_for,
        encode_clip_penultimate,
    )

    model, processor = tiny_clip
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(2)]
    pixels = clip_face_inputs(crops, processor)
    assert pixels.shape == (2, 3, 224, 224)
    feats = encode_clip_penultimate(model, pixels)
    assert feats.shape == (2, 257, CLIP_HIDDEN)
    with torch.no_grad():
        hidden = model(pixels, output_hidden_states=True).hidden_states
    assert torch.equal(feats, hidden[-2]) and not torch.equal(feats, hidden[-1])
    cond, uncond = clip_face_features(model, processor, crops, size=crop_size_for(2048))
    assert torch.equal(cond, feats) and uncond.shape == cond.shape
    black = encode_clip_penultimate(model, clip_face_inputs([np.zeros((256, 256, 3), np.uint8)], processor))
    assert torch.equal(uncond[1], black[0])
    _, neg = clip_face_features(model, processor, crops, image_negative=crops[1])
    assert torch.equal(neg[0], feats[1])
    assert (crop_size_for(768), crop_size_for(2048)) == (224, 256)


def test_face_crops_use_norm_crop():
    from idforge.identity.clip_face import face_crops

    image = np.zeros((400, 400, 3), np.uint8)
    image[150:250, 150:250] = 200
    kps = np.array([[170, 180], [230, 180], [200, 210], [175, 240], [225, 240]], np.float32)
    (crop,) = face_crops([image], [kps], 256)
    assert crop.shape == (256, 256, 3) and crop.max() == 200
