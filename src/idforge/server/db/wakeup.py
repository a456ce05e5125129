"""Wake-up hints between the API, the workers and the waiters: "a job was queued", "job X ended", "cancel X".

Hints only, never the truth (the tables are): a hint that is lost costs at most one polling interval. SQLite has
one host, so an in-process hub per database file is enough. PostgreSQL uses LISTEN/NOTIFY: the store sends
`pg_notify` inside the transaction that changed the job (it fires at commit, to every process), and one listener
thread per process with its own connection hands the notices to local subscribers, reconnecting when the server
comes back.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable

log = logging.getLogger("idforge.server.db")

QUEUED = "idforge_queued"  # payload: job id (a worker should look)
ENDED = "idforge_ended"  # payload: job id (its waiter should look)
CANCEL = "idforge_cancel"  # payload: job id (its worker should stop at the next step)
CHANNELS = (QUEUED, ENDED, CANCEL)

Callback = Callable[[str], None]


class Hub:
    """Subscribers per channel; `deliver` calls them (never raising into the caller)."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callback]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        """Register `callback(payload)`; returns the function that unsubscribes it."""
        with self._lock:
            self._subscribers[channel].append(callback)
        self._started()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers[channel]:
                    self._subscribers[channel].remove(callback)

        return unsubscribe

    def deliver(self, channel: str, payload: str) -> None:
        with self._lock:
            callbacks = list(self._subscribers.get(channel, ()))
        for callback in callbacks:
            try:
                callback(payload)
            except Exception:  # noqa: BLE001 - one bad subscriber must not starve the others
                log.exception("wake-up subscriber failed")

    def _started(self) -> None:
        """Hook for hubs that need a listener once somebody subscribes."""

    def close(self) -> None:
        with self._lock:
            self._subscribers.clear()


_LOCAL_HUBS: dict[str, Hub] = {}
_LOCAL_LOCK = threading.Lock()


def local_hub(key: str) -> Hub:
    """The in-process hub of one SQLite file: every store opened on that file in this process shares it."""
    with _LOCAL_LOCK:
        hub = _LOCAL_HUBS.get(key)
        if hub is None:
            hub = _LOCAL_HUBS[key] = Hub()
        return hub


class PostgresHub(Hub):
    """LISTEN on the idforge channels from one thread with its own autocommit psycopg connection."""

    def __init__(self, conninfo: str, reconnect_s: float = 1.0) -> None:
        super().__init__()
        self.conninfo = conninfo
        self.reconnect_s = reconnect_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self.listening = threading.Event()

    def _started(self) -> None:
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="idforge-listen", daemon=True)
                self._thread.start()
        self.listening.wait(5.0)

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    for channel in CHANNELS:
                        conn.execute(f"LISTEN {channel}")
                    self.listening.set()
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            self.deliver(notice.channel, notice.payload)
            except Exception as exc:  # noqa: BLE001 - the server went away: hints pause, polling carries on
                self.listening.clear()
                log.warning("LISTEN connection lost; retrying", extra={"fields": {"error": str(exc)[:200]}})
                self._stop.wait(self.reconnect_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3.0)
        super().close()
