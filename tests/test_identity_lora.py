"""LoRA merged into UNet weights: equal to the reference LoRA processors, exact restore, file formats."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from idforge.errors import ModelFormatError, ParameterError
from idforge.identity.checkpoint import load_adapter_checkpoint
from idforge.identity.lora import apply_faceid_lora, apply_lora_file, apply_lora_state_dict
from projection_fixtures import (
    adapter_parts,
    faceid_lora_sd,
    reference_lora_processors,
    save_bin,
    tiny_sd15_unet,
    tiny_sdxl_unet,
)


def _snapshot(unet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def _assert_bit_exact(unet, snapshot) -> None:
    current = unet.state_dict()
    assert current.keys() == snapshot.keys()
    changed = [k for k, v in snapshot.items() if not torch.equal(current[k], v)]
    assert not changed, f"not restored exactly: {changed[:3]}"


def _sd15_inputs(unet):
    gen = torch.Generator().manual_seed(11)
    sample = torch.randn(2, 4, 16, 16, generator=gen)
    text = torch.randn(2, 5, unet.config.cross_attention_dim, generator=gen)
    return sample, torch.tensor([500, 20]), text


def _run(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(*inputs).sample


def test_faceid_lora_merge_equals_reference_processors():
    refs = reference_lora_processors()
    base = tiny_sd15_unet()
    lora_sd = faceid_lora_sd(base, rank=4, seed=7)
    inputs = _sd15_inputs(base)
    strength = 0.6

    reference = copy.deepcopy(base)
    procs = {}
    modules = dict(reference.named_modules())
    for name in reference.attn_processors:
        attn = modules[name.removesuffix(".processor")]
        hidden = attn.to_q.weight.shape[0]
        cross = None if name.endswith("attn1.processor") else reference.config.cross_attention_dim
        procs[name] = refs.LoRAAttnProcessor(
            hidden_size=hidden, cross_attention_dim=cross, rank=4, lora_scale=strength
        )
    reference.set_attn_processor(procs)
    torch.nn.ModuleList(reference.attn_processors.values()).load_state_dict(
        lora_sd
    )  # the reference's own loading
    expected = _run(reference, inputs)

    ours = copy.deepcopy(base)
    before = _snapshot(ours)
    plain = _run(ours, inputs)
    ckpt_lora: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in lora_sd.items():
        n, rest = key.split(".", 1)
        ckpt_lora.setdefault(int(n), {})[rest] = value
    handle = apply_faceid_lora(ours, ckpt_lora, strength)
    assert len(handle.modules) == 4 * len(ours.attn_processors)
    merged = _run(ours, inputs)
    err = (merged - expected).abs().max().item()
    assert err < 1e-4, f"merged LoRA differs from the reference processors by {err}"
    assert (merged - plain).abs().max().item() > 1e-3  # the LoRA does something

    handle.remove()
    _assert_bit_exact(ours, before)
    assert torch.equal(_run(ours, inputs), plain)
    handle.remove()  # idempotent
    _assert_bit_exact(ours, before)


def test_faceid_lora_from_checkpoint_and_stacked_restore(tmp_path):
    unet = copy.deepcopy(tiny_sdxl_unet())
    before = _snapshot(unet)
    ckpt = load_adapter_checkpoint(
        save_bin(adapter_parts("faceid", unet), str(tmp_path / "ip-adapter-faceid_sdxl.bin"))
    )
    first = apply_faceid_lora(unet, ckpt.lora)  # default strength 0.6
    assert first.strength == 0.6
    n = 1
    name = list(unet.attn_processors)[n].removesuffix(".processor")
    to_k = dict(unet.named_modules())[f"{name}.to_k"].weight
    delta = ckpt.lora[n]["to_k_lora.up.weight"] @ ckpt.lora[n]["to_k_lora.down.weight"]
    torch.testing.assert_close(to_k, before[f"{name}.to_k.weight"] + 0.6 * delta, rtol=0, atol=1e-6)
    second = apply_faceid_lora(unet, ckpt.lora, 1.0)
    second.remove()
    first.remove()
    _assert_bit_exact(unet, before)
    with pytest.raises(ParameterError, match="lora_strength"):
        apply_faceid_lora(unet, ckpt.lora, 9.0)


# Diffusers module -> original LDM name, written from the published SD1.5 / SDXL checkpoint layouts.
SD15_LDM = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k": "input_blocks.2.1.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
    "down_blocks.1.resnets.0.conv1": "input_blocks.4.0.in_layers.2",
    "down_blocks.2.attentions.1.proj_in": "input_blocks.8.1.proj_in",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0": "middle_block.1.transformer_blocks.0.attn2.to_out.0",
    "mid_block.resnets.1.time_emb_proj": "middle_block.2.emb_layers.1",
    "up_blocks.0.resnets.2.conv_shortcut": "output_blocks.2.0.skip_connection",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.2.1.conv",
    "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj": "output_blocks.3.1.transformer_blocks.0.ff.net.0.proj",
    "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_v": "output_blocks.11.1.transformer_blocks.0.attn1.to_v",
    "time_embedding.linear_1": "time_embed.0",
    "conv_out": "out.2",
}
SDXL_LDM = {
    "down_blocks.0.resnets.1.conv2": "input_blocks.2.0.out_layers.3",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": "input_blocks.4.1.transformer_blocks.0.attn2.to_k",
    "down_blocks.2.attentions.1.transformer_blocks.1.attn1.to_q": "input_blocks.8.1.transformer_blocks.1.attn1.to_q",
    "up_blocks.0.attentions.0.proj_out": "output_blocks.0.1.proj_out",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
    "up_blocks.2.resnets.2.conv1": "output_blocks.8.0.in_layers.2",
    "add_embedding.linear_1": "label_emb.0.0",
}


def _kohya_lora(unet, table: dict[str, str], spelling: str, rank=4, alpha=2.0):
    """A kohya state dict for the modules in `table` and the expected deltas (scale alpha / rank)."""
    gen = torch.Generator().manual_seed(21)
    modules = dict(unet.named_modules())
    sd, deltas = {}, {}
    for diffusers_name, ldm_name in table.items():
        weight = modules[diffusers_name].weight
        stem = "lora_unet_" + (ldm_name if spelling == "ldm" else diffusers_name).replace(".", "_")
        if weight.dim() == 4:
            down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=gen) * 0.1
            up = torch.randn(weight.shape[0], rank, 1, 1, generator=gen) * 0.1
        else:
            down = torch.randn(rank, weight.shape[1], generator=gen) * 0.1
            up = torch.randn(weight.shape[0], rank, generator=gen) * 0.1
        sd[f"{stem}.lora_down.weight"], sd[f"{stem}.lora_up.weight"] = down, up
        sd[f"{stem}.alpha"] = torch.tensor(alpha)
        deltas[diffusers_name] = (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    return sd, deltas


@pytest.mark.parametrize(
    "base,table,spelling",
    [("sd15", SD15_LDM, "ldm"), ("sdxl", SDXL_LDM, "ldm"), ("sd15", SD15_LDM, "diffusers")],
)
def test_kohya_file_round_trip(tmp_path, base, table, spelling):
    unet = copy.deepcopy(tiny_sd15_unet() if base == "sd15" else tiny_sdxl_unet())
    before = _snapshot(unet)
    sd, deltas = _kohya_lora(unet, table, spelling)
    sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(4, 8)
    path = str(tmp_path / "style_lora.safetensors")
    save_file(sd, path)
    handle = apply_lora_file(unet, path, strength=0.8)
    assert handle.modules == sorted(table)
    assert handle.skipped_keys == ["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"]
    state = unet.state_dict()
    for name, delta in deltas.items():
        torch.testing.assert_close(
            state[f"{name}.weight"], before[f"{name}.weight"] + 0.8 * delta, rtol=0, atol=1e-6
        )
    untouched = [k for k in before if k.removesuffix(".weight") not in deltas]
    assert all(torch.equal(state[k], before[k]) for k in untouched)
    handle.remove()
    _assert_bit_exact(unet, before)


def test_faceid_separate_lora_file_in_kohya_format_matches_embedded(tmp_path):
    """The published `*_lora.safetensors` carries the embedded FaceID LoRA under kohya names: same merge."""
    unet = copy.deepcopy(tiny_sd15_unet())
    before = _snapshot(unet)
    lora_sd = faceid_lora_sd(unet, seed=5)
    embedded: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in lora_sd.items():
        n, rest = key.split(".", 1)
        embedded.setdefault(int(n), {})[rest] = value
    names = [n.removesuffix(".processor") for n in unet.attn_processors]
    kohya = {}
    for n, parts in embedded.items():
        for proj in ("to_q", "to_k", "to_v", "to_out"):
            module = f"{names[n]}.{proj}" + ("_0" if proj == "to_out" else "")
            stem = "lora_unet_" + module.replace(".", "_")
            kohya[f"{stem}.lora_down.weight"] = parts[f"{proj}_lora.down.weight"]
            kohya[f"{stem}.lora_up.weight"] = parts[f"{proj}_lora.up.weight"]
            kohya[f"{stem}.alpha"] = torch.tensor(4.0)  # alpha == rank: scale 1, like the reference
    path = str(tmp_path / "ip-adapter-faceid_sd15_lora.safetensors")
    save_file(kohya, path)
    from_file = apply_lora_file(unet, path, strength=0.6)
    merged_file = _snapshot(unet)
    from_file.remove()
    _assert_bit_exact(unet, before)
    numbered = str(tmp_path / "numbered.safetensors")
    save_file(lora_sd, numbered)
    from_numbered = apply_lora_file(unet, numbered, strength=0.6)
    from_numbered_state = _snapshot(unet)
    from_numbered.remove()
    embedded_handle = apply_faceid_lora(unet, embedded, 0.6)
    for key, value in _snapshot(unet).items():
        assert torch.equal(value, merged_file[key]) and torch.equal(value, from_numbered_state[key]), key
    embedded_handle.remove()
    _assert_bit_exact(unet, before)


def test_peft_format_matches_diffusers_peft_loader():
    """A diffusers/PEFT LoRA (lora_A / lora_B) merged by us gives the UNet output of diffusers' PEFT path."""
    pytest.importorskip("peft")
    base = tiny_sd15_unet()
    inputs = _sd15_inputs(base)
    gen = torch.Generator().manual_seed(8)
    modules = dict(base.named_modules())
    targets = [n for n in modules if n.endswith(("attn1.to_q", "attn2.to_v", "attn1.to_out.0", "ff.net.2"))]
    sd = {}
    for name in targets:
        out_f, in_f = modules[name].weight.shape
        sd[f"unet.{name}.lora_A.weight"] = torch.randn(4, in_f, generator=gen) * 0.2
        sd[f"unet.{name}.lora_B.weight"] = torch.randn(out_f, 4, generator=gen) * 0.2

    theirs = copy.deepcopy(base)
    theirs.load_lora_adapter(dict(sd), prefix="unet", adapter_name="t")
    expected = _run(theirs, inputs)

    assert (expected - _run(base, inputs)).abs().max().item() > 1e-3  # diffusers did apply it

    ours = copy.deepcopy(base)
    handle = apply_lora_state_dict(ours, dict(sd), 1.0)
    assert sorted(handle.modules) == sorted(targets)
    err = (_run(ours, inputs) - expected).abs().max().item()
    assert err < 1e-4, f"differs from diffusers' PEFT LoRA by {err}"


