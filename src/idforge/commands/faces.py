"""`idforge faces`: inspect faces with a model pack.

- `idforge faces IMAGE`: list the faces found, with boxes, scores, keypoints and embedding norms;
- `idforge faces --check IMAGE [...]`: the reference check (face size, sharpness, yaw, several faces) with advice;
- `idforge faces compare REF IMAGE [...]`: the identity score of each IMAGE against REF (files or folders).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from idforge.errors import ParameterError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "faces",
        help="detect and describe the faces in an image",
        description="Detect faces with an insightface model pack (antelopev2, buffalo_l or a folder). "
        "Note: the published insightface packs are licensed for non-commercial research use only.",
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image file; with --check several; `compare REF IMAGE...` scores IMAGEs against REF (files or folders)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="reference check: face size, sharpness, yaw, several faces, advice",
    )
    parser.add_argument(
        "--face-models", default=None, metavar="PATH|NAME", help="pack folder, or antelopev2 / buffalo_l"
    )
    parser.add_argument("--det-size", type=int, default=640, help="detection size (default 640)")
    parser.add_argument("--pick", default="largest", help="largest | score | INDEX (marks the chosen face)")
    parser.add_argument("--no-fallback", action="store_true", help="only try --det-size, no smaller sizes")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument(
        "--draw", default=None, metavar="OUT.png", help="write the image with boxes and keypoints"
    )
    parser.add_argument(
        "--kps-image",
        default=None,
        metavar="OUT.png",
        help="write the IdentityNet keypoint image of the chosen face",
    )
    parser.add_argument(
        "--providers", default=None, help="onnxruntime providers, e.g. cuda,cpu (default cpu)"
    )
    parser.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="DIR",
        help="extra models folder to search for a NAME",
    )
    parser.set_defaults(func=run)


def _pack_dir(spec: str | None, models_dirs: list[str]) -> Path:
    """A folder path is used as is; a name goes through the model store."""
    if spec is not None:
        candidate = Path(spec).expanduser()
        if candidate.is_dir() or "/" in spec or "\\" in spec:
            return candidate
    from idforge.models.store import resolve_face_pack

    return resolve_face_pack(spec, models_dirs=[Path(d) for d in models_dirs], default="antelopev2")


def _parse_pick(text: str) -> str | int:
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if text not in ("largest", "score"):
        raise ParameterError("--pick", f"{text!r} is not one of 'largest', 'score' or a face index")
    return text


def run(args: argparse.Namespace) -> int:
    if args.images[0] == "compare" and not Path("compare").exists():
        from idforge.commands.faces_compare import run_compare

        return run_compare(args, _analyzer(args), _parse_pick(args.pick))
    if args.check:
        return run_check(args)
    if len(args.images) != 1:
        raise ParameterError("IMAGE", "give one image (several with --check, or `compare REF IMAGE...`)")
    args.image = args.images[0]
    return run_list(args)


def _analyzer(args: argparse.Namespace):
    from idforge.faces.analysis import FaceAnalyzer

    return FaceAnalyzer(_pack_dir(args.face_models, args.models), providers=args.providers)


def run_check(args: argparse.Namespace) -> int:
    """The reference check of every image: one line each (or JSON), advice indented below."""
    from idforge.commands.faces_compare import expand_images
    from idforge.faces.quality import check_reference

    analyzer = _analyzer(args)
    pick = _parse_pick(args.pick)
    checks = [
        check_reference(analyzer, path, name=str(path), pick=pick, det_size=args.det_size)
        for path in expand_images(args.images)
    ]
    if args.json:
        print(json.dumps([check.to_json() for check in checks], indent=2))
        return 0
    for check in checks:
        if check.face_px is None:
            print(f"{check.image}: {check.advice[0]}")
            continue
        verdict = "ok" if check.ok else "check the advice"
        print(
            f"{check.image}: face {check.face_px:.0f} px, sharpness {check.sharpness:.0f}, yaw {check.yaw_deg:+.0f} deg, "
            f"{check.faces_found} face(s): {verdict}"
        )
        for advice in check.advice:
            print(f"  - {advice}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from idforge.faces.analysis import pick_index
    from idforge.faces.draw import draw_faces, draw_kps
    from idforge.imageio import load_image

    pick = _parse_pick(args.pick)
    image = load_image(args.image, name=args.image)
    analyzer = _analyzer(args)
    if args.no_fallback:
        faces = analyzer.analyze(image, det_size=args.det_size, name=args.image)
    else:
        faces = analyzer.find_faces(image, det_size=args.det_size, name=args.image)
    picked = pick_index(faces, pick, args.image) if faces else None

    if args.json:
        rows = []
        for index, face in enumerate(faces):
            row = {"index": index, **face.to_json(), "det_size": face.det_size, "picked": index == picked}
            if face.padded:
                row["padded"] = True
            rows.append(row)
        print(json.dumps(rows, indent=2))
    else:
        if not faces:
            print(f"{args.image}: no face found")
        for index, face in enumerate(faces):
            mark = "*" if index == picked else " "
            x1, y1, x2, y2 = (float(v) for v in face.bbox)
            kps = " ".join(f"({x:.1f},{y:.1f})" for x, y in face.kps)
            print(
                f"{mark}{index}  box ({x1:.1f},{y1:.1f})-({x2:.1f},{y2:.1f})  score {face.score:.3f}  "
                f"det {face.det_size}  kps {kps}  |emb| {face.embedding_norm:.3f}"
            )
    if args.draw:
        draw_faces(image, faces, picked).save(args.draw)
    if args.kps_image:
        if picked is None:
            raise ParameterError("--kps-image", f"{args.image}: no face found, nothing to draw")
        draw_kps(image.size, faces[picked].kps).save(args.kps_image)
    return 0
