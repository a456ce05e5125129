"""`generate_faceid`: FaceID end to end (the flow is in methods/faceid/core.py's docstring), with InstantID beside
it when asked and several people through methods/faceid/persons.py."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from idforge.engine.inputs import image_name
from idforge.engine.loop import ControlUnit
from idforge.engine.memory import on_device, park_on_cpu
from idforge.engine.params import params_to_dict
from idforge.engine.recipe import PassLayout
from idforge.engine.result import GenerationResult
from idforge.engine.scoring import attach_identity
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine
from idforge.errors import (
    ParameterError,
)
from idforge.identity.attention import attach_prepared
from idforge.imageio import load_mask
from idforge.methods.faceid.core import (
    FaceIDRequest,
    check_best_of,
    decode_inputs,
    faceid_output_size,
    faceid_recipe,
    load_faceid_models,
    prepare_faceid,
    sample_with_faceid_lora,
)
from idforge.methods.instantid.core import ProgressCallback, instantid_inputs, instantid_model_entries


def generate_faceid(
    engine: Engine,
    request: FaceIDRequest,
    progress: ProgressCallback | None = None,
    *,
    instantid: Any | None = None,
) -> GenerationResult:
    """Run FaceID end to end (optionally together with InstantID) and return images with their recipe.

    `instantid` (an InstantIDRequest) adds InstantID to the same generation: its faces, parameters, pose,
    mask and models; the prompt, sampler, size, seed and base come from `request` (a size not given there
    follows InstantID's keypoint-image rule). Batch mode is not available combined.
    """
    if instantid is None:
        instantid = request.instantid
    started = time.perf_counter()
    gen, params = request.generation, request.faceid
    if gen.best_of > 1:
        check_best_of(gen.best_of, params.batch)
        from idforge.methods.best_of import generate_best_of

        def one_run(engine: Engine, request: FaceIDRequest, progress: ProgressCallback | None):
            return generate_faceid(engine, request, progress, instantid=instantid)

        return generate_best_of(engine, one_run, request, progress)
    if request.persons:
        if instantid is not None:
            raise ParameterError(
                "persons", "several people cannot be combined with InstantID in a FaceID call"
            )
        from idforge.methods.faceid.persons import generate_faceid_persons

        return generate_faceid_persons(engine, request, progress)
    if instantid is not None and params.batch:
        raise ParameterError("batch", "batch mode cannot be combined with InstantID (one identity per call)")
    request = decode_inputs(request)
    models = load_faceid_models(engine, request)
    base = models.base

    iid = None  # the InstantID part, when combined: (its request, models, prepared inputs)
    if instantid is not None:
        from idforge.methods.instantid.core import (
            load_instantid_models,
            load_request_images,
            prepare_instantid,
        )

        iid_request = replace(load_request_images(instantid), generation=gen, base=base.source)
        iid_models = load_instantid_models(engine, base.source, iid_request.instantid_model)
        iid_prepared = prepare_instantid(engine, iid_request, iid_models.projection)
        iid = (iid_request, iid_models, iid_prepared)
        width, height = iid_prepared.width, iid_prepared.height
    else:
        width, height = faceid_output_size(gen, base.family)

    offload = gen.cpu_offload
    clip_model = models.clip[0] if models.clip is not None else None
    park_on_cpu([clip_model], engine.device, offload)
    with on_device([clip_model], engine.device, offload):
        prepared = prepare_faceid(engine, request, models, gen.num_images)
    batch = len(prepared.batch_references) if prepared.batch_references is not None else gen.num_images
    seed = resolve_seed(gen.seed)
    seeds = image_seeds(seed, batch)
    latent_hw = (height // base.vae_scale_factor, width // base.vae_scale_factor)
    dtype, device = base.unet.dtype, engine.device

    from idforge.identity.attention import IdentityAttention

    attention = IdentityAttention(base.unet)
    mask = load_mask(request.attn_mask, (width, height)) if request.attn_mask is not None else None
    attach_prepared(attention, "faceid", models.adapter.ip_layers, prepared, params, mask, device, dtype)
    controls: list[ControlUnit] = []
    if iid is not None:
        from idforge.methods.instantid.core import attach_instantid

        iid_request, iid_models, iid_prepared = iid
        controls.append(
            attach_instantid(
                engine,
                attention,
                iid_models,
                iid_prepared,
                iid_request.instantid,
                iid_request.mask,
                batch,
                latent_hw,
            )
        )
    latents, images = sample_with_faceid_lora(
        engine, models, gen, seeds, (width, height), attention, controls, progress, params.lora_strength
    )

    warnings = models.warnings + prepared.warnings
    recipe = faceid_recipe(engine, request, models, prepared, PassLayout(seeds, width, height, started))
    extras: dict[str, Any] = {"face_images": prepared.face_images}
    if iid is not None:
        iid_request, iid_models, iid_prepared = iid
        recipe.method = "instantid+faceid"
        recipe.sections["instantid"] = _instantid_part(engine, iid_request, iid_models, iid_prepared)
        extras["kps_image"] = iid_prepared.kps_image
        warnings += iid_prepared.warnings
    result = GenerationResult(
        images=images,
        seeds=seeds,
        recipe=recipe.to_dict(),
        extras=extras,
        warnings=warnings,
        latents=latents,
    )
    used = {info["image"] for info in prepared.faces_info}  # skip_missing may have left references out
    references = [face for face in request.faces if image_name(face, "") in used]
    per_image = None
    if prepared.batch_references is not None:  # batch: reference i conditioned output i, so it scores it
        per_image = [[references[i]] for i in prepared.batch_references]
    return attach_identity(
        engine,
        result,
        references,
        generation_pack=request.face_models,
        default_pack="buffalo_l",
        pick=params.pick,
        per_image_references=per_image,
    )


def _instantid_part(engine, request, models, prepared) -> dict[str, Any]:
    """The InstantID half of a combined recipe: its parameters, models and inputs (faces, pose, keypoints, mask)."""
    return {
        "params": params_to_dict(request.instantid),
        "models": instantid_model_entries(engine, request, models),
        "inputs": instantid_inputs(request, prepared),
    }
