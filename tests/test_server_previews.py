"""The studio's free preview endpoints against a real server on the tiny kit.

The previews must show what a generation will really use: the keypoint image is compared pixel for pixel with
the one InstantID's generation produces, the depth map with Insta Depth's, and the face chosen in a photo with
several faces is the one the method's pick policy takes. They are authenticated, cost nothing, and bad input is a
400 naming the field.
"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from idforge.demo.samples import png_bytes, square_face_png, synthetic_face
from server_fixtures import b64, dark_png, face_b64, running_server


@pytest.fixture(scope="module")
def server(tiny_kit, tmp_path_factory):
    db = tmp_path_factory.mktemp("previews") / "server.db"
    with running_server(db, None, models_dirs=[str(tiny_kit)]) as (url, keys):
        record, token = keys.create_key(3)
        client = httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=300)
        yield client, keys, record
        client.close()


@pytest.fixture(scope="module")
def engine(tiny_kit):
    from idforge.engine.session import Engine, ModelChoice

    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]))


def decoded(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"), dtype=np.int16)


def two_faces_png() -> bytes:
    """A small face on the left and a larger one on the right: 'largest' picks #1."""
    image = synthetic_face(size=(320, 192), box=(20, 40, 100, 120))
    ImageDraw.Draw(image).rectangle((180, 40, 290, 150), fill=(255, 255, 255))
    return png_bytes(image)


POSE = square_face_png(box=(72, 40, 152, 120))


def test_keypoint_preview_is_the_image_instantid_uses(server, engine):
    client, keys, record = server
    before = keys.get(record.id).balance
    response = client.post(
        "/v1/preview/faces",
        json={
            "method": "instantid",
            "face_image": face_b64(),
            "pose_image": b64(POSE),
            "width": 64,
            "height": 64,
        },
    )
    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["keypoints"]["source"] == "pose_image"
    assert (preview["keypoints"]["width"], preview["keypoints"]["height"]) == (64, 64)
    assert preview["references"][0]["status"] == "one_face" and preview["references"][0]["used"] == 0
    assert preview["pose"]["status"] == "one_face" and preview["problems"] == []

    from idforge.engine.params import GenerationParams
    from idforge.methods.instantid.core import InstantIDRequest
    from idforge.methods.instantid.generate import generate_instantid

    result = generate_instantid(
        engine,
        InstantIDRequest(
            faces=[square_face_png()],
            pose=POSE,
            generation=GenerationParams(prompt="x", steps=4, width=64, height=64, seed=1),
        ),
    )
    expected = np.asarray(result.extras["kps_image"].convert("RGB"), dtype=np.int16)
    assert np.array_equal(decoded(preview["keypoints"]["image"]), expected)  # PNG: exact
    assert keys.get(record.id).balance == before  # previews are free
    assert response.headers["x-remaining-credits"] == str(before)


def test_depth_preview_is_the_map_insta_depth_uses(server, engine):
    client, _, _ = server
    response = client.post("/v1/preview/depth", json={"pose_image": b64(POSE), "width": 64, "height": 64})
    assert response.status_code == 200, response.text
    preview = response.json()

    from idforge.engine.params import GenerationParams
    from idforge.methods.insta_depth.generate import InstaDepthRequest, generate_insta_depth

    result = generate_insta_depth(
        engine,
        InstaDepthRequest(
            face=square_face_png(),
            pose=POSE,
            generation=GenerationParams(prompt="x", steps=4, width=64, height=64, seed=1),
        ),
    )
    expected = np.asarray(result.extras["depth_map"].convert("RGB"), dtype=np.int16)
    assert decoded(preview["image"]).shape == expected.shape == (64, 64, 3)
    assert (
        np.abs(decoded(preview["image"]) - expected).max() <= 1
    )  # same estimator on the CPU; 8-bit rounding
    assert preview["image"] != "" and expected.std() > 0  # a real map, not a flat image


