"""Weight types and the layer map: SPEC.md section 3 formulas, per layer, through a hooked UNet forward."""

from __future__ import annotations

import pytest
import torch

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
from idforge.errors import ParameterError
from idforge.identity.attention import IdentityAttention
from idforge.identity.layers import AttentionLayer, attention_layers, cross_attention_layers, detect_family
from idforge.identity.weight_types import WEIGHT_TYPES, layer_weights

SPEC_NAMES = [
    "linear",
    "ease in",
    "ease out",
    "ease in-out",
    "reverse in-out",
    "weak input",
    "weak output",
    "weak middle",
    "strong middle",
    "style transfer",
    "composition",
    "strong style transfer",
    "style and composition",
    "style transfer precise",
    "composition precise",
]


def spec_table(weight_type: str, w: float, family: str) -> dict[int, tuple[float, bool]]:
    """SPEC.md section 3, written out independently of the implementation."""
    count = 11 if family == "sdxl" else 16
    n_in, mid = (4, 4) if family == "sdxl" else (6, 6)

    def part(t: int) -> str:
        return "input" if t < n_in else "middle" if t == mid else "output"

    every = range(count)
    half = count / 2
    if weight_type == "linear":
        return {t: (w, False) for t in every}
    if weight_type == "ease in":
        return {t: (w * (0.05 + 0.95 * (1 - t / count)), False) for t in every}
    if weight_type == "ease out":
        return {t: (w * (0.05 + 0.95 * t / count), False) for t in every}
    if weight_type == "ease in-out":
        return {t: (w * (0.05 + 0.95 * (1 - abs(t - half) / half)), False) for t in every}
    if weight_type == "reverse in-out":
        return {t: (w * (0.05 + 0.95 * abs(t - half) / half), False) for t in every}
    weak = {"weak input": ("input",), "weak middle": ("middle",), "weak output": ("output",)}
    weak["strong middle"] = ("input", "output")
    if weight_type in weak:
        return {t: (w * 0.2 if part(t) in weak[weight_type] else w, False) for t in every}
    if family == "sdxl":
        style = {6: w}
        comp = {3: w}
    else:
        style = {t: w for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}
        comp = {4: 0.25 * w, 5: w}
    if weight_type == "style transfer":
        return {t: (v, False) for t, v in style.items()}
    if weight_type == "composition":
        return {t: (v, False) for t, v in comp.items()}
    if weight_type == "strong style transfer":
        return {t: (w, False) for t in every if t not in comp}
    if weight_type == "style and composition":
        return {t: (v, False) for t, v in {**style, **comp}.items()}
    if weight_type == "style transfer precise":
        return {**{t: (v, False) for t, v in style.items()}, **{t: (v, True) for t, v in comp.items()}}
    if weight_type == "composition precise":
        others = {t: (0.1 * w, True) for t in every}
        return {
            **others,
            **{t: (v, True) for t, v in style.items()},
            **{t: (v, False) for t, v in comp.items()},
        }
    raise AssertionError(weight_type)


def test_names_are_the_nodes_fifteen() -> None:
    assert list(WEIGHT_TYPES) == SPEC_NAMES


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
@pytest.mark.parametrize("weight_type", SPEC_NAMES)
def test_tables_follow_spec(weight_type: str, family: str) -> None:
    got = layer_weights(weight_type, 0.8, family)
    want = spec_table(weight_type, 0.8, family)
    assert sorted(got) == sorted(want)
    for t in want:
        assert got[t][0] == pytest.approx(want[t][0], abs=1e-12)
        assert got[t][1] == want[t][1]


