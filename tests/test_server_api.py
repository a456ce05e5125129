"""The HTTP API with REAL generation on the tiny kit, against one uvicorn server on loopback.

Covers the seed's example request shape (both response forms), the headers, every status code of the seed,
/v2 jobs with step progress, the other methods, the OpenAPI document, and a property-based run of malformed
bodies (never a 5xx, never a bare 422).
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from idforge.demo.samples import square_face_png
from server_fixtures import b64, dark_png, face_b64, running_server, seed_request, wait_for


@pytest.fixture(scope="module")
def server(tiny_kit, tmp_path_factory):
    db = tmp_path_factory.mktemp("api") / "server.db"
    warm = (
        "insta-depth",
        "instantid",
    )  # what these tests use first (FaceID's default adapter is never run here)
    with running_server(db, None, models_dirs=[str(tiny_kit)], warm_up=warm) as (url, keys):
        record, token = keys.create_key(100)
        client = httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=300)
        yield client, keys, record
        client.close()


def jpeg(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_seed_example_shape_returns_jpeg_with_headers(server, tiny_kit):
    client, keys, record = server
    before = keys.get(record.id).balance
    response = client.post("/v1/insta-depth", json=seed_request())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-seed"] == "354849415"
    assert float(response.headers["x-inference-time"]) > 0 and "x-queue-time" in response.headers
    assert response.headers["x-credits-charged"] == "1"  # 4 steps: one started block of ten
    assert int(response.headers["x-remaining-credits"]) == before - 1 == keys.get(record.id).balance
    served = jpeg(response.content)
    assert served.shape == (64, 64, 3)

    # The same request straight through the Python API (own engine) gives the same picture.
    from idforge.engine.params import GenerationParams
    from idforge.engine.session import Engine, ModelChoice
    from idforge.methods.insta_depth.generate import InstaDepthRequest, generate_insta_depth
    from idforge.server.jobs import encode_jpeg

    body = seed_request()
    direct = generate_insta_depth(
        Engine(ModelChoice(models_dirs=[str(tiny_kit)])),
        InstaDepthRequest(
            face=base64.b64decode(body["face_image"]),
            pose=base64.b64decode(body["pose_image"]),
            generation=GenerationParams(
                prompt=body["prompt"],
                negative_prompt=body["negative_prompt"],
                steps=4,
                guidance=3.0,
                seed=354849415,
                width=64,
                height=64,
            ),
        ),
    )
    assert np.abs(served - jpeg(encode_jpeg(direct.images[0]))).max() <= 2  # JPEG of the same pixels

    as_json = client.post("/v1/insta-depth", json=seed_request(base64=True, return_depth_map=True))
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
    payload = as_json.json()
    assert payload["seed"] == 354849415 and payload["mime_type"] == "image/jpeg"
    assert np.abs(jpeg(base64.b64decode(payload["image"])) - served).max() <= 2  # same seed, same image
    assert jpeg(base64.b64decode(payload["depth_map"])).shape == (64, 64, 3)
    assert "depth_map" not in client.post("/v1/insta-depth", json=seed_request(base64=True)).json()


def test_random_seed_is_reported_and_data_urls_work(server):
    client, _, _ = server
    body = seed_request(seed=-1, base64=True)
    body["face_image"] = "data:image/png;base64," + body["face_image"]
    response = client.post("/v1/insta-depth", json=body)
    assert response.status_code == 200
    assert response.json()["seed"] == int(response.headers["x-seed"]) >= 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"num_inference_steps": 3}, "num_inference_steps"),
        ({"num_inference_steps": 101}, "num_inference_steps"),
        ({"num_inference_steps": 4.5}, "num_inference_steps"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"guidance_scale": 15.5}, "guidance_scale"),
        ({"seed": -2}, "seed"),
        ({"seed": 1_000_000_000_000_000}, "seed"),
        ({"base64": "maybe"}, "base64"),
        ({"prompt": None}, "prompt"),
        ({"face_image": "not-an-image"}, "face_image"),
        ({"pose_image": b64(b"GIF89a broken")}, "pose_image"),
        ({"pose_image": "http://169.254.169.254/latest/meta-data/"}, "pose_image"),
        ({"width": 64, "height": None}, "height"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_input_is_400_naming_the_field(server, change, field):
    client, keys, record = server
    before = keys.get(record.id).balance
    response = client.post("/v1/insta-depth", json=seed_request(**change))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == 400 and body["field"] == field and field in body["error"]
    assert response.headers["x-remaining-credits"] == str(before) == str(keys.get(record.id).balance)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_400(server, literal):
    client, _, _ = server
    text = json.dumps(seed_request()).replace('"guidance_scale": 3', f'"guidance_scale": {literal}')
    response = client.post("/v1/insta-depth", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["field"] == "guidance_scale"


def test_missing_field_and_no_face(server):
    client, keys, record = server
    body = seed_request()
    del body["face_image"]
    missing = client.post("/v1/insta-depth", json=body)
    assert missing.status_code == 400 and missing.json()["field"] == "face_image"
    before = keys.get(record.id).balance
    no_face = client.post("/v1/insta-depth", json=seed_request(face_image=b64(dark_png())))
    assert no_face.status_code == 400 and no_face.json()["field"] == "face_image"
    assert "no face" in no_face.json()["error"]
    assert keys.get(record.id).balance == before  # a failed generation is never charged


def test_auth_paths_methods_and_credits(server):
    client, keys, _ = server
    url = str(client.base_url)
    unauthenticated = httpx.post(url + "/v1/insta-depth", json=seed_request())
    assert unauthenticated.status_code == 401 and "x-remaining-credits" not in unauthenticated.headers
    wrong = httpx.post(url + "/v1/insta-depth", json=seed_request(), headers={"x-api-key": "idf_wrong"})
    assert wrong.status_code == 401 and wrong.json()["status"] == 401
    revoked_record, revoked = keys.create_key(5)
    keys.revoke(revoked_record.id)
    assert httpx.post(url + "/v1/insta-depth", json={}, headers={"x-api-key": revoked}).status_code == 401

    not_found = client.post("/v1/insta-deep", json=seed_request())
    assert not_found.status_code == 404 and not_found.json()["status"] == 404
    not_allowed = client.get("/v1/insta-depth")
    assert not_allowed.status_code == 405 and not_allowed.json()["status"] == 405

    _, broke = keys.create_key(0)
    poor = httpx.post(url + "/v1/insta-depth", json=seed_request(), headers={"x-api-key": broke})
    assert poor.status_code == 406 and poor.headers["x-remaining-credits"] == "0"
    assert "not enough credits" in poor.json()["error"]
    account = client.get("/v1/account").json()
    assert account["credits"] == int(client.get("/v1/account").headers["x-remaining-credits"])


def test_v2_job_reports_progress_and_result(server):
    client, keys, record = server
    before = keys.get(record.id).balance
    accepted = client.post("/v2/insta-depth", json=seed_request(num_inference_steps=12, base64=True))
    assert accepted.status_code == 202
    job = accepted.json()
    assert job["status"] == "QUEUED" and job["credits_reserved"] == 2 and job["position"] >= 1
    assert job["status_url"].startswith(str(client.base_url).rstrip("/") + "/v2/requests/")
    seen = []

    def finished():
        state = client.get(job["status_url"]).json()
        seen.append((state["status"], state.get("step"), state.get("total_steps")))
        return state["status"] in ("COMPLETED", "FAILED") and state

    state = wait_for(finished, timeout=300, interval=0.01)  # a hang bound only
    assert state["status"] == "COMPLETED", state
    result = client.get(job["response_url"]).json()
    assert jpeg(base64.b64decode(result["output"]["image"])).shape == (64, 64, 3)
    assert result["seed"] == 354849415 and result["recipe"]["seed"] == 354849415
    assert result["recipe"]["params"]["steps"] == 12 and result["metrics"]["inference_s"] > 0
    steps = [step for status, step, total in seen if status == "PROCESSING" and total == 12]
    assert steps and max(steps) >= 1, f"no step progress was seen while the job ran: {seen}"
    assert steps == sorted(steps) and all(0 <= s <= 12 for s in steps), seen
    assert keys.get(record.id).balance == before - 2
    assert client.get("/v2/requests/req_unknown").status_code == 404


def test_instantid_and_faceid_batch(server):
    client, keys, record = server
    common = {"prompt": "a photo", "num_inference_steps": 4, "width": 64, "height": 64, "seed": 7}
    iid = client.post(
        "/v1/instantid",
        json=common
        | {"face_image": face_b64(), "pose_image": face_b64(box=(72, 40, 152, 120)), "base64": False},
    )
    assert iid.status_code == 200 and jpeg(iid.content).shape == (64, 64, 3)

    before = keys.get(record.id).balance
    second = b64(square_face_png(box=(40, 40, 120, 120)))
    batch = client.post(
        "/v1/faceid",
        json=common
        | {"face_image": face_b64(), "extra_face_images": [second], "batch": True, "adapter": "faceid-sd15"},
    )
    assert batch.status_code == 200, batch.text
    payload = batch.json()
    assert len(payload["images"]) == 2 and payload["seeds"] == [7, 8]
    assert batch.headers["x-credits-charged"] == "2" and keys.get(record.id).balance == before - 2
    one_jpeg = client.post(
        "/v1/faceid", json=common | {"face_image": face_b64(), "num_images": 2, "base64": False}
    )
    assert one_jpeg.status_code == 400 and one_jpeg.json()["field"] == "base64"


def test_openapi_lists_every_field_with_its_range(server):
    client, _, _ = server
    schema = client.get("/openapi.json").json()
    fields = schema["components"]["schemas"]["InstaDepthBody"]["properties"]
    seed_fields = {
        "prompt",
        "negative_prompt",
        "face_image",
        "pose_image",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "base64",
    }
    assert seed_fields <= set(fields)
    assert schema["components"]["schemas"]["InstaDepthBody"]["required"] == [
        "prompt",
        "face_image",
        "pose_image",
    ]
    steps, guidance, seed = fields["num_inference_steps"], fields["guidance_scale"], fields["seed"]
    assert (steps["minimum"], steps["maximum"], steps["default"]) == (4, 100, 10)
    assert (guidance["minimum"], guidance["maximum"], guidance["default"]) == (1, 15, 3)
    assert (seed["minimum"], seed["maximum"], seed["default"]) == (-1, 999999999999999, -1)
    assert fields["base64"]["default"] is True
    assert "422" not in json.dumps(schema["paths"])
    operation = schema["paths"]["/v1/insta-depth"]["post"]
    assert {"200", "400", "401", "406", "500", "503"} <= set(operation["responses"])
    assert {"/v2/requests/{request_id}", "/v2/requests/{request_id}/status"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
    # run alone, the warm-up may still be going: wait for readiness
    wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=300, interval=0.2)
    health = client.get("/health").json()
    assert health["status"] == "ready" and health["queue"]["worker_alive"]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
FIELD_NAMES = st.sampled_from(
    [
        "prompt",
        "negative_prompt",
        "face_image",
        "pose_image",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "base64",
        "width",
        "height",
        "return_depth_map",
        "style",
        "webhook_url",
        "steps",
        "samples",
        "identity_strength",
        "extra",
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=10),
        JSON_VALUES,
        st.binary(max_size=64).map(lambda b: ("raw", b)),
    ),
    path=st.sampled_from(
        ["/v1/insta-depth", "/v2/insta-depth", "/v1/instantid", "/v2/instantid", "/v1/faceid"]
    ),
)
def test_malformed_bodies_never_crash_the_server(server, body, path):
    client, keys, record = server
    before = keys.get(record.id).balance
    if isinstance(body, tuple):
        response = client.post(path, content=body[1], headers={"content-type": "application/json"})
    else:
        if isinstance(body, dict) and "face_image" in body:
            body["face_image"] = "x" + str(body["face_image"])  # never a decodable image: no generation runs
        response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["status"] == 400 and payload["error"] and "Traceback" not in response.text
    assert keys.get(record.id).balance == before
