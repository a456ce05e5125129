"""Credits: an append-only ledger with idempotency keys, and a balance that one conditional UPDATE keeps >= 0.

Every movement is a ledger row whose `idempotency_key` is unique: `reserve:{job}` when a job is submitted (the
balance drops at once, so concurrent requests cannot overdraw), then exactly one of `settle:{job}` as a charge (the
image exists: `spent` grows) or as a release (nothing was delivered: the credits come back). A retried reserve,
charge or release finds its key taken and changes nothing, so a job is charged once whatever is retried, by
whichever replica. For every key, balance == sum(delta) and spent == sum(spent_delta) over its ledger rows.
These functions run inside the caller's transaction (the job's state change commits together with its money).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from idforge.server.db.schema import api_keys, credit_ledger, credit_reservations
from idforge.server.store import NotEnoughCredits, UnknownKey


def _insert_once(conn: Connection, table: sa.Table, values: dict, conflict: str) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when the row is new (the idempotency guard of every movement)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=[conflict])
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT whose key SQLAlchemy fetched itself
    return conn.execute(statement.returning(table.c[conflict])).first() is not None


def record(
    conn: Connection,
    key_id: str,
    kind: str,
    delta: int,
    idempotency_key: str,
    *,
    spent_delta: int = 0,
    job_id: str | None = None,
) -> bool:
    """Append one ledger row; False (and nothing written) when this idempotency key was used before."""
    values = {
        "key_id": key_id,
        "kind": kind,
        "delta": delta,
        "spent_delta": spent_delta,
        "idempotency_key": idempotency_key,
        "job_id": job_id,
        "created": time.time(),
    }
    return _insert_once(conn, credit_ledger, values, "idempotency_key")


def credit(conn: Connection, key_id: str, amount: int, kind: str, idempotency_key: str) -> bool:
    """Add credits (grant at creation, top-up); once per idempotency key."""
    if not record(conn, key_id, kind, amount, idempotency_key):
        return False
    conn.execute(
        sa.update(api_keys).where(api_keys.c.id == key_id).values(balance=api_keys.c.balance + amount)
    )
    return True


def balance(conn: Connection, key_id: str) -> int | None:
    return conn.execute(sa.select(api_keys.c.balance).where(api_keys.c.id == key_id)).scalar()


def reserve(conn: Connection, key_id: str, amount: int, ref: str) -> int:
    """Hold `amount` for job `ref`; returns the balance after. Raises NotEnoughCredits (the caller rolls back).

    The debit is `UPDATE ... SET balance = balance - n WHERE balance >= n`: the database decides, under its row
    lock, so 50 racing debits on a small balance can never take it below zero."""
    if not record(conn, key_id, "reserve", -amount, f"reserve:{ref}", job_id=ref):
        return int(balance(conn, key_id) or 0)  # reserved before (a retry): nothing more to do
    after = conn.execute(
        sa.update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.balance >= amount)
        .values(balance=api_keys.c.balance - amount)
        .returning(api_keys.c.balance)
    ).scalar()
    if after is None:
        current = balance(conn, key_id)
        if current is None:
            raise UnknownKey(key_id)
        raise NotEnoughCredits(int(current), amount)
    conn.execute(
        sa.insert(credit_reservations).values(ref=ref, key_id=key_id, amount=amount, created=time.time())
    )
    return int(after)


def settle(conn: Connection, ref: str, *, charge: bool) -> bool:
    """Charge (the image was delivered) or release (it was not) the hold of job `ref`, exactly once.

    True when this call settled it; False when it was settled before or never held."""
    held = conn.execute(
        sa.select(credit_reservations).where(credit_reservations.c.ref == ref).with_for_update()
    ).first()
    if held is None:
        return False
    kind = "charge" if charge else "release"
    delta, spent = (0, held.amount) if charge else (held.amount, 0)
    if not record(conn, held.key_id, kind, delta, f"settle:{ref}", spent_delta=spent, job_id=ref):
        return False
    conn.execute(sa.delete(credit_reservations).where(credit_reservations.c.ref == ref))
    conn.execute(
        sa.update(api_keys)
        .where(api_keys.c.id == held.key_id)
        .values(balance=api_keys.c.balance + delta, spent=api_keys.c.spent + spent)
    )
    return True
