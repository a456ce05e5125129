"""Fuzz that reaches generation: valid bodies with decodable images and edge values, sent to the real engine on
the tiny kit, plus random corruptions of real images.

test_server_schema_fuzz.py checks the contract on the fake generator, where image fields never decode. Here every
body is one a client could send: real PNG/JPEG faces and poses (base64 or data URLs), sizes, steps, guidance,
seeds, strengths and windows at and past their limits, styles, presets, several persons, best_of, num_images, and
now and then one image corrupted at a random place (truncated, bytes flipped, bad base64, a lying header). Hypothesis
draws new examples every run (no fixed seed: it prints the one that failed); a handful of explicit examples pin
the edges every run. For every request, on a real server with a real key:

- never a 5xx;
- a body with nothing wrong by construction is a 200 with a decodable JPEG of the asked size, charged exactly what
  the reply says (x-credits-charged), the key's balance down by that and nothing left held;
- every 4xx is JSON naming its field, and when the body had one known fault the field is that fault's;
- a refused request costs nothing: balance, spent and held credits unchanged.
"""

from __future__ import annotations

import base64
import io
import os
import re
import zlib
from dataclasses import dataclass, field

import httpx
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from idforge.demo.samples import square_face_png
from server_fixtures import running_server

MAX_SEED = 999_999_999_999_999  # the published seed range (MethodBody.seed), written here
EXAMPLES = int(os.environ.get("IDFORGE_ENGINE_FUZZ_EXAMPLES", "45"))

FACE_PNG = square_face_png()
POSE_PNG = square_face_png(box=(72, 40, 152, 120))


def _jpeg(png: bytes, quality: int = 92) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


