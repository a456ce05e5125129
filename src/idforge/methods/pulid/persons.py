"""Several people in one PuLID image: one ID branch per person, each masked to its region, one denoising pass.

A person is its faces (encoded as one PuLID reference set: v1.1 in one pass, v1 main + auxiliary tokens), its
weight (`ip_weight` of `Person` is its id_scale), its window and its region; `cn_strength` is refused (PuLID has no
ControlNet). Regions are checked (inside, not empty, disjoint) before any model loads when the size is given; the
ID weights of the checkpoint are shared by all persons on the one `IdentityAttention`; each person is scored in
its region (methods/person_scores.py). PuLID's official code has no multi-person mode: this is ours, built as the
references' two-person InstantID workflow (one identity branch per person, each with its mask).
"""

from __future__ import annotations

from dataclasses import replace

from idforge.engine.result import GenerationResult
from idforge.engine.sampling import sample_and_decode
from idforge.engine.session import Engine
from idforge.methods.adapter_persons import (
    AdapterPersonsFlow,
    ProgressCallback,
    adapter_person_params,
    generate_adapter_persons,
)
from idforge.methods.persons import Person
from idforge.methods.pulid.core import (
    PulidParams,
    PulidRequest,
    load_pulid_models,
    prepare_pulid,
    pulid_output_size,
    pulid_recipe,
)


def check_pulid_persons(request: PulidRequest) -> list[PulidParams]:
    return adapter_person_params(
        request.persons, request.faces, request.attn_mask, request.pulid, "PuLID has no ControlNet"
    )


def _prepare_person(engine, request: PulidRequest, models, person: Person, params: PulidParams):
    return prepare_pulid(engine, replace(request, faces=person.faces, pulid=params), models)


PULID_PERSONS = AdapterPersonsFlow(
    check=check_pulid_persons,
    load_models=load_pulid_models,
    output_size=lambda gen, models: pulid_output_size(gen, models.checkpoint.version),
    towers=lambda models: [models.eva, models.parser, models.encoder],
    prepare=_prepare_person,
    ip_layers=lambda models: models.checkpoint.ip_layers,
    sample=lambda engine, request, models, seeds, size, attention, progress: sample_and_decode(
        engine, models.base, request.generation, seeds, size, attention, (), progress
    ),
    recipe=pulid_recipe,
    pick=lambda request: request.pulid.pick,
    default_pack="antelopev2",
)


def generate_pulid_persons(
    engine: Engine, request: PulidRequest, progress: ProgressCallback | None = None
) -> GenerationResult:
    return generate_adapter_persons(engine, request, PULID_PERSONS, progress)
