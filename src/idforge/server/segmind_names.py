"""Segmind's InstantID field names (SPEC.md section 6), accepted beside ours on /v1 and /v2 instantid.

A user switching from the hosted API sends `samples`, `steps`, `guidance`, `identity_strength` and
`adapter_strength`. They are mapped onto our fields before pricing and validation of the job. A body that names
one parameter twice (e.g. `steps` and `num_inference_steps`) is refused with a 400 naming both. **Ours:** a body
that uses at least one of Segmind's own names is a Segmind body, so the parameters it leaves out take Segmind's
defaults (10 steps, guidance 5, both strengths 0.8, `enhance_face_region` true, `base64` false: a JPEG body,
as the hosted API answers); a body in our names keeps ours.
"""

from __future__ import annotations

from typing import Any

from idforge.server.schemas import RequestFieldError

SEGMIND_TO_OURS = {
    "samples": "num_images",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "identity_strength": "cn_strength",
    "adapter_strength": "ip_weight",
}
SEGMIND_DEFAULTS: dict[str, Any] = {
    "num_images": 1,
    "num_inference_steps": 10,
    "guidance_scale": 5.0,
    "cn_strength": 0.8,
    "ip_weight": 0.8,
    "enhance_face_region": True,
    "base64": False,
}


def resolve_names(method: str, body: Any) -> Any:
    """The body in our names only (a copy); RequestFieldError when one parameter is given under both names."""
    if method != "instantid":
        return body
    given = body.model_fields_set
    theirs = [name for name in SEGMIND_TO_OURS if name in given and getattr(body, name) is not None]
    for name in theirs:
        ours = SEGMIND_TO_OURS[name]
        if ours in given:
            raise RequestFieldError(
                name, f"{name} (Segmind's name) and {ours} set the same parameter; send only one of them"
            )
    if not theirs:
        return body
    update = {name: value for name, value in SEGMIND_DEFAULTS.items() if name not in given}
    update |= {SEGMIND_TO_OURS[name]: getattr(body, name) for name in theirs}
    update |= {name: None for name in SEGMIND_TO_OURS}
    return body.model_copy(update=update)
