"""`hubcompare serve` under a bounded local load (loopback only), and how fast a stored vs a new comparison answers.

Trains two small digits models (ResNet-8 1x, seeds 0 and 1, 2 epochs; kept in --runs so a rerun reuses them), pushes
them to the project's own Hub-protocol server (a temporary one on a free port), starts `hubcompare serve` on
127.0.0.1 (one job worker) and stores one cross-cka result through POST /api/jobs. Then, in one run:

- load: --requests GETs of the result page (/results/KEY, HTML with the heatmap) and of /api/results/KEY, each from
  --threads client threads with one keep-alive connection each: requests/s, p50/p95/max latency;
- a comparison requested through POST /api/jobs, stored (the same request again) vs new (a seed never asked): time to
  the first byte of the POST's answer, and to the job being done (polling /api/jobs/ID every 20 ms).

The client threads share the machine with the server (measured on the 2-core development machine). No assertions.

    python benchmarks/service_load.py                      # 2000 requests x 8 threads per endpoint
    python benchmarks/service_load.py --requests 5000 --threads 16
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test harness starts and stops the server

from helpers import free_port  # noqa: E402

HUB_PORT = free_port()
WORK = Path(tempfile.mkdtemp(prefix="hubcompare-service-load-"))
os.environ.update({"HF_ENDPOINT": f"http://127.0.0.1:{HUB_PORT}", "HF_HOME": str(WORK / "hf-home"), "HF_TOKEN": "hf_benchmark",
                   "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HUBCOMPARE_HOME": str(WORK / "home")})

from service_harness import push_and_register, running_service  # noqa: E402

MODELS = [("bench-r8-s0", 0), ("bench-r8-s1", 1)]


def train_models(runs: Path) -> dict[str, Path]:
    from hubcompare.training.loop import train
    from hubcompare.training.recipes import load_recipe

    out = {}
    for name, seed in MODELS:
        folder = runs / name
        if not (folder / "model.safetensors").is_file():
            train(load_recipe("digits", {"model.depth": 8, "train.seed": seed, "train.epochs": 2, "train.warmup_epochs": 0}),
                  folder, overwrite=True)
        out[name] = folder
    return out


def load(port: int, path: str, requests: int, threads: int) -> dict:
    """``requests`` GETs of ``path`` split over ``threads`` keep-alive connections; every answer must be 200."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    per_thread = [requests // threads + (1 if i < requests % threads else 0) for i in range(threads)]
    start = threading.Barrier(threads + 1)

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        start.wait()
        for _ in range(n):
            t = time.perf_counter()
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            mine.append(time.perf_counter() - t)
            if r.status != 200 or not body:
                with lock:
                    errors.append(f"{r.status}")
        conn.close()
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=client, args=(n,)) for n in per_thread]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    assert not errors, f"{len(errors)} failed requests to {path}: {errors[:5]}"
    q = statistics.quantiles(latencies, n=100)
    return {"requests": len(latencies), "seconds": wall, "rps": len(latencies) / wall, "p50": q[49], "p95": q[94],
            "max": max(latencies)}


def post_job(port: int, body: dict) -> tuple[float, float, dict]:
    """POST /api/jobs: seconds to the answer's first byte, to the job being done, and the job's last JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    raw = json.dumps(body).encode()
    t0 = time.perf_counter()
    conn.request("POST", "/api/jobs", raw, {"Content-Type": "application/json"})
    r = conn.getresponse()  # returns once the status line and headers (the first bytes) have arrived
    ttfb = time.perf_counter() - t0
    answer = json.loads(r.read())
    assert r.status == 202, (r.status, answer)
    while True:
        conn.request("GET", f"/api/jobs/{answer['id']}")
        job = json.loads(conn.getresponse().read())
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.02)
    done = time.perf_counter() - t0
    conn.close()
    assert job["state"] == "done", job
    return ttfb, done, job


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="GETs per endpoint")
    p.add_argument("--threads", type=int, default=8, help="client threads (one keep-alive connection each)")
    p.add_argument("--examples", type=int, default=200, help="examples of the comparisons")
    p.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "hubcompare-service-load-runs")
    args = p.parse_args()
    from hubcompare.hub.server import HubServer

    runs = train_models(args.runs)
    home = WORK / "home"
    home.mkdir(parents=True, exist_ok=True)
    with HubServer(WORK / "hub-data", port=HUB_PORT) as hub:
        names = [push_and_register(runs[n], f"bench/{n}", home / "registry.sqlite").name for n, _ in MODELS]
        with running_service(home, hub_endpoint=hub.endpoint, args=("--quiet",)) as service:
            port = int(service.base_url.rsplit(":", 1)[1])
            request = {"kind": "cross-cka", "refs": names, "examples": args.examples}
            first_ttfb, first_done, job = post_job(port, request)
            key = job["result_key"]
            rows = [(f"GET /results/{key[:8]}… (page)", load(port, f"/results/{key}", args.requests, args.threads)),
                    (f"GET /api/results/{key[:8]}…", load(port, f"/api/results/{key}", args.requests, args.threads))]
            stored = post_job(port, request)
            new = post_job(port, {**request, "seed": 1})
            assert stored[2]["from_store"] and not new[2]["from_store"], (stored[2], new[2])

    print(f"hubcompare serve on loopback, 1 job worker; {os.cpu_count()} CPUs; client: {args.threads} threads x 1 keep-alive "
          f"connection, {args.requests} requests per endpoint")
    print(f"{'endpoint':34} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, r in rows:
        print(f"{name:34} {r['requests']:8d} {r['rps']:8.0f} {r['p50'] * 1e3:8.1f} {r['p95'] * 1e3:8.1f} {r['max'] * 1e3:8.1f}")
    print(f"\ncross-cka of two digits ResNet-8 models, {args.examples} examples, POST /api/jobs:")
    print(f"{'request':34} {'first byte ms':>14} {'done s':>8}  from store")
    for name, (ttfb, done, job) in [("first (cold worker, computed)", (first_ttfb, first_done, job)), ("stored (same request)", stored),
                                    ("new (seed 1, computed)", new)]:
        print(f"{name:34} {ttfb * 1e3:14.1f} {done:8.2f}  {job['from_store']}")


if __name__ == "__main__":
    main()
