"""`idforge models list | where | fetch`: what the model store finds, where, and downloading presets."""

from __future__ import annotations

import argparse

from idforge.errors import IdforgeError
from idforge.models.presets import DEFAULTS, PRESETS, ROLES
from idforge.models.store import ModelStore


def _store(args: argparse.Namespace) -> ModelStore:
    return ModelStore(args.models or (), offline=True if getattr(args, "offline", False) else None)


def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    print("presets:")
    for name, preset in PRESETS.items():
        try:
            found = store.resolve(preset.role, name, local_only=True)
            where = f"{found.path} ({found.source})"
        except IdforgeError as exc:
            where = f"missing ({type(exc).__name__})"
        print(f"  {name:<28} {preset.role:<16} {where}")
    print("roles (default when nothing is named):")
    for role in ROLES:
        if role not in DEFAULTS and role != "instantid":
            print(f"  {role:<16} no default: name a file or preset")
            continue
        try:
            found = store.resolve(role, None, local_only=True)
            print(f"  {role:<16} {found.path} ({found.source})")
        except IdforgeError as exc:
            print(f"  {role:<16} missing: {exc}")
    return 0


def _where(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.name in ROLES:
        found = store.resolve(args.name, None, local_only=True)
    else:
        preset = PRESETS.get(args.name)
        role = preset.role if preset else (args.role or "base")
        found = store.resolve(role, args.name, local_only=True)
    print(found.path)
    for part, path in found.parts.items():
        print(f"  {part}: {path}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    store = _store(args)
    found = store.fetch(args.name, into_models_dir=bool(args.models))
    print(found.path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list, locate and download models")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models",
        action="append",
        metavar="DIR",
        help="models folder (ComfyUI layout) or ComfyUI root; repeatable",
    )
    common.add_argument("--offline", action="store_true", help="never download (also HF_HUB_OFFLINE=1)")

    p = sub.add_parser("list", parents=[common], help="every preset and role: where found, or missing")
    p.set_defaults(func=_list)
    p = sub.add_parser("where", parents=[common], help="the path of a preset, role, file name or hub id")
    p.add_argument("name", help="a preset (see `models list`), a role, a file name or a hub repo id")
    p.add_argument(
        "--role", choices=ROLES, help="the role to look for NAME under (default: the preset's, or base)"
    )
    p.set_defaults(func=_where)
    p = sub.add_parser("fetch", parents=[common], help="download a preset into the hub cache or --models DIR")
    p.add_argument("name", help="a preset name (see `models list`)")
    p.set_defaults(func=_fetch)
