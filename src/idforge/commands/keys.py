"""`idforge keys`: create, list, top up and revoke API keys (and show their webhook secrets), on SQLite or PostgreSQL."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="manage API keys and credits of the HTTP server")
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    create = _action(actions, "create", "create a key and print it (shown only this once)", run_create)
    create.add_argument("--credits", type=int, required=True, help="starting balance in credits")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--json", action="store_true")

    listing = _action(actions, "list", "list keys (ids, balances; never the keys themselves)", run_list)
    listing.add_argument("--json", action="store_true")

    topup = _action(actions, "topup", "add credits to a key", run_topup, one_key=True)
    topup.add_argument("credits", type=int)

    secret_help = "print the key's webhook signing secret (whsec_..., Standard Webhooks)"
    _action(actions, "webhook-secret", secret_help, run_webhook_secret, one_key=True)
    _action(actions, "revoke", "revoke a key (requests with it get 401)", run_revoke, one_key=True)

    for action in actions.choices.values():  # every action opens the store, after its own arguments in --help
        action.add_argument(
            "--db",
            default=None,
            help="SQLite file or postgresql://user@host:port/db (default: $IDFORGE_DB or ~/.idforge/idforge.db)",
        )
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _action(
    actions: argparse._SubParsersAction,
    name: str,
    help: str,
    run: Callable[[argparse.Namespace], int],
    *,
    one_key: bool = False,
) -> argparse.ArgumentParser:
    """One `idforge keys` action running `run`; `one_key`: it acts on the key named by its first argument."""
    action = actions.add_parser(name, help=help)
    if one_key:
        action.add_argument("key", help="key id (k_...) or the key itself")
    action.set_defaults(func=run)
    return action


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
