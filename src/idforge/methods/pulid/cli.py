"""`idforge pulid`: what the command line adds to PuLID's body flags (persons, face choice)."""

from __future__ import annotations

import argparse
from typing import Any

from idforge.methods.persons import add_person_argument, persons_from_arguments
from idforge.methods.registry import CommandLine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_person_argument(parser, "ip_weight (the person's id_scale)")
    parser.add_argument(
        "--pick", default="largest", help="largest | score | INDEX (face choice in reference images)"
    )


def options(args: argparse.Namespace) -> dict[str, Any]:
    return {"pick": args.pick}


COMMAND_LINE = CommandLine(
    add_arguments=add_arguments,
    options=options,
    persons=persons_from_arguments,
    flags={"persons": "--person"},
    skip=frozenset({"persons"}),
    help="generate with PuLID for SDXL (identity from face photos; EVA02-CLIP + ArcFace ID tokens)",
)