def test_several_faces_no_face_and_the_pick_policy(server):
    client, _, _ = server
    body = {
        "method": "instantid",
        "face_image": b64(two_faces_png()),
        "extra_face_images": [b64(dark_png())],
        "pose_image": b64(dark_png()),
    }
    preview = client.post("/v1/preview/faces", json=body).json()
    several, none = preview["references"]
    assert several["status"] == "several_faces" and len(several["faces"]) == 2
    assert several["used"] == 1 and "largest" in several["message"]  # InstantID takes the largest face
    assert several["faces"][0]["bbox"][0] < several["faces"][1]["bbox"][0]  # left to right, as the engine
    assert none["field"] == "extra_face_images[0]" and none["status"] == "no_face" and none["used"] is None
    assert "no face found" in none["message"]
    assert decoded(several["annotated"]).shape[2] == 3
    # The pose has no face: InstantID without pose_fallback would fail, and the page is told why.
    assert preview["keypoints"] is None  # no keypoint image the generation would not use
    assert any("pose_image" in p and "pose_fallback" in p for p in preview["problems"])
    assert any("extra_face_images[0]" in p for p in preview["problems"])

    fallback = client.post(
        "/v1/preview/faces", json=body | {"extra_face_images": [], "pose_fallback": True}
    ).json()
    assert fallback["keypoints"]["source"] == "face_image" and fallback["problems"] == []
    assert fallback["warnings"] and "pose_image" in fallback["warnings"][0]

    depth = client.post("/v1/preview/faces", json=body | {"extra_face_images": [], "method": "insta-depth"})
    assert depth.json()["keypoints"]["source"] == "face_image" and depth.json()["problems"] == []

    faceid = client.post("/v1/preview/faces", json={"method": "faceid", "face_image": b64(two_faces_png())})
    assert faceid.json()["keypoints"] is None and faceid.json()["pose"] is None  # FaceID uses no keypoints
    assert "most confident" in faceid.json()["references"][0]["message"]  # FaceID's pick policy: score


def test_previews_are_authenticated_and_name_bad_fields(server):
    client, _, _ = server
    url = str(client.base_url)
    anonymous = httpx.post(url + "/v1/preview/faces", json={"face_image": face_b64()})
    assert anonymous.status_code == 401 and anonymous.json()["status"] == 401
    bad = client.post(
        "/v1/preview/faces", json={"face_image": face_b64(), "extra_face_images": [face_b64(), "!!"]}
    )
    assert bad.status_code == 400 and bad.json()["field"] == "extra_face_images[1]"
    missing = client.post("/v1/preview/depth", json={})
    assert missing.status_code == 400 and missing.json()["field"] == "pose_image"
    half = client.post("/v1/preview/depth", json={"pose_image": b64(POSE), "width": 64})
    assert half.status_code == 400 and half.json()["field"] == "height"
    strip = io.BytesIO()
    Image.new("RGB", (3000, 2), 128).save(
        strip, format="PNG"
    )  # extreme aspect ratio: a 400 or no face, never a 500
    strip_b64 = b64(strip.getvalue())
    assert (
        client.post("/v1/preview/faces", json={"face_image": strip_b64}).json()["references"][0]["status"]
        == "no_face"
    )
    narrow = client.post("/v1/preview/depth", json={"pose_image": strip_b64})
    assert narrow.status_code == 400 and narrow.json()["field"] == "pose_image", narrow.text
    unknown = client.post("/v1/preview/faces", json={"face_image": face_b64(), "mehtod": "faceid"})
    assert unknown.status_code == 400 and unknown.json()["field"] == "mehtod"
    no_such = client.post("/v1/preview/faces", json={"face_image": face_b64(), "method": "faceidd"})
    assert no_such.status_code == 400 and no_such.json()["field"] == "method", no_such.text
    assert (
        "instantid" in no_such.json()["error"] and "faceid" in no_such.json()["error"]
    )  # the registry's names
    schema = client.get("/openapi.json").json()
    assert {"/v1/preview/faces", "/v1/preview/depth"} <= set(schema["paths"])
    assert "401" in schema["paths"]["/v1/preview/faces"]["post"]["responses"]
