"""API keys and credits: the records and errors the server speaks in, and the `KeyStore` interface it needs.

The implementation is `idforge.server.db.Store` (SQLite or PostgreSQL through SQLAlchemy): keys are stored hashed
(sha256 of a random 32-byte token, shown once at creation); each key has a webhook signing secret (`whsec_` +
base64 of 24 random bytes, Standard Webhooks), stored as is because it must be readable to sign. Credits are an
append-only ledger with idempotency keys (db/ledger.py): held at submission, then charged or released exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Protocol

from idforge.errors import IdforgeError

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


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class KeyStore(Protocol):
    """What the server needs from a key and credit store (`idforge.server.db.Store` implements it)."""

    def create_key(self, credits: int, name: str = "") -> tuple[KeyRecord, str]: ...
    def authenticate(self, token: str) -> KeyRecord | None: ...
    def get(self, ref: str) -> KeyRecord: ...
    def list_keys(self) -> list[KeyRecord]: ...
    def topup(self, ref: str, credits: int) -> KeyRecord: ...
    def revoke(self, ref: str) -> KeyRecord: ...
    def balance(self, key_id: str) -> int: ...
    def reserve(self, key_id: str, amount: int, ref: str) -> int: ...
    def commit(self, ref: str) -> bool: ...
    def release(self, ref: str) -> bool: ...
    def held(self) -> dict[str, tuple[str, int]]: ...
    def webhook_secret(self, ref: str) -> str: ...
    def close(self) -> None: ...
