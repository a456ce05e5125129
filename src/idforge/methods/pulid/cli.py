"""`idforge pulid`: what the command line adds to PuLID's body flags (persons, face choice)."""

from __future__ import annotations

from idforge.methods.registry import CommandLine

COMMAND_LINE = CommandLine(
    person_strengths="ip_weight (the person's id_scale)",
    pick=True,
    help="generate with PuLID for SDXL (identity from face photos; EVA02-CLIP + ArcFace ID tokens)",
)