def test_bad_lora_files(tmp_path):
    unet = copy.deepcopy(tiny_sd15_unet())
    before = _snapshot(unet)
    save_file({"lora_unet_nowhere_to_q.lora_down.weight": torch.zeros(4, 8)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(ModelFormatError, match="match no UNet layer, e.g. lora_unet_nowhere_to_q"):
        apply_lora_file(unet, tmp_path / "a.safetensors", 1.0)
    stem = "lora_unet_input_blocks_1_1_proj_in"
    save_file({f"{stem}.lora_down.weight": torch.zeros(4, 32)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ModelFormatError, match="lacks its up weight"):
        apply_lora_file(unet, tmp_path / "b.safetensors", 1.0)
    save_file(
        {f"{stem}.lora_down.weight": torch.zeros(4, 7), f"{stem}.lora_up.weight": torch.zeros(32, 4)},
        str(tmp_path / "c.safetensors"),
    )
    with pytest.raises(ModelFormatError, match="does not fit weight"):
        apply_lora_file(unet, tmp_path / "c.safetensors", 1.0)
    save_file({"lora_te_x.lora_down.weight": torch.zeros(4, 7)}, str(tmp_path / "d.safetensors"))
    with pytest.raises(ModelFormatError, match="no UNet LoRA weights"):
        apply_lora_file(unet, tmp_path / "d.safetensors", 1.0)
    (tmp_path / "e.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelFormatError, match="unreadable LoRA file"):
        apply_lora_file(unet, tmp_path / "e.safetensors", 1.0)
    _assert_bit_exact(unet, before)


def test_kit_kohya_faceid_lora_reads_back_like_embedded():
    """Cross-check with the kit's independent LDM naming (models.kit.single_files.faceid_lora_to_kohya)."""
    from idforge.models.kit import single_files

    unet = copy.deepcopy(tiny_sdxl_unet())
    before = _snapshot(unet)
    lora_sd = faceid_lora_sd(unet, seed=9)
    kohya = single_files.faceid_lora_to_kohya(lora_sd, dict(unet.config), list(unet.state_dict()))
    handle = apply_lora_state_dict(unet, kohya, 0.6)
    from_kohya = _snapshot(unet)
    handle.remove()
    embedded: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in lora_sd.items():
        n, rest = key.split(".", 1)
        embedded.setdefault(int(n), {})[rest] = value
    handle = apply_faceid_lora(unet, embedded, 0.6)
    for key, value in _snapshot(unet).items():
        assert torch.equal(value, from_kohya[key]), key
    handle.remove()
    _assert_bit_exact(unet, before)
