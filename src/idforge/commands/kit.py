"""`idforge kit tiny --out DIR [--seed N] [--force]`: write the tiny model kit used by tests and demos."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("kit", help="write test model kits", description=__doc__)
    kits = parser.add_subparsers(dest="kit", metavar="KIT", required=True)
    tiny = kits.add_parser(
        "tiny",
        help="tiny random models in the real formats (diffusers, ip-adapter .bin, FaceID, ONNX face packs)",
        description="Write tiny, randomly initialised, deterministic models in the real on-disk layouts. "
        "The folder doubles as a ComfyUI-style models/ folder. Random weights: outputs are noise.",
    )
    tiny.add_argument(
        "--out", type=Path, required=True, help="kit folder to write (must be empty, new, or a kit)"
    )
    tiny.add_argument("--seed", type=int, default=0, help="seed of every random weight (default 0)")
    tiny.add_argument("--force", action="store_true", help="replace an existing kit at --out")
    tiny.set_defaults(func=run_tiny)


def run_tiny(args: argparse.Namespace) -> int:
    from idforge.models.kit import build_kit  # heavy imports (torch, diffusers) only when the command runs

    result = build_kit(args.out, seed=args.seed, force=args.force)
    width = max(len(role) for role in result.parts) if result.parts else 0
    for role, rel in sorted(result.parts.items()):
        print(f"  {role:<{width}}  {rel}")
    if "antelopev2" not in result.parts:
        print("  (no insightface face packs: idforge.faces.kitpacks is not available)")
    print(
        f"wrote tiny kit (seed {result.seed}) to {result.path}: {len(result.files)} files, "
        f"{result.total_bytes / 1e6:.1f} MB in {result.seconds:.1f} s"
    )
    return 0
