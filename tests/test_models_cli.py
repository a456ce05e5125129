"""`idforge models list | where | fetch`: outputs and one-line errors, offline, against a ComfyUI-style folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from idforge.cli import main


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IDFORGE_MODELS", raising=False)


@pytest.fixture
def models(tmp_path) -> Path:
    root = tmp_path / "ComfyUI" / "models"
    for rel in (
        "ipadapter/ip-adapter-faceid_sdxl.bin",
        "loras/ip-adapter-faceid_sdxl_lora.safetensors",
        "insightface/models/antelopev2/scrfd_10g_bnkps.onnx",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return root


def test_list_shows_found_and_missing(models, capsys):
    assert main(["models", "list", "--models", str(models.parent)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert str(models / "ipadapter" / "ip-adapter-faceid_sdxl.bin") in lines["faceid-sdxl"]
    assert "(comfyui)" in lines["faceid-sdxl"]
    assert "missing" in lines["sdxl-base"] and "missing" in lines["buffalo_l"]
    assert str(models / "insightface" / "models" / "antelopev2") in lines["antelopev2"]


def test_where_prints_path(models, capsys):
    assert main(["models", "where", "faceid-sdxl-lora", "--models", str(models)]) == 0
    assert capsys.readouterr().out.strip() == str(
        models / "loras" / "ip-adapter-faceid_sdxl_lora.safetensors"
    )
    assert main(["models", "where", "face_pack", "--models", str(models)]) == 0
    assert capsys.readouterr().out.strip() == str(models / "insightface" / "models" / "antelopev2")


def test_where_missing_is_one_line_error(models, capsys):
    assert main(["models", "where", "sdxl-base", "--models", str(models)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("idforge: error: model 'sdxl-base' not found")
    assert str(models / "checkpoints") in err and "idforge models fetch sdxl-base" in err


def test_fetch_offline_and_unknown(models, capsys):
    assert main(["models", "fetch", "faceid-sdxl"]) == 2
    err = capsys.readouterr().err
    assert "h94/IP-Adapter-FaceID" in err and "offline" in err
    assert main(["models", "fetch", "nonsense"]) == 2
    assert "known presets" in capsys.readouterr().err
    assert main(["models", "fetch", "antelopev2"]) == 2
    assert "non-commercial" in capsys.readouterr().err
