"""Scale-out benchmark: requests/s and latency percentiles of `idforge serve --ray` with 1 and 2 model replicas.

Same run, same machine, same PostgreSQL server and Ray cluster: the tiny kit's Insta Depth (64x64, 4 steps, the
seed's request shape) through POST /v1/insta-depth from C clients, R requests per configuration, after a warm-up
(the first job of each replica loads its models). On CPU each replica gets one core (torch runs one thread), so the
ratio shows how far the database queue lets replicas add up; on GPUs each replica gets one GPU.
The batching gain (several jobs per denoising pass, `--max-batch`) is measured by benchmarks/batching.py.

Run: .venv/bin/python benchmarks/scale.py [--kit DIR] [--requests 40] [--clients 8] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from idforge.demo.samples import square_face_png


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {
        "p50_ms": pick(0.5),
        "p90_ms": pick(0.9),
        "p99_ms": pick(0.99),
        "mean_ms": round(statistics.mean(ordered) * 1000, 2),
    }


def request_body(seed: int) -> dict:
    import base64

    face = base64.b64encode(square_face_png()).decode("ascii")
    pose = base64.b64encode(square_face_png(box=(72, 40, 152, 120))).decode("ascii")
    return {
        "prompt": "Photo of a woman wearing a Superman costume",
        "negative_prompt": "lowquality, badquality, sketches",
        "face_image": face,
        "pose_image": pose,
        "num_inference_steps": 4,
        "guidance_scale": 3,
        "seed": seed,
        "base64": False,
        "width": 64,
        "height": 64,
    }


def load(url: str, token: str, requests: int, clients: int, first_seed: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}

    def one(i: int) -> None:
        started = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            r = client.post(
                url + "/v1/insta-depth", json=request_body(first_seed + i), headers={"x-api-key": token}
            )
        if r.status_code == 200:
            latencies.append(time.perf_counter() - started)
        else:
            errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    return {
        "requests": requests,
        "clients": clients,
        "ok": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 3),
        "latency": percentiles(latencies) if latencies else {},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit", default=None, help="tiny kit folder (built into a temp dir when omitted)")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale.json"))
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    import torch
    from ray import serve

    from idforge.server.app import ServerConfig
    from idforge.server.db import Store
    from idforge.server.db.local_postgres import PostgresServer
    from idforge.server.ray_serve import RayOptions, build_application
    from idforge.server.runner import free_port

    tmp = Path(tempfile.mkdtemp(prefix="idforge-scale-"))
    kit = Path(args.kit) if args.kit else tmp / "kit"
    if not args.kit:
        from idforge.models.kit import build_kit

        build_kit(kit, seed=0)
    postgres = PostgresServer().start()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    runs = {}
    try:
        for replicas in (1, 2):
            db = postgres.create_database()
            store = Store.open(db)
            _, token = store.create_key(100_000)
            config = ServerConfig(db_path=db, models_dirs=[str(kit)], queue_size=10_000)
            options = RayOptions(replicas=replicas, model_cpus=1.0, ingress_cpus=0.0)
            print(f"deploying {replicas} replica(s)", file=sys.stderr)
            serve.run(build_application(config, options), name="idforge", route_prefix="/")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                body = httpx.get(url + "/health", timeout=10).json()
                if body["ready"] and len(body["replicas"]) >= replicas:
                    break
                time.sleep(0.5)
            load(
                url, token, 4 * replicas, 2 * replicas, first_seed=10_000
            )  # warm-up: models load on first use
            print(f"measuring {replicas} replica(s)", file=sys.stderr)
            runs[str(replicas)] = load(url, token, args.requests, args.clients, first_seed=0)
            served = store.counts()
            runs[str(replicas)]["jobs_by_state"] = served
            runs[str(replicas)]["jobs_per_replica"] = {
                r["id"].split("#")[-1]: r["jobs_done"] for r in store.replicas(seen_within_s=600)
            }
            problems = store.audit()
            runs[str(replicas)]["ledger_problems"] = problems
            serve.delete("idforge")
            store.close()
    finally:
        serve.shutdown()
        ray.shutdown()
        postgres.stop()
    result = {
        "benchmark": "scale",
        "workload": "insta-depth, tiny kit, 64x64, 4 steps, seed request shape, POST /v1 (JPEG body), Ray Serve over PostgreSQL",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "device": "cpu (one core and one torch thread per replica)",
        },
        "replicas": runs,
        "throughput_ratio_2_over_1": round(runs["2"]["requests_per_s"] / runs["1"]["requests_per_s"], 3),
        "p50_ratio_2_over_1": round(runs["2"]["latency"]["p50_ms"] / runs["1"]["latency"]["p50_ms"], 3),
        "batching": "see benchmarks/results/batching.json (benchmarks/batching.py)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
