"""`open_store`: the one way the server's processes open the database (the embedded server, every Ray ingress
and model replica, the CLI), so every `Store` speaks the HTTP contract: the webhook a job's end queues carries
exactly `contract.status_body`, what a poller of GET /v2/requests/{id}/status sees, whichever process ended it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from idforge.server.contract import status_body
from idforge.server.db import Store

if TYPE_CHECKING:
    from idforge.server.config import ServerConfig


def speaks_contract(store: Store) -> Store:
    """`store`, set to write the contract's bodies (also for a store a caller opened itself and hands over)."""
    store.webhook_body = status_body  # a webhook carries exactly what a poller of the status would see
    return store


def open_store(config: ServerConfig | str | Path | None) -> Store:
    """The Store of `config.db_path` (or of a bare --db value: a SQLite path, a postgresql:// URL, None for
    $IDFORGE_DB or ~/.idforge/idforge.db), with the contract's webhook body."""
    target = config if config is None or isinstance(config, (str, Path)) else config.db_path
    return speaks_contract(Store.open(target))
