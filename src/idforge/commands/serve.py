"""`idforge serve`: the HTTP API: one process with one worker (default), or `--ray`: Ray Serve with N model replicas.

Keys, credits and jobs live in the `--db` store: a SQLite file (default) or PostgreSQL (needed across machines).
"""

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
        "--db",
        default=None,
        help="SQLite file or postgresql://user@host:port/db (default: $IDFORGE_DB or ~/.idforge/idforge.db)",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="serve on Ray Serve: one model replica per GPU (needs idforge[ray])",
    )
    parser.add_argument("--replicas", type=int, default=1, help="with --ray: model replicas (default 1)")
    parser.add_argument(
        "--ray-address",
        default=None,
        help="with --ray: an existing cluster (e.g. ray://head:10001); default: a local one",
    )
    parser.add_argument(
        "--replica-cpus",
        type=float,
        default=1.0,
        help="with --ray: CPUs reserved per model replica (default 1)",
    )
    parser.add_argument(
        "--lease-s",
        type=float,
        default=30.0,
        help="a dead worker's job goes to another after this long (default 30)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=1,
        help="queued jobs one worker may run in one denoising pass when they share its settings "
        "(InstantID; default 1: one job at a time)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="runs of a job whose workers died before it fails (default 3)",
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
        help="permit image and webhook URLs on this private host or network (refused by default: SSRF)",
    )
    parser.add_argument("--url-timeout", type=float, default=10.0, help="image URL fetch limit in seconds")
    parser.add_argument(
        "--steps-per-credit", type=int, default=10, help="price: 1 credit per started N steps"
    )
    from idforge.commands._common import add_fast_arguments

    add_fast_arguments(parser)
    parser.add_argument(
        "--public-url",
        default=None,
        metavar="URL",
        help="base of the absolute URLs in /v2 answers, e.g. https://api.example.com (default: the request's host)",
    )
    parser.add_argument(
        "--trust-proxy",
        action="store_true",
        help="take scheme and host from X-Forwarded-Proto / X-Forwarded-Host (only behind a proxy that sets them)",
    )
    parser.add_argument(
        "--result-ttl",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long a finished /v2 job's result is kept (default 3600, as the hosted API)",
    )
    parser.add_argument(
        "--webhook-retry-for",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="keep retrying a webhook this long after the job ended (exponential backoff; default 3600)",
    )
    parser.add_argument(
        "--webhook-timeout", type=float, default=10.0, help="one webhook attempt's time limit (default 10 s)"
    )
    parser.add_argument(
        "--warm-up",
        default=None,
        metavar="METHODS",
        help="methods whose models load before the server reports ready (comma-separated; default: every method)",
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="report ready at once; models then load on the first request (which may time out clients)",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=run)


def _methods(text: str) -> tuple[str, ...]:
    from idforge.errors import ParameterError
    from idforge.methods.registry import method_names

    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    for method in methods:
        if method not in method_names():
            raise ParameterError("--warm-up", f"{method!r} is not one of {', '.join(method_names())}")
    return methods


def _public_url(text: str | None) -> str | None:
    from urllib.parse import urlsplit

    from idforge.errors import ParameterError

    if text is None:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ParameterError("--public-url", f"{text!r} must be http(s)://host[:port][/prefix]")
    return text.rstrip("/")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from idforge.commands._common import fast_path
    from idforge.errors import ParameterError
    from idforge.server.app import ServerConfig, create_app
    from idforge.server.db import default_target, parse_target
    from idforge.server.images import ImagePolicy
    from idforge.server.logs import setup_logging
    from idforge.server.pricing import Pricing
    from idforge.server.runner import uvicorn_config
    from idforge.server.store_factory import open_store
    from idforge.server.webhooks import WebhookPolicy

    for flag, value in (
        ("--result-ttl", args.result_ttl),
        ("--webhook-retry-for", args.webhook_retry_for),
        ("--webhook-timeout", args.webhook_timeout),
        ("--lease-s", args.lease_s),
    ):
        if not value > 0:
            raise ParameterError(flag, f"{value} must be a number of seconds > 0")
    setup_logging(args.log_level)
    db = args.db or default_target()
    target = parse_target(db)  # a malformed --db is one line before anything starts
    open_store(db).close()  # ... and so is an unreachable one (and the schema is brought up to date once)
    for flag, count in (
        ("--replicas", args.replicas),
        ("--max-attempts", args.max_attempts),
        ("--max-batch", args.max_batch),
    ):
        if count < 1:
            raise ParameterError(flag, f"{count} must be >= 1")
    fast, dtype = fast_path(args, args.device)
    config = ServerConfig(
        db_path=db,
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
        public_url=_public_url(args.public_url),
        trust_proxy=args.trust_proxy,
        result_ttl=args.result_ttl,
        webhooks=WebhookPolicy(
            allow_hosts=tuple(args.allow_url_host),
            timeout=args.webhook_timeout,
            retry_for=args.webhook_retry_for,
        ),
        warm_up=() if args.no_warm_up else None if args.warm_up is None else _methods(args.warm_up),
        lease_s=args.lease_s,
        max_attempts=args.max_attempts,
        max_batch=args.max_batch,
        log_level=args.log_level,
    )
    if args.ray:
        from idforge.server.ray_serve import RayOptions, run_on_ray

        if target.backend == "sqlite" and args.ray_address:
            raise ParameterError("--db", "a cluster needs a shared database: give --db postgresql://...")
        options = RayOptions(replicas=args.replicas, model_cpus=args.replica_cpus)
        return run_on_ray(config, options, address=args.ray_address, host=args.host, port=args.port)
    app = create_app(config)
    uvicorn.Server(uvicorn_config(app, args.host, args.port, log_level=args.log_level)).run()
    return 0
