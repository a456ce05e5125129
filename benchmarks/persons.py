"""Several people in one image: what each extra person costs per denoising step.

One InstantID person (the plain `faces=` path) against 2 and 3 persons (`persons=`, regions side by side) at the same
size and steps. Each person adds one IdentityNet forward and one IP attention per cross-attention layer per step;
the IP weights are shared (one GPU copy for all persons). Medians of per-step callback deltas, the cases alternating
in rounds; ratios to the one-person step in the same run. On CUDA also the peak memory of each case.
Writes JSON (default benchmarks/results/persons.json).

    .venv/bin/python benchmarks/persons.py --models /path/to/kit [--width 192 --height 96 --steps 6 --rounds 3]
    .venv/bin/python benchmarks/persons.py --models ~/ComfyUI/models --width 1280 --height 960 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from idforge.demo.samples import square_face_png
from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid
from idforge.methods.persons import Person


def boxes(count: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """`count` side-by-side columns of the image, multiples of 8 wide."""
    step = width // count // 8 * 8
    return [(i * step, 0, (i + 1) * step if i < count - 1 else width, height) for i in range(count)]


def make_request(count: int, args) -> InstantIDRequest:
    generation = GenerationParams(
        prompt="people",
        steps=args.steps,
        guidance=5.0,
        seed=1,
        width=args.width,
        height=args.height,
        score=False,
    )
    faces = [square_face_png(box=(40 + 8 * i, 40, 140 + 8 * i, 140)) for i in range(count)]
    if count == 1:
        return InstantIDRequest(faces=faces, generation=generation)
    persons = [
        Person([face], box=box)
        for face, box in zip(faces, boxes(count, args.width, args.height), strict=True)
    ]
    return InstantIDRequest(persons=persons, generation=generation)


def time_steps(engine: Engine, request: InstantIDRequest, device: torch.device) -> list[float]:
    stamps: list[float] = []

    def on_step(step: int, total: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    generate_instantid(engine, request, progress=on_step)
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", required=True)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "persons.json"))
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)

    engine = Engine(ModelChoice(models_dirs=[args.models]), device=args.device, dtype=args.dtype)
    counts = (1, 2, 3)
    requests = {count: make_request(count, args) for count in counts}
    for count in counts:  # warm-up: models, face cache, first-call set-up
        generate_instantid(engine, requests[count])
    deltas: dict[int, list[float]] = {count: [] for count in counts}
    peaks: dict[int, int] = {}
    for _ in range(args.rounds):
        for count in counts:
            if engine.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(engine.device)
            deltas[count] += time_steps(engine, requests[count], engine.device)
            if engine.device.type == "cuda":
                peaks[count] = max(peaks.get(count, 0), torch.cuda.max_memory_allocated(engine.device))
    medians = {count: statistics.median(deltas[count]) for count in counts}
    results = {
        "benchmark": "persons",
        "device": str(engine.device),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "size": [args.width, args.height],
        "steps": args.steps,
        "rounds": args.rounds,
        "step_s_median": {str(count): round(medians[count], 5) for count in counts},
        "step_ratio_to_one_person": {str(count): round(medians[count] / medians[1], 3) for count in counts},
        "peak_memory_bytes": {str(count): peaks[count] for count in peaks} or None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
