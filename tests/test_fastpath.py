"""Every fast-path switch keeps the output within its stated tolerance of the eager path (tiny kit, fp32 CPU)."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from idforge.engine.fastpath import TOLERANCES, FastPath, check_fast_request, fuse_qkv, quantize_fp8
from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.errors import ParameterError
from idforge.methods.faceid.core import FaceIDRequest
from idforge.methods.faceid.generate import generate_faceid
from idforge.methods.insta_depth.generate import InstaDepthRequest, generate_insta_depth
from instantid_fixtures import square_face

SIZE = 64
EAGER = FastPath(cache_control_embedding=False)
# The tolerances engine/fastpath.py documents (max abs difference of the final latents; the VAE's on the image),
# written here so that loosening them in the code fails this test instead of passing it.
TOL = {
    "cache_control_embedding": 0.0,
    "channels_last": 1e-4,
    "fused_qkv": 1e-4,
    "vae_dtype": 5e-2,
    "compile": 1e-3,
}


def test_the_code_states_the_tolerances_tested_here():
    assert TOLERANCES == TOL


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    return square_face(tmp_path_factory.mktemp("fastpath") / "face.png")


def engine_with(kit, fast: FastPath) -> Engine:
    return Engine(ModelChoice(models_dirs=[str(kit)]), device="cpu", dtype="float32", fast=fast)


def insta_depth(engine: Engine, face, seed: int = 3):
    gen = GenerationParams(
        prompt="a portrait", steps=3, guidance=4.0, seed=seed, width=SIZE, height=SIZE, score=False
    )
    depth = Image.linear_gradient("L").resize((SIZE, SIZE)).convert("RGB")
    return generate_insta_depth(
        engine, InstaDepthRequest(face=face, pose=face, generation=gen, depth_map=depth)
    )


def faceid(engine: Engine, face):
    gen = GenerationParams(
        prompt="a portrait", steps=3, guidance=4.0, seed=5, width=SIZE, height=SIZE, score=False
    )
    return generate_faceid(engine, FaceIDRequest(faces=[face], generation=gen, adapter="faceid-sdxl"))


@pytest.fixture(scope="module")
def eager(tiny_kit, face):
    engine = engine_with(tiny_kit, EAGER)
    return {"insta_depth": insta_depth(engine, face), "faceid": faceid(engine, face)}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@pytest.mark.parametrize(
    ("switches", "tolerance"),
    [
        ({"cache_control_embedding": True}, TOL["cache_control_embedding"]),
        ({"channels_last": True}, TOL["channels_last"]),
        ({"fused_qkv": True}, TOL["fused_qkv"]),
        (
            {"channels_last": True, "fused_qkv": True, "cache_control_embedding": True},
            TOL["fused_qkv"],
        ),
    ],
)
def test_switch_keeps_insta_depth_latents_within_tolerance(tiny_kit, face, eager, switches, tolerance):
    fast = EAGER.with_changes(**switches)
    result = insta_depth(engine_with(tiny_kit, fast), face)
    reference = eager["insta_depth"].latents
    assert result.latents.shape == reference.shape
    assert max_diff(result.latents, reference) <= tolerance
    assert float(reference.abs().max()) > 0.1  # the comparison is on real numbers, not zeros


def test_fused_qkv_sees_the_faceid_lora_and_restores_after(tiny_kit, face, eager):
    """FaceID merges its LoRA into to_q/to_k/to_v for the call: the fused matmul must see it, and lose it after."""
    engine = engine_with(tiny_kit, EAGER.with_changes(fused_qkv=True))
    result = faceid(engine, face)
    assert max_diff(result.latents, eager["faceid"].latents) <= TOL["fused_qkv"]
    unet = engine.base_model().unet
    attn = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert attn.fused_projections
    joint = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight])
    assert torch.equal(attn.to_qkv.weight, joint)
    assert attn.to_q.weight.data_ptr() == attn.to_qkv.weight.data_ptr()  # a view: no second copy
    # the LoRA is gone after the call: every UNet weight is bit for bit the file's again (fused ones included)
    from diffusers import UNet2DConditionModel

    fresh = UNet2DConditionModel.from_pretrained(
        tiny_kit / "diffusers/tiny-sdxl", subfolder="unet"
    ).state_dict()
    current = unet.state_dict()
    compared = [name for name in fresh if name in current]
    assert len(compared) == len(fresh), sorted(set(fresh) - set(current))[:5]
    changed = [name for name in compared if not torch.equal(current[name].float(), fresh[name].float())]
    assert changed == [], changed[:5]
    fused = [m for m in unet.modules() if getattr(m, "fused_projections", False) and hasattr(m, "to_qkv")]
    assert fused
    for module in fused:
        file_q = fresh_weight(fresh, unet, module, "to_q")
        assert torch.equal(module.to_qkv.weight[: file_q.shape[0]], file_q)
    # and the engine's next call, without a LoRA, is the eager path's again
    assert max_diff(insta_depth(engine, face).latents, eager["insta_depth"].latents) <= TOL["fused_qkv"]


def fresh_weight(fresh: dict, unet, module, part: str) -> torch.Tensor:
    name = next(n for n, m in unet.named_modules() if m is module)
    return fresh[f"{name}.{part}.weight"]


def test_fused_qkv_unet_forward_matches_unfused(tiny_kit):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_kit / "diffusers/tiny-sdxl", subfolder="unet").eval()
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 7, unet.config.cross_attention_dim)
    added = {"text_embeds": torch.randn(2, 64), "time_ids": torch.randn(2, 6)}
    with torch.no_grad():
        before = unet(sample, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample
        assert fuse_qkv(unet) > 0
        after = unet(sample, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample
    assert max_diff(before, after) <= TOL["fused_qkv"]


def test_bf16_vae_decodes_within_tolerance(tiny_kit, face, eager):
    result = insta_depth(engine_with(tiny_kit, EAGER.with_changes(vae_dtype="bfloat16")), face)
    assert torch.equal(result.latents, eager["insta_depth"].latents)  # only the decoder changed
    ours = torch.tensor(list(result.images[0].getdata()), dtype=torch.float32) / 255.0
    reference = torch.tensor(list(eager["insta_depth"].images[0].getdata()), dtype=torch.float32) / 255.0
    assert max_diff(ours, reference) <= TOL["vae_dtype"]


def test_ip_key_value_cache_is_exact(tiny_kit):
    """Face-token K/V computed once per call give bit-identical UNet outputs to recomputing them every step."""
    from diffusers import UNet2DConditionModel

    from idforge.identity.attention import IdentityAttention
    from idforge.identity.checkpoint import load_adapter_checkpoint

    unet = UNet2DConditionModel.from_pretrained(tiny_kit / "diffusers/tiny-sdxl", subfolder="unet").eval()
    adapter = load_adapter_checkpoint(tiny_kit / "InstantX-InstantID/ip-adapter.bin")
    torch.manual_seed(1)
    tokens = torch.randn(1, 16, 128)
    sample = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 7, 128)
    added = {"text_embeds": torch.randn(2, 64), "time_ids": torch.randn(2, 6)}
    outputs = {}
    for cache in (False, True):
        ida = IdentityAttention(unet, cache_kv=cache)
        ida.add_adapter("instantid", adapter.ip_layers)
        ida.set_adapter_inputs("instantid", tokens, torch.zeros_like(tokens), weight=0.8)
        with ida, torch.no_grad():
            outputs[cache] = [
                unet(sample, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
                for t in (900, 500)
            ]
        assert bool(ida._kv_cache) == cache
    for uncached, cached in zip(outputs[False], outputs[True], strict=True):
        assert torch.equal(uncached, cached)


def test_prepared_models_are_cached_and_switches_are_checked(tiny_kit):
    engine = engine_with(tiny_kit, EAGER.with_changes(channels_last=True))
    base = engine.base_model()
    assert engine.base_model() is base
    assert base.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    from idforge.engine.fastpath import prepare_base

    with pytest.raises(ParameterError, match="other fast-path switches"):
        prepare_base(base, FastPath(), engine.device)


def test_options_refuse_what_would_be_wrong():
    with pytest.raises(ParameterError, match="vae_dtype"):
        FastPath(vae_dtype="float8")
    with pytest.raises(ParameterError, match="cuda_graphs"):
        FastPath(cuda_graphs=True)
    with pytest.raises(ParameterError, match="cpu_offload"):
        check_fast_request(FastPath(fused_qkv=True), cpu_offload=True, device=torch.device("cuda"))
    with pytest.raises(ParameterError, match="fp8.*CUDA"):
        quantize_fp8(torch.nn.Linear(4, 4), torch.device("cpu"))
    with pytest.raises(ParameterError, match="preset"):
        FastPath.preset("fastest", torch.device("cpu"))
    assert FastPath.preset("fast", torch.device("cuda")).compile
    assert not FastPath.preset("fast", torch.device("cpu")).compile


def test_cli_switches_build_the_fast_path():
    import argparse

    from idforge.commands._common import add_generation_arguments, fast_path

    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    base = ["--prompt", "x", "-o", "out.png", "--device", "cpu"]
    fast, dtype = fast_path(parser.parse_args(base), "cpu")
    assert fast == FastPath() and dtype == "auto"
    fast, _ = fast_path(parser.parse_args([*base, "--fast"]), "cpu")
    assert fast == FastPath.preset("fast", torch.device("cpu"))
    args = parser.parse_args([*base, "--compile", "--vae-dtype", "bfloat16", "--no-control-embedding-cache"])
    fast, _ = fast_path(args, "cpu")
    assert fast.compile and fast.vae_dtype == "bfloat16" and not fast.cache_control_embedding


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() and not os.environ.get("IDFORGE_TEST_COMPILE"),
    reason="torch.compile of three networks takes minutes on 2 CPU cores; benchmarks/gpu.sh runs it on CUDA, "
    "IDFORGE_TEST_COMPILE=1 runs it here",
)
def test_compile_matches_eager_and_compiles_once_per_shape(tiny_kit, face):
    import torch._dynamo.utils as dynamo_utils

    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device=device, dtype="float32", fast=EAGER)
    reference = insta_depth(engine, face)
    compiled = Engine(
        ModelChoice(models_dirs=[str(tiny_kit)]),
        device=device,
        dtype="float32",
        fast=EAGER.with_changes(compile=True),
    )
    first = insta_depth(compiled, face)
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    second = insta_depth(compiled, face, seed=4)  # a new request of the same shape: no new graphs
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs
    assert max_diff(first.latents, reference.latents) <= TOL["compile"]
    assert not torch.equal(second.latents, first.latents)
