"""Several people over HTTP: the `persons` field of /v1 and /v2 instantid, faceid and pulid, with real generation
on the tiny kit.

Bad persons are 400s naming the field (`persons[i].<field>`) and cost nothing.
"""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from server_fixtures import b64, dark_png, face_b64, finished_result, running_server

WIDTH, HEIGHT = 128, 64


@pytest.fixture(scope="module")
def server(tiny_kit, tmp_path_factory):
    db = tmp_path_factory.mktemp("persons-api") / "server.db"
    with running_server(db, None, models_dirs=[str(tiny_kit)], warm_up=("instantid",)) as (url, keys):
        record, token = keys.create_key(100)
        client = httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=300)
        yield client, keys, record
        client.close()


def body(persons: list[dict], **overrides) -> dict:
    values = {
        "prompt": "two people",
        "num_inference_steps": 4,
        "width": WIDTH,
        "height": HEIGHT,
        "seed": 5,
        "persons": persons,
    }
    return values | overrides


def two(**second) -> list[dict]:
    return [
        {"face_image": face_b64(), "region": "left", "ip_weight": 1.1},
        {"face_image": face_b64(box=(40, 40, 150, 150)), "region": "right"} | second,
    ]


def test_v1_instantid_with_two_persons(server):
    client, keys, record = server
    before = keys.get(record.id).balance
    response = client.post("/v1/instantid", json=body(two(cn_strength=0.3), num_images=2))
    assert response.status_code == 200, response.text
    payload = response.json()
    assert len(payload["images"]) == 2 and payload["seeds"] == [5, 6]
    image = Image.open(io.BytesIO(base64.b64decode(payload["image"])))
    assert image.size == (WIDTH, HEIGHT)
    assert response.headers["x-credits-charged"] == "2" and keys.get(record.id).balance == before - 2


def test_v2_instantid_with_persons_records_every_person(server):
    client, _, _ = server
    accepted = client.post(
        "/v2/instantid",
        json=body([two()[0], {"face_image": face_b64(), "box": [64, 0, 128, 64], "end_at": 0.6}]),
    )
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    state = finished_result(client, job["status_url"])
    assert state["status"] == "COMPLETED", state
    recipe = client.get(job["response_url"]).json()["recipe"]
    first, second = recipe["persons"]
    assert first["region"]["given"] == "left" and first["ip_weight"] == 1.1
    assert second["region"] == {"given": "box 64:0:128:64", "box": [64, 0, 128, 64], "pixels": 64 * 64}
    assert second["end_at"] == 0.6 and second["kps"]["source"] == "own"
    assert [p["label"] for p in recipe["identity"]["persons"]] == ["person 1", "person 2"]


@pytest.mark.parametrize(
    ("persons", "extra", "field", "words"),
    [
        (two(region="left"), {}, "persons[0]", "overlap"),
        (two(region=None, box=[100, 0, 200, 64]), {}, "persons[1].box", "reaches outside the 128x64 image"),
        (two(face_image=b64(dark_png())), {}, "persons[1].face_image", "no face found"),
        (two(end_at=0.1, start_at=0.5), {}, "persons[1].end_at", "before start_at"),
        (two(box=[0, 0, 10, 10]), {}, "persons[1]", "exactly one of region, box or mask_image"),
        (two(face_image="not-an-image"), {}, "persons[1].face_image", ""),
        (two(), {"face_image": face_b64()}, "persons", "replaces face_image"),
        ([], {}, "face_image", "required"),
    ],
)
def test_bad_persons_are_400_naming_the_field_and_cost_nothing(server, persons, extra, field, words):
    client, keys, record = server
    before = keys.get(record.id).balance
    response = client.post("/v1/instantid", json=body(persons) | extra)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == field, error
    assert words in error["error"] and "\n" not in error["error"]
    assert keys.get(record.id).balance == before


@pytest.mark.parametrize("method", ["faceid", "pulid"])
@pytest.mark.parametrize(
    ("persons", "extra", "field", "words"),
    [
        (two(region="left"), {}, "persons[0]", "overlap"),
        (two(region=None, box=[100, 0, 200, 64]), {}, "persons[1].box", "reaches outside the 128x64 image"),
        (two(end_at=0.1, start_at=0.5), {}, "persons[1].end_at", "before start_at"),
        (two(cn_strength=0.5), {}, "persons[1].cn_strength", "leave it out"),
        (two(), {"face_image": face_b64()}, "persons", "replaces face_image"),
    ],
)
def test_adapter_methods_refuse_bad_persons_before_queueing(server, method, persons, extra, field, words):
    """FaceID and PuLID check persons as InstantID does: a 400 naming the field, before the job is queued."""
    client, keys, record = server
    before = keys.get(record.id).balance
    response = client.post(f"/v2/{method}", json=body(persons) | extra)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == field, error
    assert words in error["error"] and "\n" not in error["error"]
    assert keys.get(record.id).balance == before


def test_v2_faceid_with_persons_records_every_person(server):
    """FaceID's HTTP body takes `persons` as its command line does: one adapter per person, one score each."""
    client, keys, record = server
    before = keys.get(record.id).balance
    accepted = client.post("/v2/faceid", json=body(two(end_at=0.7), adapter="faceid-sdxl"))
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    state = finished_result(client, job["status_url"])
    assert state["status"] == "COMPLETED", state
    recipe = client.get(job["response_url"]).json()["recipe"]
    first, second = recipe["persons"]
    assert first["region"]["given"] == "left" and first["weight"] == 1.1
    assert second["region"]["given"] == "right" and second["end_at"] == 0.7
    assert [p["label"] for p in recipe["identity"]["persons"]] == ["person 1", "person 2"]
    assert keys.get(record.id).balance == before - 1
