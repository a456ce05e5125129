"""Which queued jobs may share one denoising pass: the compatibility key a worker claims several jobs by.

Two jobs share a pass when everything the pass itself uses is equal: the method, the models, the size, the steps,
the sampler, the guidance, the identity strengths and windows. What each sample may bring on its own is left out
of the key: the prompt, the negative prompt, the style (each prompt is encoded alone), the seed (each sample draws
its own noise), the face images (each sample gets its own tokens and keypoint image) and the scoring pack.
Anything the batched engine path does not handle per sample makes the job run alone (key None): several persons,
a mask, the face-box region, best-of-N, several images per job, a size taken from the keypoint image.
A method batches when its registry entry has `batch_key` and `run_batch` (InstantID so far: methods/instantid/batch.py).
"""

from __future__ import annotations

import json
from typing import Any

from idforge.server.jobs import JobSpec


def spec_batch_key(spec: JobSpec) -> str | None:
    """The key of a decoded job; None when it must run alone."""
    return params_batch_key(spec.method, spec.params, _given(spec.images))


def _given(images: dict[str, Any]) -> dict[str, Any]:
    """Image field -> present (lists kept, so the number of references counts)."""
    return {name: (value if isinstance(value, list) else value is not None) for name, value in images.items()}


def params_batch_key(method: str, params: dict[str, Any], given: dict[str, Any]) -> str | None:
    """The method's key (the registry's `batch_key`) from a job's parameters and which image fields it gave;
    None for a method without a batched path, or a job that must run alone."""
    from idforge.errors import ParameterError
    from idforge.methods.registry import get_method

    try:
        registered = get_method(method)
    except ParameterError:
        return None
    if registered.batch_key is None or registered.run_batch is None:
        return None
    return registered.batch_key(params, given)


def payload_batch_key(method: str, payload: str) -> str | None:
    """The key of a queued job's stored payload (JobsRepository.claim_many calls this inside its claim)."""
    try:
        data = json.loads(payload)
        return params_batch_key(method, data.get("params") or {}, _given(data.get("images") or {}))
    except (ValueError, TypeError, AttributeError):
        return None  # an unreadable payload runs alone (and fails there with its own error)
