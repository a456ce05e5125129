"""Webhooks: Standard Webhooks signing, SSRF-guarded delivery, and the dispatcher that drains the outbox.

When a /v2 job with a `webhook_url` ends, its final status body is already in the outbox (outbox.py, written in the
job's own transaction). The dispatcher thread claims due messages and POSTs each from a small thread pool, so a
slow or dead receiver never holds up the worker, the API or other receivers. Headers (SPEC.md section 6):
`webhook-id` (the message id, the same on every retry), `webhook-timestamp` (Unix seconds) and `webhook-signature`
(`v1,` + base64 HMAC-SHA256 of "{id}.{timestamp}.{body}", keyed with the key's `whsec_` secret), made by the
`standardwebhooks` package. A 2xx answer delivers; anything else (an error, a timeout, a refused redirect) is
retried with exponential backoff until `retry_for` seconds after the job ended, then the message is given up
(still listed, with its last error). Every hop, redirects included, passes the image-URL SSRF guard.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urljoin

from idforge import __version__
from idforge.errors import IdforgeError, ParameterError
from idforge.server.images import ImagePolicy, pin_url
from idforge.server.outbox import WebhookMessage, WebhookOutbox

log = logging.getLogger("idforge.server.webhooks")

FIELD = "webhook_url"
MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class WebhookPolicy:
    allow_hosts: Sequence[str] = field(default_factory=tuple)  # the image URL allow-list, shared
    timeout: float = 10.0  # per attempt, each of connect / send / first byte
    max_redirects: int = 3
    retry_for: float = 3600.0  # give up this long after the job ended (results are kept one hour by default)
    first_retry: float = 5.0  # then doubling
    max_interval: float = 600.0
    workers: int = 4
    poll_interval: float = 0.25

    @property
    def url_policy(self) -> ImagePolicy:
        return ImagePolicy(allow_hosts=tuple(self.allow_hosts))

    def retry_at(self, attempts: int, created: float, now: float) -> float | None:
        """When to try again after `attempts` failed attempts; None once the retry window is over."""
        delay = min(self.first_retry * 2 ** max(attempts - 1, 0), self.max_interval)
        when = now + delay
        return when if when <= created + self.retry_for else None


def check_webhook_url(url: str, policy: WebhookPolicy) -> str:
    """Validate a request's `webhook_url` before the job is queued (400 naming the field when it is refused)."""
    if len(url) > MAX_URL_LENGTH:
        raise ParameterError(FIELD, f"URL is longer than {MAX_URL_LENGTH} characters")
    pin_url(url.strip(), FIELD, policy.url_policy)
    return url.strip()


def sign(secret: str, message_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` header value (Standard Webhooks v1)."""
    from standardwebhooks.webhooks import Webhook

    return Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=body)


def deliver(message: WebhookMessage, secret: str, policy: WebhookPolicy) -> int:
    """One attempt: POST the signed body, following redirects by hand (each hop SSRF-checked). Returns the final
    HTTP status; raises IdforgeError for a refused URL and httpx errors for network trouble."""
    import httpx

    timestamp = datetime.now(tz=timezone.utc)
    headers = {
        "content-type": "application/json",
        "user-agent": f"idforge-webhooks/{__version__}",
        "webhook-id": message.id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": sign(secret, message.id, timestamp, message.body),
    }
    url = message.url
    with httpx.Client(timeout=policy.timeout, follow_redirects=False, trust_env=False) as client:
        for _hop in range(policy.max_redirects + 1):
            pinned = pin_url(url, FIELD, policy.url_policy)
            with client.stream(
                "POST",
                pinned.target,
                content=message.body.encode("utf-8"),
                headers=headers | {"Host": pinned.host_header},
                extensions=pinned.extensions,
            ) as response:  # the answer's body is never read: a receiver cannot make us download anything
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                return response.status_code
    raise IdforgeError(f"{FIELD}: redirected more than {policy.max_redirects} times")


class WebhookDispatcher:
    """A thread that drains the outbox: due messages are sent from a pool; outcomes are written back."""

    def __init__(
        self,
        outbox: WebhookOutbox,
        secret_for: Callable[[str], str],
        policy: WebhookPolicy | None = None,
    ) -> None:
        self.outbox = outbox
        self.secret_for = secret_for
        self.policy = policy or WebhookPolicy()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        reclaimed = self.outbox.reclaim()
        if reclaimed:
            log.info("webhooks due again after restart", extra={"fields": {"messages": reclaimed}})
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.policy.workers, thread_name_prefix="idforge-webhook")
        self._thread = threading.Thread(
            target=self._run, args=(self._pool,), name="idforge-webhooks", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming; attempts in flight are not waited for beyond `timeout` (unfinished ones are retried
        after the next start, with the same message id)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _lease(self) -> float:
        return self.policy.timeout * 3 * (self.policy.max_redirects + 1) + 5.0

    def _run(self, pool: ThreadPoolExecutor) -> None:
        while not self._stop.is_set():
            try:
                for message in self.outbox.claim_due(time.time(), self._lease()):
                    with self._lock:
                        if message.id in self._in_flight:
                            continue
                        self._in_flight.add(message.id)
                    pool.submit(self._attempt, message)
            except Exception:  # a database hiccup: try again on the next tick
                log.error("webhook dispatcher error", extra={"fields": {"trace": traceback.format_exc()}})
            self._stop.wait(self.policy.poll_interval)

    def _attempt(self, message: WebhookMessage) -> None:
        status: int | None = None
        error = ""
        try:
            status = deliver(message, self.secret_for(message.key_id), self.policy)
            if 200 <= status < 300:
                self.outbox.record_success(message.id, status)
                log.info(
                    "webhook delivered",
                    extra={"fields": {"job_id": message.job_id, "webhook_id": message.id, "status": status}},
                )
                return
            error = f"receiver answered HTTP {status}"
        except IdforgeError as exc:
            error = f"refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - network trouble of any kind is a failed attempt
            error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            with self._lock:
                self._in_flight.discard(message.id)
        try:
            retry = self.policy.retry_at(message.attempts + 1, message.created, time.time())
            self.outbox.record_failure(message.id, status, error, retry)
            log.warning(
                "webhook attempt failed",
                extra={
                    "fields": {
                        "job_id": message.job_id,
                        "webhook_id": message.id,
                        "error": error,
                        "attempt": message.attempts + 1,
                        "retry_at": retry,
                    }
                },
            )
        except Exception:
            log.error("webhook bookkeeping error", extra={"fields": {"trace": traceback.format_exc()}})
