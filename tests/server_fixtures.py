"""Helpers for the server tests: images as the API takes them, a controllable fake generator, a server runner."""

from __future__ import annotations

import base64
import io
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from idforge.demo.samples import square_face_png
from idforge.server.app import ServerConfig, create_app
from idforge.server.db import Store
from idforge.server.jobs import JobError, JobOutput, JobSpec
from idforge.server.runner import BackgroundServer


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def face_b64(**kwargs) -> str:
    return b64(square_face_png(**kwargs))


def dark_png(size: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 10, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def seed_request(**overrides) -> dict:
    """The seed's example request shape, at the tiny kit's size."""
    body = {
        "prompt": "Photo of a woman wearing a Superman costume",
        "negative_prompt": "lowquality, badquality, sketches",
        "face_image": face_b64(),
        "pose_image": face_b64(box=(72, 40, 152, 120)),
        "num_inference_steps": 4,
        "guidance_scale": 3,
        "seed": 354849415,
        "base64": False,
        "width": 64,
        "height": 64,
    }
    return body | overrides


class FakeGenerator:
    """Stands in for the engine in queue and credit mechanics tests: a grey image per output, no models.

    `gate` (an Event) holds every job until set; `step_delay` seconds pass at every step (so a job can be caught
    running); a prompt of "fail" fails with a 400, "crash" raises a bug."""

    def __init__(self, delay: float = 0.0, step_delay: float = 0.0) -> None:
        self.delay = delay
        self.step_delay = step_delay
        self.started: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def generate(self, spec: JobSpec, progress) -> JobOutput:
        self.gate.wait(60)
        with self.lock:
            self.started.append(spec.params["prompt"])
        steps = spec.params["num_inference_steps"]
        for step in range(1, steps + 1):
            if self.step_delay:
                time.sleep(self.step_delay)
            progress(step, steps)
        if self.delay:
            time.sleep(self.delay)
        prompt = spec.params["prompt"]
        with self.lock:
            self.calls.append(prompt)
        if prompt == "fail":
            raise JobError(400, "face image 0: no face found", "face_image")
        if prompt == "crash":
            raise RuntimeError("secret internal detail /etc/passwd")
        count = spec.params.get("num_images", 1)
        seed = max(spec.params["seed"], 0)
        return JobOutput(
            images=[Image.new("RGB", (64, 64), (120, 130, 140)) for _ in range(count)],
            seeds=[seed + i for i in range(count)],
            recipe={"method": spec.method, "prompt": prompt, "seed": seed, "steps": steps},
        )


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that takes webhooks and records every attempt (headers, raw body).

    `fail_first` answers 500 to the first N attempts of each message id; `delay` sleeps before answering;
    `redirect_to` answers 307 to that URL instead. `times[i]` is when attempt i arrived (time.monotonic()).
    `port`: listen there (a receiver that comes back where a webhook URL points)."""

    def __init__(self, port: int = 0) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self
        self.attempts: list[tuple[dict[str, str], bytes]] = []
        self.times: list[float] = []
        self.fail_first = 0
        self.delay = 0.0
        self.redirect_to: str | None = None
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.attempts.append((headers, body))
                    receiver.times.append(time.monotonic())
                    seen = sum(
                        1 for h, _ in receiver.attempts if h.get("webhook-id") == headers.get("webhook-id")
                    )
                if receiver.delay:
                    time.sleep(receiver.delay)
                if receiver.redirect_to:
                    self.send_response(307)
                    self.send_header("location", receiver.redirect_to)
                    self.end_headers()
                    return
                self.send_response(500 if seen <= receiver.fail_first else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def for_job(self, job_id: str) -> list[tuple[dict[str, str], bytes]]:
        import json

        with self.lock:
            return [(h, b) for h, b in self.attempts if json.loads(b).get("request_id") == job_id]

    def times_for(self, job_id: str) -> list[float]:
        import json

        with self.lock:
            return [
                t
                for (_, b), t in zip(self.attempts, self.times, strict=True)
                if json.loads(b).get("request_id") == job_id
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll until `predicate()` is truthy; returns its value (fails the test with the last value on timeout)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    assert value, f"condition not met within {timeout} s"
    return value


def finished_result(client, url: str, timeout: float = 300.0) -> dict:
    """A v2 job's result (or status) body once it is COMPLETED or FAILED: `url` is its response_url or status_url."""
    return wait_for(
        lambda: (body := client.get(url).json())["status"] in ("COMPLETED", "FAILED") and body,
        timeout=timeout,
        interval=0.2,
    )


@contextmanager
def running_server(db: Path, generator=None, **config):
    """A real uvicorn server on loopback with its own key store; yields (url, keys)."""
    keys = Store.open(db)
    app = create_app(ServerConfig(db_path=db, **config), generator=generator, keys=keys)
    server = BackgroundServer(app).start()
    try:
        yield server.url, keys
    finally:
        server.stop()
        keys.close()