def test_hand_computed_values() -> None:
    assert layer_weights("ease in", 1.0, "sdxl")[10][0] == pytest.approx(0.05 + 0.95 / 11)
    assert layer_weights("ease out", 2.0, "sd15")[8][0] == pytest.approx(2.0 * (0.05 + 0.95 * 0.5))
    assert layer_weights("ease in-out", 1.0, "sdxl")[0][0] == pytest.approx(0.05)
    assert layer_weights("reverse in-out", 1.0, "sd15")[8][0] == pytest.approx(0.05)
    assert layer_weights("weak middle", 1.0, "sdxl")[4] == (pytest.approx(0.2), False)
    assert layer_weights("composition", 1.0, "sd15") == {4: (0.25, False), 5: (1.0, False)}
    assert layer_weights("style transfer", 1.0, "sdxl") == {6: (1.0, False)}
    assert layer_weights("style transfer precise", 0.5, "sdxl") == {3: (0.5, True), 6: (0.5, False)}
    precise = layer_weights("composition precise", 1.0, "sdxl")
    assert (
        precise[3] == (1.0, False) and precise[6] == (1.0, True) and precise[0] == (pytest.approx(0.1), True)
    )


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ParameterError, match="'style transfer precise'"):
        layer_weights("style transfers", 1.0, "sdxl")
    with pytest.raises(ParameterError, match="family"):
        layer_weights("linear", 1.0, "sd3")


def _fake_layers(parts: list[str]) -> list[AttentionLayer]:
    return [
        AttentionLayer(2 * t + 1, f"x{t}.attn2.processor", f"x{t}.attn2", True, 64, 1, 64, part, t)
        for t, part in enumerate(parts)
    ]


def test_unknown_layout_formula_types_work_style_types_refuse() -> None:
    layers = _fake_layers(["input", "input", "middle", "output", "output"])
    assert detect_family(layers) is None
    weak = layer_weights("weak output", 1.0, layers)
    assert [weak[t][0] for t in range(5)] == pytest.approx([1.0, 1.0, 1.0, 0.2, 0.2])
    assert layer_weights("ease in", 1.0, layers)[5 - 1][0] == pytest.approx(0.05 + 0.95 * (1 - 4 / 5))
    with pytest.raises(ParameterError, match="only for SDXL and SD1.5"):
        layer_weights("style transfer", 1.0, layers)


# ---- the layer map ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def sdxl_unet():
    return tiny_sdxl_unet()


@pytest.fixture(scope="module")
def sd15_unet():
    return tiny_sd15_unet()


def test_sdxl_transformer_block_indices(sdxl_unet) -> None:
    by_t: dict[int, set[str]] = {}
    for layer in cross_attention_layers(sdxl_unet):
        by_t.setdefault(layer.t, set()).add(layer.module_path.split(".transformer_blocks")[0])
    assert by_t == {
        0: {"down_blocks.1.attentions.0"},
        1: {"down_blocks.1.attentions.1"},
        2: {"down_blocks.2.attentions.0"},
        3: {"down_blocks.2.attentions.1"},
        4: {"mid_block.attentions.0"},
        5: {"up_blocks.0.attentions.0"},
        6: {"up_blocks.0.attentions.1"},
        7: {"up_blocks.0.attentions.2"},
        8: {"up_blocks.1.attentions.0"},
        9: {"up_blocks.1.attentions.1"},
        10: {"up_blocks.1.attentions.2"},
    }
    assert detect_family(cross_attention_layers(sdxl_unet)) == "sdxl"


def test_sd15_transformer_block_indices(sd15_unet) -> None:
    layers = cross_attention_layers(sd15_unet)
    starts = {layer.t: layer.module_path.split(".transformer_blocks")[0] for layer in layers}
    assert starts[0] == "down_blocks.0.attentions.0" and starts[5] == "down_blocks.2.attentions.1"
    assert starts[6] == "mid_block.attentions.0"
    assert starts[7] == "up_blocks.1.attentions.0" and starts[15] == "up_blocks.3.attentions.2"
    assert sorted(starts) == list(range(16))
    assert [layer.index for layer in layers] == list(range(1, 32, 2))
    assert detect_family(layers) == "sd15"


