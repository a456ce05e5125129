"""Reference check: face size, sharpness (variance of Laplacian on the aligned crop), yaw from keypoints, several
faces; advice in generation warnings and in `idforge faces --check`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from faces_util import kit_packs, square_image, textured  # noqa: F401
from idforge.cli import main
from idforge.faces.analysis import FaceAnalyzer
from idforge.faces.quality import MIN_FACE_PX, check_reference, estimate_yaw, laplacian_sharpness


def _frontal_kps(cx=100.0, cy=100.0, eye=40.0) -> np.ndarray:
    return np.array(
        [[cx - eye / 2, cy], [cx + eye / 2, cy], [cx, cy + 20], [cx - 15, cy + 40], [cx + 15, cy + 40]]
    )


def test_yaw_is_zero_for_frontal_keypoints_and_follows_the_nose():
    assert estimate_yaw(_frontal_kps()) == pytest.approx(0.0, abs=1e-9)
    turned = _frontal_kps()
    turned[2, 0] += 0.6 * 40 * math.tan(math.radians(35))  # nose moved as a 35 degree turn moves it
    assert estimate_yaw(turned) == pytest.approx(35.0, abs=1e-6)
    mirrored = _frontal_kps()
    mirrored[2, 0] -= 0.6 * 40 * math.tan(math.radians(20))
    assert estimate_yaw(mirrored) == pytest.approx(-20.0, abs=1e-6)


def test_yaw_ignores_roll():
    kps = _frontal_kps()
    kps[2, 0] += 0.6 * 40 * math.tan(math.radians(25))
    angle = math.radians(30)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rolled = (kps - 100) @ rotation.T + 100
    assert estimate_yaw(rolled) == pytest.approx(25.0, abs=1e-6)


def test_sharpness_drops_when_the_face_is_blurred():
    image = square_image(300, 300, [])
    image[80:220, 80:220] = textured(140, "checks")
    kps = _frontal_kps(150, 140, 50)
    sharp = laplacian_sharpness(image[:, :, ::-1].copy(), kps)
    blurred = laplacian_sharpness(cv2.GaussianBlur(image, (0, 0), 4)[:, :, ::-1].copy(), kps)
    assert sharp > 4 * blurred


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    good = square_image(448, 448, [])
    good[120:270, 130:280] = textured(150, "checks")
    small = square_image(448, 448, [])
    small[200:260, 200:260] = textured(60, "checks")
    two = good.copy()
    two[20:100, 20:100] = textured(80, "stripes")
    blurred = cv2.GaussianBlur(good, (0, 0), 6)
    paths = {}
    for name, array in {"good": good, "small": small, "two": two, "blurred": blurred}.items():
        paths[name] = folder / f"{name}.png"
        cv2.imwrite(str(paths[name]), array[:, :, ::-1])
    paths["dark"] = folder / "dark.png"
    cv2.imwrite(str(paths["dark"]), square_image(200, 200, []))
    return paths


def test_check_measures_and_advises(kit_packs, photos):  # noqa: F811
    analyzer = FaceAnalyzer(kit_packs["antelopev2"])
    good = check_reference(analyzer, photos["good"], name="good")
    assert good.faces_found == 1 and good.face_px == pytest.approx(150, abs=1)
    assert good.advice == [] and good.ok
    small = check_reference(analyzer, photos["small"], name="small")
    assert small.face_px < MIN_FACE_PX and any("under 100 px" in a for a in small.advice)
    two = check_reference(analyzer, photos["two"], name="two")
    assert two.faces_found == 2 and any("2 faces found; the largest is used" in a for a in two.advice)
    blurred = check_reference(analyzer, photos["blurred"], name="blurred")
    assert blurred.sharpness < good.sharpness / 4
    dark = check_reference(analyzer, photos["dark"], name="dark")
    assert dark.faces_found == 0 and "no face found" in dark.advice[0]


def test_faces_check_cli_text_and_json(tiny_kit, photos, capsys):
    models = ["--models", str(tiny_kit)]
    assert main(["faces", "--check", str(photos["good"]), str(photos["small"]), *models]) == 0
    text = capsys.readouterr().out
    assert "good.png" in text and "ok" in text and "under 100 px" in text
    assert main(["faces", "--check", str(photos["two"]), "--json", *models]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["faces_found"] == 2 and rows[0]["ok"] is False


def test_generation_warns_about_a_weak_reference(tiny_kit, photos):
    from idforge.engine.params import GenerationParams
    from idforge.engine.session import Engine, ModelChoice
    from idforge.methods.instantid.core import InstantIDRequest
    from idforge.methods.instantid.generate import generate_instantid

    engine = Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")
    gen = GenerationParams(prompt="p", steps=1, seed=1, width=64, height=64)
    result = generate_instantid(engine, InstantIDRequest(faces=[str(photos["small"])], generation=gen))
    assert any(w.startswith(f"{photos['small']}: face is") and "under 100 px" in w for w in result.warnings)


def test_faces_compare_scores_against_the_reference(kit_packs, tiny_kit, photos, tmp_path, capsys):  # noqa: F811
    from idforge.faces.scoring import reference_embedding, score_image

    folder = tmp_path / "outputs"
    folder.mkdir()
    for name in ("good", "two", "dark"):
        (folder / f"{name}.png").write_bytes(photos[name].read_bytes())
    models = ["--models", str(tiny_kit)]
    assert main(["faces", "compare", str(photos["good"]), str(folder), "--json", *models]) == 0
    payload = json.loads(capsys.readouterr().out)
    analyzer = FaceAnalyzer(kit_packs["antelopev2"])  # the same ONNX files as the kit's pack
    reference = reference_embedding(analyzer, [photos["good"]])
    by_name = {Path(row["image"]).name: row for row in payload["images"]}
    assert by_name["good.png"]["score"] == pytest.approx(1.0, abs=1e-5)  # the reference against itself
    expected = score_image(analyzer, photos["two"], reference).score
    assert by_name["two.png"]["score"] == pytest.approx(expected, abs=1e-5)
    assert by_name["dark.png"]["status"] == "no_face" and by_name["dark.png"]["score"] is None
    assert payload["pack"] == "antelopev2" and payload["face_choice"] == "largest"
    assert main(["faces", "compare", str(photos["good"]), str(photos["dark"]), *models]) == 0
    text = capsys.readouterr().out
    assert "dark.png  none" in text


def test_faces_compare_bad_input_is_one_line_error(tiny_kit, photos, capsys):
    models = ["--models", str(tiny_kit)]
    assert main(["faces", "compare", str(photos["good"]), *models]) == 2
    assert "compare: give a reference and at least one image" in capsys.readouterr().err
    assert main(["faces", "compare", str(photos["dark"]), str(photos["good"]), *models]) == 2
    err = capsys.readouterr().err
    assert "dark.png: no face found" in err and len(err.strip().splitlines()) == 1
