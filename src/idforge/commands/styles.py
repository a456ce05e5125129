"""`idforge styles [--json]`: list the named style templates (`--style NAME` on every generation command)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("styles", help="list the style templates", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print name, prompt, negative and description")
    parser.set_defaults(func=run_styles)


def run_styles(args: argparse.Namespace) -> int:
    from idforge.styles import STYLES

    if args.json:
        print(json.dumps([vars(style) for style in STYLES.values()], indent=2))
        return 0
    width = max(len(name) for name in STYLES)
    for style in STYLES.values():
        print(f"{style.name:<{width}}  {style.description}")
    return 0
