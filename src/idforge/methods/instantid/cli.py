"""`idforge instantid`: what the command line adds to InstantID's body flags (persons, face choice, model)."""

from __future__ import annotations

import argparse
from typing import Any

from idforge.methods.persons import add_person_argument, persons_from_arguments
from idforge.methods.registry import CommandLine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_person_argument(parser, "ip_weight, cn_strength")
    parser.add_argument(
        "--pick", default="largest", help="largest | score | INDEX (face choice in reference images)"
    )
    parser.add_argument("--instantid", default=None, help="InstantX/InstantID-style folder or hub id")


def options(args: argparse.Namespace) -> dict[str, Any]:
    return {"pick": args.pick}


def model_choices(args: argparse.Namespace) -> dict[str, Any]:
    return {"instantid": args.instantid}


COMMAND_LINE = CommandLine(
    add_arguments=add_arguments,
    options=options,
    model_choices=model_choices,
    persons=persons_from_arguments,
    flags={"persons": "--person"},
    skip=frozenset({"persons"}),
    help="generate with InstantID (identity from one or more face photos)",
)
