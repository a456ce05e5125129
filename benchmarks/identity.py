"""Identity benchmark: which few-step preset and which identity strength keep the face, measured.

Runs a grid (preset x InstantID IP weight x seeds) with InstantID on one reference photo and records, per cell,
the distribution of the identity score (cosine of the output face's embedding to the reference, faces/scoring.py)
and how many outputs had no scorable face. Writes JSON (default benchmarks/results/identity.json) and a plot
(benchmarks/results/identity.png): one box per cell, no-face counts written under the boxes.

On the tiny kit the outputs are noise, so every cell is "no face": the numbers mean nothing there, the run only
proves the pipeline. With real models and a real photo it gives the table users need:

    .venv/bin/python benchmarks/identity.py --models /path/to/kit                      # the plumbing, tiny kit
    .venv/bin/python benchmarks/identity.py --models ~/ComfyUI/models --face me.jpg --device cuda \
        --size 1024 --presets none,lcm,lightning-4,hyper-8 --ip-weights 0.6,0.8,1.0 --seeds 8 \
        --score-models buffalo_l
`none` is the plain 30-step Euler baseline.

`--compare-methods instantid,faceid,pulid` runs the methods instead of the grid: any registered method that takes a
`face_image` (an unknown name lists the registered ones), each built through its registry `Method` at its body's
defaults (what an HTTP body that sets nothing gets), with the same reference, prompt, size, seeds, sampler and preset
for each (`--faceid-adapter` sets FaceID's command-line adapter, `--pulid-model` PuLID's body field `model`), all
scored with one pack (`--score-models`, default buffalo_l: InstantID and PuLID condition on antelopev2, so buffalo_l
is the independent pack for them; it is FaceID's own, which flatters FaceID: pass antelopev2 to see the other side).

    .venv/bin/python benchmarks/identity.py --models ~/ComfyUI/models --face me.jpg --device cuda --size 1024 \
        --compare-methods instantid,faceid,pulid --presets none --seeds 8 Scoring with another pack than the one that conditioned the
generation (--score-models buffalo_l for InstantID's antelopev2) avoids flattering the scores (SPEC.md 8).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from idforge.demo.samples import synthetic_face
from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.errors import ParameterError
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid
from idforge.methods.instantid.params import InstantIDParams
from idforge.methods.registry import Method, MethodCall, call_params, get_method, methods

PROMPT = "a portrait photo of a person"


def cell_stats(scores: list[float | None]) -> dict:
    """Distribution of one cell's scores; outputs without a face are counted, never averaged in as 0."""
    values = sorted(s for s in scores if s is not None)
    stats: dict = {"n": len(scores), "scored": len(values), "no_face": len(scores) - len(values)}
    if values:
        quartiles = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
        stats |= {
            "mean": statistics.fmean(values),
            "median": statistics.median(values),
            "min": values[0],
            "max": values[-1],
            "p25": quartiles[0],
            "p75": quartiles[2],
        }
    return stats


def run_cell(engine: Engine, args, face: str, preset: str, ip_weight: float) -> dict:
    """All seeds of one (preset, ip weight) cell, one call per seed (each a plain, reproducible run)."""
    scores, seconds = [], []
    for seed in range(args.seed, args.seed + args.seeds):
        gen = GenerationParams(
            prompt=PROMPT,
            seed=seed,
            width=args.size,
            height=args.size,
            preset=None if preset == "none" else preset,
            score_models=args.score_models,
        )
        started = time.perf_counter()
        result = generate_instantid(
            engine,
            InstantIDRequest(faces=[face], generation=gen, instantid=InstantIDParams(ip_weight=ip_weight)),
        )
        seconds.append(time.perf_counter() - started)
        scores.append(result.scores[0])
        pack = result.recipe["identity"]["pack"]
    return {
        "preset": preset,
        "ip_weight": ip_weight,
        "seeds": list(range(args.seed, args.seed + args.seeds)),
        "scores": scores,
        "stats": cell_stats(scores),
        "seconds_per_image": statistics.median(seconds),
        "score_pack": pack,
    }


def face_methods() -> list[str]:
    """The registered methods `--compare-methods` can run: those that take a reference face."""
    return [method.name for method in methods() if "face_image" in {image.field for image in method.images}]


