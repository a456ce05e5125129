"""Adapter checkpoint reading, type detection for every published variant, and UNet compatibility checks."""

from __future__ import annotations

import pytest
import torch

from idforge.errors import ModelFormatError
from idforge.identity.checkpoint import check_compatible, family_name, load_adapter_checkpoint
from idforge.identity.projection import FaceIDMLPProjection, FaceIDPlusProjection, Resampler, build_projection
from projection_fixtures import (
    adapter_parts,
    attention_modules,
    save_bin,
    save_safetensors,
    tiny_sd15_unet,
    tiny_sdxl_unet,
)

# (kind, unet, file name as published, expected tokens, raw embedding, needs CLIP, projection class)
VARIANTS = [
    ("instantid", "sdxl", "ip-adapter.bin", 16, True, False, Resampler),
    (
        "faceid-portrait-unnorm",
        "sdxl",
        "ip-adapter-faceid-portrait_sdxl_unnorm.bin",
        16,
        True,
        False,
        Resampler,
    ),
    ("faceid", "sd15", "ip-adapter-faceid_sd15.bin", 4, False, False, FaceIDMLPProjection),
    ("faceid", "sdxl", "ip-adapter-faceid_sdxl.bin", 4, False, False, FaceIDMLPProjection),
    ("faceid-plus", "sd15", "ip-adapter-faceid-plus_sd15.bin", 4, False, True, FaceIDPlusProjection),
    ("faceid-plusv2", "sd15", "ip-adapter-faceid-plusv2_sd15.bin", 4, False, True, FaceIDPlusProjection),
    ("faceid-plusv2", "sdxl", "ip-adapter-faceid-plusv2_sdxl.bin", 4, False, True, FaceIDPlusProjection),
    (
        "faceid-portrait",
        "sd15",
        "ip-adapter-faceid-portrait-v11_sd15.bin",
        16,
        False,
        False,
        FaceIDMLPProjection,
    ),
    ("faceid-portrait", "sdxl", "ip-adapter-faceid-portrait_sdxl.bin", 16, False, False, FaceIDMLPProjection),
]

UNETS = {"sdxl": tiny_sdxl_unet, "sd15": tiny_sd15_unet}


@pytest.mark.parametrize("container", ["bin", "safetensors"])
@pytest.mark.parametrize("kind,base,filename,tokens,raw,clip,proj_cls", VARIANTS)
def test_type_detection(tmp_path, container, kind, base, filename, tokens, raw, clip, proj_cls):
    unet = UNETS[base]()
    parts = adapter_parts(kind, unet)
    name = filename.replace(".bin", f".{container}")
    save = save_bin if container == "bin" else save_safetensors
    ckpt = load_adapter_checkpoint(save(parts, str(tmp_path / name)))
    assert ckpt.kind == kind
    assert ckpt.cross_dim == unet.config.cross_attention_dim
    assert ckpt.num_tokens == tokens
    assert (ckpt.uses_raw_embedding, ckpt.needs_clip) == (raw, clip)
    cross = [n for n, (name_, _) in enumerate(attention_modules(unet)) if name_.endswith("attn2.processor")]
    assert sorted(ckpt.ip_layers) == cross
    n = cross[0]
    assert torch.equal(ckpt.ip_layers[n][0], parts["ip_adapter"][f"{n}.to_k_ip.weight"])
    assert torch.equal(ckpt.ip_layers[n][1], parts["ip_adapter"][f"{n}.to_v_ip.weight"])
    has_lora = kind in ("faceid", "faceid-plus", "faceid-plusv2")
    assert bool(ckpt.lora) == has_lora
    if has_lora:
        assert len(ckpt.lora) == len(unet.attn_processors)
        assert set(ckpt.lora[0]) == {
            f"{p}_lora.{d}.weight" for p in ("to_q", "to_k", "to_v", "to_out") for d in ("down", "up")
        }
    check_compatible(ckpt, unet, base_name=base)
    proj = build_projection(ckpt)
    assert type(proj) is proj_cls
    if kind == "faceid-plusv2":
        assert proj.shortcut
    if kind == "faceid-plus":
        assert not proj.shortcut
    with torch.no_grad():
        if clip:
            out = proj(torch.randn(1, 512), torch.randn(1, 257, ckpt.clip_width))
        else:
            out = proj(torch.randn(1, 512))
    assert out.shape == (1, tokens, ckpt.cross_dim)


def test_kind_hint_and_renamed_unnorm(tmp_path):
    parts = adapter_parts("faceid-portrait-unnorm", tiny_sdxl_unet())
    path = save_bin(parts, str(tmp_path / "renamed.bin"))
    assert load_adapter_checkpoint(path).kind == "instantid"  # documented: the name decides
    assert load_adapter_checkpoint(path, kind_hint="faceid-portrait-unnorm").kind == "faceid-portrait-unnorm"
    with pytest.raises(ModelFormatError, match="kind_hint"):
        load_adapter_checkpoint(path, kind_hint="faceid")


def test_expected_kind_mismatch_names_both(tmp_path):
    sdxl = tiny_sdxl_unet()
    faceid = save_bin(adapter_parts("faceid", sdxl), str(tmp_path / "ip-adapter-faceid_sdxl.bin"))
    instantid = save_bin(adapter_parts("instantid", sdxl), str(tmp_path / "ip-adapter.bin"))
    with pytest.raises(ModelFormatError, match=r"needs an InstantID checkpoint.*FaceID 'faceid'"):
        load_adapter_checkpoint(faceid, expected_kind="instantid")
    with pytest.raises(ModelFormatError, match=r"needs an IP-Adapter FaceID checkpoint.*InstantID"):
        load_adapter_checkpoint(instantid, expected_kind="faceid")
    assert load_adapter_checkpoint(faceid, expected_kind="faceid").kind == "faceid"
    assert load_adapter_checkpoint(instantid, expected_kind="instantid").kind == "instantid"


