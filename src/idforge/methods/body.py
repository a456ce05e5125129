"""The one parameter vocabulary every method shares: the request body the CLI flags and the HTTP schema both come
from (defaults and ranges of the seeds, shown in the OpenAPI docs).

Conventions (seed 002): `num_inference_steps`, `guidance_scale`, `seed` with -1 = random, `base64`. A method's body
subclasses `MethodBody` with the parameters of its ComfyUI node. Unknown fields are refused (400 naming them): a
misspelt parameter should not be silently ignored. Another API's names for our parameters (Segmind's InstantID
names) are declared on the body itself (`ALIASES`, `ALIAS_DEFAULTS`) and resolved by `resolve_aliases`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from idforge.engine.params import MAX_BEST_OF, MAX_SEED, GenerationParams
from idforge.errors import ParameterError
from idforge.methods import fields
from idforge.styles import STYLES


class RequestFieldError(ParameterError):
    """A request-level problem whose `name` is already the request field."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(name, problem, field=name)


def sampler_defaults(body: type[MethodBody]) -> Callable[[], GenerationParams]:
    """A method request's default sampler settings: its body's step and guidance defaults, so the Python API,
    the CLI and HTTP start from the same numbers."""
    steps = body.model_fields["num_inference_steps"].default
    guidance = body.model_fields["guidance_scale"].default
    return lambda: GenerationParams(steps=steps, guidance=guidance)


class MethodBody(BaseModel):
    """Fields every method takes; a method's body adds its own."""

    model_config = ConfigDict(extra="forbid")

    # Another API's field name -> ours; a body that uses one of them takes ALIAS_DEFAULTS for what it leaves out.
    ALIASES: ClassVar[dict[str, str]] = {}
    ALIAS_DEFAULTS: ClassVar[dict[str, Any]] = {}
    ALIAS_SOURCE: ClassVar[str] = ""

    prompt: str = Field(..., max_length=4000, description="Prompt to render")
    negative_prompt: str | None = Field(
        None, max_length=4000, description="Prompts to exclude, eg. 'bad anatomy, bad hands, missing fingers'"
    )
    num_inference_steps: int = fields.steps(10)
    guidance_scale: float = fields.guidance(3.0)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="Seed for image generation; -1 = random")
    base64: bool = Field(
        True, description="true: JSON with the base64 JPEG; false: the image/jpeg bytes as the body"
    )
    width: int | None = Field(
        None, ge=64, le=2048, multiple_of=8, description="(idforge extension) output width; with height"
    )
    height: int | None = Field(
        None, ge=64, le=2048, multiple_of=8, description="(idforge extension) output height; with width"
    )
    style: str | None = Field(
        None,
        max_length=64,
        description="a style template by name: wraps the prompt and adds to the negative prompt; one of "
        f"{', '.join(STYLES)} (GET /v1/styles shows each template)",
    )
    best_of: int = Field(
        1,
        ge=1,
        le=MAX_BEST_OF,
        description="(idforge) generate N candidates (seeds seed..seed+N-1) and return the one with the best "
        "identity score; the ranking is in the recipe; costs N images",
    )
    preset: str | None = Field(
        None,
        max_length=32,
        description="(idforge) few-step preset: lcm, lightning-1/2/4/8, lightning-N-unet, hyper-1/2/4/8, "
        "hyper-8-cfg, hyper-12-cfg; sets scheduler, steps, guidance and the identity strengths unless they are "
        "given",
    )
    score_models: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="(idforge) face pack name for the identity score (default: the method's own pack)",
    )
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description="(/v2 only) http(s) URL that receives the final status body by POST, signed as Standard "
        "Webhooks specify with the key's whsec_ secret; retried with backoff until delivered",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value


# Fields about the job or the reply, not parameters of the generation.
JOB_FIELDS = frozenset({"webhook_url", "base64"})
COMMON_FIELDS = frozenset(MethodBody.model_fields)


def resolve_aliases(body: MethodBody) -> MethodBody:
    """The body in our names only (a copy). A body that names one parameter twice (e.g. `steps` and
    `num_inference_steps`) is refused naming both. A body that uses at least one alias is the other API's body, so
    the parameters it leaves out take that API's defaults (ALIAS_DEFAULTS); a body in our names keeps ours."""
    aliases = type(body).ALIASES
    if not aliases:
        return body
    given = body.model_fields_set
    theirs = [name for name in aliases if name in given and getattr(body, name) is not None]
    source = type(body).ALIAS_SOURCE
    for name in theirs:
        ours = aliases[name]
        if ours in given:
            raise RequestFieldError(
                name, f"{name} ({source}'s name) and {ours} set the same parameter; send only one of them"
            )
    if not theirs:
        return body
    update = {name: value for name, value in type(body).ALIAS_DEFAULTS.items() if name not in given}
    update |= {aliases[name]: getattr(body, name) for name in theirs}
    update |= {name: None for name in aliases}
    resolved = body.model_copy(update=update)
    resolved.__pydantic_fields_set__ = set(given) | set(update) - set(aliases)
    return resolved
