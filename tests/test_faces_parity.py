"""PARITY: our face analysis vs insightface 2.1 on the same ONNX files.

Tolerances: boxes and keypoints 1e-3 px, scores 1e-5, embeddings cosine >= 0.9999. Covers both kit packs
(batched and unbatched detector outputs), fractional letterbox scales, a rotated face (many anchors with equal
scores and different boxes, so the NMS tie order matters), the 5-stride and keypoint-less SCRFD layouts, a static
input size, and an MXNet-style recogniser (mean 0 / std 1).
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import onnx
import pytest

from faces_util import kit_packs, square_image, textured  # noqa: F401
from idforge.faces.analysis import FaceAnalyzer
from idforge.faces.kitpacks import build_detector, build_recognizer
from idforge.faces.pack import load_pack

insightface = pytest.importorskip("insightface")
from insightface.app import FaceAnalysis  # noqa: E402
from insightface.model_zoo import get_model  # noqa: E402

BOX_TOL = 1e-3
MIN_COSINE = 0.9999


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # skimage 0.26 deprecates estimate(), used by insightface
        yield


def _rotated_face(angle: float) -> np.ndarray:
    img = square_image(480, 400, [])
    img[130:240, 180:290] = textured(110, "checks")
    matrix = cv2.getRotationMatrix2D((235.0, 185.0), angle, 1.0)
    return cv2.warpAffine(img, matrix, (480, 400), borderValue=0)


def _images() -> dict[str, np.ndarray]:
    single = square_image(500, 370, [])  # letterbox scale 1.28: fractional, edges interpolated
    single[80:230, 170:320] = textured(150, "stripes")
    two = square_image(640, 480, [(400, 40, 480, 120, 255), (40, 200, 200, 360, 215)])
    large = square_image(640, 640, [(120, 120, 520, 520, 255)])  # only found at smaller sizes
    return {"single": single, "two": two, "rotated": _rotated_face(25.0), "large": large}


def _reference(pack_dir, det_size: int) -> FaceAnalysis:
    app = FaceAnalysis(name=str(pack_dir), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(det_size, det_size))
    return app


def _compare(ours, theirs) -> None:
    theirs = sorted(theirs, key=lambda f: (float(f.bbox[0]), float(f.bbox[1])))
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine.bbox, ref.bbox, atol=BOX_TOL)
        np.testing.assert_allclose(mine.kps, ref.kps, atol=BOX_TOL)
        assert mine.score == pytest.approx(float(ref.det_score), abs=1e-5)
        cosine = float(
            np.dot(mine.embedding, ref.embedding) / (np.linalg.norm(mine.embedding) * ref.embedding_norm)
        )
        assert cosine >= MIN_COSINE
        assert mine.embedding_norm == pytest.approx(float(ref.embedding_norm), rel=1e-3)
        np.testing.assert_allclose(mine.normed_embedding, ref.normed_embedding, atol=1e-3)


@pytest.mark.parametrize("pack", ["antelopev2", "buffalo_l"])
def test_face_analysis_parity(kit_packs, pack):  # noqa: F811
    ours = FaceAnalyzer(kit_packs[pack])
    images = _images()
    for det_size in (640, 384):
        reference = _reference(kit_packs[pack], det_size)
        counted = 0
        for name, rgb in images.items():
            theirs = reference.get(np.ascontiguousarray(rgb[:, :, ::-1]))
            mine = ours.analyze(rgb, det_size=det_size, name=name)
            _compare(mine, theirs)
            counted += len(mine)
        assert counted >= 4  # the comparison is not vacuous


def test_rotated_face_has_competing_boxes():
    """The rotated case really exercises tie order: several boxes share the top score before NMS."""
    from idforge.faces.detect import letterbox

    det = load_pack_for_tests()
    canvas, _ = letterbox(cv2.cvtColor(_rotated_face(25.0), cv2.COLOR_RGB2BGR), (640, 640))
    scores, boxes, _ = det._forward(canvas)
    scores = np.vstack(scores).ravel()
    boxes = np.vstack(boxes)
    top = boxes[scores == scores.max()]
    assert len(np.unique(np.round(top, 3), axis=0)) > 1


_PACK_CACHE: dict = {}


def load_pack_for_tests():
    if "det" not in _PACK_CACHE:
        import tempfile
        from pathlib import Path

        from idforge.faces.kitpacks import write_face_packs

        folder = write_face_packs(Path(tempfile.mkdtemp()))["buffalo_l"]
        _PACK_CACHE["det"] = load_pack(folder).detector
    return _PACK_CACHE["det"]


@pytest.mark.parametrize(
    "variant",
    [
        {"use_kps": False},
        {"strides": (8, 16, 32, 64, 128), "num_anchors": 1},
        {"strides": (8, 16, 32, 64, 128), "num_anchors": 1, "use_kps": False, "batched": True},
        {"static_size": (320, 320)},
    ],
    ids=["6-outputs", "15-outputs", "10-outputs-batched", "static-320"],
)
def test_detector_layout_parity(tmp_path, variant):
    path = tmp_path / "det.onnx"
    onnx.save(build_detector(**variant), str(path))
    onnx.save(build_recognizer(), str(tmp_path / "rec.onnx"))
    reference = get_model(str(path), providers=["CPUExecutionProvider"])
    reference.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    ours = load_pack(tmp_path).detector
    if "static_size" in variant:
        assert ours.input_size_for(640) == (320, 320)
    found = 0
    for rgb in _images().values():
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        ref_dets, ref_kps = reference.detect(bgr)
        dets, kps = ours.detect(bgr, 640)
        np.testing.assert_allclose(dets, ref_dets, atol=BOX_TOL)
        if ref_kps is None:
            assert kps is None
        else:
            np.testing.assert_allclose(kps, ref_kps, atol=BOX_TOL)
        found += len(dets)
    assert found >= 3


def test_mxnet_style_recogniser_parity(tmp_path):
    path = tmp_path / "rec.onnx"
    onnx.save(build_recognizer(seed=5, mxnet_style=True), str(path))
    onnx.save(build_detector(), str(tmp_path / "det.onnx"))
    reference = get_model(str(path), providers=["CPUExecutionProvider"])
    assert (reference.input_mean, reference.input_std) == (0.0, 1.0)
    ours = load_pack(tmp_path).recognizer
    crop = cv2.cvtColor(textured(112, "checks"), cv2.COLOR_RGB2BGR)
    theirs = reference.get_feat(crop).ravel()
    mine = ours.embed_crop(crop)
    cosine = float(mine @ theirs / (np.linalg.norm(mine) * np.linalg.norm(theirs)))
    assert cosine >= MIN_COSINE


def _env_paths(variable: str) -> list[str]:
    import os

    return [p for p in os.environ.get(variable, "").split(os.pathsep) if p.strip()]


@pytest.mark.published_weights
@pytest.mark.skipif(
    not (_env_paths("IDFORGE_PARITY_FACE_PACKS") and _env_paths("IDFORGE_PARITY_FACE_IMAGES")),
    reason="set IDFORGE_PARITY_FACE_PACKS and IDFORGE_PARITY_FACE_IMAGES (os.pathsep lists) to check real packs",
)
@pytest.mark.parametrize("det_size", [640, 320])
def test_real_pack_parity(det_size):
    """Opt-in: the published packs (e.g. ~/.insightface/models/antelopev2) on real photos, same tolerances."""
    from idforge.imageio import load_image, pil_to_bgr

    for pack in _env_paths("IDFORGE_PARITY_FACE_PACKS"):
        ours = FaceAnalyzer(pack)
        reference = _reference(pack, det_size)
        for image_path in _env_paths("IDFORGE_PARITY_FACE_IMAGES"):
            image = load_image(image_path)
            _compare(ours.analyze(image, det_size=det_size), reference.get(pil_to_bgr(image)))
