"""`idforge faceid`: batch into a folder with recipes, a folder of faces, JSON, face crops, one-line errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from idforge.cli import main
from idforge.engine.result import read_recipe
from instantid_fixtures import square_face


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-faces")
    square_face(folder / "a.png", stripes=0)
    square_face(folder / "b.png", stripes=4)
    return folder


def args(kit, *extra: str) -> list[str]:
    common = ["--prompt", "a photo", "--models", str(kit), "--steps", "2", "--width", "64", "--height", "64"]
    return ["faceid", *common, "--seed", "4", "--quiet", *extra]


def test_batch_from_a_folder_writes_one_image_per_face_with_recipes(tiny_kit, face_dir, tmp_path, capsys):
    out = tmp_path / "out"
    crops = tmp_path / "crops"
    code = main(
        args(
            tiny_kit,
            "--face",
            str(face_dir),
            "--batch",
            "--adapter",
            "ip-adapter-faceid-plusv2_sd15.bin",
            "--weight",
            "0.9",
            "--weight-faceidv2",
            "1.5",
            "--weight-type",
            "ease in-out",
            "--combine-embeds",
            "average",
            "--embeds-scaling",
            "K+V",
            "--start-at",
            "0.1",
            "--end-at",
            "0.9",
            "--lora-strength",
            "0.5",
            "--negative-image",
            str(face_dir / "b.png"),
            "--attn-mask",
            str(face_dir / "a.png"),
            "--face-images",
            str(crops),
            "-o",
            str(out),
        )
    )
    assert code == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["faceid_000.png", "faceid_001.png"]
    recipes = [read_recipe(f) for f in files]
    assert [r["seed"] for r in recipes] == [4, 5]
    params = recipes[0]["params"]
    assert params["weight_type"] == "ease in-out" and params["embeds_scaling"] == "K+V"
    assert params["weight_faceidv2"] == 1.5 and params["batch"] is True
    assert recipes[0]["models"]["lora"] == {"source": "embedded", "strength": 0.5}
    assert recipes[0]["inputs"]["batch_references"] == [0, 1]
    assert sorted(p.name for p in crops.iterdir()) == ["face_000.png", "face_001.png"]
    assert Image.open(crops / "face_000.png").size == (224, 224)
    printed = capsys.readouterr().out
    assert "faceid_000.png  seed=4" in printed


def test_json_output_and_separate_lora_file(tiny_kit, face_dir, tmp_path, capsys):
    lora = tiny_kit / "loras/ip-adapter-faceid_sdxl_lora.safetensors"
    code = main(
        args(
            tiny_kit,
            "--face",
            str(face_dir / "a.png"),
            "--adapter",
            "ip-adapter-faceid_sdxl.bin",
            "--lora",
            str(lora),
            "--json",
            "-o",
            str(tmp_path / "one.png"),
        )
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["method"] == "faceid" and payload["adapter_kind"] == "faceid"
    assert payload["models"]["lora"]["source"] == str(lora)
    assert payload["files"] == [str(tmp_path / "one.png")] and payload["seeds"] == [4]


def test_with_instantid_in_one_generation(tiny_kit, face_dir, tmp_path, capsys):
    code = main(
        args(
            tiny_kit,
            "--face",
            str(face_dir / "a.png"),
            "--with-instantid",
            "--instantid-ip-weight",
            "0.5",
            "--json",
            "-o",
            str(tmp_path / "both.png"),
        )
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["method"] == "instantid+faceid"
    assert payload["instantid"]["params"]["ip_weight"] == 0.5
    assert payload["adapter_kind"] == "faceid-plusv2"  # the default adapter for SDXL
    assert "antelopev2" in payload["instantid"]["models"]["face_models"]["source"]
    assert "buffalo_l" in payload["models"]["face_models"]["source"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weight", "3.5"], "--weight: 3.5 is out of range"),
        (["--weight-type", "heavy"], "--weight-type: 'heavy' is not one of"),
        (["--embeds-scaling", "K only"], "--embeds-scaling: 'K only' is not one of"),
        (["--adapter", "ip-adapter-faceid_sd15.bin", "--base", "tiny-sdxl"], "does not fit base"),
        (["--face", "MISSING.png"], "MISSING.png: file not found"),
    ],
)
def test_errors_are_one_line(tiny_kit, face_dir, tmp_path, capsys, extra, message):
    code = main(args(tiny_kit, "--face", str(face_dir / "a.png"), *extra, "-o", str(tmp_path / "x.png")))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("idforge: error:") and message in err[0]
    assert not (tmp_path / "x.png").exists()


def test_best_of_with_batch_is_refused_before_an_engine_is_made(
    tiny_kit, face_dir, tmp_path, capsys, monkeypatch
):
    """FaceID's check refuses it on the command line as over HTTP: the same message, before any model loads."""
    import idforge.commands.method as method_command

    monkeypatch.setattr(method_command, "make_engine", lambda *a, **k: pytest.fail("an engine was made"))
    faces = ["--face", str(face_dir), "--batch", "--best-of", "2"]
    code = main(args(tiny_kit, *faces, "-o", str(tmp_path / "out")))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "idforge: error: best_of: best-of-N cannot be combined with batch mode (one output per face)"
    ]
    assert not (tmp_path / "out").exists()


def test_batch_face_without_face_fails_or_is_skipped(tiny_kit, face_dir, tmp_path, capsys):
    dark = tmp_path / "dark.png"
    Image.new("RGB", (80, 80), (5, 5, 5)).save(dark)
    faces = ["--face", str(face_dir / "a.png"), "--face", str(dark), "--batch"]
    assert main(args(tiny_kit, *faces, "-o", str(tmp_path / "fail"))) == 2
    assert "dark.png: no face found" in capsys.readouterr().err
    assert main(args(tiny_kit, *faces, "--skip-missing", "-o", str(tmp_path / "ok"))) == 0
    assert "dark.png: no face found; left out" in capsys.readouterr().err
    assert len(list((tmp_path / "ok").glob("*.png"))) == 1


def test_without_adapter_the_base_familys_default_is_used(tiny_kit, face_dir, tmp_path, capsys):
    """No --adapter: the default FaceID adapter of the base's family (SD1.5 here), not the HTTP body's SDXL name."""
    out = tmp_path / "sd15.png"
    argv = args(tiny_kit, "--face", str(face_dir / "a.png"), "--base", "tiny-sd15.safetensors", "--no-score")
    assert main([*argv, "--json", "-o", str(out)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert "sd15" in payload["models"]["ip_adapter"]["source"] and payload["adapter_kind"] == "faceid-plusv2"
