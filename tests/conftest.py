"""Shared test set-up: one torch thread (tiny models are slower with thread hand-offs), the tiny kit built once,
and, under CI=true, no silent skips: a skipped test (or module) fails unless it is marked `cuda` (it needs a CUDA
device, which CI has not got) or `published_weights` (it needs the published model files, which CI cannot fetch)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ALLOWED_SKIP_MARKERS = ("cuda", "published_weights")


def ci_forbids_skips() -> bool:
    """CI=true (or 1/yes), as GitHub Actions, GitLab and .ci/run set it."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device; the only kind of skip CI=true allows")
    config.addinivalue_line(
        "markers", "published_weights: needs the published model files (opt-in); a skip CI=true allows"
    )


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A module that skips itself at import (importorskip, allow_module_level) fails under CI=true."""
    report = yield
    if report.skipped and ci_forbids_skips():
        reason = _skip_reason(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true forbids skips: {collector.nodeid} skipped at collection: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A skipped test fails under CI=true unless it carries one of ALLOWED_SKIP_MARKERS (xfail is not a skip)."""
    report = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and ci_forbids_skips()
        and not any(item.get_closest_marker(name) for name in ALLOWED_SKIP_MARKERS)
    ):
        reason = _skip_reason(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true forbids skips: {item.nodeid}: {reason}"
    return report


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory: pytest.TempPathFactory):
    """The complete tiny kit (all parts), built once per test session."""
    from idforge.models.kit import build_kit

    out = tmp_path_factory.mktemp("kit") / "kit"
    build_kit(out, seed=0)
    return out


from pg_server import db_url, postgres  # noqa: E402,F401 - session PostgreSQL server and per-test databases
from ray_cluster import ray_serve_url  # noqa: E402,F401 - one Ray cluster per module that uses it
