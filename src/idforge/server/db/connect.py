"""Opening a database from what a user types: a path (SQLite, the embedded default) or a postgresql:// URL.

One SQLAlchemy engine per store. SQLite gets WAL, a busy timeout and `BEGIN IMMEDIATE` for every writing
transaction (the single writer is what makes claims and debits atomic there); reads use a deferred `BEGIN` so they
never wait for the writer. PostgreSQL URLs run on psycopg 3 with pre-ping, so a restarted server is reconnected to.
A URL that is malformed or a server that cannot be reached is one clear line (`DatabaseError`), never a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from idforge.errors import IdforgeError

DB_ENV = "IDFORGE_DB"
READ = {"idforge_read": True}  # execution option: a read-only transaction (deferred BEGIN on SQLite)


class DatabaseError(IdforgeError):
    """The --db value cannot be used: wrong form, unknown scheme, or the server is unreachable."""


@dataclass(frozen=True)
class Target:
    """Where the store lives: `backend` is "sqlite" or "postgresql"; `display` never shows a password."""

    backend: str
    url: URL
    display: str


def default_target() -> str:
    """$IDFORGE_DB, else ~/.idforge/idforge.db."""
    value = os.environ.get(DB_ENV, "").strip()
    return value or str(Path.home() / ".idforge" / "idforge.db")


def parse_target(value: str | Path) -> Target:
    """A filesystem path or sqlite:/// URL is SQLite; postgres(ql)://... is PostgreSQL (psycopg 3)."""
    text = str(value).strip()
    if not text:
        raise DatabaseError("--db: empty value (give a file path or postgresql://user@host:port/db)")
    if "://" not in text:
        path = Path(text).expanduser()
        return Target("sqlite", URL.create("sqlite", database=str(path)), str(path))
    try:
        url = make_url(text)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError with a long message
        raise DatabaseError(f"--db {text!r}: not a database URL ({exc.__class__.__name__})") from None
    scheme = url.get_backend_name()
    if scheme in ("postgresql", "postgres"):
        if url.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise DatabaseError(f"--db: driver {url.drivername!r} is not supported; use postgresql://")
        if not url.host and not url.query.get("host"):
            raise DatabaseError(
                "--db: a postgresql:// URL needs a host, e.g. postgresql://user@127.0.0.1:5432/db"
            )
        shown = url.render_as_string(hide_password=True)  # as the user wrote it (password masked)
        return Target("postgresql", url.set(drivername="postgresql+psycopg"), shown)
    if scheme == "sqlite":
        if not url.database:
            raise DatabaseError("--db: sqlite:// needs a file, e.g. sqlite:////var/lib/idforge.db")
        return Target("sqlite", url.set(drivername="sqlite"), url.database)
    raise DatabaseError(f"--db {text!r}: unknown scheme {scheme!r}; use a file path or postgresql://")


def _sqlite_engine(target: Target) -> Engine:
    path = Path(target.url.database or "")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"--db {target.display}: cannot create its folder ({exc.strerror})") from None
    engine = sa.create_engine(
        target.url, connect_args={"timeout": 30.0, "check_same_thread": False}, pool_size=8, max_overflow=24
    )

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = (
            None  # we issue BEGIN ourselves (pysqlite's own is deferred and late)
        )
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(connection) -> None:
        read_only = connection.get_execution_options().get("idforge_read", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _postgres_engine(target: Target) -> Engine:
    return sa.create_engine(
        target.url,
        pool_pre_ping=True,
        pool_size=8,
        max_overflow=16,
        connect_args={"connect_timeout": 5, "application_name": "idforge"},
    )


def create_engine(target: Target) -> Engine:
    """The engine, after one test connection: an unreachable server fails here, with the reason in one line."""
    engine = _sqlite_engine(target) if target.backend == "sqlite" else _postgres_engine(target)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise DatabaseError(f"--db {target.display}: cannot connect: {reason}") from None
    return engine
