"""Screenshots of every page of `hubcompare serve`, for docs/service.md: a real server over a local Hub, in headless Chromium.

Trains four small digits models (ResNet-8 and ResNet-14, 1x, seeds 0 and 1; kept in --runs so a rerun reuses them),
pushes them to the project's own Hub-protocol server (a temporary one on a free port) as populations ``digits-r8``
and ``digits-r14``, starts ``hubcompare serve`` on loopback, computes a cross-cka, a blocks, an agreement, a class-diff, an
across-seeds, a probes and a delete-blocks result through the JSON API, then opens each page and saves a full-page PNG into --out:

    .venv/bin/python docs/make_screenshots.py                      # -> docs/screenshots/*.png (~2 min on 2 cores)

Needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test harness starts and stops the server

from helpers import free_port  # noqa: E402

HUB_PORT = free_port()
WORK = Path(tempfile.mkdtemp(prefix="hubcompare-screenshots-"))
os.environ.update({"HF_ENDPOINT": f"http://127.0.0.1:{HUB_PORT}", "HF_HOME": str(WORK / "hf-home"), "HF_TOKEN": "hf_screenshots",
                   "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HUBCOMPARE_HOME": str(WORK / "home")})

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from service_harness import new_browser, push_and_register, running_service, submit_compare  # noqa: E402

MODELS = [("digits-r8-s0", 8, 0), ("digits-r8-s1", 8, 1), ("digits-r14-s0", 14, 0), ("digits-r14-s1", 14, 1)]
OWNER = "alice"
WIDTH = 1280
VIEW_HEIGHT = 800
MAX_HEIGHT = 16000  # Chromium draws up to 16384 px; every page here is shorter, so nothing is cut


def fit_height(driver, height: int) -> None:
    """A viewport (not window: headless Chromium still counts its hidden toolbar) ``height`` px tall, at most MAX_HEIGHT."""
    height = min(MAX_HEIGHT, max(VIEW_HEIGHT, int(height)))
    driver.set_window_size(WIDTH, height)
    inner = driver.execute_script("return window.innerHeight")
    if inner != height:
        driver.set_window_size(WIDTH, height + (height - int(inner)))


def train_models(runs: Path) -> dict[str, Path]:
    from hubcompare.training.loop import train
    from hubcompare.training.recipes import load_recipe

    out = {}
    for name, depth, seed in MODELS:
        folder = runs / name
        if not (folder / "model.safetensors").is_file():
            train(load_recipe("digits", {"model.depth": depth, "train.seed": seed, "train.epochs": 6, "train.warmup_epochs": 1}),
                  folder, overwrite=True)
        out[name] = folder
    return out


def queue(service, body: dict) -> str:
    status, _, raw = service.request("POST", "/api/jobs", body)
    assert status == 202, (status, raw[:500])
    import json

    job = service.wait_job(json.loads(raw)["id"], timeout=900)
    assert job["state"] == "done", job
    return job["result_key"]


def shot(driver, path: Path, *, full: bool = True) -> None:
    """The page as a user sees it at 1280 px wide, as tall as its content (MAX_HEIGHT at most: said when cut)."""
    if full:
        height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
        if height > MAX_HEIGHT:
            print(f"  warning: {path.name} is {height} px tall; the screenshot stops at {MAX_HEIGHT}")
        fit_height(driver, height)
    driver.save_screenshot(str(path))
    fit_height(driver, VIEW_HEIGHT)
    print(f"  {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "hubcompare-screenshot-runs")
    p.add_argument("--examples", type=int, default=360)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from hubcompare.hub.server import HubServer

    t0 = time.monotonic()
    runs = train_models(args.runs)
    print(f"models ready in {time.monotonic() - t0:.0f} s")
    home = WORK / "home"
    home.mkdir(parents=True, exist_ok=True)
    with HubServer(WORK / "hub-data", port=HUB_PORT) as hub:
        for name, depth, _ in MODELS:
            push_and_register(runs[name], f"{OWNER}/{name}", home / "registry.sqlite", (f"digits-r{depth}",))
        with running_service(home, hub_endpoint=hub.endpoint) as service:
            a, b = f"{OWNER}--digits-r8-s0", f"{OWNER}--digits-r14-s0"
            keys = {
                "cross-cka": queue(service, {"kind": "cross-cka", "refs": [a, b], "examples": args.examples}),
                "blocks": queue(service, {"kind": "blocks", "refs": [b], "examples": args.examples}),
                "agreement": queue(service, {"kind": "agreement", "refs": ["population:digits-r8", "population:digits-r14"]}),
                "class-diff": queue(service, {"kind": "class-diff", "refs": ["population:digits-r8", "population:digits-r14"]}),
                "across-seeds": queue(service, {"kind": "cross-cka", "refs": ["population:digits-r8", "population:digits-r14"],
                                                "examples": args.examples}),  # two sides: the server makes it across-seeds
                "probes": queue(service, {"kind": "probes", "refs": [b], "examples": args.examples,
                                          "options": {"train_examples": args.examples}}),
                "delete-blocks": queue(service, {"kind": "delete-blocks", "refs": [b], "examples": args.examples}),
                "compare": queue(service, {"kind": "compare", "refs": [a, b], "examples": args.examples,
                                           "batch_size": args.examples,
                                           "options": {"measures": ["rsa", "procrustes", "rbf-cka(frac=0.5)"]}}),
            }
            print(f"results stored in {time.monotonic() - t0:.0f} s")
            driver = new_browser(WIDTH, VIEW_HEIGHT)
            fit_height(driver, VIEW_HEIGHT)
            try:
                take_all(driver, service, keys, args.out, a, b)
            finally:
                driver.quit()
    print(f"done in {time.monotonic() - t0:.0f} s")


def take_all(driver, service, keys: dict, out: Path, a: str, b: str) -> None:
    pages = [("models", "/models"), ("models-filtered", "/models?population=digits-r14"), ("model", f"/models/{b}"),
             ("results", "/results"), ("result-blocks", f"/results/{keys['blocks']}"),
             ("result-agreement", f"/results/{keys['agreement']}"), ("result-class-diff", f"/results/{keys['class-diff']}"),
             ("result-across-seeds", f"/results/{keys['across-seeds']}"), ("result-probes", f"/results/{keys['probes']}"),
             ("result-delete-blocks", f"/results/{keys['delete-blocks']}"),
             ("result-compare-rsa", f"/results/{keys['compare']}"),
             ("compare", "/compare"), ("api-docs", "/docs"), ("not-found", "/results/0123456789abcdef")]
    for name, path in pages:
        driver.get(service.url(path))
        shot(driver, out / f"{name}.png")

    driver.get(service.url(f"/results/{keys['cross-cka']}"))  # the heatmap with a cell hovered
    cells = driver.find_elements(By.CSS_SELECTOR, "svg#heatmap rect.cell")
    fit_height(driver, driver.execute_script("return document.documentElement.scrollHeight"))
    target = cells[len(cells) * 3 // 5]  # a cell in the middle of the map, off the diagonal
    ActionChains(driver).move_to_element(target).perform()
    WebDriverWait(driver, 10).until(lambda d: "CKA" in d.find_element(By.ID, "hover").text and "×" in d.find_element(By.ID, "hover").text)
    shot(driver, out / "result-cross-cka-hover.png", full=False)

    # the compare form with a refused reference, then a job running and a job that failed
    submit_compare(driver, service, **{"kind": "cross-cka", "model_a": a, "model_b": "../secrets", "examples": "200"})
    shot(driver, out / "compare-refused.png")
    submit_compare(driver, service, **{"kind": "cross-cka", "model_a": f"{OWNER}--digits-r8-s1", "model_b": f"{OWNER}--digits-r14-s1",
                             "layers": "*", "examples": "360"})
    WebDriverWait(driver, 60, poll_frequency=0.05).until(lambda d: d.find_element(By.ID, "job-state").text == "running")
    WebDriverWait(driver, 60, poll_frequency=0.05).until(lambda d: "/" in d.find_element(By.ID, "progress").text
                                                         or "/jobs/" not in d.current_url)
    shot(driver, out / "job-running.png", full=False)
    WebDriverWait(driver, 600).until(lambda d: "/results/" in d.current_url)
    submit_compare(driver, service, **{"kind": "cross-cka", "model_a": a, "model_b": "hf-hub:alice/no-such-model", "examples": "200"})
    WebDriverWait(driver, 600).until(lambda d: d.find_element(By.ID, "job-state").text == "failed")
    shot(driver, out / "job-failed.png", full=False)


if __name__ == "__main__":
    main()
