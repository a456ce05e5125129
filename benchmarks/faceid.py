"""FaceID: a batch of N faces in one pass vs N single runs, and step time vs diffusers on the same weights.

1. Batch: `generate_faceid` with N references in batch mode (N outputs, one denoising pass, per-sample IP tokens)
   against N calls with one reference each. Wall time of whole calls (face analysis is cached after the warm-up
   in both, text encoding and VAE decoding included), ratio = N singles / one batch.
2. Step time (one image): ours against diffusers' plain pipeline (no adapter) and diffusers' native FaceID path
   (`load_ip_adapter(image_encoder_folder=None)` on a copy of the UNet, the embedded LoRA through PEFT at the same
   strength, `ip_adapter_image_embeds`). Medians of per-step callback deltas; the runs alternate in rounds.
Writes JSON (default benchmarks/results/faceid.json).

    .venv/bin/python benchmarks/faceid.py --models /path/to/kit [--size 128 --steps 8 --batch 4 --rounds 3]
    .venv/bin/python benchmarks/faceid.py --models ~/ComfyUI/models --adapter ip-adapter-faceid_sdxl.bin \
        --size 1024 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from idforge.demo.samples import synthetic_face
from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest, load_faceid_models
from idforge.methods.faceid.generate import generate_faceid

PROMPT = "a portrait photo"


def step_deltas(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def request(faces: list[Path], args, seed: int, batch: bool = False) -> FaceIDRequest:
    return FaceIDRequest(
        faces=faces,
        generation=GenerationParams(
            prompt=PROMPT, steps=args.steps, guidance=5.0, seed=seed, width=args.size, height=args.size
        ),
        faceid=FaceIDParams(batch=batch),
        adapter=args.adapter,
    )


def time_call(engine: Engine, req: FaceIDRequest) -> tuple[float, list[float]]:
    stamps: list[float] = []
    sync(engine.device)
    start = time.perf_counter()
    generate_faceid(engine, req, progress=lambda step, total: stamps.append(time.perf_counter()))
    sync(engine.device)
    return time.perf_counter() - start, step_deltas(stamps)


def time_pipe(pipe, args, seed: int, embeds: torch.Tensor | None) -> list[float]:
    stamps: list[float] = []

    def on_step(pipeline, step, timestep, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    extra = {"ip_adapter_image_embeds": [embeds]} if embeds is not None else {}
    pipe(
        PROMPT,
        num_inference_steps=args.steps,
        guidance_scale=5.0,
        width=args.size,
        height=args.size,
        generator=torch.Generator("cpu").manual_seed(seed),
        callback_on_step_end=on_step,
        output_type="latent",
        **extra,
    )
    return step_deltas(stamps)


def diffusers_faceid_pipe(engine: Engine, models, lora_strength: float):
    """A diffusers pipeline on a copy of our UNet with the adapter loaded natively (None without peft)."""
    try:
        import peft  # noqa: F401
    except ImportError:
        return None
    base = models.base
    components = dict(base.pipe.components)
    components["unet"] = copy.deepcopy(base.pipe.unet)
    pipe = type(base.pipe)(**components)
    pipe.load_ip_adapter(
        str(models.adapter_path.parent),
        subfolder="",
        weight_name=models.adapter_path.name,
        image_encoder_folder=None,
        low_cpu_mem_usage=False,
    )
    if models.adapter.lora:
        pipe.set_adapters(["faceid_0"], adapter_weights=[lora_strength])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="tiny kit or ComfyUI models folder")
    parser.add_argument("--adapter", default="ip-adapter-faceid_sdxl.bin")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="N faces in the batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/faceid.json")
    args = parser.parse_args()

    engine = Engine(ModelChoice(models_dirs=[args.models]), device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        faces = []
        for i in range(args.batch):
            path = Path(tmp) / f"face{i}.png"
            synthetic_face(stripes=i + 1).save(path)
            faces.append(path)
        generate_faceid(engine, request(faces, args, 0, batch=True))  # warm-up: loads, face cache
        models = load_faceid_models(engine, request(faces[:1], args, 0))
        plain = type(models.base.pipe)(**models.base.pipe.components)
        plain.set_progress_bar_config(disable=True)
        native = diffusers_faceid_pipe(engine, models, FaceIDParams().lora_strength)
        embedding = engine.face_analyzer(None, default="buffalo_l").get_face(faces[0], pick="score")
        vector = torch.from_numpy(np.asarray(embedding.normed_embedding, dtype=np.float32)).reshape(1, 1, 512)
        embeds = torch.cat([torch.zeros_like(vector), vector]).to(engine.device, engine.dtype)

        batch_totals, single_totals = [], []
        ours_steps, plain_steps, native_steps, batch_steps = [], [], [], []
        for round_index in range(args.rounds):
            total, steps = time_call(engine, request(faces, args, round_index, batch=True))
            batch_totals.append(total)
            batch_steps += steps
            singles = 0.0
            for i, face in enumerate(faces):
                total, steps = time_call(engine, request([face], args, round_index + i))
                singles += total
                ours_steps += steps
            single_totals.append(singles)
            plain_steps += time_pipe(plain, args, round_index, None)
            if native is not None:
                native_steps += time_pipe(native, args, round_index, embeds)

    batch_s = statistics.median(batch_totals)
    singles_s = statistics.median(single_totals)
    ours = statistics.median(ours_steps)
    reference = statistics.median(plain_steps)
    native_s = statistics.median(native_steps) if native_steps else None
    result = {
        "benchmark": "faceid",
        "models": args.models,
        "adapter": models.adapter_path.name,
        "adapter_kind": models.adapter.kind,
        "device": str(engine.device),
        "dtype": str(engine.dtype),
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "batch_one_pass_s_median": round(batch_s, 4),
        "n_single_runs_s_median": round(singles_s, 4),
        "batch_speedup": round(singles_s / batch_s, 3),
        "batch_s_per_step_median": round(statistics.median(batch_steps), 5),
        "ours_s_per_step_median": round(ours, 5),
        "diffusers_plain_s_per_step_median": round(reference, 5),
        "diffusers_faceid_s_per_step_median": None if native_s is None else round(native_s, 5),
        "overhead_vs_plain": round(ours / reference, 4),
        "ratio_vs_diffusers_faceid": None if native_s is None else round(ours / native_s, 4),
        "peak_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "note": (
            "batch_speedup = N single calls / one batch call (whole calls); step ratios are one image, ours with "
            "the LoRA merged into the weights, diffusers' FaceID with the LoRA as PEFT layers"
        ),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
