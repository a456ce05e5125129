"""Several people in one image: the persons, their regions and their keypoint placement, for every method.

InstantID's persons (one IP adapter and one IdentityNet per person) are methods/instantid/persons.py, FaceID's
(one FaceID adapter per person) methods/faceid/persons.py (the flow is in the InstantID module's docstring); this
module is what they share: the `Person`, region masks (inside the image, not empty, disjoint), the output size.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import numpy as np

from idforge.engine.inputs import ImageInput, ImageSource, image_name, load_named
from idforge.engine.recipe import pixels_digest
from idforge.engine.sizing import instantid_size
from idforge.errors import InputName, ParameterError, check_choice, check_range, face_input, person_input
from idforge.imageio import load_mask

RegionName = Literal["left", "right", "top", "bottom"]
REGION_NAMES: tuple[str, ...] = get_args(RegionName)


MAX_PERSONS = 8


@dataclass
class Person:
    """One person of a multi-person image: face image(s), own strengths and window, and one region.

    The region is exactly one of `region` (left | right | top | bottom: that half of the image), `box`
    (x1, y1, x2, y2 in output pixels) or `mask` (an image; white or opaque = the person's area, resized to the
    output). Strengths and window left at None take the request's InstantID values.
    """

    faces: Sequence[ImageInput]
    region: str | None = None
    box: tuple[int, int, int, int] | None = None
    mask: ImageSource | None = None
    ip_weight: float | None = None
    cn_strength: float | None = None
    start_at: float | None = None
    end_at: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.faces, str | bytes) or not isinstance(self.faces, Sequence):
            self.faces = [self.faces]
        self.faces = list(self.faces)
        given = [name for name in ("region", "box", "mask") if getattr(self, name) is not None]
        if len(given) != 1:
            problem = "no region given" if not given else f"several regions given ({', '.join(given)})"
            raise ParameterError(
                "region", f"{problem}; give one: region=left|right|top|bottom, box=x1:y1:x2:y2 or mask=IMAGE"
            )
        if self.region is not None:
            self.region = check_choice("region", str(self.region).strip().lower(), REGION_NAMES)
        if self.box is not None:
            self.box = _check_box(self.box)
        for name, low, high in (("ip_weight", 0.0, 3.0), ("cn_strength", 0.0, 10.0)):
            value = getattr(self, name)
            if value is not None:
                check_range(name, float(value), low, high)
        for name in ("start_at", "end_at"):
            value = getattr(self, name)
            if value is not None:
                check_range(name, float(value), 0.0, 1.0)

    def region_text(self) -> str:
        """How the region was given, for messages and the recipe."""
        if self.region is not None:
            return self.region
        if self.box is not None:
            return "box " + ":".join(str(v) for v in self.box)
        assert self.mask is not None  # __post_init__: exactly one of region, box, mask
        return f"mask {image_name(self.mask, '<image>')}"


def _check_box(box: Sequence[Any]) -> tuple[int, int, int, int]:
    values = list(box)
    if len(values) != 4:
        raise ParameterError("box", f"expected 4 numbers x1:y1:x2:y2, got {len(values)}")
    try:
        x1, y1, x2, y2 = (int(round(float(v))) for v in values)
    except (TypeError, ValueError):
        raise ParameterError("box", f"{values!r} are not numbers x1:y1:x2:y2") from None
    if x2 <= x1 or y2 <= y1:
        raise ParameterError("box", f"{x1}:{y1}:{x2}:{y2} is empty (need x1 < x2 and y1 < y2)")
    return x1, y1, x2, y2


# The reference two-person workflow's canvas (SPEC.md section 8): 1280x960, one half per person.
DEFAULT_SIZE = (1280, 960)


# A mask image's pixel belongs to the region at or above this value (regions are sets of pixels: disjoint or not).
MASK_THRESHOLD = 0.5


def check_persons(persons: Sequence[Any]) -> None:
    """What every multi-person method needs: 1..MAX_PERSONS Person objects, each with a face."""
    if not persons:
        raise ParameterError("persons", "no person given")
    if len(persons) > MAX_PERSONS:
        raise ParameterError("persons", f"{len(persons)} persons given, at most {MAX_PERSONS}")
    for index, person in enumerate(persons, start=1):
        if not isinstance(person, Person):
            raise ParameterError(person_input(index), f"expected a Person, got {type(person).__name__}")
        if not person.faces:
            raise ParameterError(
                person_input(index, "face", "face_image"), "at least one reference face image is needed"
            )


def person_params(person: Person, label: str, defaults: Any, fields: dict[str, str]) -> Any:
    """`defaults` (a parameter object) with the person's overrides; `fields` maps Person fields to its names."""
    overrides = {
        target: getattr(person, source)
        for source, target in fields.items()
        if getattr(person, source) is not None
    }
    try:
        return replace(defaults, **overrides)
    except ParameterError as exc:
        raise ParameterError(f"{label} {exc.name}", exc.problem, field=_field(label, exc.name)) from None


