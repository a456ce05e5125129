"""Keys, credits, prices and image decoding of the HTTP server (no server needed)."""

from __future__ import annotations

import base64
import http.server
import ipaddress
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from idforge.cli import main
from idforge.demo.samples import square_face_png
from idforge.errors import InputImageError, ParameterError
from idforge.server.db import Store
from idforge.server.images import ImagePolicy, image_bytes, is_public_address
from idforge.server.pricing import Pricing
from idforge.server.store import NotEnoughCredits, UnknownKey, hash_token
from server_fixtures import b64, dark_png

# -- pricing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "images", "credits"),
    [(4, 1, 1), (10, 1, 1), (11, 1, 2), (20, 1, 2), (21, 1, 3), (100, 1, 10), (10, 3, 3)],
)
def test_default_price_is_one_credit_per_started_ten_steps(steps, images, credits):
    assert Pricing().price("insta-depth", steps, images) == credits


def test_price_is_configurable():
    pricing = Pricing(steps_per_block=25, credits_per_block=2, method_multiplier={"faceid": 3})
    assert pricing.price("instantid", 30) == 4
    assert pricing.price("faceid", 30, 2) == 24
    with pytest.raises(ParameterError):
        Pricing(steps_per_block=0)


# -- key store -------------------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "keys.db")
    yield s
    s.close()


def test_keys_are_stored_hashed_and_authenticate(store, tmp_path):
    record, token = store.create_key(5, "alice")
    assert token.startswith("idf_") and len(token) > 40
    assert store.authenticate(token).id == record.id
    assert store.authenticate(token + "x") is None
    assert store.authenticate("") is None
    raw = sqlite3.connect(tmp_path / "keys.db").execute("SELECT hash FROM api_keys").fetchall()
    assert raw == [(hash_token(token),)]
    assert token.encode() not in (tmp_path / "keys.db").read_bytes()


def test_topup_revoke_and_lookup_by_id_or_token(store):
    record, token = store.create_key(2)
    assert store.topup(record.id, 3).balance == 5
    assert store.topup(token, 1).balance == 6
    store.revoke(record.id)
    assert store.authenticate(token) is None
    assert not store.get(record.id).active
    with pytest.raises(UnknownKey):
        store.topup("k_nope", 1)
    with pytest.raises(ParameterError):
        store.topup(record.id, 0)
    with pytest.raises(ParameterError):
        store.create_key(-1)


def test_reserve_commit_release(store):
    record, _ = store.create_key(5)
    assert store.reserve(record.id, 2, "job-a") == 3
    assert store.reserve(record.id, 2, "job-b") == 1
    with pytest.raises(NotEnoughCredits):
        store.reserve(record.id, 2, "job-c")
    store.commit("job-a")
    store.release("job-b")
    store.release("job-b")  # idempotent
    store.commit("job-a")
    after = store.get(record.id)
    assert (after.balance, after.spent) == (3, 2)
    assert store.held() == {}


def test_concurrent_reservations_never_overdraw(tmp_path):
    path = tmp_path / "race.db"
    owner = Store.open(path)
    record, _ = owner.create_key(7)
    stores = [Store.open(path) for _ in range(4)]  # several connections, as several processes would have

    def attempt(i: int) -> bool:
        try:
            stores[i % 4].reserve(record.id, 1, f"job-{i}")
            return True
        except NotEnoughCredits:
            return False

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(40)))
    assert sum(results) == 7
    assert owner.balance(record.id) == 0
    assert len(owner.held()) == 7
    for s in stores:
        s.close()
    owner.close()


