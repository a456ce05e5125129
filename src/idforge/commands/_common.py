"""Arguments every generation command shares, and turning them into parameter objects."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from tqdm.auto import tqdm

from idforge.engine.params import SCHEDULERS, GenerationParams, LoraSpec


def add_generation_arguments(
    parser: argparse.ArgumentParser, *, steps: int = 30, guidance: float = 5.0, lora_flag: str = "--lora"
) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--prompt", required=True, help="what the image shows")
    group.add_argument("--negative-prompt", default="", help="what to keep out of the image")
    group.add_argument(
        "--style",
        default=None,
        metavar="NAME",
        help="a style template (list: idforge styles); wraps the prompt",
    )
    group.add_argument(
        "--steps", type=int, default=None, help=f"denoising steps (default {steps}, or the preset's)"
    )
    group.add_argument(
        "--guidance",
        type=float,
        default=None,
        help=f"CFG scale (default {guidance}, or the preset's; <=1 disables CFG)",
    )
    group.add_argument(
        "--scheduler", default=None, choices=SCHEDULERS, help="sampler (default euler, or the preset's)"
    )
    group.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="few-step preset: lcm, lightning-1/2/4/8, lightning-N-unet, hyper-1/2/4/8, hyper-8-cfg, hyper-12-cfg "
        "(loads its LoRA or UNet; sets scheduler, steps and guidance)",
    )
    parser.set_defaults(method_steps=steps, method_guidance=guidance)
    group.add_argument("--seed", type=int, default=None, help="random when not given; image i uses seed+i")
    group.add_argument("--width", type=int, default=None)
    group.add_argument("--height", type=int, default=None)
    group.add_argument("--num-images", type=int, default=1)
    group.add_argument(
        lora_flag,
        dest="lora",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="extra LoRA, e.g. LCM-LoRA (repeatable)",
    )
    identity = parser.add_argument_group("identity score")
    identity.add_argument(
        "--score-models",
        default=None,
        metavar="PATH|NAME",
        help="face pack for the identity score (default: the pack that conditioned the generation, which flatters it)",
    )
    identity.add_argument("--no-score", action="store_true", help="do not score the outputs")
    identity.add_argument(
        "--best-of",
        type=int,
        default=1,
        metavar="N",
        help="generate N candidates (seeds seed..seed+N-1, at most 16) and keep the best identity score",
    )
    identity.add_argument(
        "--best-of-batch", type=int, default=4, metavar="K", help="candidates per denoising pass (default 4)"
    )
    group.add_argument("-o", "--output", required=True, help="output PNG (several images: NAME_0.png ...)")
    group.add_argument("--json", action="store_true", help="print the full recipe as JSON")
    group.add_argument("--quiet", action="store_true", help="no progress bar")
    models = parser.add_argument_group("models and device")
    models.add_argument("--base", default=None, help="diffusers folder, single-file checkpoint or hub id")
    models.add_argument("--face-models", default=None, help="insightface pack folder or name")
    models.add_argument(
        "--models", action="append", default=[], metavar="DIR", help="tiny-kit or ComfyUI models folder"
    )
    models.add_argument("--offline", action="store_true", default=None, help="never download")
    models.add_argument("--device", default="auto")
    models.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    models.add_argument(
        "--cpu-offload", action="store_true", help="keep models on the CPU until used (small GPUs)"
    )
    models.add_argument("--vae-tiling", action="store_true", help="decode large images in tiles (small GPUs)")
    add_fast_arguments(parser)


def add_fast_arguments(parser: argparse.ArgumentParser) -> None:
    """The fast-path switches (engine/fastpath.py); `--fast` is the measured preset for the device."""
    group = parser.add_argument_group("fast path (see README, Speed)")
    group.add_argument(
        "--fast", action="store_true", help="the preset that measured faster on this device (bf16 on CUDA)"
    )
    group.add_argument("--compile", action="store_true", help="torch.compile UNet, ControlNets, VAE decoder")
    group.add_argument(
        "--compile-mode", default="default", choices=("default", "max-autotune-no-cudagraphs", "max-autotune")
    )
    group.add_argument("--cuda-graphs", action="store_true", help="CUDA graphs (with --compile)")
    group.add_argument("--channels-last", action="store_true", help="NHWC memory format for the conv nets")
    group.add_argument("--fuse-qkv", action="store_true", help="fused Q/K/V projections in every attention")
    group.add_argument("--vae-dtype", default=None, choices=("bfloat16", "float16", "float32"))
    group.add_argument("--fp8", action="store_true", help="FP8 linears via torchao (CUDA sm89+)")
    group.add_argument(
        "--no-control-embedding-cache",
        action="store_true",
        help="recompute ControlNet conditioning embeddings every step (default: once per request)",
    )


def fast_path(args: argparse.Namespace, device: str) -> tuple[object, str]:
    """(FastPath, dtype) from the switches: `--fast` gives the preset, single switches add to it."""
    from idforge.engine.device import resolve_device
    from idforge.engine.fastpath import FastPath

    dtype = args.dtype
    fast = FastPath()
    if getattr(args, "fast", False):
        resolved = resolve_device(device)
        fast = FastPath.preset("fast", resolved)
        if dtype == "auto" and resolved.type == "cuda":
            dtype = "bfloat16"
    changes: dict[str, object] = {}
    for flag, field in (
        ("compile", "compile"),
        ("cuda_graphs", "cuda_graphs"),
        ("channels_last", "channels_last"),
        ("fuse_qkv", "fused_qkv"),
        ("fp8", "fp8"),
    ):
        if getattr(args, flag, False):
            changes[field] = True
    if getattr(args, "vae_dtype", None):
        changes["vae_dtype"] = args.vae_dtype
    if getattr(args, "compile_mode", "default") != "default":
        changes["compile_mode"] = args.compile_mode
    if getattr(args, "no_control_embedding_cache", False):
        changes["cache_control_embedding"] = False
    return fast.with_changes(**changes), dtype


def parse_lora(text: str) -> LoraSpec:
    """PATH or PATH:STRENGTH (a trailing number after the last colon is the strength)."""
    path, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            path, strength = head, float(tail)
        except ValueError:
            path = text
    return LoraSpec(path=path, strength=strength)


def generation_params(args: argparse.Namespace) -> GenerationParams:
    """Sampler settings: given on the command line, else the preset's, else the command's defaults."""
    with_preset = args.preset is not None
    steps = args.steps if args.steps is not None or with_preset else args.method_steps
    guidance = args.guidance if args.guidance is not None or with_preset else args.method_guidance
    return GenerationParams(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        steps=steps,
        guidance=guidance,
        scheduler=args.scheduler,
        preset=args.preset,
        seed=args.seed,
        width=args.width,
        height=args.height,
        num_images=args.num_images,
        device=args.device,
        dtype=args.dtype,
        cpu_offload=args.cpu_offload,
        vae_tiling=args.vae_tiling,
        loras=[parse_lora(text) for text in args.lora],
        style=args.style,
        score=not args.no_score,
        best_of=args.best_of,
        best_of_batch=args.best_of_batch,
        score_models=args.score_models,
    )


def make_engine(args: argparse.Namespace, **choices: object):
    """An engine with the models named on the command line (imported here: `idforge --help` stays fast); a
    method's `choices` add to them or replace them (FaceID leaves the face pack to each request)."""
    from idforge.engine.session import Engine, ModelChoice

    named = {"base": args.base, "face_models": args.face_models, "offline": args.offline}
    models = ModelChoice(models_dirs=list(args.models), **(named | choices))
    fast, dtype = fast_path(args, args.device)
    return Engine(models, device=args.device, dtype=dtype, fast=fast)


def progress_bar(
    args: argparse.Namespace, description: str
) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A tqdm bar over denoising steps (stderr), and its closer."""
    if args.quiet:
        return (lambda step, total: None), (lambda: None)
    bar = tqdm(desc=description, unit="step", file=sys.stderr)

    def update(step: int, total: int) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()

    return update, bar.close


def report(args: argparse.Namespace, result, written) -> None:
    for warning in result.warnings:
        print(f"idforge: warning: {warning}", file=sys.stderr)
    if args.json:
        payload = result.recipe | {"files": [str(p) for p in written], "seeds": result.seeds}
        print(json.dumps(payload, indent=2, default=str))
    else:
        identity = result.identity.images if result.identity is not None else [None] * len(written)
        for path, seed, score in zip(written, result.seeds, identity, strict=True):
            print(f"{path}  seed={seed}{_score_text(score)}")


def _score_text(score) -> str:
    if score is None:
        return ""
    if score.score is None:
        return f"  identity=none ({score.reason})"
    return f"  identity={score.score:.4f}"
