"""Push and pull a population of small checkpoints against the local Hub-protocol server.

Trains N tiny digits checkpoints (ResNet-8, 1 epoch, one seed each; kept in --runs so a rerun
reuses them), starts `hubcompare hub serve` as a subprocess on a free port with an empty data
folder, then in one run and side by side:

- push: N sequential `hub.push` calls (one repo each) vs `hub.push_population` with --workers threads
- pull: N sequential `hub.pull` calls into an empty cache vs the same pulls from a thread pool

and prints seconds per model and in total. No assertions: it prints figures.

    python benchmarks/hub_population.py                 # 20 models, 8 workers
    python benchmarks/hub_population.py --models 50 --workers 16
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_TOKEN", "hf_benchmark_dummy")

from huggingface_hub import HfApi  # noqa: E402

from hubcompare.hub.client import pull, push, push_population  # noqa: E402
from hubcompare.training.loop import train  # noqa: E402
from hubcompare.training.recipes import load_recipe  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_runs(root: Path, n: int) -> list[Path]:
    runs = []
    for seed in range(n):
        out = root / f"digits-r8-s{seed}"
        if not (out / "config.json").is_file():
            recipe = load_recipe("digits", {"model.depth": 8, "model.width": 1, "train.epochs": 1,
                                            "train.warmup_epochs": 0, "train.seed": seed})
            train(recipe, out, overwrite=True)
        runs.append(out)
    return runs


def start_server(data: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cli = Path(sys.executable).parent / "hubcompare"
    proc = subprocess.Popen([str(cli), "hub", "serve", "--data", str(data), "--port", str(port), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the hub server did not start")
            time.sleep(0.1)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=20)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "hubcompare-bench-runs")
    a = p.parse_args()

    t = time.perf_counter()
    runs = make_runs(a.runs, a.models)
    print(f"{len(runs)} checkpoints in {a.runs} ({time.perf_counter() - t:.1f} s to train or reuse), "
          f"{sum(f.stat().st_size for r in runs for f in r.iterdir() if f.is_file()) / len(runs) / 1024:.0f} KiB each")
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_server(Path(tmp) / "hub")
        try:
            api = HfApi(endpoint=endpoint)
            n = len(runs)
            seq_repos = [f"bench/seq-{r.name}" for r in runs]
            rows = []
            rows.append(("push", "sequential", timed(lambda: [push(r, repo, api=api) for r, repo in zip(runs, seq_repos)])))
            result = None

            def concurrent_push():
                nonlocal result
                result = push_population(runs, "bench", "bench", workers=a.workers, api=api)

            rows.append(("push", f"concurrent ({a.workers} workers, + collection)", timed(concurrent_push)))
            assert not result.failures, result.failures
            conc_repos = [r.repo_id for r in result.pushed]
            rows.append(("pull", "sequential", timed(
                lambda: [pull(repo, api=api, cache_dir=Path(tmp) / "cache-seq") for repo in seq_repos])))
            with ThreadPoolExecutor(a.workers) as pool:
                rows.append(("pull", f"concurrent ({a.workers} workers)", timed(
                    lambda: list(pool.map(lambda repo: pull(repo, api=api, cache_dir=Path(tmp) / "cache-conc"), conc_repos)))))
        finally:
            proc.terminate()
            proc.wait()

    print(f"\n{'':4} {'mode':40} {'models':>6} {'total s':>9} {'s/model':>9} {'speed-up':>9}")
    for i, (what, mode, secs) in enumerate(rows):
        base = rows[i - 1][2] if i % 2 else secs
        print(f"{what:4} {mode:40} {n:>6} {secs:>9.2f} {secs / n:>9.3f} {base / secs:>8.2f}x")


if __name__ == "__main__":
    main()
