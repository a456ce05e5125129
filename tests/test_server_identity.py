"""Identity score, best-of-N, presets and styles over HTTP, with REAL generation on the tiny kit: v1 header
`x-identity-score`, v2 result field `identity`, best_of priced as N images, bad values 400 before any charge."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

import idforge.engine.sampling as sampling
from faces_util import square_image, textured
from idforge.faces.analysis import FaceAnalyzer
from idforge.faces.scoring import reference_embedding, score_image
from server_fixtures import face_b64, running_server, wait_for


@pytest.fixture(scope="module")
def server(tiny_kit, tmp_path_factory):
    db = tmp_path_factory.mktemp("identity-api") / "server.db"
    with running_server(db, None, models_dirs=[str(tiny_kit)], warm_up=("instantid",)) as (url, keys):
        record, token = keys.create_key(1000)
        client = httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=300)
        yield client, keys, record
        client.close()


def _output_face() -> np.ndarray:
    image = square_image(448, 448, [])
    image[120:280, 100:260] = textured(160, "checks")
    return image


@pytest.fixture
def face_outputs(monkeypatch):
    """The decoder 'returns' a known face: the output then has a face to score."""
    picture = _output_face()
    monkeypatch.setattr(
        sampling, "decode_latents", lambda base, latents: [Image.fromarray(picture)] * latents.shape[0]
    )
    return picture


def _body(**extra) -> dict:
    return {
        "prompt": "a photo",
        "face_image": face_b64(),
        "num_inference_steps": 4,
        "width": 64,
        "height": 64,
        "seed": 3,
        "base64": True,
    } | extra


def _expected_score(tiny_kit, picture) -> float:
    analyzer = FaceAnalyzer(tiny_kit / "insightface" / "models" / "antelopev2")
    face = np.asarray(Image.open(io.BytesIO(base64.b64decode(face_b64()))).convert("RGB"))
    return score_image(analyzer, picture, reference_embedding(analyzer, [face])).score


def test_v1_header_and_body_carry_the_score(server, tiny_kit, face_outputs):
    client, _, _ = server
    response = client.post("/v1/instantid", json=_body())
    assert response.status_code == 200, response.text
    expected = _expected_score(tiny_kit, face_outputs)
    assert response.headers["x-identity-score"] == f"{expected:.4f}"
    identity = response.json()["identity"]
    assert identity["pack"] == "antelopev2" and identity["images"][0]["score"] == pytest.approx(
        expected, abs=1e-6
    )
    raw = client.post("/v1/instantid", json=_body(base64=False))
    assert (
        raw.headers["content-type"] == "image/jpeg" and raw.headers["x-identity-score"] == f"{expected:.4f}"
    )


def test_v1_noise_output_is_none(server):
    client, _, _ = server
    response = client.post("/v1/instantid", json=_body(num_images=2))
    assert response.status_code == 200, response.text
    assert response.headers["x-identity-score"] == "none,none"
    assert [item["status"] for item in response.json()["identity"]["images"]] == ["no_face", "no_face"]


def _wait(client, job) -> dict:
    state = wait_for(
        lambda: (
            (s := client.get(job["status_url"]).json())["status"] in ("COMPLETED", "FAILED", "CANCELED") and s
        ),
        timeout=300,
        interval=0.02,
    )
    assert state["status"] == "COMPLETED", state
    return client.get(job["response_url"]).json()


def test_v2_best_of_result_has_identity_and_ranking_and_costs_n_images(server, tiny_kit, face_outputs):
    client, keys, record = server
    before = keys.get(record.id).balance
    accepted = client.post("/v2/instantid", json=_body(best_of=3, style="neon"))
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["credits_reserved"] == 3
    result = _wait(client, accepted.json())
    assert result["identity"]["images"][0]["score"] == pytest.approx(
        _expected_score(tiny_kit, face_outputs), abs=1e-6
    )
    ranking = result["recipe"]["best_of"]["ranking"]
    assert sorted(row["seed"] for row in ranking) == [3, 4, 5]
    assert (
        result["recipe"]["params"]["style"] == "neon"
        and "neon signs" in result["recipe"]["params"]["styled_prompt"]
    )
    assert result["recipe"]["params"]["prompt"] == "a photo"
    assert keys.get(record.id).balance == before - 3


def test_preset_over_http_uses_its_steps_and_prices_them(server, face_outputs):
    client, keys, record = server
    before = keys.get(record.id).balance
    body = {k: v for k, v in _body(preset="hyper-12-cfg").items() if k != "num_inference_steps"}
    response = client.post("/v1/instantid", json=body)
    assert response.status_code == 200, response.text
    # 12 steps (the preset's, not the API default of 10): two started blocks of ten
    assert response.headers["x-credits-charged"] == "2" and keys.get(record.id).balance == before - 2
    explicit = client.post("/v1/instantid", json=body | {"num_inference_steps": 4})
    assert explicit.headers["x-credits-charged"] == "1"


@pytest.mark.parametrize(
    ("extra", "field", "text"),
    [
        ({"best_of": 0}, "best_of", ""),
        ({"best_of": 17}, "best_of", ""),
        ({"best_of": 2, "num_images": 2}, "best_of", "num_images must be 1"),
        ({"preset": "turbo"}, "preset", "unknown preset 'turbo'"),
        ({"style": "baroque"}, "style", "unknown style 'baroque'"),
        ({"score_models": "../etc"}, "score_models", ""),
    ],
)
def test_bad_identity_options_are_400_naming_the_field_and_cost_nothing(server, extra, field, text):
    client, keys, record = server
    before = keys.get(record.id).balance
    for path in ("/v1/instantid", "/v2/instantid"):
        response = client.post(path, json=_body(**extra))
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["field"] == field and text in error["error"]
    assert keys.get(record.id).balance == before
