"""Jobs: what a job is (spec, output, delivery, errors) and the contract between the queue and a generator.

Every generation, synchronous (/v1) or not (/v2), is a job row in the database (server/db: the durable queue),
with a status of the v2 contract (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELED). The HTTP side submits and
waits (server/service.py); workers (server/worker.py) claim jobs, run them through a `Generator` (which holds the
Engine, so models are loaded once and never touched by two threads) and settle them.

Credits are held at submission. A /v2 job's are charged by its worker when the result is stored; a /v1 job's by
the HTTP handler once it hands the image to a client that is still connected (a client that left is not charged).
Failed and canceled jobs release theirs. Cancel is a flag in the job row that the step callback sees, so a running
job stops at its next step.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from idforge import errors
from idforge.server.states import CancelAction

log = logging.getLogger("idforge.server.jobs")

ProgressCallback = Callable[[int, int], None]
WarmUpReport = Callable[[str], None]


@dataclass
class JobSpec:
    """What a generator needs: the method, its JSON parameters, and the input images as raw bytes."""

    method: str
    params: dict[str, Any]
    images: dict[str, bytes | list[bytes] | None]


@dataclass
class JobOutput:
    """What a generator returns."""

    images: list[Image.Image]
    seeds: list[int]
    extras: dict[str, Image.Image] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)


class Generator(Protocol):
    """Runs one job; called only from the worker thread. May also have `warm_up(report, methods) -> dict`,
    called once on the worker thread before the first job (returns methods that cannot run, with the reason), and
    `generate_batch(specs, progress) -> list[JobOutput | Exception]`: jobs with one batch key (server/batching.py)
    in one denoising pass, one output or exception per job (the worker uses it when max_batch > 1)."""

    def generate(self, spec: JobSpec, progress: ProgressCallback) -> JobOutput: ...


@runtime_checkable
class BatchGenerator(Generator, Protocol):
    """A Generator with the batched path (`generate_batch`, see Generator)."""

    def generate_batch(
        self, specs: Sequence[JobSpec], progress: ProgressCallback
    ) -> list[JobOutput | BaseException]: ...


class JobError(Exception):
    """A job failed in a way the client should hear about: HTTP status, one-line message, the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status = status
        self.message = message
        self.field = field
        super().__init__(message)


class JobCanceled(Exception):
    """Raised from the progress callback when the job's cancel flag is set: the generation stops at this step."""


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the queue is full; retry after {retry_after} s")


class ServerStopping(Exception):
    pass


@dataclass
class Delivery:
    """A finished job, encoded: JPEG bytes of each image, extras as JPEG, seeds, warnings, timings, recipe."""

    images: list[bytes]
    seeds: list[int]
    extras: dict[str, bytes]
    warnings: list[str]
    timings: dict[str, float]
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "images": [base64.b64encode(b).decode("ascii") for b in self.images],
                "seeds": self.seeds,
                "extras": {k: base64.b64encode(v).decode("ascii") for k, v in self.extras.items()},
                "warnings": self.warnings,
                "timings": self.timings,
                "recipe": self.recipe,
            },
            default=str,
        )

    @classmethod
    def from_json(cls, text: str) -> Delivery:
        data = json.loads(text)
        return cls(
            images=[base64.b64decode(b) for b in data["images"]],
            seeds=list(data["seeds"]),
            extras={k: base64.b64decode(v) for k, v in data.get("extras", {}).items()},
            warnings=list(data.get("warnings", [])),
            timings=dict(data.get("timings", {})),
            recipe=dict(data.get("recipe", {})),
        )


def encode_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _encode_payload(spec: JobSpec) -> str:
    def enc(value):
        if value is None:
            return None
        if isinstance(value, list):
            return [base64.b64encode(v).decode("ascii") for v in value]
        return base64.b64encode(value).decode("ascii")

    return json.dumps({"params": spec.params, "images": {k: enc(v) for k, v in spec.images.items()}})


def _decode_payload(method: str, text: str) -> JobSpec:
    data = json.loads(text)

    def dec(value):
        if value is None:
            return None
        if isinstance(value, list):
            return [base64.b64decode(v) for v in value]
        return base64.b64decode(value)

    return JobSpec(method, data["params"], {k: dec(v) for k, v in data["images"].items()})


@dataclass
class Submitted:
    job_id: str
    position: int
    balance: int


@dataclass(frozen=True)
class CancelOutcome:
    """What POST /v2/requests/{id}/cancel did: removed (was queued), stopped or stopping (was running), or
    already_finished; `status` is the job's status after it."""

    action: CancelAction
    status: str  # a JobStatus value


# How a generator's exception reaches the client: the input's fault is a 400 with its own message (and field), a
# model set-up problem a 500 that does not leak server paths, any other IdforgeError a 400.
_INPUT_ERRORS = (errors.InputImageError, errors.NoFaceError, errors.ParameterError)
_SETUP_ERRORS = (errors.ModelNotFoundError, errors.ModelFormatError)


def _map_exception(exc: BaseException) -> JobError:
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, _INPUT_ERRORS):
        return JobError(400, str(exc), getattr(exc, "name", None))
    if isinstance(exc, _SETUP_ERRORS):
        return JobError(500, "the server's models are not set up for this method")
    if isinstance(exc, errors.IdforgeError):
        return JobError(400, str(exc))
    return JobError(500, "internal error while generating")
