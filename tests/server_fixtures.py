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
from idforge.server.jobs import JobError, JobOutput, JobSpec
from idforge.server.runner import BackgroundServer
from idforge.server.store import SQLiteKeyStore


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

    `gate` (an Event) holds every job until set; a prompt of "fail" fails with a 400, "crash" raises a bug."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def generate(self, spec: JobSpec, progress) -> JobOutput:
        self.gate.wait(60)
        steps = spec.params["num_inference_steps"]
        for step in range(1, steps + 1):
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
        )


@contextmanager
def running_server(db: Path, generator=None, **config):
    """A real uvicorn server on loopback with its own key store; yields (url, keys)."""
    keys = SQLiteKeyStore(db)
    app = create_app(ServerConfig(db_path=db, **config), generator=generator, keys=keys)
    server = BackgroundServer(app).start()
    try:
        yield server.url, keys
    finally:
        server.stop()
        keys.close()
