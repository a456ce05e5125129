"""Writes tests/data/idforge-0.1.db with the idforge 0.1 server code (sqlite3 KeyStore + JobStore), kept as a fixture
for the migration test. Run once with the 0.1 code (commit 670b8ad): the file is committed, this script documents it.

Contents: key alice (13 granted: 10 available, 2 held by a queued /v2 job, 1 spent by a succeeded one), key bob (revoked, 3 credits).
Tokens: alice = "idf_alice_token_0123456789abcdef0123456789abcdef", bob = "idf_bob_token_...".
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from idforge.server.jobs import Delivery, JobSpec, JobStore
from idforge.server.store import SQLiteKeyStore, hash_token

ALICE = "idf_alice_token_0123456789abcdef0123456789abcdef"
BOB = "idf_bob_token_0123456789abcdef0123456789abcdef00"


def main(path: Path) -> None:
    path.unlink(missing_ok=True)
    keys = SQLiteKeyStore(path)
    jobs = JobStore(path)
    alice, _ = keys.create_key(13, "alice")
    bob, _ = keys.create_key(3, "bob")
    conn = sqlite3.connect(path)  # fixed tokens, so the test can authenticate with them
    conn.execute("UPDATE api_keys SET hash = ? WHERE id = ?", (hash_token(ALICE), alice.id))
    conn.execute("UPDATE api_keys SET hash = ? WHERE id = ?", (hash_token(BOB), bob.id))
    conn.commit()
    keys.revoke(bob.id)
    spec = JobSpec("insta-depth", {"prompt": "old queued job", "seed": 7}, {"face_image": b"\x89PNG fake"})
    keys.reserve(alice.id, 1, "req_done")
    jobs.insert("req_done", spec, alice.id, 1, sync=False)
    jobs.mark_running("req_done")
    jobs.finish("req_done", Delivery([b"jpeg"], [7], {}, [], {"queue_s": 0.1}), keep_result=True)
    keys.commit("req_done")
    keys.reserve(alice.id, 2, "req_queued")
    jobs.insert("req_queued", spec, alice.id, 2, sync=False)
    keys.reserve(alice.id, 10, "req_lost")  # 0.1 crashed after reserving, before inserting the job
    keys.release("req_lost")
    keys.close()
    jobs.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("idforge-0.1.db"))
