"""Prometheus metrics of the whole service, read from the database at scrape time (prometheus-client collectors).

The database is the one place that sees every replica, wherever it runs: queue depth and jobs by state come from the
jobs table, credits charged from the ledger, and the job and step latency histograms from the bucket counts each
worker writes into its `replicas` row with its heartbeat (summed here over live replicas). So `/metrics` on any
ingress tells the truth about the cluster, and nothing is lost to per-process registries.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from idforge.server.db import Store
from idforge.server.states import JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _le_key(le: str) -> float:
    return math.inf if le == "+Inf" else float(le)


class StoreCollector(Collector):
    def __init__(self, store: Store, replica_window_s: float = 30.0) -> None:
        self.store = store
        self.replica_window_s = replica_window_s

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts()
        depth = GaugeMetricFamily("idforge_queue_depth", "jobs waiting for a replica")
        depth.add_metric([], counts.get(JobStatus.QUEUED, 0))
        yield depth
        by_state = GaugeMetricFamily("idforge_jobs", "jobs in the database by state", labels=["state"])
        for state in JobStatus:
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state
        charged = CounterMetricFamily("idforge_credits_charged", "credits charged for delivered images")
        charged.add_metric([], self.store.credits_charged())
        yield charged

        now = time.time()
        replicas = self.store.replicas(seen_within_s=24 * 3600)
        up = GaugeMetricFamily(
            "idforge_replica_up",
            "1 when the replica was heard from recently",
            labels=["replica", "device", "state"],
        )
        done = CounterMetricFamily(
            "idforge_replica_jobs", "jobs finished by replica", labels=["replica", "outcome"]
        )
        sums: dict[str, dict[str, float]] = {}
        for replica in replicas:
            alive = now - replica["heartbeat"] <= self.replica_window_s and replica["state"] != "stopped"
            up.add_metric([replica["id"], replica["device"], replica["state"]], 1 if alive else 0)
            done.add_metric([replica["id"], "succeeded"], replica["jobs_done"])
            done.add_metric([replica["id"], "failed"], replica["jobs_failed"])
            for key, buckets in json.loads(replica["histograms"] or "{}").items():
                merged = sums.setdefault(key, {})
                for le, value in buckets.items():
                    merged[le] = merged.get(le, 0.0) + float(value)
        yield up
        yield done
        families = {
            "job_seconds": HistogramMetricFamily(
                "idforge_job_seconds", "submission to end of a job", labels=["outcome"]
            ),
            "step_seconds": HistogramMetricFamily("idforge_step_seconds", "one denoising step", labels=[]),
        }
        for key, buckets in sorted(sums.items()):
            name, _, outcome = key.partition("|")
            family = families.get(name)
            if family is None:
                continue
            total = buckets.pop("sum", 0.0)
            ordered = sorted(buckets.items(), key=lambda item: _le_key(item[0]))
            family.add_metric([outcome] if name == "job_seconds" else [], ordered, total)
        yield from families.values()


def metrics_registry(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