FACE_JPEG = _jpeg(FACE_PNG)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bomb_png() -> bytes:
    """A valid PNG whose header says 60000 x 60000 (far past any pixel limit), with one tiny IDAT."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@dataclass
class Case:
    """A request body, the endpoint, and what is wrong with it by construction (field names)."""

    method: str
    body: dict
    faults: set[str] = field(default_factory=set)
    corrupted: str | None = (
        None  # a field whose image was corrupted (may still decode: then no fault is known)
    )


# -- strategies ------------------------------------------------------------------------------------------------
# field: (valid values, edges included; values past the field's limits). Written here from the published ranges.
COMMON = {
    "num_inference_steps": ([4, 4, 5, 6, 8], [3, 101, 0]),
    "guidance_scale": ([1, 1.5, 3, 7.5, 15], [0.5, 15.5]),
    "seed": ([-1, 0, 7, MAX_SEED], [-2, MAX_SEED + 1]),
    "style": ([None, "none", "photo", "watercolor", "neon", "film-noir"], ["no-such-style"]),
    "preset": ([None, None, None, "lightning-4", "hyper-8", "lcm"], ["lightning-3", "bogus"]),
    "best_of": ([1, 1, 1, 2], [0, 17]),
}
OWN = {
    "instantid": {
        "ip_weight": ([0.0, 0.8, 3.0], [-0.1, 3.1]),
        "cn_strength": ([0.0, 0.8, 10.0], [10.5]),
        "start_at": ([0.0, 0.25, 0.5], [-0.1, 1.1]),
        "num_images": ([1, 1, 2], [0, 5]),
    },
    "faceid": {
        "adapter": (["faceid-sd15", "faceid-sdxl", "faceid-plusv2-sdxl"], ["faceid-xl"]),
        "weight": ([-1.0, 0.0, 1.0, 3.0], [-1.5, 3.5]),
        "lora_strength": ([-4.0, 0.0, 0.6, 4.0], [4.5]),
        "num_images": ([1, 1, 2], [9]),
    },
    "insta-depth": {
        "ip_weight": ([0.0, 0.8, 3.0], [3.5]),
        "depth_strength": ([0.0, 0.5, 1.0, 10.0], [-0.5, 10.5]),
    },
}
# sizes always given when valid (the default size follows the pose photo: far too slow for a fuzz)
SIZES_OK = [(64, 64), (64, 64), (128, 64), (64, 96), (72, 64)]
SIZES_BAD = [(60, 64), (56, 56), (2056, 64), (64, None), (None, 72), (0, 64)]

CORRUPTIONS = (
    "truncate",
    "flip",
    "bad-base64",
    "empty",
    "random-bytes",
    "bomb",
    "data-url",
    "data-url-garbage",
    "text",
)


@st.composite
def image_value(draw, data: bytes, field_name: str, case_faults: set[str], corrupt: bool) -> tuple[str, bool]:
    """A base64 image (maybe corrupted); returns (value, corrupted)."""
    if not corrupt:
        if draw(st.booleans()):
            return f"data:image/png;base64,{_b64(data)}", False
        return _b64(data), False
    kind = draw(st.sampled_from(CORRUPTIONS))
    if kind == "truncate":
        cut = draw(st.integers(min_value=1, max_value=len(data) - 1))
        return _b64(data[:cut]), True
    if kind == "flip":
        raw = bytearray(data)
        for _ in range(draw(st.integers(min_value=1, max_value=8))):
            at = draw(st.integers(min_value=0, max_value=len(raw) - 1))
            raw[at] ^= draw(st.integers(min_value=1, max_value=255))
        return _b64(bytes(raw)), True
    if kind == "bad-base64":
        text = _b64(data)
        at = draw(st.integers(min_value=0, max_value=len(text) - 1))
        case_faults.add(field_name)
        return text[:at] + "!*" + text[at:], True
    if kind == "empty":
        case_faults.add(field_name)
        return "", True
    if kind == "random-bytes":
        case_faults.add(field_name)
        return _b64(draw(st.binary(min_size=1, max_size=512))), True
    if kind == "bomb":
        case_faults.add(field_name)
        return _b64(_bomb_png()), True
    if kind == "data-url":
        return f"data:image/jpeg;base64,{_b64(data)}", False  # a lying mime type is still the same image
    if kind == "data-url-garbage":
        case_faults.add(field_name)
        return "data:image/png;base64,", True
    case_faults.add(field_name)
    return "just some text, not an image", True


@st.composite
def cases(draw) -> Case:
    """One body: all valid (half the time), or with one value past its limits, or with one image corrupted."""
    method = draw(st.sampled_from(["instantid", "faceid", "insta-depth"]))
    fields = COMMON | OWN[method]
    kind = draw(st.sampled_from(["valid", "valid", "bad-value", "corrupt-image"]))
    bad = draw(st.sampled_from([*fields, "size"])) if kind == "bad-value" else None
    faults: set[str] = set()
    prompt = draw(st.sampled_from(["a photo", "a portrait, ünïcødé 日本", "p" * 4000]))
    body: dict = {"prompt": prompt, "base64": True}
    for name, (good, past) in fields.items():
        if name == bad:
            body[name] = draw(st.sampled_from(past))
            faults.add(name)
        elif draw(st.booleans()) or name == "best_of":
            value = draw(st.sampled_from(good))
            if value is not None:
                body[name] = value
    width, height = draw(st.sampled_from(SIZES_BAD if bad == "size" else SIZES_OK))
    body |= {k: v for k, v in (("width", width), ("height", height)) if v is not None}
    if bad == "size":
        faults |= {"width", "height"} if width is None or height is None else {"width"}
    if method == "instantid" and body.get("start_at", 0.0) in (0.25, 0.5) and draw(st.booleans()):
        body["end_at"] = 1.0

    image_fields = {"instantid": ["face_image", "pose_image"], "faceid": ["face_image"]}
    image_fields["insta-depth"] = ["face_image", "pose_image"]
    corrupt_field = draw(st.sampled_from(image_fields[method])) if kind == "corrupt-image" else None

    def image(name: str, data: bytes) -> str:
        value, _ = draw(image_value(data, name, faults, corrupt=name == corrupt_field))
        return value

    persons = method == "instantid" and draw(st.integers(min_value=0, max_value=4)) == 0
    if persons and corrupt_field == "pose_image":
        corrupt_field = "face_image"  # no pose with persons: corrupt the first person's face instead
    if persons:
        regions = draw(st.sampled_from([("left", "right"), ("top", "bottom"), ("left", "left")]))
        body["persons"] = [
            {"face_image": image("face_image" if i == 0 else "_", FACE_PNG), "region": region}
            for i, region in enumerate(regions)
        ]  # no pose: each person's own keypoints are fitted into its region
        if "face_image" in faults:
            faults.discard("face_image")
            faults.add("persons[0].face_image")
        if corrupt_field:
            corrupt_field = "persons[0].face_image"
        if regions == ("left", "left"):
            faults.add("persons")
    else:
        body["face_image"] = image("face_image", draw(st.sampled_from([FACE_PNG, FACE_JPEG])))
        if method != "faceid":
            body["pose_image"] = image("pose_image", POSE_PNG)
    if body.get("best_of", 1) > 1 and body.get("num_images", 1) > 1:
        faults.add("best_of")  # best-of-N returns one image
    return Case(method=method, body=body, faults=faults, corrupted=corrupt_field)


# -- the server ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tiny_kit, tmp_path_factory):
    db = tmp_path_factory.mktemp("engine-fuzz") / "server.db"
    with running_server(db, None, models_dirs=[str(tiny_kit)], warm_up=(), queue_size=8) as (url, keys):
        record, token = keys.create_key(1_000_000)
        with httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=600) as client:
            yield client, keys, record


def top_level(name: str) -> str:
    return re.split(r"[.\[]", name, maxsplit=1)[0]


def check(live, case: Case) -> int:
    client, keys, record = live
    before = keys.get(record.id)
    response = client.post(f"/v1/{case.method}", json=case.body)
    after = keys.get(record.id)
    where = f"{case.method} {response.status_code} faults={sorted(case.faults)} corrupted={case.corrupted}"
    assert response.status_code < 500, f"{where}: {response.text[:500]}"
    assert keys.held() == {}, where
    if response.status_code == 200:
        assert not case.faults, f"{where}: accepted a body with a known fault"
        charged = int(response.headers["x-credits-charged"])
        assert charged >= 1 and before.balance - after.balance == charged, (where, charged, before, after)
        assert after.spent - before.spent == charged, where
        payload = response.json()
        images = payload.get("images") or [payload["image"]]
        count = case.body.get("num_images", 1)
        assert len(images) == count, where
        for text in images:
            image = Image.open(io.BytesIO(base64.b64decode(text)))
            assert image.format == "JPEG", where
            image.load()
            if "width" in case.body:
                assert image.size == (case.body["width"], case.body["height"]), where
        return 200
    assert (after.balance, after.spent) == (before.balance, before.spent), f"{where}: a refusal was charged"
    error = response.json()
    assert error["status"] == response.status_code, where
    assert response.status_code == 400, f"{where}: {error}"
    named = error.get("field")
    assert named, f"{where}: the 400 names no field: {error}"
    known = set(case.body) | {top_level(f) for f in case.faults} | {"face_image", "persons"}
    assert top_level(named) in known, f"{where}: the 400 names a field the body has not got: {error}"
    if len(case.faults) == 1:
        (fault,) = case.faults
        assert named == fault or top_level(named) == top_level(fault), f"{where}: {error}"
    elif not case.faults:
        # Nothing known wrong: only a corrupted image that still decoded may be refused (no face in it, or its
        # damaged pixels), and then by the corrupted field.
        assert case.corrupted is not None, f"{where}: a body with no known fault was refused: {error}"
        assert named.endswith(case.corrupted) or named.startswith("persons"), f"{where}: {error}"
    else:
        assert any(top_level(named) == top_level(f) for f in case.faults), f"{where}: {error}"
    return response.status_code


def _case(method: str, faults: set[str] | None = None, **body) -> Case:
    base = {
        "prompt": "a photo",
        "base64": True,
        "width": 64,
        "height": 64,
        "num_inference_steps": 4,
        "seed": 1,
    }
    if "persons" not in body:
        base["face_image"] = _b64(FACE_PNG)
        if method != "faceid":
            base["pose_image"] = _b64(POSE_PNG)
    return Case(method=method, body=base | body, faults=faults or set())


EXPLICIT = [
    _case("instantid", num_inference_steps=100, guidance_scale=15, seed=MAX_SEED),
    _case("instantid", faults={"persons"}, persons=[{"face_image": _b64(FACE_PNG), "region": "left"}] * 2),
    _case("instantid", persons=[{"face_image": _b64(FACE_PNG), "region": r} for r in ("left", "right")]),
    _case("faceid", adapter="faceid-sd15", best_of=2, style="watercolor", width=72, height=64),
    _case("insta-depth", preset="lightning-4", depth_strength=0.0, width=64, height=96),
    _case("insta-depth", faults={"pose_image"}, pose_image=_b64(_bomb_png())),
    _case("faceid", faults={"face_image"}, face_image=_b64(FACE_PNG[: len(FACE_PNG) // 2])),
]


@pytest.mark.timeout(900)
def test_real_engine_fuzz_never_5xx_names_fields_and_charges_only_success(live):
    outcomes: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is a real generation
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases())
    def fuzz(case):
        outcomes.append(check(live, case))

    for case in EXPLICIT:
        fuzz = example(case=case)(fuzz)
    fuzz()
    generated = outcomes[len(EXPLICIT) :]
    # the fuzz reached generation, and refusals too: neither side was left untried
    assert generated.count(200) >= EXAMPLES // 4, generated
    assert len(generated) - generated.count(200) >= EXAMPLES // 8, generated
