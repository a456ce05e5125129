"""`idforge kit tiny|full --out DIR [--seed N] [--force]`: write the model kits of tests, demos and benchmarks."""

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
    full = kits.add_parser(
        "full",
        help="full-size SDXL, IdentityNet, depth ControlNets, InstantID and FaceID SDXL (random, fp16, ~10 GB)",
        description="Write every network at its real architecture (built from the configs shipped with idforge) "
        "with random weights in the published file layouts, in fp16: for speed and memory measurements on "
        "real shapes. Face packs and depth estimator are the tiny kit's. Random weights: outputs are noise.",
    )
    full.add_argument(
        "--out", type=Path, required=True, help="kit folder to write (must be empty, new, or a kit)"
    )
    full.add_argument("--seed", type=int, default=0, help="seed of every random weight (default 0)")
    full.add_argument("--force", action="store_true", help="replace an existing kit at --out")
    full.add_argument(
        "--depth",
        action="append",
        choices=("full", "mid", "small"),
        default=None,
        help="depth ControlNet size(s) to write (default: mid; repeat for more)",
    )
    full.set_defaults(func=run_full)


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


FULL_KIT_BYTES = 11 * 10**9  # fp16 with the mid depth ControlNet; each extra full ControlNet adds 2.5 GB


def run_full(args: argparse.Namespace) -> int:
    from idforge.errors import ParameterError
    from idforge.models.kit.full import build_full_kit, free_space_ok

    depth = tuple(dict.fromkeys(args.depth or ["mid"]))
    if not free_space_ok(args.out, FULL_KIT_BYTES):
        raise ParameterError("--out", f"less than {FULL_KIT_BYTES / 1e9:.0f} GB free under {args.out}")
    print(f"writing the full kit to {args.out} (depth ControlNets: {', '.join(depth)}); this takes minutes")
    result = build_full_kit(args.out, seed=args.seed, force=args.force, depth=depth)
    for role, rel in sorted(result.parts.items()):
        print(f"  {role}  {rel}")
    print(
        f"wrote full kit (seed {result.seed}) to {result.path}: {len(result.files)} files, "
        f"{result.total_bytes / 1e9:.2f} GB in {result.seconds:.0f} s"
    )
    return 0
