"""What a method's rule reads and writes: the values reaching one KSampler (`SamplerInputs`) and the generation it
plans (`PlannedGeneration`: the method's body parameters, images by body field, people, model files).

Every value a rule uses is noted for `--explain` (`SamplerInputs.set` / `say`), and one it cannot express is
refused with `node_error`, naming the node and its input.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from idforge.comfy.values import Conditioning, IdentityPatch, ImageRef, Latent, Lora, Mask, Model
from idforge.errors import ParameterError


def node_error(node: str, name: str, problem: str) -> ParameterError:
    return ParameterError(f"node {node} {name}", problem, field=f"{node}.{name}")


@dataclass
class ExplainLine:
    input: str
    target: str
    value: Any


@dataclass
class PlannedPerson:
    faces: list[ImageRef]
    mask_png: bytes
    values: dict[str, Any]  # the person's body parameters (ip_weight, start_at, ...)
    node: str


@dataclass(frozen=True)
class PlannedModel:
    """A model file the graph names: the node input naming it (errors name it), its role in the models store
    (which ComfyUI folders hold it) and the request field its path fills ("a.b": key b of field a; None: none,
    the path is only recorded)."""

    node: str
    input: str
    name: str
    role: str
    field: str | None


ModelsHook = Callable[["PlannedGeneration", Mapping[str, str]], None]


@dataclass
class PlannedGeneration:
    """One generation: a method, its body parameters (no images), images by field, people, models, outputs."""

    sampler: str
    method: str
    params: dict[str, Any]
    images: dict[str, Any]  # body field -> ImageRef | list[ImageRef] | PNG bytes (computed masks)
    sources: dict[str, str]  # body field -> "node.input" it came from (errors name it)
    outputs: list[str]  # SaveImage / PreviewImage node ids
    nodes: list[str]  # every node id that shaped it
    persons: list[PlannedPerson] = field(default_factory=list)
    models: dict[str, PlannedModel] = field(default_factory=dict)  # recipe name ("base", ...) -> the file
    loras: list[Lora] = field(default_factory=list)  # merged LoRAs (a rule takes out one its method loads)
    scheduler: str | None = "euler"  # None: the few-step preset's (comfy/few_step.py)
    # once the model files are found, what depends on them (FaceID's preset: the base model's family)
    on_models: ModelsHook | None = None

    def image_refs(self) -> list[ImageRef]:
        refs: list[ImageRef] = []
        for value in self.images.values():
            refs.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, ImageRef))
        for person in self.persons:
            refs.extend(person.faces)
        return refs


@dataclass
class SamplerInputs:
    """What reaches one sampler, and the note-taking of the planner for it."""

    node: str
    model: Model
    positive: Conditioning
    negative: Conditioning
    latent: Latent
    values: dict[str, Any]
    explain: dict[str, list[ExplainLine]]
    params: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def set(self, param: str, value: Any, node: str, name: str, target: str | None = None) -> None:
        """Body parameter `param` = value, from node.name (explained as `target`, default the parameter)."""
        self.params[param] = value
        self.sources[param] = f"{node}.{name}"
        self.say(node, name, target or param, value)

    def say(self, node: str, name: str, target: str, value: Any) -> None:
        self.explain.setdefault(node, []).append(ExplainLine(name, target, value))

    def patches(self) -> list[IdentityPatch]:
        found: dict[str, IdentityPatch] = {}
        for patch in (*self.model.patches, *self.positive.patches):
            found.setdefault(patch.node, patch)
        return list(found.values())


def mask_png(mask: Mask) -> bytes:
    from PIL import Image

    array = (np.clip(mask.array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def add_person(
    inputs: SamplerInputs,
    gen: PlannedGeneration,
    patch: IdentityPatch,
    mask: Mask,
    values: dict[str, Any],
    said: str,
) -> None:
    """One person of a several-people image (an identity node and its mask): its references, its region and its
    own body values (`persons[i]`), noted as coming from the node's inputs `said` ("image/mask/weights")."""
    faces = patch.faces
    inputs.say(patch.node, said, f"persons[{len(gen.persons)}]", [f.filename for f in faces])
    gen.persons.append(
        PlannedPerson(faces=list(faces), mask_png=mask_png(mask), values=values, node=patch.node)
    )


def set_references(
    inputs: SamplerInputs, gen: PlannedGeneration, patch: IdentityPatch, mask_input: str
) -> None:
    """One identity node's reference images (face_image + extra_face_images) and its mask (mask_image, from the
    node's input `mask_input`), noted."""
    node, faces, mask = patch.node, patch.faces, patch.mask
    gen.images["face_image"] = faces[0]
    gen.images["extra_face_images"] = list(faces[1:])
    target = "face_image" + (" (+ extra_face_images)" if len(faces) > 1 else "")
    inputs.say(node, "image", target, [f.filename for f in faces])
    if mask is not None:
        gen.images["mask_image"] = mask_png(mask)
        inputs.say(node, mask_input, "mask_image", f"mask of node {mask.nodes[-1]}")
