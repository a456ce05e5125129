"""Identity IP attention: diffusers parity, embeds scaling, windows, masks, per-sample tokens, several adapters."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

from identity_attention_helpers import (
    capture_cross_inputs,
    cross_dim,
    random_ip_layers,
    single_thread,
    tiny_sd15_unet,
    tiny_sdxl_unet,
    tokens,
    unet_call_inputs,
)
from idforge.errors import ModelFormatError, ParameterError
from idforge.identity.attention import (
    SCALING_MODES,
    IdentityAttention,
    IdentityAttnProcessor,
    is_active,
    timestep_window,
)
from idforge.identity.masks import mask_for_feature_map, mask_for_tokens, mask_grid


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def sdxl_unet():
    return tiny_sdxl_unet()


@pytest.fixture(scope="module")
def sd15_unet():
    return tiny_sd15_unet()


def _run(unet, call: dict) -> torch.Tensor:
    with torch.no_grad():
        return unet(**call).sample


def _controller(unet, seed: int = 3, name: str = "face") -> IdentityAttention:
    ida = IdentityAttention(unet)
    ida.add_adapter(name, random_ip_layers(ida.layers, cross_dim(unet), seed=seed))
    return ida


# ---- (a) parity with diffusers' IPAdapterAttnProcessor2_0 ---------------------------------------------------


@pytest.mark.parametrize("which,cfg", [("sdxl", True), ("sd15", True), ("sd15", False)])
def test_parity_with_diffusers_ip_adapter(which: str, cfg: bool, sdxl_unet, sd15_unet) -> None:
    unet = sdxl_unet if which == "sdxl" else sd15_unet
    width = cross_dim(unet)
    ida = _controller(unet)
    ip_layers = ida._adapters["face"].ip_layers
    cond, uncond = tokens(2, 4, width, seed=20), tokens(2, 4, width, seed=21)
    ida.set_cfg(cfg)
    ida.set_adapter_inputs("face", cond, uncond, weight=0.7, weight_type="linear", scaling="V only")
    call = unet_call_inputs(unet, batch=4 if cfg else 2)
    with ida:
        ours = _run(unet, call)

    original = unet.attn_processors
    reference = {}
    for layer in ida.layers:
        if layer.is_cross:
            proc = IPAdapterAttnProcessor2_0(layer.hidden, width, num_tokens=4, scale=0.7)
            proc.to_k_ip[0].weight.data.copy_(ip_layers[layer.index][0])
            proc.to_v_ip[0].weight.data.copy_(ip_layers[layer.index][1])
            reference[layer.name] = proc
        else:
            reference[layer.name] = AttnProcessor2_0()
    ip_tokens = torch.cat([uncond, cond]) if cfg else cond
    unet.set_attn_processor(reference)
    try:
        theirs = _run(unet, {**call, "encoder_hidden_states": (call["encoder_hidden_states"], [ip_tokens])})
    finally:
        unet.set_attn_processor(dict(original))
    plain = _run(unet, call)
    assert (ours - plain).abs().max() > 1e-3  # the IP attention really did something
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


# ---- (c) embeds scaling against SPEC's formulas ---------------------------------------------------------------


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    out = torch.softmax(scores, dim=-1) @ v
    b, h, n, d = out.shape
    return out.permute(0, 2, 1, 3).reshape(b, n, h * d)


def _spec_layer(attn, hidden, text, to_k_ip, to_v_ip, ip_tokens, w: float, mode: str) -> torch.Tensor:
    """SPEC.md section 3, in float64: text attention + scaled IP attention, then the output projection."""
    d = torch.float64
    wq, wk, wv = (m.weight.to(d) for m in (attn.to_q, attn.to_k, attn.to_v))
    h, e, t = hidden.to(d), text.to(d), ip_tokens.to(d)
    q = h @ wq.T
    out = _attend(q, e @ wk.T, e @ wv.T, attn.heads)
    k_ip, v_ip = t @ to_k_ip.to(d).T, t @ to_v_ip.to(d).T
    c = k_ip.shape[-1]
    if mode == "V only":
        ip = w * _attend(q, k_ip, v_ip, attn.heads)
    elif mode == "K+V":
        ip = _attend(q, w * k_ip, w * v_ip, attn.heads)
    elif mode == "K+V w/ C penalty":
        wp = w * c / 1280
        ip = _attend(q, wp * k_ip, wp * v_ip, attn.heads)
    else:
        wp = w * c / 1280
        m = v_ip.mean(dim=1, keepdim=True)
        ip = _attend(q, wp * k_ip, (v_ip - m) + wp * m, attn.heads)
    out = out + ip
    return (out @ attn.to_out[0].weight.to(d).T + attn.to_out[0].bias.to(d)).to(hidden.dtype)


@pytest.mark.parametrize("mode", SCALING_MODES)
@pytest.mark.parametrize("weight", [1.7, -0.5])
def test_embeds_scaling_matches_spec(mode: str, weight: float, sdxl_unet) -> None:
    unet = sdxl_unet
    ida = _controller(unet)
    cond, uncond = tokens(1, 4, 128, seed=30), tokens(1, 4, 128, seed=31)
    ida.set_cfg(True)
    ida.set_adapter_inputs("face", cond, uncond, weight=weight, scaling=mode)
    with ida:
        captured = capture_cross_inputs(unet, ida.layers, unet_call_inputs(unet, batch=2))
        widths = set()
        for layer in ida.cross_layers[::3]:
            attn = unet.get_submodule(layer.module_path)
            hidden, text = captured[layer.index]
            with torch.no_grad():
                got = attn.processor(attn, hidden, encoder_hidden_states=text)
            k_ip, v_ip = ida._adapters["face"].ip_layers[layer.index]
            want = _spec_layer(attn, hidden, text, k_ip, v_ip, torch.cat([uncond, cond]), weight, mode)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            widths.add(layer.hidden)
    assert widths == {64, 96}  # both inner widths, so the C penalty is checked at two values


def test_scaling_modes_differ(sdxl_unet) -> None:
    """Guard for the test above: the four modes give four different outputs on these sizes."""
    ida = _controller(sdxl_unet)
    call = unet_call_inputs(sdxl_unet, batch=2)
    outs = []
    with ida:
        for mode in SCALING_MODES:
            ida.set_adapter_inputs(
                "face", tokens(1, 4, 128, 1), tokens(1, 4, 128, 2), weight=1.5, scaling=mode
            )
            outs.append(_run(sdxl_unet, call))
    for i in range(4):
        for j in range(i + 1, 4):
            assert (outs[i] - outs[j]).abs().max() > 1e-5


# ---- (d) start/end window ----------------------------------------------------------------------------------


def test_window_edges() -> None:
    assert timestep_window(0.0, 1.0) == (math.inf, -math.inf)
    t_start, t_end = timestep_window(0.2, 0.8)
    assert t_start == pytest.approx(799.2) and t_end == pytest.approx(199.8)
    window = (t_start, t_end)
    assert is_active(799.2, window) and is_active(199.8, window) and is_active(500, window)
    assert not is_active(800, window) and not is_active(199, window)
    always = timestep_window(-0.1, 1.5)
    assert is_active(1500.0, always) and is_active(-3.0, always) and is_active(0, always)
    assert is_active(999, timestep_window(0.0, 0.5)) and not is_active(1, timestep_window(0.0, 0.5))
    never = timestep_window(1.0, 1.0)  # starts at t = 0: only t = 0 itself qualifies
    assert is_active(0.0, never) and not is_active(1.0, never)
    assert not is_active(999.0, timestep_window(0.5, 1.0)) and is_active(0.0, timestep_window(0.5, 1.0))


def test_inactive_window_is_exactly_text_only_and_skips_ip(sdxl_unet, monkeypatch) -> None:
    ida = _controller(sdxl_unet)
    ida.set_adapter_inputs("face", tokens(1, 4, 128, 1), tokens(1, 4, 128, 2), start_at=0.3, end_at=0.6)
    call = unet_call_inputs(sdxl_unet, batch=2)
    plain = _run(sdxl_unet, call)
    with ida:
        ida.set_timestep(500)  # window is [399.6, 699.3]
        assert ida.active_adapters == ["face"]
        inside = _run(sdxl_unet, call)
        ida.set_timestep(torch.tensor(800))
        assert ida.active_adapters == []

        def boom(*args, **kwargs):
            raise AssertionError("IP weights used outside the window")

        monkeypatch.setattr(ida, "layer_ip_weights", boom)
        outside = _run(sdxl_unet, call)
    assert (inside - plain).abs().max() > 1e-3
    assert torch.equal(outside, plain)


# ---- (e) masks -----------------------------------------------------------------------------------------------


def test_mask_grid_hand_sizes() -> None:
    assert mask_grid((8, 8), 64) == (8, 8)
    assert mask_grid((8, 8), 16) == (4, 4)
    assert mask_grid((8, 8), 4) == (2, 2)
    assert mask_grid((12, 8), 24) == (6, 4)  # non-square
    assert mask_grid((9, 13), 35) == (5, 7)  # 9/sqrt(117/35) = 4.92 -> 4, 35 % 4 != 0 -> 5; 35 // 5 = 7
    assert mask_grid((13, 9), 35) == (7, 5)  # 13/sqrt(117/35) = 7.11 -> 7, divisible
    with pytest.raises(ParameterError, match="does not hold 7 tokens"):
        mask_for_tokens(torch.ones(8, 8), (8, 8), 7)  # 2.65 -> 2 -> 3, 7 // 3 = 2: 6 tokens


def test_mask_for_tokens_shapes_and_bilinear() -> None:
    mask = torch.zeros(2, 16, 16)
    mask[0, :, 8:] = 1.0
    out = mask_for_tokens(mask, (8, 8), 16)
    assert out.shape == (2, 16, 1)
    grid = out[0, :, 0].reshape(4, 4)
    assert torch.equal(grid[:, :2], torch.zeros(4, 2)) and torch.equal(grid[:, 2:], torch.ones(4, 2))
    assert torch.equal(out[1], torch.zeros(16, 1))
    ramp = torch.arange(4.0).repeat(4, 1)  # bilinear, align_corners=False, 4 -> 2 columns: 0.5 and 2.5
    assert mask_for_tokens(ramp, (4, 4), 4)[:, 0].tolist() == [0.5, 2.5, 0.5, 2.5]
    assert mask_for_tokens(torch.ones(5, 7), (9, 13), 35).shape == (35, 1)


def test_masked_out_tokens_get_exactly_text_only(sdxl_unet) -> None:
    unet = sdxl_unet
    ida = _controller(unet)
    cond, uncond = tokens(2, 4, 128, seed=1), tokens(2, 4, 128, seed=2)
    mask = torch.zeros(2, 32, 32)
    mask[0, :, :16] = 1.0  # sample 0: left half; sample 1: nothing
    ida.set_latent_size((16, 16))
    with ida:
        captured = capture_cross_inputs(unet, ida.layers, unet_call_inputs(unet, batch=4))
        for layer in ida.cross_layers:
            attn = unet.get_submodule(layer.module_path)
            hidden, text = captured[layer.index]
            with torch.no_grad():
                ida.clear_adapter_inputs()
                text_only = attn.processor(attn, hidden, encoder_hidden_states=text)
                ida.set_adapter_inputs("face", cond, uncond, mask=mask)
                masked = attn.processor(attn, hidden, encoder_hidden_states=text)
            fitted = mask_for_tokens(mask, (16, 16), hidden.shape[1])[:, :, 0]
            for b in range(4):  # [uncond 0, uncond 1, cond 0, cond 1]
                off = fitted[b % 2] == 0
                on = fitted[b % 2] == 1
                assert off.any() and torch.equal(masked[b][off], text_only[b][off])
                if b % 2 == 0:
                    assert (masked[b][on] - text_only[b][on]).abs().max() > 1e-4


def test_all_zero_mask_gives_the_plain_unet_and_ones_the_unmasked(sdxl_unet) -> None:
    ida = _controller(sdxl_unet)
    call = unet_call_inputs(sdxl_unet, batch=2)
    plain = _run(sdxl_unet, call)
    cond, uncond = tokens(1, 4, 128, 1), tokens(1, 4, 128, 2)
    ida.set_latent_size((16, 16))
    with ida:
        ida.set_adapter_inputs("face", cond, uncond, mask=torch.zeros(64, 64))
        zero = _run(sdxl_unet, call)
        ida.set_adapter_inputs("face", cond, uncond, mask=torch.ones(64, 64))
        ones = _run(sdxl_unet, call)
        ida.set_adapter_inputs("face", cond, uncond)
        unmasked = _run(sdxl_unet, call)
    assert torch.equal(zero, plain)
    assert torch.equal(ones, unmasked)


def test_mask_needs_the_latent_size(sdxl_unet) -> None:
    ida = _controller(sdxl_unet)
    ida.set_adapter_inputs("face", tokens(1, 4, 128, 1), tokens(1, 4, 128, 2), mask=torch.ones(8, 8))
    with ida, pytest.raises(ParameterError, match="set_latent_size"):
        _run(sdxl_unet, unet_call_inputs(sdxl_unet, batch=2))


# ---- (f) per-sample tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [True, False])
def test_batch_of_references_equals_single_runs(cfg: bool, sd15_unet) -> None:
    """Per layer to 1e-6; the whole UNet to 1e-5 (the plain tiny UNet itself differs by ~1.3e-6 between
    a batch of 3 and single runs on CPU, from batch-size dependent GEMM blocking, IP or not)."""
    unet = sd15_unet
    ida = _controller(unet)
    ida.set_cfg(cfg)
    cond, uncond = tokens(3, 4, 64, seed=40), tokens(3, 4, 64, seed=41)
    call = unet_call_inputs(unet, batch=6 if cfg else 3)
    with ida:
        ida.set_adapter_inputs("face", cond, uncond, weight=0.9)
        batched = _run(unet, call)
        captured = capture_cross_inputs(unet, ida.layers, call)
        layer_batched = {}
        for layer in ida.cross_layers:
            attn = unet.get_submodule(layer.module_path)
            hidden, text = captured[layer.index]
            with torch.no_grad():
                layer_batched[layer.index] = attn.processor(attn, hidden, encoder_hidden_states=text)
        for i in range(3):
            rows = [i, 3 + i] if cfg else [i]
            ida.set_adapter_inputs("face", cond[i : i + 1], uncond[i : i + 1], weight=0.9)
            for layer in ida.cross_layers:
                attn = unet.get_submodule(layer.module_path)
                hidden, text = captured[layer.index]
                with torch.no_grad():
                    single = attn.processor(attn, hidden[rows], encoder_hidden_states=text[rows])
                torch.testing.assert_close(layer_batched[layer.index][rows], single, atol=1e-6, rtol=0)
            single_call = {
                key: (value[rows] if torch.is_tensor(value) else value) for key, value in call.items()
            }
            out = _run(unet, single_call)
            torch.testing.assert_close(batched[rows], out, atol=1e-5, rtol=0)
        ida.set_adapter_inputs("face", cond[:1], uncond[:1], weight=0.9)  # one reference for all
        shared = _run(unet, call)
    assert (shared[1] - batched[1]).abs().max() > 1e-3  # so each sample really used its own tokens


def test_token_batch_mismatch_is_a_parameter_error(sd15_unet) -> None:
    ida = _controller(sd15_unet)
    ida.set_adapter_inputs("face", tokens(2, 4, 64, 1), tokens(2, 4, 64, 2))
    with ida, pytest.raises(ParameterError, match="batch of 2"):
        _run(sd15_unet, unet_call_inputs(sd15_unet, batch=6))


# ---- (g) two adapters at once ----------------------------------------------------------------------------------


def test_two_adapters_add_up(sdxl_unet) -> None:
    unet = sdxl_unet
    ida = IdentityAttention(unet)
    ida.add_adapter("instantid", random_ip_layers(ida.layers, 128, seed=50))
    ida.add_adapter("faceid", random_ip_layers(ida.layers, 128, seed=51))
    a = dict(cond_tokens=tokens(1, 16, 128, 52), uncond_tokens=tokens(1, 16, 128, 53), weight=0.8)
    b = dict(
        cond_tokens=tokens(1, 4, 128, 54),
        uncond_tokens=tokens(1, 4, 128, 55),
        weight=1.3,
        weight_type="style transfer precise",
        scaling="K+mean(V) w/ C penalty",
    )
    with ida:
        captured = capture_cross_inputs(unet, ida.layers, unet_call_inputs(unet, batch=2))
        results = {}
        for case in ("none", "a", "b", "both"):
            ida.clear_adapter_inputs()
            if case in ("a", "both"):
                ida.set_adapter_inputs("instantid", **a)
            if case in ("b", "both"):
                ida.set_adapter_inputs("faceid", **b)
            outs = {}
            for layer in ida.cross_layers:
                attn = unet.get_submodule(layer.module_path)
                hidden, text = captured[layer.index]
                with torch.no_grad():
                    outs[layer.index] = attn.processor(attn, hidden, encoder_hidden_states=text)
            results[case] = outs
    touched_by_b = 0
    for n, both in results["both"].items():
        want = results["a"][n] + results["b"][n] - results["none"][n]
        torch.testing.assert_close(both, want, atol=2e-6, rtol=1e-5)
        touched_by_b += int((results["b"][n] - results["none"][n]).abs().max() > 1e-5)
    assert 0 < touched_by_b < len(results["both"])  # b's weight type leaves some layers alone


# ---- (h) install / remove ----------------------------------------------------------------------------------------


def test_install_remove_restores_processors_and_outputs(sd15_unet) -> None:
    unet = sd15_unet
    before = dict(unet.attn_processors)
    call = unet_call_inputs(unet, batch=2)
    plain = _run(unet, call)
    ida = _controller(unet)
    ida.set_adapter_inputs("face", tokens(1, 4, 64, 1), tokens(1, 4, 64, 2))
    ida.install()
    ida.install()  # idempotent
    procs = unet.attn_processors
    assert all(isinstance(procs[layer.name], IdentityAttnProcessor) for layer in ida.cross_layers)
    assert all(procs[layer.name] is before[layer.name] for layer in ida.layers if not layer.is_cross)
    assert (_run(unet, call) - plain).abs().max() > 1e-3
    ida.remove()
    after = unet.attn_processors
    assert list(after) == list(before) and all(after[name] is before[name] for name in before)
    assert torch.equal(_run(unet, call), plain)
    assert not ida.installed


def test_no_active_adapter_equals_plain_unet(sd15_unet) -> None:
    call = unet_call_inputs(sd15_unet, batch=2)
    plain = _run(sd15_unet, call)
    with _controller(sd15_unet):
        assert torch.equal(_run(sd15_unet, call), plain)


# ---- dtypes and checks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_follows_the_hidden_states(dtype: torch.dtype) -> None:
    unet = tiny_sd15_unet()
    ida = _controller(unet)
    ida.set_adapter_inputs("face", tokens(1, 4, 64, 1), tokens(1, 4, 64, 2))
    call = unet_call_inputs(unet, batch=2)
    with ida:
        full = _run(unet, call)
        unet.to(dtype)
        half_call = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in call.items()}
        half = _run(unet, half_call)
    assert half.dtype == dtype and torch.isfinite(half).all()
    assert ida._adapters["face"].cast[1][0].dtype == dtype
    assert ida._adapters["face"].ip_layers[1][0].dtype == torch.float32  # master copy kept
    torch.testing.assert_close(half.float(), full, atol=0.1, rtol=0.05)


def test_adapter_must_fit_the_unet(sdxl_unet, sd15_unet) -> None:
    ida = IdentityAttention(sdxl_unet)
    sd15_layers = IdentityAttention(sd15_unet).layers
    with pytest.raises(ModelFormatError, match="wrong base model"):
        ida.add_adapter("x", random_ip_layers(sd15_layers, 128, seed=1))
    wrong = random_ip_layers(ida.layers, 128, seed=1)
    wrong[1] = (torch.zeros(8, 128), torch.zeros(8, 128))
    with pytest.raises(ModelFormatError, match="layer 1"):
        ida.add_adapter("x", wrong)


def test_input_checks(sdxl_unet) -> None:
    ida = _controller(sdxl_unet)
    good = tokens(1, 4, 128, 1)
    with pytest.raises(ParameterError, match="cond_tokens"):
        ida.set_adapter_inputs("face", tokens(1, 4, 64, 1), good)
    with pytest.raises(ParameterError, match="embeds_scaling"):
        ida.set_adapter_inputs("face", good, good, scaling="V")
    with pytest.raises(ParameterError, match="start_at"):
        ida.set_adapter_inputs("face", good, good, start_at=0.7, end_at=0.2)
    with pytest.raises(ParameterError, match="weight_type"):
        ida.set_adapter_inputs("face", good, good, weight_type="nope")
    with pytest.raises(ParameterError, match="float values"):
        ida.set_adapter_inputs("face", good, good, mask=torch.full((8, 8), 255, dtype=torch.uint8))
    ida.set_adapter_inputs("face", good, good, mask=torch.ones(8, 8, dtype=torch.bool))
    assert ida.adapter_inputs("face").mask.dtype == torch.float32
    with pytest.raises(ParameterError, match="not registered"):
        ida.set_adapter_inputs("other", good, good)


def test_processor_traces_without_graph_breaks(sdxl_unet) -> None:
    """torch.compile(fullgraph=True) must capture the processor whole: plain tensor code, no batch loops."""
    ida = _controller(sdxl_unet)
    ida.set_latent_size((16, 16))
    ida.set_adapter_inputs(
        "face",
        tokens(2, 4, 128, 1),
        tokens(2, 4, 128, 2),
        weight_type="composition precise",
        scaling="K+mean(V) w/ C penalty",
        mask=torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0)),
    )
    with ida:
        captured = capture_cross_inputs(sdxl_unet, ida.layers, unet_call_inputs(sdxl_unet, batch=4))
        layer = ida.cross_layers[4]
        attn = sdxl_unet.get_submodule(layer.module_path)
        hidden, text = captured[layer.index]
        compiled = torch.compile(attn, fullgraph=True, backend="eager")
        with torch.no_grad():
            torch.testing.assert_close(
                compiled(hidden, encoder_hidden_states=text), attn(hidden, encoder_hidden_states=text)
            )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_matches_cpu(dtype: torch.dtype) -> None:
    unet = tiny_sdxl_unet()
    ida = _controller(unet)
    ida.set_latent_size((16, 16))
    ida.set_adapter_inputs("face", tokens(2, 4, 128, 1), tokens(2, 4, 128, 2), mask=torch.ones(2, 16, 16))
    call = unet_call_inputs(unet, batch=4)
    with ida:
        cpu = _run(unet, call)
        unet.to("cuda", dtype)
        gpu_call = {k: (v.to("cuda", dtype) if torch.is_tensor(v) else v) for k, v in call.items()}
        gpu_call["added_cond_kwargs"] = {k: v.to("cuda", dtype) for k, v in call["added_cond_kwargs"].items()}
        gpu = _run(unet, gpu_call)
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    torch.testing.assert_close(gpu.float().cpu(), cpu, atol=0.1, rtol=0.05)


def test_mask_for_feature_map_matches_the_token_rule() -> None:
    mask = torch.rand(2, 32, 24, generator=torch.Generator().manual_seed(3))
    tokens_view = mask_for_tokens(mask, (16, 12), 48)  # grid 8 x 6
    feature = mask_for_feature_map(mask, (16, 12), (8, 6))
    assert feature.shape == (2, 1, 8, 6)
    assert torch.equal(feature.reshape(2, 48, 1), tokens_view)
    assert mask_for_feature_map(mask[0], (5, 7), (3, 4)).shape == (1, 1, 3, 4)  # rule would say 2 x 6


def test_adapters_from_one_checkpoint_share_their_weights(sdxl_unet) -> None:
    """One adapter per person from the same IP weights: one cast copy for all, and each keeps its own inputs."""
    ida = IdentityAttention(sdxl_unet)
    ip_layers = random_ip_layers(ida.layers, cross_dim(sdxl_unet), seed=8)
    ida.add_adapter("person1", ip_layers)
    ida.add_adapter("person2", ip_layers)
    ida.add_adapter("other", random_ip_layers(ida.layers, cross_dim(sdxl_unet), seed=9))
    index = ida.cross_layers[0].index
    first = ida.layer_ip_weights("person1", index, torch.float16, torch.device("cpu"))
    second = ida.layer_ip_weights("person2", index, torch.float16, torch.device("cpu"))
    other = ida.layer_ip_weights("other", index, torch.float16, torch.device("cpu"))
    assert first[0] is second[0] and first[1] is second[1]
    assert other[0] is not first[0]
    width = cross_dim(sdxl_unet)
    ida.set_adapter_inputs("person1", tokens(1, 4, width, 1), tokens(1, 4, width, 2), weight=0.5)
    ida.set_adapter_inputs("person2", tokens(1, 4, width, 3), tokens(1, 4, width, 4), weight=0.9)
    assert ida.adapter_inputs("person1").weights != ida.adapter_inputs("person2").weights
