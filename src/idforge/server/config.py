"""`ServerConfig`: everything one server needs (the database, the models, limits, pricing, timings), the same
object for `idforge serve`, the Ray deployments (pickled to every replica) and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idforge.server.images import ImagePolicy
from idforge.server.pricing import Pricing
from idforge.server.webhooks import WebhookPolicy


@dataclass
class ServerConfig:
    db_path: (
        Path | str
    )  # a SQLite file, or a postgresql://user@host:port/db URL (the store of keys, credits, jobs)
    models_dirs: list[str] = field(default_factory=list)
    base: str | None = None
    face_models: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    fast: Any = None  # engine/fastpath.py FastPath (None: the engine's exact defaults)
    queue_size: int = 32
    retry_after: int = 5
    max_body_bytes: int = 32 * 1024 * 1024
    images: ImagePolicy = field(default_factory=ImagePolicy)
    pricing: Pricing = field(default_factory=Pricing)
    shutdown_timeout: float = 10.0
    cancel_wait_s: float = (
        2.0  # how long POST .../cancel waits for a running job to stop before answering "stopping"
    )
    public_url: str | None = None  # e.g. https://api.example.com: the base of every absolute URL
    trust_proxy: bool = False  # honour X-Forwarded-Proto / X-Forwarded-Host
    result_ttl: float = 3600.0  # seconds a finished /v2 job's result is kept
    webhooks: WebhookPolicy | None = None  # None: the image URL allow-list, default timings
    # methods whose models load before ready; None: every registered method (a plugin's too)
    warm_up: tuple[str, ...] | None = None
    lease_s: float = 30.0  # a worker that stops renewing for this long loses its job to another worker
    max_attempts: int = 3  # runs of one job (its workers died) before it is failed and refunded
    max_batch: int = 1  # queued jobs a worker may run in one denoising pass (server/batching.py)
    log_level: str = "info"

    @property
    def webhook_policy(self) -> WebhookPolicy:
        """The webhook policy in force: the configured one, or the image URL allow-list with default timings."""
        return self.webhooks or WebhookPolicy(allow_hosts=tuple(self.images.allow_hosts))
