"""`idforge faceid`: IP-Adapter FaceID with every control of the IPAdapter FaceID (Batch) node.

`--lora` here is the FaceID LoRA (as in the node); other LoRAs (LCM, styles) go through `--extra-lora`.
"""

from __future__ import annotations

import argparse

from idforge.commands._common import (
    add_generation_arguments,
    generation_params,
    make_engine,
    parse_person,
    progress_bar,
    report,
)
from idforge.errors import ParameterError

WEIGHT_TYPE_HELP = (
    "linear | ease in | ease out | ease in-out | reverse in-out | weak input | weak output | weak middle | "
    "strong middle | style transfer | composition | strong style transfer | style and composition | "
    "style transfer precise | composition precise (default linear)"
)
COMBINE_CHOICES = ("concat", "add", "subtract", "average", "norm-average", "norm average")
SCALING_HELP = "'V only' | 'K+V' | 'K+V w/ C penalty' | 'K+mean(V) w/ C penalty' (default 'V only')"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "faceid",
        help="generate with IP-Adapter FaceID (identity from face photos; --batch: one output per face)",
        conflict_handler="resolve",
    )
    add_generation_arguments(parser, steps=30, guidance=7.5)
    parser.add_argument(
        "--face",
        action="append",
        default=[],
        metavar="IMG",
        help="reference face image or a folder of them (repeatable)",
    )
    parser.add_argument(
        "--person",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="one person of several in the image (repeatable), e.g. face=A.jpg,region=left; keys: face "
        "(repeatable), region (left|right|top|bottom), box (x1:y1:x2:y2 px), mask (IMG), ip_weight (the "
        "FaceID weight), start_at, end_at",
    )
    parser.add_argument(
        "--batch", action="store_true", help="reference i conditions output i (one output per face)"
    )
    parser.add_argument(
        "--skip-missing", action="store_true", help="leave out references with no face instead of failing"
    )
    parser.add_argument(
        "--adapter", default=None, metavar="PATH|ID", help="FaceID checkpoint (file, preset, name)"
    )
    parser.add_argument(
        "--lora",
        default=None,
        metavar="PATH",
        help="FaceID LoRA file (default: embedded keys or <adapter>_lora)",
    )
    parser.add_argument("--lora-strength", type=float, default=0.6, help="FaceID LoRA strength (default 0.6)")
    parser.add_argument(
        "--extra-lora",
        dest="lora_files",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="another LoRA, e.g. LCM-LoRA (repeatable)",
    )
    parser.add_argument(
        "--clip-vision", default=None, metavar="PATH|ID", help="CLIP ViT-H image encoder (plus models)"
    )
    parser.add_argument(
        "--weight", type=float, default=None, help="-1..3 (default 1, or the preset's recommendation)"
    )
    parser.add_argument("--weight-faceidv2", type=float, default=1.0, help="-1..5, plusv2 only (default 1)")
    parser.add_argument("--weight-type", default="linear", help=WEIGHT_TYPE_HELP)
    parser.add_argument("--combine-embeds", default="concat", choices=COMBINE_CHOICES)
    parser.add_argument("--start-at", type=float, default=0.0, help="0..1 (default 0)")
    parser.add_argument("--end-at", type=float, default=1.0, help="0..1 (default 1)")
    parser.add_argument("--embeds-scaling", default="V only", help=SCALING_HELP)
    parser.add_argument("--negative-image", default=None, metavar="IMG", help="CLIP negative (plus models)")
    parser.add_argument("--attn-mask", default=None, metavar="IMG", help="restrict FaceID to this area")
    parser.add_argument(
        "--face-images", default=None, metavar="DIR", help="also write the aligned face crops here"
    )
    parser.add_argument(
        "--pick", default="score", help="score | largest | INDEX (face choice, default score)"
    )
    group = parser.add_argument_group("with InstantID (one generation, each with its own weights)")
    group.add_argument("--with-instantid", action="store_true", help="add InstantID on the same faces")
    group.add_argument("--instantid", default=None, help="InstantX/InstantID-style folder or hub id")
    group.add_argument("--instantid-ip-weight", type=float, default=0.8)
    group.add_argument("--instantid-cn-strength", type=float, default=0.8)
    group.add_argument(
        "--instantid-face-models", default=None, help="pack for InstantID (default antelopev2)"
    )
    parser.set_defaults(func=run)


def _face_models_for_faceid(args: argparse.Namespace) -> str:
    return args.face_models if args.face_models is not None else "buffalo_l"


def run(args: argparse.Namespace) -> int:
    from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
    from idforge.methods.faceid.generate import generate_faceid

    # generation_params reads the extra LoRAs from `lora`, which is the FaceID LoRA here
    persons = [parse_person(text, index) for index, text in enumerate(args.person, start=1)]
    if not args.face and not persons:
        raise ParameterError(
            "--face", "give a reference face (--face IMG) or persons (--person face=IMG,...)"
        )
    if persons and args.with_instantid:
        raise ParameterError("--person", "several people cannot be combined with --with-instantid")
    generation = generation_params(argparse.Namespace(**{**vars(args), "lora": args.lora_files}))
    request = FaceIDRequest(
        faces=args.face,
        persons=persons,
        generation=generation,
        faceid=FaceIDParams(
            weight=args.weight,
            weight_faceidv2=args.weight_faceidv2,
            weight_type=args.weight_type,
            combine_embeds=args.combine_embeds,
            start_at=args.start_at,
            end_at=args.end_at,
            embeds_scaling=args.embeds_scaling,
            lora_strength=args.lora_strength,
            batch=args.batch,
            skip_missing=args.skip_missing,
            pick=args.pick,
        ),
        negative_image=args.negative_image,
        attn_mask=args.attn_mask,
        adapter=args.adapter,
        lora=args.lora,
        clip_vision=args.clip_vision,
        face_models=_face_models_for_faceid(args),
    )
    instantid = None
    if args.with_instantid:
        from idforge.methods.faceid.core import expand_face_sources
        from idforge.methods.instantid.core import InstantIDRequest
        from idforge.methods.instantid.params import InstantIDParams

        instantid = InstantIDRequest(
            faces=expand_face_sources(args.face),
            instantid=InstantIDParams(
                ip_weight=args.instantid_ip_weight, cn_strength=args.instantid_cn_strength
            ),
            instantid_model=args.instantid,
            face_models=args.instantid_face_models or "antelopev2",
        )
    args.face_models = None  # per method above: FaceID buffalo_l, InstantID antelopev2
    engine = make_engine(args)
    update, close = progress_bar(args, "faceid")
    try:
        result = generate_faceid(engine, request, progress=update, instantid=instantid)
    finally:
        close()
    written = result.save(args.output)
    if args.face_images:
        from pathlib import Path

        folder = Path(args.face_images)
        folder.mkdir(parents=True, exist_ok=True)
        for index, crop in enumerate(result.extras["face_images"]):
            crop.save(folder / f"face_{index:03d}.png")
    report(args, result, written)
    return 0
