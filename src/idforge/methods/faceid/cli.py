"""`idforge faceid`: what the command line adds to FaceID's body flags.

`--lora` here is the FaceID LoRA (as in the node); other LoRAs (LCM, styles) go through `--extra-lora`. The
adapter may be a file or hub id (the body takes the preset names only). `--with-instantid` adds InstantID on the
same faces, in the same generation.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from idforge.errors import ParameterError
from idforge.methods.registry import CommandLine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-missing", action="store_true", help="leave out references with no face instead of failing"
    )
    parser.add_argument(
        "--adapter", default=None, metavar="PATH|ID", help="FaceID checkpoint (file, preset, name)"
    )
    parser.add_argument(
        "--lora",
        dest="faceid_lora",
        default=None,
        metavar="PATH",
        help="FaceID LoRA file (default: embedded keys or <adapter>_lora)",
    )
    parser.add_argument(
        "--clip-vision", default=None, metavar="PATH|ID", help="CLIP ViT-H image encoder (plus models)"
    )
    parser.add_argument(
        "--face-images", default=None, metavar="DIR", help="also write the aligned face crops here"
    )
    group = parser.add_argument_group("with InstantID (one generation, each with its own weights)")
    group.add_argument("--with-instantid", action="store_true", help="add InstantID on the same faces")
    group.add_argument("--instantid", default=None, help="InstantX/InstantID-style folder or hub id")
    group.add_argument("--instantid-ip-weight", type=float, default=0.8)
    group.add_argument("--instantid-cn-strength", type=float, default=0.8)
    group.add_argument(
        "--instantid-face-models", default=None, help="pack for InstantID (default antelopev2)"
    )


def options(args: argparse.Namespace) -> dict[str, Any]:
    if args.person and args.with_instantid:
        raise ParameterError("--person", "several people cannot be combined with --with-instantid")
    found: dict[str, Any] = {
        "skip_missing": args.skip_missing,
        "adapter": args.adapter,
        "lora": args.faceid_lora,
        "clip_vision": args.clip_vision,
        "face_models": args.face_models if args.face_models is not None else "buffalo_l",
    }
    if args.with_instantid:
        from idforge.methods.faceid.core import expand_face_sources
        from idforge.methods.instantid.core import InstantIDRequest
        from idforge.methods.instantid.params import InstantIDParams

        found["instantid"] = InstantIDRequest(
            faces=expand_face_sources(args.image_face_image),
            instantid=InstantIDParams(
                ip_weight=args.instantid_ip_weight, cn_strength=args.instantid_cn_strength
            ),
            instantid_model=args.instantid,
            face_models=args.instantid_face_models or "antelopev2",
        )
    return found


def model_choices(args: argparse.Namespace) -> dict[str, Any]:
    return {"face_models": None}  # per request: FaceID buffalo_l, InstantID antelopev2 (see options)


def after(args: argparse.Namespace, result: Any) -> None:
    if args.face_images:
        folder = Path(args.face_images)
        folder.mkdir(parents=True, exist_ok=True)
        for index, crop in enumerate(result.extras["face_images"]):
            crop.save(folder / f"face_{index:03d}.png")


COMMAND_LINE = CommandLine(
    add_arguments=add_arguments,
    options=options,
    model_choices=model_choices,
    after=after,
    person_strengths="ip_weight (the FaceID weight)",
    lora_flag="--extra-lora",
    pick=True,
    skip=frozenset({"adapter"}),
    help="generate with IP-Adapter FaceID (identity from face photos; --batch: one output per face)",
)
