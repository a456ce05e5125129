"""Pytest fixtures: a real PostgreSQL server for the test session, and a fresh database per test on each backend."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from idforge.server.db.local_postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (started once, ~1 s)."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database on each backend: a SQLite file path, or a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("postgres").create_database()
