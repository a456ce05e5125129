"""`idforge instantid`: what the command line adds to InstantID's body flags (persons, face choice, model)."""

from __future__ import annotations

import argparse
from typing import Any

from idforge.methods.registry import CommandLine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instantid", default=None, help="InstantX/InstantID-style folder or hub id")


def model_choices(args: argparse.Namespace) -> dict[str, Any]:
    return {"instantid": args.instantid}


COMMAND_LINE = CommandLine(
    add_arguments=add_arguments,
    model_choices=model_choices,
    person_strengths="ip_weight, cn_strength",
    pick=True,
    help="generate with InstantID (identity from one or more face photos)",
)
