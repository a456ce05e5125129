"""API keys and credits: a small `KeyStore` interface and its SQLite implementation (the embedded default).

Keys are stored hashed (sha256 of a random 32-byte token): the token is shown once, at creation. Each key also has
a webhook signing secret (`whsec_` + base64 of 24 random bytes, Standard Webhooks): it must be readable to sign, so
it is stored as is, and shown by `idforge keys create` and `idforge keys webhook-secret KEY`. Credits move
by reserve-then-commit: `reserve` debits the balance at once in one `BEGIN IMMEDIATE` transaction (so concurrent
requests can never overdraw), `commit` makes the charge final when the image is delivered, `release` gives it back
when the generation failed. Reservations are rows keyed by the job id, so a restart can settle what was in flight.
A PostgreSQL store only has to implement the same methods (`SELECT ... FOR UPDATE` where SQLite locks the file).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from idforge.errors import IdforgeError, ParameterError

DB_ENV = "IDFORGE_DB"
TOKEN_PREFIX = "idf_"
WEBHOOK_SECRET_PREFIX = "whsec_"


class NotEnoughCredits(IdforgeError):
    def __init__(self, balance: int, needed: int) -> None:
        self.balance = balance
        self.needed = needed
        super().__init__(f"not enough credits: this request costs {needed}, the balance is {balance}")


class UnknownKey(IdforgeError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"key {ref!r}: no such key")


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    balance: int
    spent: int
    created: float
    revoked: float | None

    @property
    def active(self) -> bool:
        return self.revoked is None


def default_db_path() -> Path:
    """IDFORGE_DB, else ~/.idforge/idforge.db."""
    value = os.environ.get(DB_ENV, "").strip()
    return Path(value) if value else Path.home() / ".idforge" / "idforge.db"


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def open_db(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal, waiting on locks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class ConnectionPool:
    """One SQLite connection per thread (connections are cheap; sharing one across threads serialises badly)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_db(self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: takes the write lock up front, so read-check-write sequences are atomic."""
        conn = self.get()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass  # closed from another thread's perspective; nothing left to do
            self._all.clear()
        self._local = threading.local()


class KeyStore(Protocol):
    """What the server needs from a key and credit store."""

    def create_key(self, credits: int, name: str = "") -> tuple[KeyRecord, str]: ...
    def authenticate(self, token: str) -> KeyRecord | None: ...
    def get(self, ref: str) -> KeyRecord: ...
    def list_keys(self) -> list[KeyRecord]: ...
    def topup(self, ref: str, credits: int) -> KeyRecord: ...
    def revoke(self, ref: str) -> KeyRecord: ...
    def balance(self, key_id: str) -> int: ...
    def reserve(self, key_id: str, amount: int, ref: str) -> int: ...
    def commit(self, ref: str) -> None: ...
    def release(self, ref: str) -> None: ...
    def held(self) -> dict[str, tuple[str, int]]: ...
    def webhook_secret(self, ref: str) -> str: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    balance INTEGER NOT NULL CHECK (balance >= 0),
    spent INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS credit_reservations (
    ref TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES api_keys(id),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    created REAL NOT NULL
);
"""


def _record(row: sqlite3.Row) -> KeyRecord:
    return KeyRecord(row["id"], row["name"], row["balance"], row["spent"], row["created"], row["revoked"])


class SQLiteKeyStore:
    """The embedded key and credit store (stdlib sqlite3)."""

    def __init__(self, path: str | Path) -> None:
        self.pool = ConnectionPool(path)
        conn = self.pool.get()
        conn.executescript(_SCHEMA)
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(api_keys)").fetchall()}
        if "webhook_secret" not in columns:  # databases from before webhooks
            conn.execute("ALTER TABLE api_keys ADD COLUMN webhook_secret TEXT")

    def create_key(self, credits: int, name: str = "") -> tuple[KeyRecord, str]:
        """A new key with `credits`; returns the record and the token (shown once, stored only hashed)."""
        if not isinstance(credits, int) or credits < 0:
            raise ParameterError("credits", f"{credits!r} must be a whole number >= 0")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key_id = "k_" + secrets.token_hex(6)
        with self.pool.transaction() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, hash, name, balance, created, webhook_secret) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, hash_token(token), name, credits, time.time(), new_webhook_secret()),
            )
        return self.get(key_id), token

    def authenticate(self, token: str) -> KeyRecord | None:
        """The active key for this token, or None (unknown or revoked)."""
        if not token:
            return None
        row = (
            self.pool.get().execute("SELECT * FROM api_keys WHERE hash = ?", (hash_token(token),)).fetchone()
        )
        if row is None or row["revoked"] is not None:
            return None
        return _record(row)

    def _find(self, conn: sqlite3.Connection, ref: str) -> sqlite3.Row:
        row = conn.execute(
            "SELECT * FROM api_keys WHERE id = ? OR hash = ?", (ref, hash_token(ref))
        ).fetchone()
        if row is None:
            raise UnknownKey(ref if ref.startswith("k_") or len(ref) < 16 else ref[:8] + "...")
        return row

    def get(self, ref: str) -> KeyRecord:
        """A key by its id (k_...) or its token."""
        return _record(self._find(self.pool.get(), ref))

    def list_keys(self) -> list[KeyRecord]:
        rows = self.pool.get().execute("SELECT * FROM api_keys ORDER BY created").fetchall()
        return [_record(row) for row in rows]

    def topup(self, ref: str, credits: int) -> KeyRecord:
        if not isinstance(credits, int) or credits < 1:
            raise ParameterError("credits", f"{credits!r} must be a whole number >= 1")
        with self.pool.transaction() as conn:
            key_id = self._find(conn, ref)["id"]
            conn.execute("UPDATE api_keys SET balance = balance + ? WHERE id = ?", (credits, key_id))
        return self.get(key_id)

    def revoke(self, ref: str) -> KeyRecord:
        with self.pool.transaction() as conn:
            key_id = self._find(conn, ref)["id"]
            conn.execute(
                "UPDATE api_keys SET revoked = COALESCE(revoked, ?) WHERE id = ?", (time.time(), key_id)
            )
        return self.get(key_id)

    def balance(self, key_id: str) -> int:
        row = self.pool.get().execute("SELECT balance FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return int(row["balance"]) if row is not None else 0

    def reserve(self, key_id: str, amount: int, ref: str) -> int:
        """Debit `amount` now and remember it under `ref`; returns the new balance or raises NotEnoughCredits."""
        with self.pool.transaction() as conn:
            row = conn.execute("SELECT balance FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                raise UnknownKey(key_id)
            if row["balance"] < amount:
                raise NotEnoughCredits(int(row["balance"]), amount)
            conn.execute("UPDATE api_keys SET balance = balance - ? WHERE id = ?", (amount, key_id))
            conn.execute(
                "INSERT INTO credit_reservations (ref, key_id, amount, created) VALUES (?, ?, ?, ?)",
                (ref, key_id, amount, time.time()),
            )
            return int(row["balance"]) - amount

    def commit(self, ref: str) -> None:
        """The image was delivered: the reserved credits are spent (idempotent)."""
        with self.pool.transaction() as conn:
            row = conn.execute("SELECT * FROM credit_reservations WHERE ref = ?", (ref,)).fetchone()
            if row is None:
                return
            conn.execute("UPDATE api_keys SET spent = spent + ? WHERE id = ?", (row["amount"], row["key_id"]))
            conn.execute("DELETE FROM credit_reservations WHERE ref = ?", (ref,))

    def release(self, ref: str) -> None:
        """Nothing was delivered: the reserved credits go back (idempotent)."""
        with self.pool.transaction() as conn:
            row = conn.execute("SELECT * FROM credit_reservations WHERE ref = ?", (ref,)).fetchone()
            if row is None:
                return
            conn.execute(
                "UPDATE api_keys SET balance = balance + ? WHERE id = ?", (row["amount"], row["key_id"])
            )
            conn.execute("DELETE FROM credit_reservations WHERE ref = ?", (ref,))

    def held(self) -> dict[str, tuple[str, int]]:
        """Open reservations: ref -> (key id, amount)."""
        rows = self.pool.get().execute("SELECT * FROM credit_reservations").fetchall()
        return {row["ref"]: (row["key_id"], int(row["amount"])) for row in rows}

    def webhook_secret(self, ref: str) -> str:
        """The key's webhook signing secret (made now for a key created before webhooks existed)."""
        with self.pool.transaction() as conn:
            row = self._find(conn, ref)
            if row["webhook_secret"]:
                return str(row["webhook_secret"])
            secret = new_webhook_secret()
            conn.execute("UPDATE api_keys SET webhook_secret = ? WHERE id = ?", (secret, row["id"]))
            return secret

    def close(self) -> None:
        self.pool.close()
