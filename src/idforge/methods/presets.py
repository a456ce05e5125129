"""The identity strengths a few-step preset recommends, resolved in one place for the CLI, Python and HTTP.

A strength left unset (None) takes the preset's recommendation (engine/fewstep.py), else the method's default;
one given explicitly always wins. Every method's request resolves its parameters through `identity_strength`
when it is built, so the same preset gives the same settings whichever way the request came in.
"""

from __future__ import annotations

DEFAULT_IDENTITY = {"ip_weight": 0.8, "cn_strength": 0.8, "faceid_weight": 1.0, "pulid_weight": 0.8}


def identity_strength(name: str, given: float | None, preset: str | None) -> float:
    """`given` if set, else `preset`'s recommended `name` (ip_weight, cn_strength, faceid_weight), else default."""
    if given is not None:
        return given
    if preset:
        from idforge.engine.fewstep import get_few_step_preset

        advice = get_few_step_preset(preset).identity
        if name in advice:
            return advice[name]
    return DEFAULT_IDENTITY[name]