def test_wrong_family_refused_with_both_families(tmp_path):
    sd15, sdxl = tiny_sd15_unet(), tiny_sdxl_unet()
    ckpt = load_adapter_checkpoint(
        save_bin(adapter_parts("faceid", sd15), str(tmp_path / "ip-adapter-faceid_sd15.bin"))
    )
    with pytest.raises(ModelFormatError) as info:
        check_compatible(ckpt, sdxl, base_name="tiny-sdxl")
    message = str(info.value)
    assert "ip-adapter-faceid_sd15.bin" in message and "tiny-sdxl" in message
    assert "cross width 64, 16 layers" in message and "cross width 128, 17 layers" in message
    assert "\n" not in message
    ckpt_xl = load_adapter_checkpoint(
        save_bin(adapter_parts("instantid", sdxl), str(tmp_path / "ip-adapter.bin"))
    )
    with pytest.raises(ModelFormatError, match="does not fit base 'tiny-sd15'"):
        check_compatible(ckpt_xl, sd15, base_name="tiny-sd15")


def test_same_width_wrong_layers_refused(tmp_path):
    sdxl = tiny_sdxl_unet()
    parts = adapter_parts("instantid", sdxl)
    del parts["ip_adapter"]["1.to_k_ip.weight"], parts["ip_adapter"]["1.to_v_ip.weight"]
    ckpt = load_adapter_checkpoint(save_bin(parts, str(tmp_path / "ip-adapter.bin")))
    with pytest.raises(ModelFormatError, match="16 IP layers, base has 17"):
        check_compatible(ckpt, sdxl, base_name="tiny-sdxl")
    parts = adapter_parts("instantid", sdxl)
    parts["ip_adapter"]["3.to_k_ip.weight"] = torch.zeros(8, 128)
    parts["ip_adapter"]["3.to_v_ip.weight"] = torch.zeros(8, 128)
    ckpt = load_adapter_checkpoint(save_bin(parts, str(tmp_path / "ip-adapter.bin")))
    with pytest.raises(ModelFormatError, match="layer 3 to_k_ip"):
        check_compatible(ckpt, sdxl, base_name="tiny-sdxl")


def test_family_names():
    assert family_name(768, 16) == "SD1.5"
    assert family_name(2048, 70) == "SDXL"
    assert family_name(128, 17) == "cross width 128, 17 layers"


def test_unreadable_and_malformed_files(tmp_path):
    sdxl = tiny_sdxl_unet()
    good = save_bin(adapter_parts("instantid", sdxl), str(tmp_path / "ip-adapter.bin"))
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="truncated.bin: unreadable torch checkpoint"):
        load_adapter_checkpoint(truncated)
    good_st = save_safetensors(adapter_parts("instantid", sdxl), str(tmp_path / "ip-adapter.safetensors"))
    st_trunc = tmp_path / "cut.safetensors"
    st_trunc.write_bytes(open(good_st, "rb").read()[:1000])
    with pytest.raises(ModelFormatError, match="unreadable safetensors"):
        load_adapter_checkpoint(st_trunc)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelFormatError, match="unreadable"):
        load_adapter_checkpoint(garbage)
    with pytest.raises(ModelFormatError, match="not a file"):
        load_adapter_checkpoint(tmp_path / "absent.bin")


def test_missing_and_unknown_parts(tmp_path):
    sdxl = tiny_sdxl_unet()
    parts = adapter_parts("faceid", sdxl)
    only_proj = save_bin({"image_proj": parts["image_proj"]}, str(tmp_path / "a.bin"))
    with pytest.raises(ModelFormatError, match="missing ip_adapter .*image_proj"):
        load_adapter_checkpoint(only_proj)
    unknown_ip = save_bin(
        {"image_proj": parts["image_proj"], "ip_adapter": {"1.to_k.weight": torch.zeros(2, 2)}},
        str(tmp_path / "b.bin"),
    )
    with pytest.raises(ModelFormatError, match=r"unknown ip_adapter keys, e.g. 1.to_k.weight"):
        load_adapter_checkpoint(unknown_ip)
    weird_proj = save_bin(
        {"image_proj": {"foo.weight": torch.zeros(2)}, "ip_adapter": parts["ip_adapter"]},
        str(tmp_path / "c.bin"),
    )
    with pytest.raises(ModelFormatError, match=r"unknown image_proj layout \(keys found: foo.weight\)"):
        load_adapter_checkpoint(weird_proj)
    instantid = adapter_parts("instantid", sdxl)
    clip_resampler = {
        "image_proj": instantid["image_proj"] | {"proj_in.weight": torch.zeros(128, 1280)},
        "ip_adapter": instantid["ip_adapter"],
    }
    with pytest.raises(ModelFormatError, match="image \\(CLIP\\) IP-Adapter"):
        load_adapter_checkpoint(save_bin(clip_resampler, str(tmp_path / "d.bin")))
    from safetensors.torch import save_file

    save_file({"model.weight": torch.zeros(2)}, str(tmp_path / "e.safetensors"))
    with pytest.raises(
        ModelFormatError, match="no 'image_proj.' / 'ip_adapter.' keys; found e.g. model.weight"
    ):
        load_adapter_checkpoint(tmp_path / "e.safetensors")
    torch.save([1, 2, 3], tmp_path / "f.bin")
    with pytest.raises(ModelFormatError, match="found list"):
        load_adapter_checkpoint(tmp_path / "f.bin")