def decode_persons(persons: Sequence[Person]) -> list[Person]:
    """Copies of the persons with their faces decoded and their masks checked (before any model loads)."""
    decoded = []
    for index, person in enumerate(persons, start=1):
        faces = [load_named(source, face_input(i, person=index)) for i, source in enumerate(person.faces)]
        if person.mask is not None:
            load_mask(
                person.mask, (8, 8), name=image_name(person.mask, person_input(index, "mask", "mask_image"))
            )
        decoded.append(replace(person, faces=faces))
    return decoded


def output_size(request: Any) -> tuple[int, int]:
    """Width/height when given; else the pose (or keypoint) image's InstantID size; else the two-person canvas."""
    gen = request.generation
    if gen.width is not None and gen.height is not None:
        return gen.width, gen.height
    if gen.width is not None or gen.height is not None:
        raise ParameterError("width/height", "give both width and height, or neither")
    for source in (request.pose, request.kps_image):
        if source is not None:
            return instantid_size(*load_named(source, "pose or keypoint image").image.size)
    if all(person.region in ("top", "bottom") for person in request.persons):
        return DEFAULT_SIZE[1], DEFAULT_SIZE[0]
    return DEFAULT_SIZE


def region_mask(person: Person, label: str, size: tuple[int, int]) -> np.ndarray:
    """The person's region as a 0/1 float32 (H, W) mask at the output size (width, height)."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.float32)
    if person.region is not None:
        half_w, half_h = width // 2, height // 2
        area = {
            "left": (slice(None), slice(0, half_w)),
            "right": (slice(None), slice(half_w, width)),
            "top": (slice(0, half_h), slice(None)),
            "bottom": (slice(half_h, height), slice(None)),
        }[person.region]
        mask[area] = 1.0
        return mask
    if person.box is not None:
        x1, y1, x2, y2 = person.box
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ParameterError(
                f"{label} box",
                f"{x1}:{y1}:{x2}:{y2} reaches outside the {width}x{height} image",
                field=_field(label, "box"),
            )
        mask[y1:y2, x1:x2] = 1.0
        return mask
    assert person.mask is not None  # Person.__post_init__: exactly one of region, box, mask
    name = image_name(person.mask, InputName(f"{label} mask", _field(label, "mask_image")))
    soft = load_mask(person.mask, size, name=name)
    mask = (soft >= MASK_THRESHOLD).astype(np.float32)
    if not mask.any():
        raise ParameterError(
            f"{label} mask",
            f"{name} is empty: no pixel of it is at or above {MASK_THRESHOLD}",
            field=_field(label, "mask_image"),
        )
    return mask


def _field(label: str, name: str) -> str | None:
    """`persons[i].<name>` for a person's label (an InputName), None for a plain one."""
    base = getattr(label, "field", None)
    return f"{base}.{name}" if base else None


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x1, y1, x2, y2), exclusive ends, of a mask's non-zero pixels."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def region_record(person: Person, region: np.ndarray) -> dict[str, Any]:
    """A person's region in its recipe: as given (`Person.region_text`), where it fell, and a mask image's
    pixels_sha256, so that a reproduction finds and checks the mask as it does every input image."""
    record: dict[str, Any] = {
        "given": person.region_text(),
        "box": list(mask_box(region)),
        "pixels": int(np.count_nonzero(region)),
    }
    if person.mask is not None:
        record["mask_sha256"] = pixels_digest(person.mask)
    return record


def region_given(text: str) -> dict[str, Any]:
    """The Person fields of a region as `Person.region_text` wrote it: {"region": "left"}, {"box": (...)} or
    {"mask": name} (the mask image's recorded name, still to be found)."""
    kind, _, rest = text.partition(" ")
    if kind == "box":
        return {"box": tuple(int(value) for value in rest.split(":"))}
    if kind == "mask":
        return {"mask": rest}
    return {"region": text}


def check_disjoint(labels: Sequence[str], masks: Sequence[np.ndarray], persons: Sequence[Person]) -> None:
    """Two persons may not share a pixel: the same place cannot take two identities."""
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            shared = int(np.count_nonzero((masks[i] > 0) & (masks[j] > 0)))
            if shared:
                raise ParameterError(
                    f"{labels[i]}/{labels[j]} regions",
                    f"{persons[i].region_text()} and {persons[j].region_text()} overlap by {shared} pixels; "
                    "regions must be disjoint",
                    field=getattr(labels[i], "field", None),
                )


