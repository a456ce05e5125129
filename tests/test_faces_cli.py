"""`idforge faces`: JSON and table output, drawings, pack names through the model store, one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from faces_util import expected_kps, kit_packs, square_image  # noqa: F401
from idforge.cli import main


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "two.png"
    Image.fromarray(square_image(640, 480, [(400, 40, 480, 120, 255), (40, 200, 200, 360, 215)])).save(path)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_lists_every_face_and_marks_the_pick(capsys, kit_packs, two_faces):  # noqa: F811
    code, out, err = _run(capsys, "faces", two_faces, "--face-models", kit_packs["buffalo_l"], "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [row["index"] for row in rows] == [0, 1]
    assert {"bbox", "score", "kps", "embedding_norm", "det_size", "picked"} <= set(rows[0])
    assert rows[0]["bbox"] == [40.0, 200.0, 200.0, 360.0] and rows[0]["picked"] is True  # largest
    np.testing.assert_allclose(rows[1]["kps"], expected_kps([400, 40, 480, 120]), atol=1e-3)
    assert rows[1]["det_size"] == 640 and rows[1]["embedding_norm"] > 0
    code, out, _ = _run(
        capsys, "faces", two_faces, "--face-models", kit_packs["buffalo_l"], "--json", "--pick", "score"
    )
    assert [row["picked"] for row in json.loads(out)] == [False, True]


def test_table_and_drawings(capsys, tmp_path, kit_packs, two_faces):  # noqa: F811
    draw, kps_image = tmp_path / "boxes.png", tmp_path / "kps.png"
    code, out, err = _run(
        capsys, "faces", two_faces, "--face-models", kit_packs["antelopev2"], "--pick", "1",
        "--draw", draw, "--kps-image", kps_image,
    )  # fmt: skip
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[1].startswith("*1") and lines[0].startswith(" 0")
    assert "box (400.0,40.0)-(480.0,120.0)" in lines[1]
    assert Image.open(draw).size == (640, 480)
    kps = np.asarray(Image.open(kps_image))
    assert kps.shape == (480, 640, 3)
    nose = expected_kps([400, 40, 480, 120])[2].astype(int)
    assert kps[nose[1], nose[0]].tolist() == [0, 0, 255]


def test_pack_name_resolved_through_the_model_store(capsys, tmp_path, kit_packs, two_faces):  # noqa: F811
    models = tmp_path / "models"
    shutil.copytree(kit_packs["antelopev2"], models / "insightface" / "models" / "antelopev2")
    code, out, err = _run(
        capsys, "faces", two_faces, "--face-models", "antelopev2", "--models", models, "--json"
    )
    assert code == 0, err
    assert len(json.loads(out)) == 2


def _one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("idforge: error: ")
    for word in words:
        assert word in lines[0]


def test_errors_are_one_line(capsys, tmp_path, kit_packs, two_faces):  # noqa: F811
    code, _, err = _run(capsys, "faces", tmp_path / "missing.png", "--face-models", kit_packs["buffalo_l"])
    _one_line_error(code, err, "missing.png", "file not found")

    nested = tmp_path / "buffalo_l"
    shutil.copytree(kit_packs["buffalo_l"], nested / "buffalo_l")
    code, _, err = _run(capsys, "faces", two_faces, "--face-models", nested)
    _one_line_error(code, err, "nested folder")

    code, _, err = _run(
        capsys, "faces", two_faces, "--face-models", kit_packs["buffalo_l"], "--pick", "biggest"
    )
    _one_line_error(code, err, "'biggest'")

    code, _, err = _run(
        capsys, "faces", two_faces, "--face-models", kit_packs["buffalo_l"], "--det-size", "600"
    )
    _one_line_error(code, err, "det_size", "multiple of 32")

    dark = tmp_path / "dark.png"
    Image.new("RGB", (64, 64)).save(dark)
    code, out, err = _run(
        capsys, "faces", dark, "--face-models", kit_packs["buffalo_l"], "--kps-image", tmp_path / "k.png"
    )
    _one_line_error(code, err, "no face found")
    code, out, err = _run(capsys, "faces", dark, "--face-models", kit_packs["buffalo_l"], "--json")
    assert code == 0 and json.loads(out) == []
