"""Seconds per denoising step: our InstantID vs diffusers' plain SDXL ControlNet pipeline, same weights and size.

Both runs use the same base, the same ControlNet (IdentityNet) and the same keypoint image; ours adds the IP
attention (16 face tokens in every cross-attention layer) and the face path. Step times come from per-step
callbacks (median of the step-to-step deltas), so text encoding and VAE decoding are excluded; the two pipelines
alternate in rounds so machine noise hits both alike. Writes JSON (default benchmarks/results/instantid.json).

    .venv/bin/python benchmarks/instantid.py --models /path/to/kit [--size 128 --steps 8 --rounds 3]
    .venv/bin/python benchmarks/instantid.py --models ~/ComfyUI/models --size 1024 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionXLControlNetPipeline

from idforge.demo.samples import synthetic_face
from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.methods.instantid.core import InstantIDRequest, instantid_paths
from idforge.methods.instantid.generate import generate_instantid


def step_deltas(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def time_ours(engine: Engine, face: Path, size: int, steps: int, seed: int) -> list[float]:
    stamps: list[float] = []
    request = InstantIDRequest(
        faces=[face],
        generation=GenerationParams(
            prompt="a portrait photo", steps=steps, seed=seed, width=size, height=size
        ),
    )
    generate_instantid(engine, request, progress=lambda step, total: stamps.append(time.perf_counter()))
    return step_deltas(stamps)


def time_diffusers(pipe, kps_image, size: int, steps: int, seed: int) -> list[float]:
    stamps: list[float] = []

    def on_step(pipeline, step, timestep, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    pipe(
        prompt="a portrait photo",
        image=kps_image,
        num_inference_steps=steps,
        guidance_scale=5.0,
        width=size,
        height=size,
        controlnet_conditioning_scale=0.8,
        generator=torch.Generator("cpu").manual_seed(seed),
        callback_on_step_end=on_step,
        output_type="latent",
    )
    return step_deltas(stamps)


def peak_cuda_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="tiny kit or ComfyUI models folder")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/instantid.json")
    args = parser.parse_args()

    engine = Engine(ModelChoice(models_dirs=[args.models]), device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        face = Path(tmp) / "face.png"
        synthetic_face().save(face)
        warm = generate_instantid(
            engine,
            InstantIDRequest(
                faces=[face],
                generation=GenerationParams(prompt="x", steps=2, seed=0, width=args.size, height=args.size),
            ),
        )
        kps_image = warm.extras["kps_image"]
        base = engine.base_model()
        identitynet_path, _ = instantid_paths(engine, None)
        identitynet = engine.controlnet(identitynet_path, base, "IdentityNet")
        plain = StableDiffusionXLControlNetPipeline(**base.pipe.components, controlnet=identitynet)
        plain.set_progress_bar_config(disable=True)

        ours_steps: list[float] = []
        plain_steps: list[float] = []
        peaks: dict[str, float | None] = {}
        for round_index in range(args.rounds):
            if engine.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ours_steps += time_ours(engine, face, args.size, args.steps, seed=round_index)
            peaks["ours_cuda_mb"] = (
                max(peaks.get("ours_cuda_mb") or 0, peak_cuda_mb(engine.device) or 0) or None
            )
            if engine.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            plain_steps += time_diffusers(plain, kps_image, args.size, args.steps, seed=round_index)
            peaks["diffusers_cuda_mb"] = (
                max(peaks.get("diffusers_cuda_mb") or 0, peak_cuda_mb(engine.device) or 0) or None
            )

    ours = statistics.median(ours_steps)
    reference = statistics.median(plain_steps)
    result = {
        "benchmark": "instantid_step_time",
        "models": args.models,
        "device": str(engine.device),
        "dtype": str(engine.dtype),
        "size": args.size,
        "steps": args.steps,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "ours_s_per_step_median": round(ours, 5),
        "diffusers_controlnet_s_per_step_median": round(reference, 5),
        "overhead_ratio": round(ours / reference, 4),
        "peak_cuda_mb": peaks,
        "peak_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "note": "ratio = ours / diffusers plain ControlNet pipeline; ours adds IP attention with 16 face tokens",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
