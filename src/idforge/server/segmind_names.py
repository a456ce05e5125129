"""Segmind's InstantID field names, accepted beside ours: declared on the body (methods/instantid/body.py) and
resolved for any method's body by `methods.body.resolve_aliases`."""

from __future__ import annotations

from idforge.methods.body import resolve_aliases
from idforge.methods.instantid.body import InstantIDBody

SEGMIND_TO_OURS = InstantIDBody.ALIASES
SEGMIND_DEFAULTS = InstantIDBody.ALIAS_DEFAULTS


def resolve_names(method: str, body):
    """The body in our names only (a copy); kept for callers that pass the method name."""
    return resolve_aliases(body)
