"""Start the real comparison service for tests, screenshots and benchmarks, and drive it from headless Chromium.

``running_service`` runs ``hubcompare serve`` as a subprocess (uvicorn, 127.0.0.1, a free port) with its own
``HUBCOMPARE_HOME`` and Hugging Face cache, pointed at a Hub endpoint; it waits for ``/api/health`` (bounded) and
always kills the server's whole process group (its job workers too) on exit. ``push_and_register`` puts a
checkpoint folder on that Hub and names it in that home's registry, as ``hubcompare push`` does.

The fixtures (``service_models``, ``service``, ``browser``) reach the test modules that use them as a plugin:
``pytest_plugins = ["service_harness"]``. Like helpers.py, nothing here
imports hubcompare or huggingface_hub at module level (conftest.py points them at the test Hub first).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from helpers import free_port

VENV_BIN = Path(sys.executable).parent
MISSING_BROWSER = "chromium/chromedriver not installed: apt-get install chromium chromium-driver"
REQUIRE_BROWSER_ENV = "HUBCOMPARE_REQUIRE_BROWSER"  # set by .ci/run once it installed them: fail instead of skipping
START_TIMEOUT_S = 120.0  # uvicorn + the app's imports on a loaded 2-core machine take a few seconds; this bounds it
STOP_TIMEOUT_S = 15.0


# --- the server ---------------------------------------------------------------------------------
@dataclass
class RunningService:
    """A started ``hubcompare serve``: its address, home folder and log (stdout + stderr)."""

    base_url: str
    home: Path
    log: Path
    proc: subprocess.Popen
    token: str | None = None

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(self, method: str, path: str, body: dict | None = None, *, token: str | None = None,
                timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request: (status, headers, body); an HTTP error status is returned, not raised."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url(path), data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token or self.token:
            req.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get_json(self, path: str) -> dict:
        status, _, body = self.request("GET", path)
        assert status == 200, f"GET {path}: {status} {body[:500]!r}"
        return json.loads(body)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_job(self, job_id: str, timeout: float = 300.0) -> dict:
        """Poll ``/api/jobs/{id}`` until the job is done or failed (bounded); its last JSON."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_json(f"/api/jobs/{job_id}")
            if job.get("state") in ("done", "failed"):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job.get('state')} after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)


