"""The `idforge` command: parses arguments, calls the library, prints results or a one-line error."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from idforge import __version__
from idforge.errors import IdforgeError

# Each module in idforge.commands exposes `register(subparsers)`; it adds its sub-command and sets `func`.
COMMAND_MODULES = (
    "kit",
    "faces",
    "models",
    "method",  # one command per registered method (instantid, faceid, insta-depth, ...), flags from its body
    "reproduce",
    "workflow",
    "serve",
    "keys",
    "demo",
    "styles",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idforge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"idforge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"idforge.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"idforge.commands.{name}":
                continue  # command not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Library chatter (e.g. "requires torchvision" notices) would bury our one-line messages.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except IdforgeError as exc:
        print(f"idforge: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `idforge faces --json | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("idforge: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
