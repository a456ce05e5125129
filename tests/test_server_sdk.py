"""The real `segmind` SDK (1.3.0, from PyPI) against a real idforge server on loopback, generating on the tiny kit.

`SegmindClient(api_key=KEY, base_url="http://127.0.0.1:PORT/v1")` as a user switching from the hosted API would
write it: run_sync (v1), run (v2), submit_async(...).wait() and .status(), InferenceFailed with our message for a
face image without a face, Segmind's InstantID field names and a style, credits before and after. The server
starts loading its models (ready at start): /health says what is loading, the readiness probe answers 503, and a
request sent meanwhile queues instead of failing.
"""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from server_fixtures import b64, dark_png, face_b64, running_server, seed_request, wait_for

segmind = pytest.importorskip("segmind")  # a pinned test dependency; importorskip only for a clear message
from segmind import SegmindClient  # noqa: E402
from segmind.exceptions import SegmindError  # noqa: E402
from segmind.v2 import InferenceFailed  # noqa: E402


@pytest.fixture(scope="module")
def started(tiny_kit, tmp_path_factory):
    db = tmp_path_factory.mktemp("sdk") / "server.db"
    with running_server(db, None, models_dirs=[str(tiny_kit)], cancel_wait_s=300) as (url, keys):
        record, token = keys.create_key(500)
        yield url, keys, record, token


@pytest.fixture(scope="module")
def client(started):
    url, _, _, token = started
    sdk = SegmindClient(api_key=token, base_url=url + "/v1", timeout=300)
    yield sdk
    sdk._client.close()


def jpeg_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.size


def test_models_load_before_ready_and_requests_queue_meanwhile(started):
    url, keys, record, token = started
    health = httpx.get(url + "/health").json()
    ready = httpx.get(url + "/health/ready")
    assert health["status"] == "loading" and health["loading"] and not health["ready"], health
    assert ready.status_code == 503 and ready.json()["status"] == "loading"
    early = httpx.post(
        url + "/v2/insta-depth", json=seed_request(seed=11), headers={"x-api-key": token}
    ).json()
    assert early["status"] == "QUEUED"  # accepted while loading
    wait_for(lambda: httpx.get(url + "/health/ready").status_code == 200, timeout=240, interval=0.5)
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ready" and health["loading"] is None and health["unavailable"] == {}
    assert health["warm_up_s"] > 0
    final = wait_for(
        lambda: (
            (s := httpx.get(early["status_url"], headers={"x-api-key": token}).json())["status"]
            in ("COMPLETED", "FAILED")
            and s
        ),
        timeout=120,
    )
    assert final["status"] == "COMPLETED", final


def test_run_sync_returns_the_jpeg_and_charges(client, started):
    _, keys, record, _ = started
    before = keys.get(record.id)
    response = client.run_sync("insta-depth", **seed_request())
    assert response.status_code == 200 and jpeg_size(response.content) == (64, 64)
    assert response.headers["x-seed"] == "354849415"
    after = keys.get(record.id)
    assert (after.balance, after.spent) == (before.balance - 1, before.spent + 1)
    assert int(response.headers["x-remaining-credits"]) == after.balance


@pytest.mark.parametrize(
    ("slug", "body"),
    [
        ("insta-depth", seed_request(seed=21, num_inference_steps=12)),
        (
            "instantid",
            {"prompt": "a photo", "face_image": face_b64(), "num_inference_steps": 4, "seed": 22}
            | {"width": 64, "height": 64},
        ),
        (
            "faceid",
            {"prompt": "a photo", "face_image": face_b64(), "num_inference_steps": 4, "seed": 23}
            | {"width": 64, "height": 64, "adapter": "faceid-sd15"},
        ),
    ],
)
def test_run_v2_for_every_method(client, started, slug, body):
    _, keys, record, _ = started
    before = keys.get(record.id)
    result = client.run(slug, **body)
    assert result["status"] == "COMPLETED" and result["method"] == slug
    assert jpeg_size(base64.b64decode(result["output"]["image"])) == (64, 64)
    assert result["seed"] == body["seed"] and result["recipe"]["seed"] == body["seed"]
    assert result["metrics"]["inference_s"] > 0 and "queue_s" in result["metrics"]
    cost = 2 if body["num_inference_steps"] > 10 else 1
    after = keys.get(record.id)
    assert (after.balance, after.spent) == (before.balance - cost, before.spent + cost)
    assert result["credits_charged"] == cost


def test_submit_async_status_and_wait(client, started):
    job = client.submit_async("insta-depth", **seed_request(seed=31, num_inference_steps=20))
    assert job.request_id.startswith("req_") and job.status_url.startswith("http://127.0.0.1:")
    first = job.status()
    assert first["status"] in ("QUEUED", "PROCESSING", "COMPLETED")
    result = job.wait(timeout=300, interval=0.2)
    assert result["status"] == "COMPLETED" and result["seed"] == 31
    assert job.status()["status"] == "COMPLETED" and job.result()["request_id"] == job.request_id