def service_env(home: Path, hub_endpoint: str | None = None, **extra: str) -> dict[str, str]:
    """The server's environment: this process's, with its own HUBCOMPARE_HOME and Hugging Face cache under ``home``."""
    env = dict(os.environ)
    env.update({"HUBCOMPARE_HOME": str(home), "HF_HOME": str(home / "hf-home"), "HF_HUB_CACHE": str(home / "hf-home" / "hub"),
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"})
    if hub_endpoint:
        env["HF_ENDPOINT"] = hub_endpoint
    env.update(extra)
    return env


@contextmanager
def running_service(home: str | Path, *, hub_endpoint: str | None = None, args: tuple[str, ...] = (), token: str | None = None,
                    env: dict[str, str] | None = None, start_timeout: float = START_TIMEOUT_S) -> Iterator[RunningService]:
    """``hubcompare serve --host 127.0.0.1 --port <free>`` until the block ends; killed (process group) whatever happens."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / f"serve-{port}.log"
    cmd = [str(VENV_BIN / "hubcompare"), "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    if token:
        cmd += ["--token", token]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env or service_env(home, hub_endpoint), start_new_session=True)
    service = RunningService(f"http://127.0.0.1:{port}", home, log, proc, token)
    try:
        _wait_healthy(service, start_timeout)
        yield service
    finally:
        _stop(proc)


def _wait_healthy(service: RunningService, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise AssertionError(f"hubcompare serve exited with {service.proc.returncode} before answering:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(service.url("/api/health"), timeout=5) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"hubcompare serve did not answer /api/health within {timeout:.0f} s:\n{service.log_tail()}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn and its job workers), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            try:  # the leader exited; a worker it left behind still gets the signal
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        except subprocess.TimeoutExpired:
            continue


# --- models on the Hub and in the registry -----------------------------------------------------
@dataclass
class ServiceModel:
    """A model the tests pushed and registered: its registry name, Hub reference and what the filters read."""

    name: str
    reference: str
    depth: int
    width: float
    seed: int
    populations: list[str] = field(default_factory=list)


def push_and_register(run_dir: str | Path, repo_id: str, registry_path: str | Path, populations: tuple[str, ...] = ()) -> ServiceModel:
    """Push a checkpoint folder to the Hub at HF_ENDPOINT and register it as OWNER--NAME pinned to the commit (what
    ``hubcompare push --population`` does), in the registry at ``registry_path``."""
    from hubcompare.hub.client import push
    from hubcompare.hub.registry import Registry, entry_from_meta

    result = push(run_dir, repo_id, populations=populations)
    name = repo_id.replace("/", "--")
    reference = f"hf-hub:{repo_id}@{result.commit_sha}"
    entry = entry_from_meta(name, reference, result.meta, result.commit_sha, populations)
    Registry(registry_path).add(entry, replace=True)
    return ServiceModel(name, reference, entry.depth, entry.width, entry.seed, list(entry.populations))


# --- the browser ---------------------------------------------------------------------------------
def find_browser() -> tuple[str, str] | None:
    """(chromium binary, chromedriver) when both are installed, else None."""
    binary = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    return (binary, driver) if binary and driver else None


def new_browser(width: int = 1280, height: int = 900):
    """Headless Chromium through selenium, pointed at the system browser (no download, no network)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if found is None:
        raise RuntimeError(MISSING_BROWSER)
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}",
                "--disable-extensions", "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    driver.set_page_load_timeout(60)
    return driver


def submit_compare(driver, service: "RunningService", **fields: str) -> None:
    """Fill the compare form as a user does (a select picks its option, an input is typed into), submit it and wait
    for the next page to load."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(service.url("/compare"))
    form = driver.find_element(By.CSS_SELECTOR, "form#compare")
    for name, value in fields.items():
        element = form.find_element(By.NAME, name)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:
            element.clear()
            element.send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button#submit").click()
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


# --- fixtures ------------------------------------------------------------------------------------
OWNER = "svc"


@pytest.fixture(scope="session")
def service_models(hub, trained_run, tmp_path_factory) -> tuple[Path, list[ServiceModel]]:
    """Three small digits models pushed to the test Hub and registered in a fresh service home: ResNet-8 1x seeds 0
    (6 epochs) and 1 (1 epoch) in population ``svc-r8``, ResNet-14 1x seed 2 (1 epoch) in ``svc-r14``."""
    from helpers import one_epoch_recipe

    from hubcompare.training.loop import train

    home = tmp_path_factory.mktemp("service-home")
    runs = tmp_path_factory.mktemp("service-runs")
    train(one_epoch_recipe(1), runs / "r8-s1")
    train(one_epoch_recipe(2, **{"model.depth": 14}), runs / "r14-s2")
    registry = home / "registry.sqlite"
    models = [push_and_register(trained_run, f"{OWNER}/digits-r8-s0", registry, ("svc-r8",)),
              push_and_register(runs / "r8-s1", f"{OWNER}/digits-r8-s1", registry, ("svc-r8",)),
              push_and_register(runs / "r14-s2", f"{OWNER}/digits-r14-s2", registry, ("svc-r14",))]
    return home, models


@pytest.fixture(scope="session")
def service(hub, service_models) -> Iterator[RunningService]:
    """``hubcompare serve`` on loopback over the pushed models, for the whole session."""
    home, _ = service_models
    with running_service(home, hub_endpoint=hub.endpoint) as running:
        yield running


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session; skips (fails under .ci/run, which installs it) when it is absent."""
    if find_browser() is None:
        if os.environ.get(REQUIRE_BROWSER_ENV):
            pytest.fail(f"{MISSING_BROWSER} ({REQUIRE_BROWSER_ENV} is set: .ci/run installed them, so they must start)")
        pytest.skip(MISSING_BROWSER)
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")
    driver = new_browser()
    try:
        yield driver
    finally:
        driver.quit()
