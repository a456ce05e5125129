"""FaceAnalyzer on the kit packs: exact boxes and keypoints on synthetic squares, fallback, padding, picks."""

from __future__ import annotations

import numpy as np
import pytest

from faces_util import antelope, buffalo, expected_kps, kit_packs, square_image, textured  # noqa: F401
from idforge.errors import ModelFormatError, NoFaceError, ParameterError
from idforge.faces.analysis import FALLBACK_SIZES, Face, fallback_sizes, pick_index


def test_one_square_gives_its_box_and_keypoints(antelope):  # noqa: F811
    img = square_image(640, 640, [(200, 100, 300, 180, 255)])
    faces = antelope.analyze(img, det_size=640)
    assert len(faces) == 1
    face = faces[0]
    np.testing.assert_allclose(face.bbox, [200, 100, 300, 180], atol=1e-4)
    np.testing.assert_allclose(face.kps, expected_kps([200, 100, 300, 180]), atol=1e-4)
    assert face.score == pytest.approx(1 / (1 + np.exp(-6 * ((255 - 127.5) / 128 - 0.5))), abs=1e-5)
    assert face.det_size == 640 and not face.padded
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert np.linalg.norm(face.normed_embedding) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(face.normed_embedding * face.embedding_norm, face.embedding, rtol=1e-5)


def test_letterbox_scale_is_undone(buffalo):  # noqa: F811
    # 1280x960 at det 640: scale 0.5; squares on even coordinates survive the 2x bilinear downscale exactly.
    img = square_image(1280, 960, [(400, 200, 600, 440, 255)])
    (face,) = buffalo.analyze(img, det_size=640)
    np.testing.assert_allclose(face.bbox, [400, 200, 600, 440], atol=1e-3)
    np.testing.assert_allclose(face.kps, expected_kps([400, 200, 600, 440]), atol=1e-3)


def test_two_squares_are_two_faces_left_to_right(antelope):  # noqa: F811
    img = square_image(640, 480, [(400, 40, 480, 120, 255), (40, 200, 200, 360, 215)])
    faces = antelope.analyze(img, det_size=640)
    assert [f.bbox.tolist() for f in faces] == [[40, 200, 200, 360], [400, 40, 480, 120]]
    assert faces[0].score < faces[1].score  # the dimmer square scores lower


def test_dark_and_grey_images_have_no_face(antelope):  # noqa: F811
    assert antelope.analyze(square_image(320, 320, []), det_size=320) == []
    assert antelope.analyze(square_image(320, 320, [], background=170), det_size=320) == []


def test_pick_policies(antelope):  # noqa: F811
    img = square_image(640, 480, [(400, 40, 480, 120, 255), (40, 200, 200, 360, 215)])
    largest = antelope.get_face(img, pick="largest")
    best = antelope.get_face(img, pick="score")
    assert largest.bbox.tolist() == [40, 200, 200, 360]
    assert best.bbox.tolist() == [400, 40, 480, 120]
    assert antelope.get_face(img, pick=1).bbox.tolist() == [400, 40, 480, 120]
    assert antelope.get_face(img, pick=-2).bbox.tolist() == [40, 200, 200, 360]
    with pytest.raises(ParameterError, match="face index 2 is out of range: image has 2 face"):
        antelope.get_face(img, pick=2)
    with pytest.raises(ParameterError, match="'biggest' is not one of"):
        antelope.get_face(img, pick="biggest")
    assert largest.embedding.shape == (512,) and best.embedding.shape == (512,)


def test_pick_index_ties_take_the_leftmost():
    def face(x, area_side, score):
        box = np.array([x, 0, x + area_side, area_side], dtype=np.float32)
        return Face(box, score, np.zeros((5, 2), np.float32), np.zeros(512, np.float32), np.zeros(512), 640)

    faces = [face(0, 10, 0.6), face(20, 10, 0.9), face(40, 10, 0.9)]
    assert pick_index(faces, "largest") == 0
    assert pick_index(faces, "score") == 1
    assert pick_index(faces, "2") == 2


def test_fallback_sizes():
    assert FALLBACK_SIZES == (640, 576, 512, 448, 384, 320, 256, 192)
    assert fallback_sizes(640) == list(FALLBACK_SIZES)
    assert fallback_sizes(512) == [512, 448, 384, 320, 256, 192]
    assert fallback_sizes(800) == [800, *FALLBACK_SIZES]
    assert fallback_sizes(640, largest_stride=128) == [640, 512, 384, 256]


