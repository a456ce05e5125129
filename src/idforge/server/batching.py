"""Which queued jobs may share one denoising pass: the compatibility key a worker claims several jobs by.

Two jobs share a pass when everything the pass itself uses is equal: the method, the models, the size, the steps,
the sampler, the guidance, the identity strengths and windows. What each sample may bring on its own is left out
of the key: the prompt, the negative prompt, the style (each prompt is encoded alone), the seed (each sample draws
its own noise), the face images (each sample gets its own tokens and keypoint image) and the scoring pack.
Anything the batched engine path does not handle per sample makes the job run alone (key None): several persons,
a mask, the face-box region, best-of-N, several images per job, a size taken from the keypoint image.
Only InstantID has a batched path so far (methods/instantid/batch.py).
"""

from __future__ import annotations

import json
from typing import Any

from idforge.server.jobs import JobSpec

PER_SAMPLE_PARAMS = frozenset({"prompt", "negative_prompt", "seed", "style", "score_models", "base64"})
BATCHED_METHODS = frozenset({"instantid"})


def spec_batch_key(spec: JobSpec) -> str | None:
    """The key of a decoded job; None when it must run alone."""
    return params_batch_key(spec.method, spec.params, _given(spec.images))


def _given(images: dict[str, Any]) -> dict[str, Any]:
    """Image field -> present (lists kept, so the number of references counts)."""
    return {name: (value if isinstance(value, list) else value is not None) for name, value in images.items()}


def params_batch_key(method: str, params: dict[str, Any], given: dict[str, Any]) -> str | None:
    """The key from a job's parameters and which image fields it gave (`given[name]` true when present)."""
    if method not in BATCHED_METHODS:
        return None
    if params.get("persons") or given.get("mask_image") or params.get("enhance_face_region"):
        return None
    if params.get("best_of", 1) != 1 or params.get("num_images", 1) != 1:
        return None
    if params.get("width") is None or params.get("height") is None:
        return None
    shared = {name: value for name, value in sorted(params.items()) if name not in PER_SAMPLE_PARAMS}
    images = sorted(name for name, present in given.items() if present and name != "extra_face_images")
    references = 1 + len(given.get("extra_face_images") or [])  # concat: tokens per reference
    return json.dumps([method, shared, images, references], sort_keys=True, default=str)


def payload_batch_key(method: str, payload: str) -> str | None:
    """The key of a queued job's stored payload (Store.claim_many calls this inside its claim)."""
    try:
        data = json.loads(payload)
        return params_batch_key(method, data.get("params") or {}, _given(data.get("images") or {}))
    except (ValueError, TypeError, AttributeError):
        return None  # an unreadable payload runs alone (and fails there with its own error)
