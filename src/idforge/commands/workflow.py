"""`idforge workflow run FILE`: a ComfyUI workflow (UI or API format, or a PNG ComfyUI saved) run headless on
idforge's methods (workflow/: each KSampler that reaches a SaveImage/PreviewImage is one generation)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from idforge.commands._common import add_fast_arguments, fast_path, progress_bar
from idforge.errors import ParameterError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "workflow", help="run ComfyUI workflows (InstantID, FaceID, Insta Depth nodes)"
    )
    actions = parser.add_subparsers(dest="workflow_command", metavar="ACTION")
    run = actions.add_parser("run", help="run a workflow file (.json in UI or API format, or a ComfyUI PNG)")
    run.add_argument(
        "file", metavar="FILE", help="workflow .json (UI or API format) or a PNG saved by ComfyUI"
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="change an input before running (repeatable), e.g. --set 9.ip_weight=0.6 --set 8.image=me.png; "
        "NODE.mode=4 bypasses a node, NODE.mode=2 mutes it",
    )
    run.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="DIR",
        help="ComfyUI models folder (or the ComfyUI root)",
    )
    run.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="DIR",
        help="where LoadImage files are (default: beside FILE, ComfyUI's input/ beside --models, the current folder)",
    )
    run.add_argument("-o", "--output", required=True, help="output PNG (several images: NAME_0.png ...)")
    run.add_argument(
        "--explain", action="store_true", help="print which idforge parameter each node value became"
    )
    run.add_argument(
        "--dry-run", action="store_true", help="check and explain only: load no model, generate nothing"
    )
    run.add_argument("--face-models", default=None, help="insightface pack folder or name")
    run.add_argument("--offline", action="store_true", default=None, help="never download")
    run.add_argument("--device", default="auto")
    run.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    run.add_argument("--json", action="store_true", help="print the recipes as JSON")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_fast_arguments(run)
    run.set_defaults(func=run_command)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def parse_sets(items: list[str]) -> dict[str, Any]:
    from idforge.comfy.formats import parse_value

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ParameterError("--set", f"{item!r} is not NODE.INPUT=VALUE (e.g. 9.ip_weight=0.6)")
        overrides[key.strip()] = parse_value(value)
    return overrides


def image_files(plan: Any, workflow_file: Path, args: argparse.Namespace) -> dict[str, Path]:
    """LoadImage node id -> its file: as named if it exists, else in --input, beside FILE, ComfyUI's input/, here."""
    folders = [Path(d) for d in args.input] + [workflow_file.parent]
    for models in args.models:
        root = Path(models)
        folders += [root / "input", root.parent / "input"]
    folders.append(Path.cwd())
    found: dict[str, Path] = {}
    for node, name in plan.image_nodes().items():
        path = Path(name).expanduser()
        candidates = [path] if path.is_absolute() else [folder / name for folder in folders]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            looked = ", ".join(str(c.parent) for c in candidates)
            raise ParameterError(
                f"{node}.image",
                f"LoadImage node {node}: {name} not found (looked in {looked}); pass --set {node}.image=PATH",
                field=f"{node}.image",
            )
        found[node] = hit
    return found


def run_command(args: argparse.Namespace) -> int:
    from idforge.models.store import ModelStore
    from idforge.workflow.run import execute, open_workflow, prepare

    workflow_file = Path(args.file)
    plan = open_workflow(workflow_file, parse_sets(args.set))
    images = image_files(plan, workflow_file, args)
    store = ModelStore(args.models, offline=args.offline)
    prepared = prepare(plan, images, store, generation_extra={"device": args.device, "dtype": args.dtype})
    if args.explain or args.dry_run:
        print(plan.explain_text())
        for item in prepared:
            for role, path in item.models.items():
                print(f"KSampler {item.generation.sampler}: {role} = {path}")
    if args.dry_run:
        return 0
    from idforge.engine.session import Engine, ModelChoice

    fast, dtype = fast_path(args, args.device)
    engine = Engine(
        ModelChoice(face_models=args.face_models, models_dirs=list(args.models), offline=args.offline),
        device=args.device,
        dtype=dtype,
        fast=fast,
    )
    update, close = progress_bar(args, "workflow")
    try:
        results = execute(engine, plan, prepared, update)
    finally:
        close()
    output = Path(args.output)
    for item, result in zip(prepared, results, strict=True):
        target = (
            output
            if len(results) == 1
            else output.with_name(f"{output.stem}_{item.generation.sampler}{output.suffix or '.png'}")
        )
        written = result.save(target)
        for warning in result.warnings:
            print(f"idforge: warning: {warning}", file=sys.stderr)
        if args.json:
            print(json.dumps(result.recipe | {"files": [str(p) for p in written]}, indent=2, default=str))
        else:
            for path, seed in zip(written, result.seeds, strict=True):
                outputs = ",".join(item.generation.outputs)
                print(
                    f"{path}  seed={seed}  method={item.method.name}  KSampler={item.generation.sampler}  save={outputs}"
                )
    return 0
