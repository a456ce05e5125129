"""InstantID for several independent requests in one denoising pass (a server worker's batch of jobs).

Each request keeps everything that is its own: its prompt (encoded alone), its seed (its own noise and scheduler
generator), its face tokens and its keypoint image (sample i of IdentityNet and of the IP attention). The pass
shares what the requests agree on (the caller groups them: server/batching.py): base, size, steps, sampler,
guidance, strengths and windows. A request whose inputs fail (unreadable image, no face) gets its exception in
its slot and is left out of the pass; the others run. Each result is that request's own, with its own recipe and
identity score; a batched UNet call differs from a single one by float rounding only (~1e-6 in the latents).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from idforge.engine.loop import ControlUnit
from idforge.engine.result import GenerationResult
from idforge.engine.sampling import sample_and_decode
from idforge.engine.seeds import resolve_seed
from idforge.engine.session import Engine
from idforge.errors import ParameterError
from idforge.methods.instantid.core import (
    IdentityRun,
    InstantIDModels,
    InstantIDRequest,
    PreparedInstantID,
    install_identity,
    instantid_recipe,
    load_instantid_models,
    load_request_images,
    prepare_instantid,
)
from idforge.methods.instantid.generate import instantid_result

ProgressCallback = Callable[[int, int], None]


def check_batchable(requests: Sequence[InstantIDRequest]) -> None:
    """Refuse what this path does not do per sample (the server's key never sends it)."""
    first = requests[0].generation
    for index, request in enumerate(requests):
        gen = request.generation
        if request.persons or request.mask is not None or request.instantid.enhance_face_region:
            raise ParameterError(f"requests[{index}]", "persons, masks and the face region run alone")
        if gen.best_of != 1 or gen.num_images != 1:
            raise ParameterError(f"requests[{index}]", "best-of-N and num_images > 1 run alone")
        shared = ("steps", "guidance", "scheduler", "width", "height", "unet", "preset", "eta")
        if any(getattr(gen, name) != getattr(first, name) for name in shared):
            raise ParameterError(f"requests[{index}]", "differs from request 0 in a pass-level setting")
        if _pass_params(request) != _pass_params(requests[0]):
            raise ParameterError(f"requests[{index}]", "differs from request 0 in InstantID strengths")


def _pass_params(request: InstantIDRequest) -> tuple:
    p = request.instantid
    return (p.ip_weight, p.cn_strength, p.start_at, p.end_at, p.combine_embeds)


def attach_per_sample(
    engine: Engine,
    attention,  # IdentityAttention
    models: InstantIDModels,
    prepared: Sequence[PreparedInstantID],
    request: InstantIDRequest,
) -> ControlUnit:
    """InstantID's IP adapter and IdentityNet with sample i conditioned on prepared[i] (tokens, keypoints)."""
    dtype = models.base.unet.dtype
    tokens = (
        torch.cat([p.uncond_tokens for p in prepared]).to(dtype),
        torch.cat([p.cond_tokens for p in prepared]).to(dtype),
    )
    kps_images = [p.kps_image for p in prepared]
    return install_identity(engine, attention, models, request.instantid, "instantid", tokens, kps_images)


def generate_instantid_batch(
    engine: Engine, requests: Sequence[InstantIDRequest], progress: ProgressCallback | None = None
) -> list[GenerationResult | Exception]:
    """One result (or the exception of its inputs) per request, from one denoising pass over those that
    prepared. The progress callback sees the pass's steps (it may raise to stop the whole pass)."""
    if not requests:
        return []
    check_batchable(requests)
    started = time.perf_counter()
    models = load_instantid_models(engine, requests[0].base, requests[0].instantid_model)
    outcomes: list[GenerationResult | Exception | None] = [None] * len(requests)
    loaded: list[tuple[int, InstantIDRequest, PreparedInstantID]] = []
    for index, request in enumerate(requests):
        try:
            request = load_request_images(request)
            loaded.append((index, request, prepare_instantid(engine, request, models.projection)))
        except Exception as exc:  # noqa: BLE001 - this request's own bad input; the others still run
            outcomes[index] = exc
    shapes = {tuple(p.cond_tokens.shape) + (p.width, p.height) for _, _, p in loaded}
    if len(shapes) > 1:
        raise ParameterError("requests", f"face tokens or sizes differ across the batch: {sorted(shapes)}")
    if loaded:
        from idforge.identity.attention import IdentityAttention

        first = loaded[0][1]
        gen = first.generation
        width, height = loaded[0][2].width, loaded[0][2].height
        seeds = [resolve_seed(request.generation.seed) for _, request, _ in loaded]
        attention = IdentityAttention(models.base.unet)
        control = attach_per_sample(engine, attention, models, [p for _, _, p in loaded], first)
        latents, images = sample_and_decode(
            engine,
            models.base,
            gen,
            seeds,
            (width, height),
            attention,
            [control],
            progress,
            prompts=[request.generation.styled_prompts() for _, request, _ in loaded],
        )
        for slot, ((index, request, prepared), seed) in enumerate(zip(loaded, seeds, strict=True)):
            run = IdentityRun([images[slot]], seed, [seed], latents[slot : slot + 1])
            batch = {"jobs": len(loaded), "index": slot}
            recipe = instantid_recipe(
                engine, request, models, prepared, run, started, sections={"batch": batch}
            )
            outcomes[index] = instantid_result(engine, request, prepared, run, recipe)
    return outcomes  # type: ignore[return-value]
