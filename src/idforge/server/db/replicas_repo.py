"""The `replicas` table: each worker's heartbeat row (device, state, current job, counters, latency histograms)."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from idforge.server.db.database import Database
from idforge.server.db.schema import replicas


class ReplicasRepository:
    """The `replicas` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def heartbeat(self, replica: str, *, conn: Connection | None = None, **values: Any) -> None:
        """Insert or update this worker's row (device, state, current job, counters, histograms)."""
        now = time.time()
        with self.db.transaction(conn) as c:
            updated = c.execute(
                sa.update(replicas).where(replicas.c.id == replica).values(heartbeat=now, **values)
            ).rowcount
            if not updated:
                c.execute(sa.insert(replicas).values(id=replica, started=now, heartbeat=now, **values))

    def recent(
        self, seen_within_s: float = 3600.0, *, conn: Connection | None = None
    ) -> list[dict[str, Any]]:
        """Workers heard from recently, oldest first."""
        with self.db.read(conn) as c:
            rows = c.execute(
                sa.select(replicas)
                .where(replicas.c.heartbeat >= time.time() - seen_within_s)
                .order_by(replicas.c.started)
            )
            return [dict(r._mapping) for r in rows]