def person_regions(persons: Sequence[Person], size: tuple[int, int]) -> list[np.ndarray]:
    """Every person's region mask at the output size, checked: inside the image, not empty, disjoint
    (InstantID and FaceID alike)."""
    persons = list(persons)
    labels = [person_input(i) for i in range(1, len(persons) + 1)]
    masks = [region_mask(person, label, size) for person, label in zip(persons, labels, strict=True)]
    check_disjoint(labels, masks, persons)
    return masks


def centre_in(mask: np.ndarray, box: np.ndarray) -> bool:
    """True when the centre of `box` (output coordinates) is a pixel of `mask`."""
    height, width = mask.shape
    cx = int((float(box[0]) + float(box[2])) / 2)
    cy = int((float(box[1]) + float(box[3])) / 2)
    return 0 <= cx < width and 0 <= cy < height and bool(mask[cy, cx] > 0)


def pick_in_region(mask: np.ndarray, boxes: Sequence[np.ndarray]) -> int | None:
    """Index of the largest box whose centre lies in the region, or None."""
    inside = [i for i, box in enumerate(boxes) if centre_in(mask, box)]
    if not inside:
        return None
    return max(inside, key=lambda i: float((boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])))


def fit_into_box(
    kps: np.ndarray, face_box: np.ndarray, image_size: tuple[int, int], box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A reference face's keypoints and box moved as if its whole image were scaled to fit `box`, centred."""
    image_w, image_h = image_size
    x1, y1, x2, y2 = box
    box_w, box_h = x2 - x1, y2 - y1
    scale = min(box_w / image_w, box_h / image_h)
    offset = np.array([x1 + (box_w - scale * image_w) / 2, y1 + (box_h - scale * image_h) / 2], np.float32)
    points = np.asarray(kps, dtype=np.float32) * scale + offset
    moved = np.asarray(face_box, dtype=np.float32) * scale + np.tile(offset, 2)
    return points, moved


def adapter_name(index: int) -> str:
    """The name of person `index`'s (1-based) adapter on IdentityAttention and its IdentityNet unit."""
    return f"person{index}"


# ---- the command line's spelling of a person -------------------------------------------------------------------

PERSON_KEYS = ("face", "region", "box", "mask", "ip_weight", "cn_strength", "start_at", "end_at")


def parse_person(text: str, index: int) -> Person:
    """`--person face=A.jpg,region=left,ip_weight=0.9` -> a Person; errors name the --person (1-based)."""
    label = f"--person {index}"
    values: dict[str, Any] = {}
    faces: list[str] = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip().lower().replace("-", "_"), value.strip()
        if not sep or not key or not value:
            raise ParameterError(label, f"{item.strip()!r} in {text!r} is not KEY=VALUE")
        if key not in PERSON_KEYS:
            raise ParameterError(label, f"unknown key {key!r} (keys: {', '.join(PERSON_KEYS)})")
        if key == "face":
            faces.append(value)
            continue
        if key in values:
            raise ParameterError(label, f"{key} given twice")
        if key == "box":
            parts = value.split(":")
            try:
                values[key] = tuple(float(v) for v in parts)
            except ValueError:
                raise ParameterError(label, f"box {value!r} is not x1:y1:x2:y2 in pixels") from None
        elif key in ("ip_weight", "cn_strength", "start_at", "end_at"):
            try:
                values[key] = float(value)
            except ValueError:
                raise ParameterError(label, f"{key} {value!r} is not a number") from None
        else:
            values[key] = value
    if not faces:
        raise ParameterError(label, f"no face in {text!r} (add face=IMG)")
    try:
        return Person(faces=faces, **values)
    except ParameterError as exc:
        raise ParameterError(label, str(exc)) from None


def add_person_argument(parser: argparse.ArgumentParser, strengths: str) -> None:
    """`--person KEY=VALUE,...` (repeatable): InstantID's and FaceID's several-people option."""
    parser.add_argument(
        "--person",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="one person of several in the image (repeatable), e.g. face=A.jpg,region=left; keys: face "
        f"(repeatable), region (left|right|top|bottom), box (x1:y1:x2:y2 px), mask (IMG), {strengths}, "
        "start_at, end_at",
    )


def persons_from_arguments(args: argparse.Namespace) -> list[Person]:
    return [parse_person(text, index) for index, text in enumerate(args.person, start=1)]


def names_persons(call: Any) -> bool:
    """Whether a call (a MethodCall) names several persons. A call names one person by face_image or several by
    `persons`, never both: each person brings its own faces, and its region is its mask. Checked before anything is
    queued or charged."""
    has_face = call.image("face_image") is not None
    if not has_face and not call.persons:
        raise ParameterError(
            "face_image",
            "required: a reference face, or several persons each with their own",
            field="face_image",
        )
    if not call.persons:
        return False
    if has_face or call.image("extra_face_images") or call.image("mask_image") is not None:
        raise ParameterError(
            "persons",
            "replaces face_image, extra_face_images and mask_image: give each person's own instead",
            field="persons",
        )
    return True
