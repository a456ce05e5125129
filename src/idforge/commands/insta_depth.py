"""`idforge insta-depth`: InstantID + a depth ControlNet; the face gives identity, the pose image composition."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from idforge.commands._common import (
    add_generation_arguments,
    add_instantid_arguments,
    generation_params,
    instantid_params,
    make_engine,
    progress_bar,
    report,
)

# The Insta Depth API's defaults (seed 002): 10 steps, guidance 3.
DEFAULT_STEPS = 10
DEFAULT_GUIDANCE = 3.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "insta-depth",
        help="generate with InstantID + depth ControlNet (identity from --face, composition from --pose)",
    )
    parser.add_argument("--face", required=True, metavar="IMG", help="face photo giving the identity")
    parser.add_argument(
        "--pose",
        required=True,
        metavar="IMG",
        help="photo giving the composition: its depth map and the keypoints of its face",
    )
    parser.add_argument(
        "--depth-map", default=None, metavar="IMG", help="use this depth map instead of estimating one"
    )
    parser.add_argument("--save-depth", default=None, metavar="OUT.png", help="also write the depth map used")
    parser.add_argument("--depth-strength", type=float, default=0.5, help="0..10 (default 0.5)")
    parser.add_argument("--depth-start-at", type=float, default=0.0, help="0..1 (default 0)")
    parser.add_argument("--depth-end-at", type=float, default=1.0, help="0..1 (default 1)")
    add_instantid_arguments(parser)
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
    add_generation_arguments(parser, steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from idforge.methods.insta_depth.generate import InstaDepthParams, InstaDepthRequest, generate_insta_depth

    request = InstaDepthRequest(
        face=args.face,
        pose=args.pose,
        generation=generation_params(args),
        instantid=instantid_params(args),
        depth=InstaDepthParams(
            depth_strength=args.depth_strength,
            depth_start_at=args.depth_start_at,
            depth_end_at=args.depth_end_at,
        ),
        depth_map=args.depth_map,
    )
    engine = make_engine(
        args,
        instantid=args.instantid,
        depth_controlnet=args.depth_controlnet,
        depth_estimator=args.depth_estimator,
    )
    update, close = progress_bar(args, "insta-depth")
    try:
        result = generate_insta_depth(engine, request, progress=update)
    finally:
        close()
    written = result.save(args.output)
    if args.save_depth:
        Path(args.save_depth).parent.mkdir(parents=True, exist_ok=True)
        result.extras["depth_map"].save(args.save_depth)
        if not args.json:
            print(f"{args.save_depth}  depth map", file=sys.stderr)
    report(args, result, written)
    return 0