def test_real_sdxl_depths_give_specs_indices() -> None:
    """SDXL's real depths (1, 2, 10) with tiny widths: N ranges and widths as SPEC.md section 2 lists."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        block_out_channels=(8, 16, 24),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=16,
        attention_head_dim=1,
        norm_num_groups=8,
    )
    layers = attention_layers(unet)
    cross = [layer for layer in layers if layer.is_cross]
    assert [layer.index for layer in cross] == list(range(1, 140, 2))
    assert all(not layer.is_cross for layer in layers if layer.index % 2 == 0)

    def indices(prefix: str) -> list[int]:
        return [layer.index for layer in cross if layer.name.startswith(prefix)]

    assert indices("down_blocks.1") == list(range(1, 8, 2))
    assert indices("down_blocks.2") == list(range(9, 48, 2))
    assert indices("up_blocks.0") == list(range(49, 108, 2))
    assert indices("up_blocks.1") == list(range(109, 120, 2))
    assert indices("mid_block") == list(range(121, 140, 2))
    assert {layer.hidden for layer in cross if layer.name.startswith("down_blocks.1")} == {16}
    assert {layer.t for layer in cross if layer.name.startswith("mid_block")} == {4}


# ---- per-layer contributions through a hooked forward --------------------------------------------------------


def _setup(unet):
    ida = IdentityAttention(unet)
    width = cross_dim(unet)
    ida.add_adapter("face", random_ip_layers(ida.layers, width, seed=3))
    cond, uncond = tokens(1, 4, width, seed=10), tokens(1, 4, width, seed=11)
    ida.set_cfg(True)
    ida.set_adapter_inputs("face", cond, uncond)
    ida.install()
    captured = capture_cross_inputs(unet, ida.layers, unet_call_inputs(unet, batch=2))
    return ida, cond, uncond, captured


def _layer_outputs(ida: IdentityAttention, captured) -> dict[int, torch.Tensor]:
    outs = {}
    with torch.no_grad():
        for layer in ida.cross_layers:
            attn = ida.unet.get_submodule(layer.module_path)
            hidden, text = captured[layer.index]
            outs[layer.index] = attn.processor(attn, hidden, encoder_hidden_states=text)
    return outs


@pytest.mark.parametrize("which", ["sdxl", "sd15"])
def test_each_layer_gets_spec_weight_times_unit_contribution(which: str, sdxl_unet, sd15_unet) -> None:
    unet = sdxl_unet if which == "sdxl" else sd15_unet
    ida, cond, uncond, captured = _setup(unet)
    try:
        every_t = {layer.t for layer in ida.cross_layers}
        ida.clear_adapter_inputs()
        text_only = _layer_outputs(ida, captured)
        ida.set_adapter_inputs("face", cond, uncond, layer_weights={t: (1.0, False) for t in every_t})
        unit = {n: out - text_only[n] for n, out in _layer_outputs(ida, captured).items()}
        ida.set_adapter_inputs("face", cond, uncond, layer_weights={t: (1.0, True) for t in every_t})
        unit_swapped = {n: out - text_only[n] for n, out in _layer_outputs(ida, captured).items()}
        for n in unit:  # the swap must matter, else the swapped checks below prove nothing
            assert (unit[n] - unit_swapped[n]).abs().max() > 1e-4

        for weight_type in SPEC_NAMES:
            want = spec_table(weight_type, 0.6, which)
            ida.set_adapter_inputs("face", cond, uncond, weight=0.6, weight_type=weight_type)
            got = _layer_outputs(ida, captured)
            for layer in ida.cross_layers:
                contribution = got[layer.index] - text_only[layer.index]
                if layer.t not in want:
                    assert torch.equal(got[layer.index], text_only[layer.index]), (weight_type, layer.name)
                    continue
                w, swap = want[layer.t]
                expected = w * (unit_swapped if swap else unit)[layer.index]
                torch.testing.assert_close(contribution, expected, atol=2e-6, rtol=1e-4, msg=weight_type)
    finally:
        ida.remove()
