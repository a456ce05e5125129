"""`idforge keys`: create, list, top up and revoke API keys (and show their webhook secrets), on SQLite or PostgreSQL."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=None,
        help="SQLite file or postgresql://user@host:port/db (default: $IDFORGE_DB or ~/.idforge/idforge.db)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="manage API keys and credits of the HTTP server")
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="create a key and print it (shown only this once)")
    create.add_argument("--credits", type=int, required=True, help="starting balance in credits")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--json", action="store_true")
    _db_argument(create)
    create.set_defaults(func=run_create)

    listing = actions.add_parser("list", help="list keys (ids, balances; never the keys themselves)")
    listing.add_argument("--json", action="store_true")
    _db_argument(listing)
    listing.set_defaults(func=run_list)

    topup = actions.add_parser("topup", help="add credits to a key")
    topup.add_argument("key", help="key id (k_...) or the key itself")
    topup.add_argument("credits", type=int)
    _db_argument(topup)
    topup.set_defaults(func=run_topup)

    secret = actions.add_parser(
        "webhook-secret", help="print the key's webhook signing secret (whsec_..., Standard Webhooks)"
    )
    secret.add_argument("key", help="key id (k_...) or the key itself")
    _db_argument(secret)
    secret.set_defaults(func=run_webhook_secret)

    revoke = actions.add_parser("revoke", help="revoke a key (requests with it get 401)")
    revoke.add_argument("key", help="key id (k_...) or the key itself")
    _db_argument(revoke)
    revoke.set_defaults(func=run_revoke)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _store(args: argparse.Namespace):
    from idforge.server.store_factory import open_store

    return open_store(args.db)


def run_create(args: argparse.Namespace) -> int:
    store = _store(args)
    record, token = store.create_key(args.credits, args.name)
    secret = store.webhook_secret(record.id)
    if args.json:
        print(
            json.dumps(
                {
                    "key": token,
                    "id": record.id,
                    "credits": record.balance,
                    "name": record.name,
                    "webhook_secret": secret,
                }
            )
        )
    else:
        print(token)  # alone on stdout, so KEY=$(idforge keys create ...) keeps working
        print(f"webhook secret (verify webhook signatures with it): {secret}", file=sys.stderr)
    return 0


def run_webhook_secret(args: argparse.Namespace) -> int:
    print(_store(args).webhook_secret(args.key))
    return 0


def run_list(args: argparse.Namespace) -> int:
    records = _store(args).list_keys()
    if args.json:
        print(json.dumps([r.__dict__ for r in records]))
        return 0
    print(f"{'id':<16} {'credits':>8} {'spent':>8}  {'status':<8} {'created':<20} name")
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        status = "active" if r.active else "revoked"
        print(f"{r.id:<16} {r.balance:>8} {r.spent:>8}  {status:<8} {created:<20} {r.name}")
    return 0


def run_topup(args: argparse.Namespace) -> int:
    record = _store(args).topup(args.key, args.credits)
    print(f"{record.id}: {record.balance} credits")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    record = _store(args).revoke(args.key)
    print(f"{record.id}: revoked")
    return 0
