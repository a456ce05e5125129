"""`idforge insta-depth`: what the command line adds to Insta Depth's body flags (model files, --save-depth)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from idforge.methods.registry import CommandLine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save-depth", default=None, metavar="OUT.png", help="also write the depth map used")
    parser.add_argument("--instantid", default=None, help="InstantX/InstantID-style folder or hub id")
    parser.add_argument(
        "--depth-controlnet",
        default=None,
        metavar="PATH|ID",
        help="SDXL depth ControlNet (default preset controlnet-depth-sdxl)",
    )
    parser.add_argument(
        "--depth-estimator",
        default=None,
        metavar="PATH|ID",
        help="transformers depth model: depth-anything-v2-small (default), dpt-hybrid-midas, a folder or hub id",
    )


def model_choices(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "instantid": args.instantid,
        "depth_controlnet": args.depth_controlnet,
        "depth_estimator": args.depth_estimator,
    }


def after(args: argparse.Namespace, result: Any) -> None:
    if args.save_depth:
        Path(args.save_depth).parent.mkdir(parents=True, exist_ok=True)
        result.extras["depth_map"].save(args.save_depth)
        if not args.json:
            print(f"{args.save_depth}  depth map", file=sys.stderr)


COMMAND_LINE = CommandLine(
    add_arguments=add_arguments,
    model_choices=model_choices,
    after=after,
    skip=frozenset({"return_depth_map"}),
    help="generate with InstantID + depth ControlNet (identity from --face, composition from --pose)",
)
