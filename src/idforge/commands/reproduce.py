"""`idforge reproduce IMAGE.png -o NEW.png`: regenerate an idforge image from its recipe (methods/reproduce.py).

Input images are found by the names the recipe recorded (as given, then in IMAGE's folder and each --search DIR)
unless given (--face ..., --pose, ...); each is checked against the recipe's pixel hash. Device, dtype and fast-path
switches are the recorded ones (--device overrides the device). --check compares the result with IMAGE pixel for
pixel and exits 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="regenerate an image from the recipe in its PNG", description=__doc__
    )
    parser.add_argument("image", metavar="IMAGE", help="an idforge PNG (or a recipe JSON file)")
    parser.add_argument("-o", "--output", required=True, help="where to write the regenerated PNG")
    images = parser.add_argument_group("input images (default: found by their recorded names)")
    images.add_argument(
        "--face", action="append", default=None, metavar="IMG", help="reference face (repeatable)"
    )
    images.add_argument(
        "--instantid-face",
        action="append",
        default=None,
        metavar="IMG",
        help="FaceID + InstantID: InstantID's face",
    )
    for name in ("pose", "kps-image", "mask", "negative-image", "attn-mask", "depth-map"):
        images.add_argument(f"--{name}", default=None, metavar="IMG")
    images.add_argument(
        "--search", action="append", default=[], metavar="DIR", help="a folder to look for input images in"
    )
    images.add_argument(
        "--no-input-check",
        action="store_true",
        help="accept input images whose pixels differ from the recipe's",
    )
    models = parser.add_argument_group("models and device")
    models.add_argument(
        "--models", action="append", default=[], metavar="DIR", help="tiny-kit or ComfyUI models folder"
    )
    models.add_argument("--offline", action="store_true", default=None, help="never download")
    models.add_argument("--device", default=None, help="run elsewhere than recorded (pixels may differ)")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the pixels equal IMAGE's")
    parser.add_argument(
        "--json", action="store_true", help="print the new recipe and the differences as JSON"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from idforge.engine.result import save_png_with_recipe
    from idforge.methods.reproduce import reproduce

    done = reproduce(
        args.image,
        faces=args.face,
        instantid_faces=args.instantid_face,
        pose=args.pose,
        kps_image=args.kps_image,
        mask=args.mask,
        negative_image=args.negative_image,
        attn_mask=args.attn_mask,
        depth_map=args.depth_map,
        search_dirs=args.search,
        models_dirs=args.models,
        offline=args.offline,
        device=args.device,
        check_inputs=not args.no_input_check,
    )
    save_png_with_recipe(done.image, args.output, done.image_recipe())
    for difference in done.differences:
        print(f"idforge: warning: {difference}", file=sys.stderr)
    verdict = None
    if args.check:
        with Image.open(args.image) as original:
            before = np.asarray(original.convert("RGB"), dtype=np.int16)
        after = np.asarray(done.image.convert("RGB"), dtype=np.int16)
        if before.shape != after.shape:
            verdict = f"differs from {args.image}: size {after.shape[1]}x{after.shape[0]}, not {before.shape[1]}x{before.shape[0]}"
        elif np.array_equal(before, after):
            verdict = f"identical to {args.image}"
        else:
            diff = np.abs(before - after)
            verdict = f"differs from {args.image}: {int((diff.max(axis=-1) > 0).sum())} pixels, max |diff| {int(diff.max())}"
    if args.json:
        payload = {"file": args.output, "recipe": done.image_recipe(), "differences": done.differences}
        if verdict is not None:
            payload["check"] = verdict
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(args.output if verdict is None else f"{args.output}  {verdict}")
    return 1 if verdict is not None and not verdict.startswith("identical") else 0
