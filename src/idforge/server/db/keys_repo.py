"""API keys and their credits: keys stored hashed, the append-only ledger (ledger.py), holds, the audit.

Every method takes an optional `conn` (a `Database.transaction()` connection) to run inside the caller's
transaction: the job repository reserves and settles credits in the same transaction that queues or ends a job.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from idforge.errors import ParameterError
from idforge.server.db import ledger
from idforge.server.db.database import Database
from idforge.server.db.schema import api_keys, credit_ledger, credit_reservations, jobs
from idforge.server.states import TERMINAL
from idforge.server.store import TOKEN_PREFIX, KeyRecord, UnknownKey, hash_token, new_webhook_secret


def _record(row: Any) -> KeyRecord:
    return KeyRecord(row.id, row.name, int(row.balance), int(row.spent), float(row.created), row.revoked)


class KeysRepository:
    """The `api_keys`, `credit_ledger` and `credit_reservations` tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- keys ------------------------------------------------------------------------------------------------------
    def create_key(
        self, credits: int, name: str = "", *, conn: Connection | None = None
    ) -> tuple[KeyRecord, str]:
        """A new key with `credits`; returns the record and the token (shown once, stored only hashed)."""
        if not isinstance(credits, int) or isinstance(credits, bool) or credits < 0:
            raise ParameterError("credits", f"{credits!r} must be a whole number >= 0")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key_id = "k_" + secrets.token_hex(6)
        with self.db.transaction(conn) as c:
            c.execute(
                sa.insert(api_keys).values(
                    id=key_id,
                    hash=hash_token(token),
                    name=name,
                    balance=0,
                    spent=0,
                    created=time.time(),
                    webhook_secret=new_webhook_secret(),
                )
            )
            ledger.credit(c, key_id, credits, "grant", f"grant:{key_id}")
            return _record(self.find(c, key_id)), token

    def authenticate(self, token: str, *, conn: Connection | None = None) -> KeyRecord | None:
        """The active key for this token, or None (unknown or revoked)."""
        if not token:
            return None
        with self.db.read(conn) as c:
            row = c.execute(sa.select(api_keys).where(api_keys.c.hash == hash_token(token))).first()
        if row is None or row.revoked is not None:
            return None
        return _record(row)

    @staticmethod
    def find(conn: Connection, ref: str) -> Any:
        """The key row of `ref` (its id k_... or its token), or UnknownKey."""
        row = conn.execute(
            sa.select(api_keys).where(sa.or_(api_keys.c.id == ref, api_keys.c.hash == hash_token(ref)))
        ).first()
        if row is None:
            raise UnknownKey(ref if ref.startswith("k_") or len(ref) < 16 else ref[:8] + "...")
        return row

    def get(self, ref: str, *, conn: Connection | None = None) -> KeyRecord:
        """A key by its id (k_...) or its token."""
        with self.db.read(conn) as c:
            return _record(self.find(c, ref))

    def list_keys(self, *, conn: Connection | None = None) -> list[KeyRecord]:
        with self.db.read(conn) as c:
            return [_record(r) for r in c.execute(sa.select(api_keys).order_by(api_keys.c.created))]

    def topup(
        self, ref: str, credits: int, idempotency_key: str | None = None, *, conn: Connection | None = None
    ) -> KeyRecord:
        """Add credits; with an idempotency key, a repeated top-up adds them once."""
        if not isinstance(credits, int) or isinstance(credits, bool) or credits < 1:
            raise ParameterError("credits", f"{credits!r} must be a whole number >= 1")
        with self.db.transaction(conn) as c:
            key_id = self.find(c, ref).id
            ledger.credit(c, key_id, credits, "topup", f"topup:{idempotency_key or uuid.uuid4().hex}")
            return _record(self.find(c, key_id))

    def revoke(self, ref: str, *, conn: Connection | None = None) -> KeyRecord:
        with self.db.transaction(conn) as c:
            key_id = self.find(c, ref).id
            c.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(revoked=sa.func.coalesce(api_keys.c.revoked, time.time()))
            )
            return _record(self.find(c, key_id))

    def webhook_secret(self, ref: str, *, conn: Connection | None = None) -> str:
        """The key's signing secret (whsec_...), created for keys made before webhooks existed."""
        with self.db.transaction(conn) as c:
            row = self.find(c, ref)
            if row.webhook_secret:
                return str(row.webhook_secret)
            secret = new_webhook_secret()
            c.execute(sa.update(api_keys).where(api_keys.c.id == row.id).values(webhook_secret=secret))
            return secret

    # -- credits ---------------------------------------------------------------------------------------------------
    def balance(self, key_id: str, *, conn: Connection | None = None) -> int:
        with self.db.read(conn) as c:
            return int(ledger.balance(c, key_id) or 0)

    def reserve(self, key_id: str, amount: int, ref: str, *, conn: Connection | None = None) -> int:
        """Hold `amount` for `ref` (idempotent); returns the balance after, or raises NotEnoughCredits."""
        with self.db.transaction(conn) as c:
            return ledger.reserve(c, key_id, amount, ref)

    def settle(self, ref: str, *, charge: bool, conn: Connection | None = None) -> bool:
        """Charge (`charge`) or release the hold of `ref`: True when this call settled it (once, whatever is
        retried)."""
        with self.db.transaction(conn) as c:
            return ledger.settle(c, ref, charge=charge)

    def held(self, *, conn: Connection | None = None) -> dict[str, tuple[str, int]]:
        """Open holds: ref -> (key id, amount)."""
        with self.db.read(conn) as c:
            rows = c.execute(sa.select(credit_reservations)).all()
        return {r.ref: (r.key_id, int(r.amount)) for r in rows}

    def ledger_entries(self, key_id: str, *, conn: Connection | None = None) -> list[dict[str, Any]]:
        with self.db.read(conn) as c:
            rows = c.execute(
                sa.select(credit_ledger).where(credit_ledger.c.key_id == key_id).order_by(credit_ledger.c.seq)
            )
            return [dict(r._mapping) for r in rows]

    def credits_charged(self, *, conn: Connection | None = None) -> int:
        with self.db.read(conn) as c:
            return int(
                c.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(credit_ledger.c.spent_delta), 0)).where(
                        credit_ledger.c.kind == "charge"
                    )
                ).scalar_one()
            )

    def audit(self, *, conn: Connection | None = None) -> list[str]:
        """Every disagreement between balances, the ledger, holds and job states (empty: all accounted for)."""
        problems: list[str] = []
        with self.db.read(conn) as c:
            sums = {
                r.key_id: (int(r.delta), int(r.spent))
                for r in c.execute(
                    sa.select(
                        credit_ledger.c.key_id,
                        sa.func.sum(credit_ledger.c.delta).label("delta"),
                        sa.func.sum(credit_ledger.c.spent_delta).label("spent"),
                    ).group_by(credit_ledger.c.key_id)
                )
            }
            for key in c.execute(sa.select(api_keys)):
                if sums.get(key.id, (0, 0)) != (key.balance, key.spent):
                    problems.append(
                        f"{key.id}: balance/spent {key.balance}/{key.spent} != ledger {sums.get(key.id)}"
                    )
            stray = c.execute(
                sa.select(credit_reservations.c.ref, jobs.c.status)
                .join(jobs, jobs.c.id == credit_reservations.c.ref)
                .where(jobs.c.status.in_(TERMINAL))
            ).all()
            problems += [f"{r.ref}: {r.status} but its credits are still held" for r in stray]
            charges = c.execute(
                sa.select(credit_ledger.c.job_id, sa.func.count())
                .where(credit_ledger.c.kind == "charge")
                .group_by(credit_ledger.c.job_id)
                .having(sa.func.count() > 1)
            ).all()
            problems += [f"{r[0]}: charged {r[1]} times" for r in charges]
        return problems
