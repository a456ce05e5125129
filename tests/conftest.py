"""Shared test set-up: one torch thread (tiny models are slower with thread hand-offs), the tiny kit built once."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory: pytest.TempPathFactory):
    """The complete tiny kit (all parts), built once per test session."""
    from idforge.models.kit import build_kit

    out = tmp_path_factory.mktemp("kit") / "kit"
    build_kit(out, seed=0)
    return out


from pg_server import db_url, postgres  # noqa: E402,F401 - session PostgreSQL server and per-test databases
from ray_cluster import ray_serve_url  # noqa: E402,F401 - one Ray cluster per session, started on first use
