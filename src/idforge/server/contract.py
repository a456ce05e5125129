"""The v2 job contract's bodies, built from a job row: the one place that decides what clients see.

Shapes (SPEC.md section 6, as the segmind SDK reads them): the submit answer carries absolute `status_url`,
`response_url` and `poll_url`; the status body says QUEUED (position), PROCESSING (step), COMPLETED, FAILED
(error, field) or CANCELED; the result body adds `output`, `metrics`, `seed` and `recipe`. The webhook body is the
final status body, so a receiver sees exactly what a poller would.
"""

from __future__ import annotations

import json
import time
from typing import Any

from idforge.server.states import TERMINAL, JobStatus


def job_urls(base_url: str | None, job_id: str) -> dict[str, str]:
    """Absolute URLs of a job's resources (`base_url` is scheme://host[:port][/prefix], no trailing slash)."""
    root = f"{(base_url or '').rstrip('/')}/v2/requests/{job_id}"
    return {
        "status_url": f"{root}/status",
        "response_url": root,
        "poll_url": f"{root}/status",
        "cancel_url": f"{root}/cancel",
        "webhooks_url": f"{root}/webhooks",
    }


def submit_body(job_id: str, base_url: str, position: int, cost: int) -> dict[str, Any]:
    return {
        "request_id": job_id,
        "status": JobStatus.QUEUED,
        "position": position,
        "credits_reserved": cost,
    } | job_urls(base_url, job_id)


def _metrics(row: dict[str, Any]) -> dict[str, float]:
    stored = json.loads(row["metrics"]) if row.get("metrics") else {}
    if stored:
        return stored
    metrics: dict[str, float] = {}
    end = row.get("finished") or time.time()
    if row.get("started"):
        metrics["queue_s"] = round(row["started"] - row["created"], 4)
        metrics["inference_s"] = round(end - row["started"], 4)
    else:
        metrics["queue_s"] = round(end - row["created"], 4)
    return metrics


def status_body(row: dict[str, Any], *, position: int | None = None) -> dict[str, Any]:
    """GET /v2/requests/{id}/status (and the webhook body once the job has ended)."""
    status = row["status"]
    body: dict[str, Any] = {"request_id": row["id"], "status": status, "method": row["method"]}
    if status == JobStatus.QUEUED:
        body["position"] = position
    elif status == JobStatus.PROCESSING:
        body["step"] = row.get("step") or 0
        body["total_steps"] = row.get("total_steps") or 0
    elif status == JobStatus.FAILED:
        body["error"] = row["error"]
        body["field"] = row["error_field"]
        body["error_status"] = row["error_status"]
    elif status == JobStatus.CANCELED:
        body["error"] = row["error"] or "canceled"
    body["metrics"] = _metrics(row)
    body["attempts"] = row.get("attempts") or 0  # runs started (more than 1: a replica died while running it)
    body["replica"] = row.get("replica")  # the replica that ran (or runs) its latest attempt
    body["credits"] = (
        row["cost"] if status in (JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.COMPLETED) else 0
    )
    if status in TERMINAL and row.get("finished"):
        body["finished_at"] = row["finished"]
    return body | job_urls(row.get("base_url"), row["id"])


def output_body(result: dict[str, Any]) -> dict[str, Any]:
    """The `output` of a completed job: base64 JPEG image(s) and any extras (e.g. the depth map)."""
    output: dict[str, Any] = {
        "image": result["images"][0],
        "images": result["images"],
        "mime_type": "image/jpeg",
    }
    for name, data in result.get("extras", {}).items():
        output[name] = data
    nodes = ((result.get("recipe") or {}).get("workflow") or {}).get("outputs")
    if isinstance(
        nodes, dict
    ):  # a workflow job: the images of each output node (SaveImage / PreviewImage id)
        output["nodes"] = {node: [result["images"][i] for i in indices] for node, indices in nodes.items()}
    return output


def result_body(row: dict[str, Any], *, position: int | None = None) -> dict[str, Any]:
    """GET /v2/requests/{id}: the status body, plus output, seed(s), recipe and warnings once COMPLETED."""
    body = status_body(row, position=position)
    body["output"] = None
    if row["status"] == JobStatus.COMPLETED and row.get("result"):
        result = json.loads(row["result"])
        body["output"] = output_body(result)
        body["seed"] = result["seeds"][0]
        body["seeds"] = result["seeds"]
        body["recipe"] = result.get("recipe") or {}
        body["identity"] = body["recipe"].get("identity")
        body["warnings"] = result.get("warnings", [])
        body["credits_charged"] = row["cost"]
    return body
