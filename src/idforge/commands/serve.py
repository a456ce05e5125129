"""`idforge serve`: the HTTP API (one process, one GPU worker thread, SQLite for keys, credits and jobs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the HTTP API (OpenAPI docs at /docs)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--models",
        action="extend",
        nargs="+",
        default=[],
        metavar="DIR",
        help="tiny-kit or ComfyUI models folder(s)",
    )
    parser.add_argument(
        "--db", default=None, help="SQLite database (default: $IDFORGE_DB or ~/.idforge/idforge.db)"
    )
    parser.add_argument("--base", default=None, help="base model (diffusers folder, single file or hub id)")
    parser.add_argument("--face-models", default=None, help="insightface pack folder or name")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument(
        "--queue-size", type=int, default=32, help="jobs queued or running before 503 (default 32)"
    )
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit (default 32 MB)")
    parser.add_argument(
        "--max-image-mb", type=float, default=20.0, help="one input image, decoded (default 20 MB)"
    )
    parser.add_argument("--max-pixels", type=int, default=16_000_000, help="one input image (default 16 MP)")
    parser.add_argument("--no-urls", action="store_true", help="refuse http(s) image URLs (base64 only)")
    parser.add_argument(
        "--allow-url-host",
        action="append",
        default=[],
        metavar="HOST|CIDR",
        help="permit image URLs on this private host or network (refused by default: SSRF)",
    )
    parser.add_argument("--url-timeout", type=float, default=10.0, help="image URL fetch limit in seconds")
    parser.add_argument(
        "--steps-per-credit", type=int, default=10, help="price: 1 credit per started N steps"
    )
    from idforge.commands._common import add_fast_arguments

    add_fast_arguments(parser)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import uvicorn

    from idforge.commands._common import fast_path
    from idforge.server.app import ServerConfig, create_app
    from idforge.server.images import ImagePolicy
    from idforge.server.logs import setup_logging
    from idforge.server.pricing import Pricing
    from idforge.server.runner import uvicorn_config
    from idforge.server.store import default_db_path

    setup_logging(args.log_level)
    fast, dtype = fast_path(args, args.device)
    config = ServerConfig(
        db_path=Path(args.db) if args.db else default_db_path(),
        models_dirs=list(args.models),
        base=args.base,
        face_models=args.face_models,
        device=args.device,
        dtype=dtype,
        fast=fast,
        queue_size=args.queue_size,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        images=ImagePolicy(
            max_bytes=int(args.max_image_mb * 1024 * 1024),
            max_pixels=args.max_pixels,
            allow_urls=not args.no_urls,
            fetch_timeout=args.url_timeout,
            allow_hosts=tuple(args.allow_url_host),
        ),
        pricing=Pricing(steps_per_block=args.steps_per_credit),
    )
    app = create_app(config)
    uvicorn.Server(uvicorn_config(app, args.host, args.port, log_level=args.log_level)).run()
    return 0