def test_failed_job_raises_inference_failed_with_our_message(client, started):
    _, keys, record, _ = started
    before = keys.get(record.id)
    with pytest.raises(InferenceFailed) as failure:
        client.run("insta-depth", **seed_request(face_image=b64(dark_png())))
    assert "no face" in failure.value.detail and "face image" in failure.value.detail
    assert failure.value.status_body["field"] == "face_image"
    with pytest.raises(SegmindError) as sync_failure:
        client.run_sync("insta-depth", **seed_request(face_image=b64(dark_png())))
    assert sync_failure.value.status == 400 and "no face" in sync_failure.value.detail
    after = keys.get(record.id)
    assert (after.balance, after.spent) == (before.balance, before.spent)  # failures cost nothing


def test_segmind_instantid_names_and_style(client, started):
    _, keys, record, _ = started
    segmind_body = {
        "face_image": face_b64(),
        "prompt": "a man in a hat",
        "negative_prompt": "hands",
        "style": "film-noir",
        "samples": 1,
        "steps": 4,
        "guidance": 5,
        "seed": 41,
        "identity_strength": 0.7,
        "adapter_strength": 0.6,
        "enhance_face_region": True,
        "width": 64,
        "height": 64,
    }
    response = client.run_sync("instantid", **segmind_body)  # no base64: Segmind's default is the JPEG body
    assert response.headers["content-type"] == "image/jpeg" and jpeg_size(response.content) == (64, 64)
    result = client.run("instantid", **segmind_body)
    params = result["recipe"]["params"]
    assert result["recipe"]["style"] == "film-noir"
    assert params["steps"] == 4 and params["guidance"] == 5 and params["seed"] == 41
    assert (
        params["cn_strength"] == 0.7 and params["ip_weight"] == 0.6 and params["enhance_face_region"] is True
    )
    # the recipe keeps the prompt as given and records the styled one the text encoder saw
    assert params["prompt"] == "a man in a hat" and params["style"] == "film-noir"
    styled = params["styled_prompt"]
    assert "black and white film still" in styled and styled.startswith("a man in a hat")
    assert params["styled_negative_prompt"].startswith("hands, ")

    before = keys.get(record.id).balance
    with pytest.raises(SegmindError) as mixed:
        client.run_sync("instantid", **(segmind_body | {"num_inference_steps": 4}))
    assert mixed.value.status == 400
    assert "steps" in mixed.value.detail and "num_inference_steps" in mixed.value.detail
    with pytest.raises(SegmindError) as unknown:
        client.run_sync("instantid", **(segmind_body | {"style": "baroque"}))
    assert unknown.value.status == 400 and "film-noir" in unknown.value.detail  # lists the known ones
    with pytest.raises(SegmindError) as out_of_range:
        client.run_sync("instantid", **(segmind_body | {"identity_strength": 1.5}))
    assert out_of_range.value.status == 400 and "identity_strength" in out_of_range.value.detail
    assert keys.get(record.id).balance == before


def test_styles_are_listed(started):
    url, _, _, _ = started
    from idforge.styles import STYLES

    listed = httpx.get(url + "/v1/styles").json()
    assert [s["name"] for s in listed] == list(STYLES) and all(s["description"] for s in listed)
    schema = httpx.get(url + "/openapi.json").json()
    assert "/v1/styles" in schema["paths"]
    described = schema["components"]["schemas"]["InstantIDBody"]["properties"]["style"]["description"]
    assert "GET /v1/styles" in described and all(name in described for name in STYLES)


def test_cancel_a_running_real_job_releases_credits_and_leaves_the_models_clean(client, started):
    """FaceID merges its LoRA into the UNet for the call: a job stopped mid-loop must leave it restored, so the
    same request afterwards gives the same image as before."""
    url, keys, record, token = started
    body = {"prompt": "a photo", "face_image": face_b64(), "seed": 51, "width": 64, "height": 64}
    body |= {"adapter": "faceid-sd15", "num_inference_steps": 4}
    before_image = base64.b64decode(client.run("faceid", **body)["output"]["image"])
    balance = keys.get(record.id).balance
    job = httpx.post(
        url + "/v2/faceid", json=body | {"num_inference_steps": 100}, headers={"x-api-key": token}
    ).json()
    wait_for(
        lambda: (
            (s := httpx.get(job["status_url"], headers={"x-api-key": token}).json())["status"] == "PROCESSING"
            and s["step"] >= 1
        ),
        timeout=120,
        interval=0.02,
    )
    answer = httpx.post(job["cancel_url"], headers={"x-api-key": token}, timeout=330).json()
    # cancel_wait_s=300: the answer comes once the worker has stopped, however slow the step in flight is
    assert answer["action"] == "stopped" and answer["status"] == "CANCELED", answer
    final = httpx.get(job["status_url"], headers={"x-api-key": token}).json()
    assert final["status"] == "CANCELED" and "of 100" in final["error"]
    assert keys.get(record.id).balance == balance and keys.held() == {}
    after_image = base64.b64decode(client.run("faceid", **body)["output"]["image"])
    assert after_image == before_image  # same JPEG bytes: the UNet was restored exactly
