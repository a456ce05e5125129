"""`idforge serve --ray`: the same API on Ray Serve, one model replica per GPU, jobs in a shared database.

Two deployments form one Serve application:
- `Ingress` (CPU): the same FastAPI app as `idforge serve` (auth, validation, credits, jobs, status, webhooks,
  docs, /health, /metrics), built inside each ingress replica, with no models and no worker of its own.
- `ModelReplica` (`num_gpus=1` when the cluster has GPUs, CPU otherwise): owns one Engine, loads its models at
  start, then runs a `Worker` that pulls jobs from the database. Serve's health check fails when the worker died.
Requests never travel through Ray's in-memory queues to the models: a replica that dies loses nothing, because its
job's lease runs out and another replica (or its replacement) takes the job again (SPEC.md section 7).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from ray import serve

from idforge.server.config import ServerConfig

log = logging.getLogger("idforge.server.ray")

APP_NAME = "idforge"


@dataclass
class RayOptions:
    replicas: int = 1
    num_gpus: float | None = None  # None: 1 per replica when the cluster has GPUs, else 0 (CPU replicas)
    model_cpus: float = 1.0
    ingress_cpus: float = 0.5
    ingress_replicas: int = 1
    max_ongoing_requests: int = (
        256  # per ingress replica: /v1 requests stay ongoing while they wait for a job
    )
    max_queued_requests: int = 64  # beyond this Serve itself answers 503 (our queue's own 503 comes first)
    health_check_period_s: float = 5.0


def _device_name(requested: str) -> str:
    import torch

    if requested not in ("auto", ""):
        return requested
    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


class ModelReplica:
    """One Engine, one worker thread pulling jobs from the database."""

    def __init__(self, config: ServerConfig) -> None:
        from idforge.server.logs import setup_logging
        from idforge.server.store_factory import open_store
        from idforge.server.worker import Worker, WorkerConfig

        setup_logging(config.log_level)
        context = serve.get_replica_context()
        self.name = context.replica_id.to_full_id_str().removeprefix("SERVE_REPLICA::")
        self.store = open_store(config)  # its webhooks carry the contract's status body
        from idforge.server.methods import make_generator

        generator = make_generator(config)
        worker_config = WorkerConfig(
            replica=self.name,
            device=_device_name(config.device),
            lease_s=config.lease_s,
            keep_result_s=config.result_ttl,
            max_attempts=config.max_attempts,
            max_batch=config.max_batch,
        )
        self.worker = Worker(
            self.store, generator, worker_config, warm_up=True if config.warm_up is None else config.warm_up
        ).start()
        log.info(
            "model replica started",
            extra={"fields": {"replica": self.name, "pid": os.getpid(), "host": socket.gethostname()}},
        )

    def check_health(self) -> None:
        """Serve calls this periodically: a replica whose worker failed to load or died is replaced."""
        if not self.worker.alive:
            raise RuntimeError(f"worker {self.worker.state}: {self.worker.detail}")

    async def snapshot(self) -> dict[str, Any]:
        return self.worker.snapshot()

    def __del__(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop(timeout=5.0)


class Ingress:
    """The FastAPI app, without models: jobs go through the database to the model replicas."""

    def __init__(self, config: ServerConfig, models: Any) -> None:
        self.config = config
        self.models = models  # the handle keeps the model deployment part of this application

    def __serve_build_asgi_app__(self):
        from idforge.server.app import create_app
        from idforge.server.logs import setup_logging

        setup_logging(self.config.log_level)
        return create_app(self.config, embedded_worker=False)


def build_application(config: ServerConfig, options: RayOptions, cluster_gpus: float = 0.0):
    """The Serve application (bound deployments), for `serve.run` (or `serve run idforge.server.ray_serve:app`)."""
    gpus = options.num_gpus if options.num_gpus is not None else (1.0 if cluster_gpus >= 1 else 0.0)
    # serve.deployment(**options)(cls), the decorator form: Ray types only that one as giving a Deployment.
    model = serve.deployment(
        name="ModelReplica",
        num_replicas=options.replicas,
        ray_actor_options={"num_cpus": options.model_cpus, "num_gpus": gpus},
        health_check_period_s=options.health_check_period_s,
        health_check_timeout_s=30,
        graceful_shutdown_timeout_s=10,
    )(ModelReplica)
    ingress = serve.deployment(
        name="Ingress",
        num_replicas=options.ingress_replicas,
        ray_actor_options={"num_cpus": options.ingress_cpus},
        max_ongoing_requests=options.max_ongoing_requests,
        max_queued_requests=options.max_queued_requests,
    )(serve.ingress()(Ingress))
    return ingress.bind(config, model.bind(config))


def app_builder(args: dict[str, Any]):
    """Entry for Serve config files (`import_path: idforge.server.ray_serve:app_builder`); `args` are
    `db`, `models` (list), `replicas`, `base`, `face_models`, `device`, `queue_size`, `lease_s`, `max_batch`."""
    import ray

    config = ServerConfig(
        db_path=str(args["db"]),
        models_dirs=list(args.get("models", [])),
        base=args.get("base"),
        face_models=args.get("face_models"),
        device=args.get("device", "auto"),
        queue_size=int(args.get("queue_size", 32)),
        lease_s=float(args.get("lease_s", 30.0)),
        max_batch=int(args.get("max_batch", 1)),
    )
    options = RayOptions(replicas=int(args.get("replicas", 1)), model_cpus=float(args.get("model_cpus", 1.0)))
    return build_application(config, options, ray.cluster_resources().get("GPU", 0.0))


def run_on_ray(
    config: ServerConfig, options: RayOptions, *, address: str | None, host: str, port: int
) -> int:
    """`idforge serve --ray`: attach to `address` (or start a local cluster), deploy, serve until Ctrl-C."""
    import time

    import ray

    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    gpus = ray.cluster_resources().get("GPU", 0.0)
    serve.run(build_application(config, options, gpus), name=APP_NAME, route_prefix="/")
    log.info(
        "serving on ray",
        extra={
            "fields": {"url": f"http://{host}:{port}", "replicas": options.replicas, "cluster_gpus": gpus}
        },
    )
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