def test_keys_cli(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    assert main(["keys", "create", "--credits", "4", "--name", "bob", "--db", db]) == 0
    token = capsys.readouterr().out.strip()
    store = Store.open(db)
    record = store.authenticate(token)
    assert record is not None and record.balance == 4 and record.name == "bob"
    assert main(["keys", "topup", record.id, "6", "--db", db]) == 0
    assert main(["keys", "list", "--db", db]) == 0
    listing = capsys.readouterr().out
    assert record.id in listing and " 10 " in listing and token not in listing
    assert main(["keys", "revoke", token, "--db", db]) == 0
    assert store.authenticate(token) is None
    assert main(["keys", "topup", "k_missing", "1", "--db", db]) == 2
    assert "no such key" in capsys.readouterr().err


# -- images -----------------------------------------------------------------------------------------------------------

PNG = square_face_png()


def test_base64_and_data_urls_decode():
    policy = ImagePolicy()
    assert image_bytes(b64(PNG), "face_image", policy) == PNG
    wrapped = "\n".join(b64(PNG)[i : i + 76] for i in range(0, len(b64(PNG)), 76))
    assert image_bytes(wrapped, "face_image", policy) == PNG
    assert image_bytes("data:image/png;base64," + b64(PNG), "face_image", policy) == PNG
    assert image_bytes(base64.urlsafe_b64encode(PNG).decode().rstrip("="), "face_image", policy) == PNG


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty"),
        ("!!!not base64!!!", "not valid base64"),
        (b64(b"hello world, not an image"), "not an image"),
        (b64(PNG[: len(PNG) // 2]), "truncated"),
        ("data:image/png,rawdata", "data URL"),
        ("ftp://example.com/x.png", "not valid base64"),
    ],
)
def test_bad_images_name_the_field(value, problem):
    with pytest.raises(InputImageError) as info:
        image_bytes(value, "pose_image", ImagePolicy())
    assert str(info.value).startswith("pose_image: ") and problem in str(info.value)


def test_size_and_pixel_caps():
    with pytest.raises(InputImageError, match="over the limit"):
        image_bytes(b64(PNG), "face_image", ImagePolicy(max_bytes=100))
    with pytest.raises(InputImageError, match="pixels"):
        image_bytes(b64(dark_png(200)), "face_image", ImagePolicy(max_pixels=100 * 100))


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_public_address_rule(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/face.png":
            self._reply(200, PNG)
        elif self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", "/face.png")
            self.end_headers()
        elif self.path == "/to-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
        elif self.path == "/slow":
            time.sleep(1.5)
            self._reply(200, PNG)
        else:
            self._reply(404, b"no")

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_to_loopback_is_refused_without_allow_list(image_host):
    with pytest.raises(InputImageError, match="non-public address"):
        image_bytes(f"{image_host}/face.png", "face_image", ImagePolicy())
    with pytest.raises(InputImageError, match="non-public address"):
        image_bytes("http://localhost:9/face.png", "face_image", ImagePolicy())


def test_allow_list_permits_and_limits_still_apply(image_host):
    assert image_bytes(f"{image_host}/face.png", "f", ImagePolicy(allow_hosts=("127.0.0.1",))) == PNG
    assert image_bytes(f"{image_host}/hop", "f", ImagePolicy(allow_hosts=("127.0.0.0/8",))) == PNG
    allowed = ImagePolicy(allow_hosts=("127.0.0.1",))
    with pytest.raises(InputImageError, match="169.254.169.254"):
        image_bytes(f"{image_host}/to-metadata", "f", allowed)  # the redirect hop is checked too
    with pytest.raises(InputImageError, match="HTTP 404"):
        image_bytes(f"{image_host}/missing", "f", allowed)
    with pytest.raises(InputImageError, match="over the limit"):
        image_bytes(f"{image_host}/face.png", "f", ImagePolicy(allow_hosts=("127.0.0.1",), max_bytes=64))
    with pytest.raises(InputImageError, match="timed out|took over"):
        image_bytes(f"{image_host}/slow", "f", ImagePolicy(allow_hosts=("127.0.0.1",), fetch_timeout=0.4))
    with pytest.raises(InputImageError, match="disabled"):
        image_bytes(f"{image_host}/face.png", "f", ImagePolicy(allow_urls=False))


def test_serve_command_runs_with_structured_logs(tmp_path):
    """`idforge serve` as a real process: health answers, every request is logged as JSON with its id."""
    import json
    import os
    import subprocess
    import sys

    import httpx

    from idforge.server.runner import free_port
    from server_fixtures import seed_request

    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "idforge.cli",
        "serve",
        "--port",
        str(port),
        "--db",
        str(tmp_path / "s.db"),
        "--public-url",
        "https://gen.example.org/",
        "--no-warm-up",
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    try:
        deadline = time.monotonic() + 240  # a hang bound only: the server is up when it answers
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", headers={"x-request-id": "probe-42"})
                break
            except httpx.TransportError:
                assert process.poll() is None, "idforge serve exited before answering"
                assert time.monotonic() < deadline, "idforge serve did not answer within 240 s"
                time.sleep(0.1)
        assert health.status_code == 200 and health.json()["status"] in ("loading", "ready")
        assert health.headers["x-request-id"] == "probe-42"
        assert httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200  # --no-warm-up: at once
        assert httpx.get(f"http://127.0.0.1:{port}/v1/insta-depth").status_code == 405
        _, token = Store.open(tmp_path / "s.db").create_key(5)
        job = httpx.post(
            f"http://127.0.0.1:{port}/v2/insta-depth", json=seed_request(), headers={"x-api-key": token}
        ).json()
        assert job["status_url"] == f"https://gen.example.org/v2/requests/{job['request_id']}/status"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    probe = [e for e in entries if e.get("request_id") == "probe-42"]
    assert probe and probe[0]["path"] == "/health" and probe[0]["status"] == 200
    assert any(e.get("status") == 405 for e in entries)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--result-ttl", "0"], "--result-ttl"),
        (["--webhook-timeout", "-1"], "--webhook-timeout"),
        (["--warm-up", "insta-depth,bogus"], "--warm-up"),
        (["--public-url", "ftp://example.com"], "--public-url"),
    ],
)
def test_serve_refuses_bad_flags_before_starting(tmp_path, capsys, flags, named):
    code = main(["serve", "--db", str(tmp_path / "s.db"), *flags])
    assert code != 0 and named in capsys.readouterr().err
