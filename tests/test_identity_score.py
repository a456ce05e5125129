"""Identity score: equal to a cosine computed independently by insightface 2.1 on the same pack, for outputs that
hold a face (a decoder stubbed to return a known face image), and the explicit no-face state for kit noise.

Tolerance: |ours - insightface| <= 2e-4 (our embeddings match insightface's to cosine >= 0.9999, see
test_faces_parity.py; a cosine of two such vectors moves by at most a few 1e-4).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

import idforge.engine.sampling as sampling
from faces_util import kit_packs, square_image, textured  # noqa: F401
from idforge.engine.params import GenerationParams
from idforge.engine.result import read_recipe
from idforge.engine.session import Engine, ModelChoice
from idforge.faces.analysis import FaceAnalyzer
from idforge.faces.scoring import reference_embedding, score_image
from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
from idforge.methods.faceid.generate import generate_faceid
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid

insightface = pytest.importorskip("insightface")
from insightface.app import FaceAnalysis  # noqa: E402

TOLERANCE = 2e-4


def _face(kind: str, box=(150, 120, 300, 270), size=(448, 448)) -> np.ndarray:
    x0, y0, x1, y1 = box
    image = square_image(size[0], size[1], [])
    image[y0:y1, x0:x1] = textured(x1 - x0, kind)
    return image


@pytest.fixture(scope="module")
def images():
    two = _face("stripes", box=(40, 60, 140, 160))
    two[200:330, 220:350] = textured(130, "checks")  # a second, larger face
    return {
        "ref_a": _face("stripes"),
        "ref_b": _face("checks", box=(100, 80, 260, 240)),
        "output": _face("plain", box=(120, 100, 280, 260)),
        "two": two,
        "dark": square_image(448, 448, []),
    }


def _insightface_cosine(pack_dir, references, output) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        app = FaceAnalysis(name=str(pack_dir), providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=-1, det_size=(640, 640))
        refs = [max(app.get(r[:, :, ::-1].copy()), key=lambda f: _area(f.bbox)) for r in references]
        faces = app.get(np.ascontiguousarray(np.asarray(output)[:, :, ::-1]))
    mean = np.mean([f.normed_embedding for f in refs], axis=0)
    face = max(faces, key=lambda f: _area(f.bbox))
    return float(
        face.normed_embedding @ mean / (np.linalg.norm(face.normed_embedding) * np.linalg.norm(mean))
    )


def _area(box) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


@pytest.mark.parametrize("pack", ["antelopev2", "buffalo_l"])
def test_score_equals_insightface_cosine(kit_packs, images, pack):  # noqa: F811
    analyzer = FaceAnalyzer(kit_packs[pack])
    reference = reference_embedding(analyzer, [images["ref_a"], images["ref_b"]])
    for name in ("output", "two", "ref_a"):
        ours = score_image(analyzer, images[name], reference)
        theirs = _insightface_cosine(kit_packs[pack], [images["ref_a"], images["ref_b"]], images[name])
        assert ours.status == "scored"
        assert abs(ours.score - theirs) <= TOLERANCE, name
    # the scores differ between images: the check compares real numbers, not a constant
    scores = {n: score_image(analyzer, images[n], reference).score for n in ("output", "two", "ref_a")}
    assert len({round(v, 3) for v in scores.values()}) == 3


def test_largest_face_is_scored_and_counted(kit_packs, images):  # noqa: F811
    analyzer = FaceAnalyzer(kit_packs["antelopev2"])
    reference = reference_embedding(analyzer, [images["ref_a"]])
    result = score_image(analyzer, images["two"], reference)
    assert result.faces_found == 2 and result.face_index == 1
    assert result.box == pytest.approx((220, 200, 350, 330), abs=1.0)


def test_no_face_is_explicit_never_zero(kit_packs, images):  # noqa: F811
    analyzer = FaceAnalyzer(kit_packs["antelopev2"])
    reference = reference_embedding(analyzer, [images["ref_a"]])
    result = score_image(analyzer, images["dark"], reference).to_json()
    assert result["status"] == "no_face" and result["score"] is None
    assert result["sizes_tried"] == [640, 576, 512, 448, 384, 320, 256, 192]
    assert "no face" in result["reason"]


# ---- through the engine: every method scores its outputs --------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture
def decoded_as(monkeypatch):
    """Make the VAE 'decode' to given images: the output then holds a known face."""

    def install(pictures):
        def fake_decode(base, latents):
            return [Image.fromarray(pictures[i % len(pictures)]) for i in range(latents.shape[0])]

        monkeypatch.setattr(sampling, "decode_latents", fake_decode)

    return install


def _gen(**extra) -> GenerationParams:
    return GenerationParams(**({"prompt": "p", "steps": 1, "seed": 3, "width": 64, "height": 64} | extra))


def test_instantid_scores_its_output_like_insightface(engine, images, decoded_as, tiny_kit, tmp_path):
    decoded_as([images["output"], images["dark"]])
    request = InstantIDRequest(faces=[images["ref_a"], images["ref_b"]], generation=_gen(num_images=2))
    result = generate_instantid(engine, request)
    identity = result.recipe["identity"]
    pack_dir = tiny_kit / "insightface" / "models" / "antelopev2"
    expected = _insightface_cosine(pack_dir, [images["ref_a"], images["ref_b"]], images["output"])
    assert identity["pack"] == "antelopev2" and identity["same_pack_as_generation"] is True
    assert identity["reference"] == "mean of normed embeddings of 2 references"
    assert identity["images"][0]["status"] == "scored"
    assert abs(identity["images"][0]["score"] - expected) <= TOLERANCE
    assert identity["images"][1]["status"] == "no_face" and identity["images"][1]["score"] is None
    assert result.scores[0] == pytest.approx(identity["images"][0]["score"], abs=1e-6)
    # each PNG carries its own image's score
    first, second = result.save(tmp_path / "out.png")
    assert read_recipe(first)["identity"]["images"] == [identity["images"][0]]
    assert read_recipe(second)["identity"]["images"][0]["status"] == "no_face"


def test_score_models_names_a_second_pack(engine, images, decoded_as, tiny_kit):
    decoded_as([images["output"]])
    request = InstantIDRequest(faces=[images["ref_a"]], generation=_gen(score_models="buffalo_l"))
    identity = generate_instantid(engine, request).recipe["identity"]
    pack_dir = tiny_kit / "insightface" / "models" / "buffalo_l"
    expected = _insightface_cosine(pack_dir, [images["ref_a"]], images["output"])
    assert identity["pack"] == "buffalo_l" and identity["same_pack_as_generation"] is False
    assert abs(identity["images"][0]["score"] - expected) <= TOLERANCE


def test_faceid_batch_scores_each_output_against_its_own_reference(engine, images, decoded_as, tiny_kit):
    decoded_as([images["output"]])
    request = FaceIDRequest(
        faces=[images["ref_a"], images["ref_b"]],
        generation=_gen(num_images=2, guidance=1.0),
        faceid=FaceIDParams(batch=True),
        adapter="ip-adapter-faceid_sd15.bin",
    )
    identity = generate_faceid(engine, request).recipe["identity"]
    pack_dir = tiny_kit / "insightface" / "models" / "buffalo_l"
    for index, ref in enumerate(("ref_a", "ref_b")):
        expected = _insightface_cosine(pack_dir, [images[ref]], images["output"])
        assert abs(identity["images"][index]["score"] - expected) <= TOLERANCE
    assert identity["images"][0]["score"] != pytest.approx(identity["images"][1]["score"], abs=1e-3)


def test_kit_noise_outputs_are_the_no_face_state(engine, images):
    result = generate_instantid(engine, InstantIDRequest(faces=[images["ref_a"]], generation=_gen(steps=2)))
    item = result.recipe["identity"]["images"][0]
    assert item["status"] == "no_face", item
    assert item == {
        "status": "no_face",
        "score": None,
        "reason": item["reason"],
        "sizes_tried": [640, 576, 512, 448, 384, 320, 256, 192],
    }
    assert result.scores == [None]


def test_scoring_can_be_turned_off(engine, images):
    result = generate_instantid(
        engine, InstantIDRequest(faces=[images["ref_a"]], generation=_gen(score=False))
    )
    assert "identity" not in result.recipe and result.identity is None
