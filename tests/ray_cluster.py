"""One real local Ray cluster (and Serve) for the module that uses it (shut when that module ends, so its
processes do not take CPU from the rest of the suite), as ENVIRONMENT.md says: token auth off, a fresh
local instance (never a stale one), 2 CPUs, no dashboard, a small object store; Serve on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def ray_serve_url() -> Iterator[str]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray import serve

    from idforge.server.runner import free_port

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
