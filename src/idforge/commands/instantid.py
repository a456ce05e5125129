"""`idforge instantid`: InstantID with every control of "Apply InstantID Advanced"."""

from __future__ import annotations

import argparse

from idforge.commands._common import (
    add_generation_arguments,
    add_instantid_arguments,
    generation_params,
    instantid_params,
    make_engine,
    parse_person,
    progress_bar,
    report,
)
from idforge.errors import ParameterError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "instantid", help="generate with InstantID (identity from one or more face photos)"
    )
    parser.add_argument(
        "--face", action="append", default=[], metavar="IMG", help="reference face (repeatable)"
    )
    parser.add_argument(
        "--person",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="one person of several in the image (repeatable), e.g. face=A.jpg,region=left; keys: face "
        "(repeatable), region (left|right|top|bottom), box (x1:y1:x2:y2 px), mask (IMG), ip_weight, "
        "cn_strength, start_at, end_at",
    )
    pose = parser.add_mutually_exclusive_group()
    pose.add_argument("--pose", default=None, metavar="IMG", help="photo whose face gives the keypoints")
    pose.add_argument("--kps-image", default=None, metavar="IMG", help="an already drawn keypoint image")
    parser.add_argument(
        "--pose-fallback", action="store_true", help="use the reference keypoints if the pose has no face"
    )
    parser.add_argument(
        "--mask", default=None, metavar="IMG", help="restrict IP attention and IdentityNet to this area"
    )
    add_instantid_arguments(parser)
    parser.add_argument("--combine-embeds", default="average", choices=("average", "norm-average", "concat"))
    parser.add_argument(
        "--pick", default="largest", help="largest | score | INDEX (face choice in reference images)"
    )
    add_generation_arguments(parser, steps=30, guidance=5.0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from idforge.methods.instantid.core import InstantIDRequest
    from idforge.methods.instantid.generate import generate_instantid

    persons = [parse_person(text, index) for index, text in enumerate(args.person, start=1)]
    if not args.face and not persons:
        raise ParameterError(
            "--face", "give a reference face (--face IMG) or persons (--person face=IMG,...)"
        )
    request = InstantIDRequest(
        faces=args.face,
        persons=persons,
        generation=generation_params(args),
        instantid=instantid_params(args, combine_embeds=args.combine_embeds, pick=args.pick),
        pose=args.pose,
        kps_image=args.kps_image,
        mask=args.mask,
        pose_fallback=args.pose_fallback,
    )
    engine = make_engine(args, instantid=args.instantid)
    update, close = progress_bar(args, "instantid")
    try:
        result = generate_instantid(engine, request, progress=update)
    finally:
        close()
    written = result.save(args.output)
    report(args, result, written)
    return 0