def test_too_large_square_is_found_at_a_smaller_size(antelope):  # noqa: F811
    img = square_image(640, 640, [(120, 120, 520, 520, 255)])
    assert antelope.analyze(img, det_size=640) == []
    assert antelope.analyze(img, det_size=448) == []
    face = antelope.get_face(img, det_size=640)
    assert face.det_size == 384 and not face.padded
    np.testing.assert_allclose(face.bbox, [120, 120, 520, 520], atol=1.0)
    with pytest.raises(NoFaceError):
        antelope.get_face(img, det_size=640, fallback=False)


def test_face_cut_by_the_frame_is_found_with_padding(antelope):  # noqa: F811
    img = square_image(400, 400, [(0, 100, 150, 250, 255)])  # touches the left edge
    assert antelope.find_faces(img, fallback=False) == []
    face = antelope.get_face(img)
    assert face.padded and face.det_size == 640
    np.testing.assert_allclose(face.bbox, [0, 100, 150, 250], atol=1.0)
    np.testing.assert_allclose(face.kps, expected_kps([0, 100, 150, 250]), atol=1.0)


def test_no_face_error_lists_every_size(antelope):  # noqa: F811
    with pytest.raises(NoFaceError) as exc:
        antelope.get_face(square_image(256, 256, []), name="dark.png")
    message = str(exc.value)
    assert message.startswith("dark.png: no face found")
    assert "640, 576, 512, 448, 384, 320, 256, 192" in message
    assert "padded by 25%" in message and "\n" not in message
    assert exc.value.sizes_tried == list(FALLBACK_SIZES)
    with pytest.raises(NoFaceError) as exc:
        antelope.get_face(square_image(256, 256, []), det_size=320, fallback=False, name="d")
    assert exc.value.sizes_tried == [320] and "padded" not in str(exc.value)


def test_det_size_is_checked(antelope):  # noqa: F811
    img = square_image(64, 64, [])
    for bad in (600, 0, 16, 10000, 640.0):
        with pytest.raises(ParameterError, match="det_size"):
            antelope.analyze(img, det_size=bad)


def test_embeddings_differ_by_texture_and_repeat_exactly(antelope):  # noqa: F811
    def face_of(kind):
        img = square_image(320, 320, [])
        img[60:220, 80:240] = textured(160, kind)
        return antelope.get_face(img, det_size=320)

    stripes, checks, plain = face_of("stripes"), face_of("checks"), face_of("plain")
    for face in (stripes, checks, plain):
        np.testing.assert_allclose(face.bbox, [80, 60, 240, 220], atol=1e-4)  # texture keeps the box
    cos = float(stripes.normed_embedding @ checks.normed_embedding)
    assert cos < 0.99
    assert float(stripes.normed_embedding @ plain.normed_embedding) < 0.99
    again = face_of("stripes")
    np.testing.assert_array_equal(again.embedding, stripes.embedding)


def test_analyze_is_a_pure_function_of_pixels(antelope):  # noqa: F811
    img = square_image(640, 480, [(400, 40, 480, 120, 255), (40, 200, 200, 360, 215)])
    first = antelope.analyze(img, det_size=640)
    antelope.analyze(square_image(320, 320, [(10, 10, 90, 90, 255)]), det_size=320)  # unrelated call between
    second = antelope.analyze(img.copy(), det_size=640)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.bbox, b.bbox)
        np.testing.assert_array_equal(a.kps, b.kps)
        np.testing.assert_array_equal(a.embedding, b.embedding)


def test_to_json(antelope):  # noqa: F811
    face = antelope.get_face(square_image(640, 640, [(200, 100, 300, 180, 255)]))
    data = face.to_json()
    assert set(data) == {"bbox", "score", "kps", "embedding_norm"}
    assert data["bbox"] == [200.0, 100.0, 300.0, 180.0]
    assert len(data["kps"]) == 5 and data["kps"][2] == [250.0, 151.2]
    assert data["embedding_norm"] == pytest.approx(face.embedding_norm, abs=1e-3)


def test_detector_without_keypoints_is_refused(tmp_path):
    import onnx

    from idforge.faces.analysis import FaceAnalyzer
    from idforge.faces.kitpacks import build_detector, build_recognizer

    onnx.save(build_detector(use_kps=False), str(tmp_path / "det.onnx"))
    onnx.save(build_recognizer(), str(tmp_path / "rec.onnx"))
    with pytest.raises(ModelFormatError, match="no keypoint outputs"):
        FaceAnalyzer(tmp_path)
