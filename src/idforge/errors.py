"""Typed errors a user can act on.

Every error raised for bad input or missing models derives from `IdforgeError`; its message is one line that
names the input and what is wrong. The CLI prints it without a traceback, the HTTP API maps it to a 4xx.
"""

from __future__ import annotations

from collections.abc import Sequence


class IdforgeError(Exception):
    """Base class: an error caused by the user's input or set-up, not by a bug."""


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
    """A parameter is out of range or of the wrong kind."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


def check_range(name: str, value: float, low: float, high: float) -> float:
    """Return `value` if low <= value <= high, else raise a ParameterError naming the range."""
    if not (low <= value <= high):
        raise ParameterError(name, f"{value!r} is out of range [{low}, {high}]")
    return value


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return `value` if it is one of `choices`, else raise a ParameterError listing them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ParameterError(name, f"{value!r} is not one of {listed}")
    return value
