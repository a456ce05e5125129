"""A throwaway local PostgreSQL server for tests and benchmarks (ENVIRONMENT.md's recipe): initdb + pg_ctl as the
`postgres` user (they refuse to run as root) on a free loopback port in a temporary folder, fsync off.
Never for production data: trust authentication, no durability."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed: run scripts/system-deps.sh (apt-get install postgresql)"
        )
    return Path(found[-1]).parent


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


class PostgresServer:
    def __init__(self) -> None:
        from idforge.server.runner import free_port

        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="idf-pg-"))  # short: the unix socket path has a length limit
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"

    def start(self) -> PostgresServer:
        subprocess.run(
            _as_postgres(
                str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "idforge", "--no-sync"
            ),
            check=True,
            capture_output=True,
        )
        self.start_again()
        return self

    def start_again(self) -> None:
        """Start the (stopped) server on its data folder and port: also for outage tests."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c max_connections=300"
        )
        subprocess.run(
            _as_postgres(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-w",
                "-l",
                str(self.dir / "log"),
                "start",
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"),
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://idforge@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)
