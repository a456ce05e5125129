"""`idforge demo`: build the tiny kit, then run face analysis and every generation method on sample images.

The kit's weights are random, so generated images are noise: the demo shows that every path runs end to end,
and writes what a real run writes (images with recipes, keypoint images, depth maps).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the demo on the tiny kit (writes into --out)")
    parser.add_argument("--out", default="outputs", help="output folder (default outputs/)")
    parser.add_argument("--kit", default=None, help="use this kit instead of building OUT/kit")
    parser.set_defaults(func=run)


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kit = Path(args.kit) if args.kit else ensure_kit(out / "kit")
    from idforge.demo.samples import write_samples

    samples = write_samples(out)
    say(f"sample images: {samples['face']}, {samples['pose']}")
    demo_faces(kit, samples["face"], out)
    demo_instantid(kit, samples, out)
    demo_faceid_batch(kit, out)
    demo_insta_depth_http(kit, out)
    say("done. The kit's weights are random: the generated images are noise, which is expected.")
    say(
        "With real models, pass --models YOUR_COMFYUI/models (or --base/--instantid) to the idforge commands."
    )
    return 0


def ensure_kit(path: Path) -> Path:
    from idforge.models.kit import build_kit, is_kit

    if is_kit(path):
        say(f"tiny kit already at {path}")
        return path
    started = time.perf_counter()
    build_kit(path, seed=0)
    say(
        f"built the tiny kit (random weights, real layouts) at {path} in {time.perf_counter() - started:.1f} s"
    )
    return path


def demo_faces(kit: Path, face_path: Path, out: Path) -> None:
    from idforge.faces.analysis import FaceAnalyzer
    from idforge.faces.draw import draw_faces, draw_kps
    from idforge.imageio import load_image

    analyzer = FaceAnalyzer(kit / "insightface/models/antelopev2")
    image = load_image(face_path)
    faces = analyzer.analyze(image, name=str(face_path))
    for index, face in enumerate(faces):
        box = ", ".join(f"{v:.1f}" for v in face.bbox)
        say(f"face {index}: box [{box}] score {face.score:.3f} embedding norm {face.embedding_norm:.2f}")
    draw_faces(image, faces, picked=0).save(out / "faces_annotated.png")
    draw_kps(image, faces[0].kps).save(out / "faces_kps.png")
    say(f"wrote {out / 'faces_annotated.png'} and {out / 'faces_kps.png'}")


def demo_instantid(kit: Path, samples: dict[str, Path], out: Path) -> None:
    from idforge.engine.params import GenerationParams
    from idforge.engine.session import Engine, ModelChoice
    from idforge.methods.instantid.core import InstantIDRequest
    from idforge.methods.instantid.generate import generate_instantid

    engine = Engine(ModelChoice(models_dirs=[str(kit)]), device="cpu", dtype="float32")
    request = InstantIDRequest(
        faces=[samples["face"]],
        pose=samples["pose"],
        generation=GenerationParams(
            prompt="a portrait photo", steps=4, guidance=5.0, seed=42, width=64, height=64
        ),
    )
    result = generate_instantid(engine, request)
    written = result.save(out / "instantid.png")
    result.extras["kps_image"].save(out / "instantid_kps.png")
    say(
        f"InstantID (4 steps, 64x64, seed 42): wrote {written[0]} (noise: random weights) and {out / 'instantid_kps.png'}"
    )


def demo_faceid_batch(kit: Path, out: Path) -> None:
    from idforge.demo.samples import synthetic_face
    from idforge.engine.params import GenerationParams
    from idforge.engine.session import Engine, ModelChoice
    from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
    from idforge.methods.faceid.generate import generate_faceid

    engine = Engine(ModelChoice(models_dirs=[str(kit)]), device="cpu", dtype="float32")
    faces = [synthetic_face(stripes=2), synthetic_face(box=(60, 90, 190, 220), stripes=5)]
    request = FaceIDRequest(
        faces=faces,
        adapter="ip-adapter-faceid-plusv2_sdxl.bin",
        faceid=FaceIDParams(batch=True),
        generation=GenerationParams(
            prompt="a portrait photo", steps=4, guidance=5.0, seed=7, width=64, height=64
        ),
    )
    result = generate_faceid(engine, request)
    written = result.save(out / "faceid_batch")
    say(
        f"FaceID plusv2 batch (reference i -> output i, seeds {result.seeds}): wrote {', '.join(map(str, written))}"
    )


def demo_insta_depth_http(kit: Path, out: Path) -> None:
    from idforge.server.demo import run_http_demo

    written = run_http_demo(kit, out)
    say(
        f"Insta Depth through the HTTP API (POST /v1/insta-depth, the seed's request shape): wrote {', '.join(map(str, written))}"
    )