def compared_method(name: str) -> Method:
    """The registered method `name`, checked before any model loads; an exit listing the usable ones otherwise."""
    try:
        method = get_method(name)
    except ParameterError as exc:
        raise SystemExit(f"--compare-methods: {exc.problem}") from None
    if method.name not in face_methods():
        raise SystemExit(
            f"--compare-methods: {name} takes no face_image (methods: {', '.join(face_methods())})"
        )
    return method


def method_settings(args: argparse.Namespace) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """What this benchmark's method flags set: method name -> (body fields, command-line options). The adapter is
    FaceID's command-line option, not its body field, so it takes files and hub ids too, and unset means the base
    family's default, as in `idforge faceid`."""
    return {"faceid": ({}, {"adapter": args.faceid_adapter}), "pulid": ({"model": args.pulid_model}, {})}


def method_request(
    method: Method, face: str, gen: GenerationParams, fields: dict[str, Any], options: dict[str, Any]
) -> Any:
    """One method's engine request at its body's defaults plus `fields`, built as the CLI and HTTP build theirs
    (body, MethodCall, check, build_request). `face` fills face_image and the other images a plain run on one face
    needs (the method's warm-up images: Insta Depth takes it as its pose too); `gen` replaces the body's sampler
    settings, so every method runs the same sampler."""
    filled = {"face_image", *method.warm_up_images}
    try:
        body = method.body(prompt=gen.prompt, **{name: face for name in filled}, **fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise SystemExit(f"{method.name}: {'.'.join(map(str, error['loc']))}: {error['msg']}") from None
    images: dict[str, Any] = {}
    for image in method.images:
        images[image.field] = face if image.field in filled else None
        if image.extra:
            images[image.extra] = []
    call = MethodCall(params=call_params(body), images=images, generation=gen, options=options)
    if method.check is not None:
        method.check(call)
    return method.build_request(call)


def run_method_cell(engine: Engine, args, face: str, method: Method, preset: str) -> dict:
    """All seeds of one (method, preset) cell, every method scored with the same pack."""
    fields, options = method_settings(args).get(method.name, ({}, {}))
    scores, seconds = [], []
    for seed in range(args.seed, args.seed + args.seeds):
        gen = GenerationParams(
            prompt=PROMPT,
            seed=seed,
            width=args.size,
            height=args.size,
            preset=None if preset == "none" else preset,
            score_models=args.score_models or "buffalo_l",
        )
        request = method_request(method, face, gen, fields, options)
        started = time.perf_counter()
        result = method.run(engine, request, None)
        seconds.append(time.perf_counter() - started)
        scores.append(result.scores[0])
    return {
        "method": method.name,
        "preset": preset,
        "seeds": list(range(args.seed, args.seed + args.seeds)),
        "scores": scores,
        "stats": cell_stats(scores),
        "seconds_per_image": statistics.median(seconds),
        "score_pack": args.score_models or "buffalo_l",
    }


def scoring_cost(engine: Engine, face: str, repeats: int = 5) -> dict:
    """Seconds to score one output: with a face (found at the first detection size) and without one (every
    fallback size, then the padded retry: 9 detections), against one detection at 640. Medians of `repeats`."""
    import numpy as np
    from PIL import Image

    from idforge.faces.scoring import reference_embedding, score_image

    analyzer = engine.face_analyzer(None)
    reference = reference_embedding(analyzer, [face])
    with_face = Image.open(face).convert("RGB")
    without = Image.fromarray(np.full((with_face.height, with_face.width, 3), 20, np.uint8))

    def median_time(call) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    detect = median_time(lambda: analyzer.detect_faces(with_face, fallback=False))
    scored = median_time(lambda: score_image(analyzer, with_face, reference))
    no_face = median_time(lambda: score_image(analyzer, without, reference))
    return {
        "pack": str(analyzer.pack_dir),
        "image_size": list(with_face.size),
        "detect_640_s": detect,
        "score_with_face_s": scored,
        "score_no_face_s": no_face,
        "no_face_over_one_detection": no_face / detect,
    }


def plot(cells: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cells)), 4.5))
    data = [[s for s in cell["scores"] if s is not None] or [float("nan")] for cell in cells]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(cells) + 1))
    ax.set_xticklabels([f"{c['preset']}\nip {c['ip_weight']}" for c in cells], fontsize=8)
    ax.set_ylabel("identity score (cosine)")
    ax.set_ylim(-1.05, 1.05)
    ax.axhspan(0.6, 0.8, color="green", alpha=0.08, label="good identity with real models (0.6-0.8)")
    for index, cell in enumerate(cells, start=1):
        stats = cell["stats"]
        ax.annotate(
            f"no face {stats['no_face']}/{stats['n']}",
            (index, -1.0),
            ha="center",
            fontsize=7,
            color="firebrick" if stats["no_face"] else "dimgray",
        )
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", action="append", default=[], help="models folder (tiny kit or ComfyUI)")
    parser.add_argument("--face", default=None, help="reference photo (default: the kit's synthetic face)")
    parser.add_argument("--presets", default="none,lcm,lightning-4,hyper-8")
    parser.add_argument("--ip-weights", default="0.6,0.8,1.0")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--score-models", default=None, help="face pack for scoring (default: InstantID's own)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default="benchmarks/results/identity.json")
    parser.add_argument("--skip-grid", action="store_true", help="only measure the cost of scoring")
    parser.add_argument(
        "--compare-methods",
        default=None,
        help="e.g. instantid,faceid,pulid: registered methods on the same references/seeds",
    )
    parser.add_argument("--faceid-adapter", default=None, help="FaceID adapter for --compare-methods")
    parser.add_argument("--pulid-model", default="pulid-v1.1", help="pulid-v1.1 | pulid-v1 | pulid-comfyui")
    args = parser.parse_args()
    names = [m.strip() for m in (args.compare_methods or "").split(",") if m.strip()]
    compared = [compared_method(name) for name in names]  # a wrong name fails before any model loads

    face = args.face
    if face is None:
        face = str(Path(tempfile.mkdtemp()) / "face.png")
        synthetic_face().save(face)
    engine = Engine(ModelChoice(models_dirs=args.models), device=args.device, dtype=args.dtype)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    weights = [float(w) for w in args.ip_weights.split(",")]
    cost = scoring_cost(engine, face)
    print(
        f"scoring: {cost['score_with_face_s']:.3f} s with a face, {cost['score_no_face_s']:.3f} s without",
        flush=True,
    )
    cells = []
    if compared:
        for preset in presets:
            for method in compared:
                cell = run_method_cell(engine, args, face, method, preset)
                stats = cell["stats"]
                mean = f"{stats['mean']:.3f}" if stats["scored"] else "-"
                print(
                    f"{method.name:>10} {preset:>14} scored {stats['scored']}/{stats['n']} mean {mean}",
                    flush=True,
                )
                cells.append(cell)
        out = Path(
            args.out if args.out != parser.get_default("out") else "benchmarks/results/identity_methods.json"
        )
        result = {
            "benchmark": "identity-methods",
            "what": "identity score per (method, preset) over the same seeds and reference, one scoring pack",
            "face": args.face or "kit synthetic face",
            "models": args.models,
            "size": args.size,
            "device": args.device,
            "platform": platform.platform(),
            "cells": cells,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
        return
    for preset in presets if not args.skip_grid else []:
        for weight in weights:
            cell = run_cell(engine, args, face, preset, weight)
            stats = cell["stats"]
            mean = f"{stats['mean']:.3f}" if stats["scored"] else "-"
            print(
                f"{preset:>14} ip {weight:<4} scored {stats['scored']}/{stats['n']} mean {mean}", flush=True
            )
            cells.append(cell)
    out = Path(args.out)
    if args.skip_grid and out.exists():  # keep the grid of an earlier run, refresh the scoring cost
        cells = json.loads(out.read_text()).get("cells", [])
    result = {
        "benchmark": "identity",
        "what": "InstantID identity score per (preset, ip_weight) over seeds; no_face counted, never scored 0",
        "face": args.face or "kit synthetic face",
        "models": args.models,
        "size": args.size,
        "device": args.device,
        "platform": platform.platform(),
        "scoring_cost": cost,
        "cells": cells,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    title = f"identity score by preset and IP weight ({args.seeds} seeds, {args.size}px, models: {', '.join(args.models)})"
    plot(cells, out.with_suffix(".png"), title)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
