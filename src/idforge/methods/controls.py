"""The controls every identity method shares (InstantID, FaceID, PuLID): the part of the schedule its identity
acts in, how its reference face is chosen, and which of its strengths a few-step preset may set.

Checked once here, so a window, a face choice or a preset's strength means the same in every method. A method's
parameter dataclass declares these fields itself, in its node's order (the order its recipe and docs list them),
and calls `check_controls` from its `__post_init__`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar, Self, cast

from idforge.engine.params import check_pick
from idforge.errors import check_range, check_window


class IdentityControls:
    """start_at/end_at: the fraction of the steps the identity acts in; pick/det_size: the reference face."""

    # field -> the few-step preset's key for it (methods/presets.py); an unset (None) field takes the preset's
    PRESET_STRENGTHS: ClassVar[Mapping[str, str]] = {}

    start_at: float
    end_at: float
    pick: str | int
    det_size: int

    def check_controls(self) -> None:
        check_window(self.start_at, self.end_at)
        self.pick = check_pick(self.pick)
        check_range("det_size", self.det_size, 64, 2048)

    def window(self) -> dict[str, float]:
        """The schedule window, as the identity attention takes it."""
        return {"start_at": self.start_at, "end_at": self.end_at}

    def with_preset(self, preset: str | None) -> Self:
        """A copy whose unset strengths are the preset's recommendation (or the method's defaults)."""
        from idforge.methods.presets import identity_strength

        resolved: dict[str, Any] = {
            name: identity_strength(key, getattr(self, name), preset)
            for name, key in self.PRESET_STRENGTHS.items()
        }
        return replace(cast(Any, self), **resolved)  # self: each method's parameter dataclass
