"""Typed errors a user can act on.

Every error raised for bad input or missing models derives from `IdforgeError`; its message is one line that
names the input and what is wrong. The CLI prints it without a traceback, the HTTP API maps it to a 4xx.
"""

from __future__ import annotations

from collections.abc import Sequence


class InputName(str):
    """An input's name as messages show it ("face image 1", "person 2 mask") that also knows the request field it
    came from ("extra_face_images[0]", "persons[1].mask_image"): errors stay readable and the HTTP API names the
    field without parsing messages."""

    field: str | None

    def __new__(cls, text: str, field: str | None) -> InputName:
        name = super().__new__(cls, text)
        name.field = field
        return name

    def __reduce__(self):  # keeps `field` across pickling (Ray, process pools)
        return (InputName, (str(self), self.field))


def face_input(index: int, person: int | None = None) -> InputName:
    """Reference face `index` (0-based) of the request, or of person `person` (1-based) when given."""
    own = "face_image" if index == 0 else f"extra_face_images[{index - 1}]"
    if person is None:
        return InputName(f"face image {index}", own)
    return InputName(f"person {person} face image {index}", f"persons[{person - 1}].{own}")


def person_input(person: int, what: str | None = None, field: str | None = None) -> InputName:
    """Person `person` (1-based) of a several-people request, or one of its fields (`what`: "mask", "ip_weight")."""
    base = f"persons[{person - 1}]"
    if what is None:
        return InputName(f"person {person}", base)
    return InputName(f"person {person} {what}", f"{base}.{field or what}")


class IdforgeError(Exception):
    """Base class: an error caused by the user's input or set-up, not by a bug."""

    @property
    def field(self) -> str | None:
        """The request field at fault, when the error names one (an InputName, or given explicitly)."""
        explicit = getattr(self, "_field", None)
        if explicit is not None:
            return explicit
        return getattr(getattr(self, "name", None), "field", None)


class InputImageError(IdforgeError, ValueError):
    """An input image cannot be used: not an image, empty, truncated, too large."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


class NoFaceError(IdforgeError):
    """No face was found in an image at any of the detection sizes tried."""

    def __init__(self, name: str, sizes_tried: Sequence[int], extra: str = "") -> None:
        self.name = name
        self.sizes_tried = list(sizes_tried)
        sizes = ", ".join(str(s) for s in self.sizes_tried)
        message = f"{name}: no face found (detection sizes tried: {sizes})"
        if extra:
            message += f"; {extra}"
        super().__init__(message)


class ModelNotFoundError(IdforgeError, FileNotFoundError):
    """A model a job needs is not available locally (and could not be downloaded)."""

    def __init__(self, model: str, looked_in: Sequence[str], hint: str = "") -> None:
        self.model = model
        self.looked_in = list(looked_in)
        self.hint = hint
        where = "; ".join(self.looked_in) if self.looked_in else "nowhere"
        message = f"model '{model}' not found (looked in: {where})"
        if hint:
            message += f". {hint}"
        super().__init__(message)

    def __str__(self) -> str:  # FileNotFoundError would otherwise format errno-style
        return self.args[0]


class ModelFormatError(IdforgeError, ValueError):
    """A checkpoint exists but is not what the job needs: corrupt, wrong family, wrong base model."""


class ParameterError(IdforgeError, ValueError):
    """A parameter is out of range or of the wrong kind; `field` names the request field when it differs."""

    def __init__(self, name: str, problem: str, *, field: str | None = None) -> None:
        self.name = name
        self.problem = problem
        self._field = field
        super().__init__(f"{name}: {problem}")

    def __reduce__(self):
        return (_rebuild_parameter_error, (type(self), self.name, self.problem, self._field))


def _rebuild_parameter_error(kind: type, name: str, problem: str, field: str | None) -> ParameterError:
    error = ParameterError.__new__(kind)
    ParameterError.__init__(error, name, problem, field=field)
    return error


def check_range(name: str, value: float, low: float, high: float) -> float:
    """Return `value` if low <= value <= high, else raise a ParameterError naming the range."""
    if not (low <= value <= high):
        raise ParameterError(name, f"{value!r} is out of range [{low}, {high}]")
    return value


def check_window(start: float, end: float, names: tuple[str, str] = ("start_at", "end_at")) -> None:
    """A schedule window (fractions of the steps, like the nodes' start_at/end_at): both in [0, 1], in order."""
    start_name, end_name = names
    check_range(start_name, start, 0.0, 1.0)
    check_range(end_name, end, 0.0, 1.0)
    if end < start:
        raise ParameterError(end_name, f"{end} is before {start_name} {start}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return `value` if it is one of `choices`, else raise a ParameterError listing them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ParameterError(name, f"{value!r} is not one of {listed}")
    return value


POSE = InputName("pose image", "pose_image")
KPS = InputName("keypoint image", "kps_image")
