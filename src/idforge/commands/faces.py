"""`idforge faces IMAGE`: list the faces a model pack finds, with boxes, scores, keypoints and embedding norms."""

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
    parser.add_argument("image", help="image file")
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
    from idforge.faces.analysis import FaceAnalyzer, pick_index
    from idforge.faces.draw import draw_faces, draw_kps
    from idforge.imageio import load_image

    pick = _parse_pick(args.pick)
    image = load_image(args.image, name=args.image)
    analyzer = FaceAnalyzer(_pack_dir(args.face_models, args.models), providers=args.providers)
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
