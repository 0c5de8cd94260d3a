"""The comparison service through HTTP (FastAPI's TestClient; the browser tests drive the real server elsewhere).

Two small digits models are registered (as local folders: the registry is the server's own configuration, so it
may name paths; a request may not) in a fresh home, and the app runs its real worker pool. What a user relies on:
the pages list and filter the registry, a requested comparison completes and its page shows the stored numbers,
a bad request is refused with a readable 4xx, a failing or crashing job reports its error and the server keeps
serving, writes need the token off loopback, and a download is only ever one of the result's own files.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import one_epoch_recipe

fastapi = pytest.importorskip("fastapi", reason="the service needs fastapi: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from hubcompare.errors import ServiceConfigError, ServiceRequestError  # noqa: E402
from hubcompare.hub.registry import Entry, Registry  # noqa: E402
from hubcompare.results.keys import result_key  # noqa: E402
from hubcompare.results.store import ResultStore  # noqa: E402
from hubcompare.service.app import create_app  # noqa: E402
from hubcompare.service.checks import check_request, form_request  # noqa: E402
from hubcompare.service.config import ServiceConfig  # noqa: E402
from hubcompare.service.heatmap import build_heatmap, magma  # noqa: E402
from hubcompare.service.jobs import JobQueue  # noqa: E402
from hubcompare.service.journal import JOURNAL_FILE, JobJournal  # noqa: E402
from hubcompare.service.runner import run_comparison  # noqa: E402
from hubcompare.service.views import headline_rows  # noqa: E402

LOOPBACK = "http://127.0.0.1:8765"
TOKEN = "t0ken-for-the-service-tests-0123456789"
CELL = re.compile(r'<rect class="cell"[^>]*data-a="([^"]*)" data-b="([^"]*)" data-cka="([^"]*)" data-se="([^"]*)"')


# --- the runner of the test app's workers (module level: a spawned worker imports it by name) -------
CRASH = "crash-the-worker"


def crashing_runner(request: dict, settings: dict, on_progress) -> dict:
    """The real runner, except that a request for the model CRASH kills its worker process (as running out of
    memory would)."""
    if request["refs"][0] == CRASH:
        on_progress("about to crash", 1, 2)
        os._exit(3)
    return run_comparison(request, settings, on_progress)


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory, trained_run) -> Path:
    """A service home: registry with two digits models (and a third whose card holds markup), an empty store."""
    from hubcompare.training.loop import train

    root = tmp_path_factory.mktemp("service")
    second = root / "r8-s1"
    train(one_epoch_recipe(1), second)
    scripted = shutil.copytree(trained_run, root / "scripted")
    (scripted / "README.md").write_text("---\nlicense: mit\n---\n# Card\n<script>alert('card')</script> & <b>bold</b>\n")
    registry = Registry(root / "registry.sqlite", curated_dirs=[])
    registry.add(Entry("digits-a", f"local-dir:{trained_run}", architecture="resnet", depth=8, width=1.0, dataset="digits",
                       seed=0, accuracy=0.95, populations=["pop-a"]))
    registry.add(Entry("digits-b", f"local-dir:{second}", architecture="resnet", depth=8, width=1.0, dataset="digits",
                       seed=1, accuracy=0.5, populations=["pop-b"]))
    registry.add(Entry("scripted-card", f"local-dir:{scripted}", architecture="resnet", depth=14, width=2.0,
                       dataset="digits", seed=7, populations=["pop-b"]))
    registry.add(Entry(CRASH, f"local-dir:{trained_run}", architecture="resnet", depth=8, width=1.0, dataset="digits",
                       seed=0))  # a registered name (the API refuses others) whose job crashing_runner crashes
    # registered, but its folder is gone: a request for it is queued and its job fails in the worker
    registry.add(Entry("vanished", f"local-dir:{root / 'vanished'}", architecture="resnet", depth=8, width=1.0,
                       dataset="digits", seed=9))
    return root


def config_for(home: Path, **changes) -> ServiceConfig:
    return ServiceConfig(**{"registry_path": home / "registry.sqlite", "results_dir": home / "results", "max_examples": 256} | changes)


@pytest.fixture(scope="module")
def client(home):
    """The app on a loopback config, its worker pool running (the real comparison runner)."""
    with TestClient(create_app(config_for(home), runner=crashing_runner), base_url=LOOPBACK) as c:
        yield c


REQUEST = {"kind": "cross-cka", "refs": ["digits-a", "digits-b"], "examples": 128, "batch_size": 64}


@pytest.fixture(scope="module")
def done_job(client) -> dict:
    """A cross-cka of the two models requested over the API, finished; plus the answer to asking twice at once."""
    r = client.post("/api/jobs", json=REQUEST)
    assert r.status_code == 202, r.text
    again = client.post("/api/jobs", json=REQUEST).json()
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    return job | {"again": again}


def wait_job(client, job_id: str, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"job still {job['state']} after {timeout} s: {job}"
        time.sleep(0.2)


# --- the registry pages ---------------------------------------------------------------------------
def test_registry_pages_list_and_filter_models(client):
    page = client.get("/models")
    assert page.status_code == 200
    rows = re.findall(r'<tr class="model" data-name="([^"]+)"', page.text)
    assert {"digits-a", "digits-b", "scripted-card"} <= set(rows)
    assert client.get("/", follow_redirects=False).headers["location"] == "/models"

    def names(query: str) -> set[str]:
        r = client.get(f"/models?{query}")
        assert r.status_code == 200, r.text
        return set(re.findall(r'<tr class="model" data-name="([^"]+)"', r.text))

    assert names("population=pop-b") == {"digits-b", "scripted-card"}
    assert names("depth=14") == {"scripted-card"}
    assert names("width=1&dataset=digits") >= {"digits-a", "digits-b"} and "scripted-card" not in names("width=1")
    assert names("text=DIGITS-A") == {"digits-a"}
    api = client.get("/api/models", params={"population": "pop-a"}).json()
    assert [m["name"] for m in api["models"]] == ["digits-a"] and api["models"][0]["accuracy"] == 0.95

    bad = client.get("/models?depth=deep")
    assert bad.status_code == 400 and "depth: &#39;deep&#39; is not a whole number" in bad.text
    assert client.get("/api/models?width=nan").json()["error"].startswith("width:")


def test_model_page_shows_metadata_and_escapes_the_card(client):
    page = client.get("/models/scripted-card")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "&lt;script&gt;alert(&#39;card&#39;)&lt;/script&gt; &amp; &lt;b&gt;" in page.text
    assert "<th>license</th><td>mit</td>" in page.text and "<h3>Card</h3>" in page.text  # front matter as rows, body rendered
    assert "---" not in page.text.split('id="card"')[1]  # the raw front matter is not shown
    assert re.search(r"<th>depth</th><td>14</td>", page.text) and re.search(r"<th>width</th><td>2</td>", page.text)
    missing = client.get("/models/no-such-model")
    assert missing.status_code == 404 and "no registry entry &#39;no-such-model&#39;" in missing.text
    assert client.get("/api/models/no-such-model").json()["type"] == "RegistryEntryNotFoundError"


# --- a real job -------------------------------------------------------------------------------------
def test_a_restarted_server_still_shows_its_finished_jobs(home, done_job):
    """The job table is journalled beside the store: another server on the same store knows the job, as it ended."""
    with TestClient(create_app(config_for(home), runner=crashing_runner), base_url=LOOPBACK) as again:
        job = again.get(f"/api/jobs/{done_job['id']}").json()
        assert job["state"] == "done" and job["result_key"] == done_job["result_key"]
        page = again.get(f"/jobs/{done_job['id']}", follow_redirects=False)
        assert page.status_code in (200, 303) and done_job["result_key"][:12] in page.text + page.headers.get("location", "")


def test_posted_job_completes_and_its_page_shows_the_stored_numbers(client, done_job):
    job = done_job
    assert job["again"]["id"] == job["id"] and job["again"]["new"] is False  # asked twice at once: one job
    assert job["total"] and job["done"] == job["total"] and not job["from_store"]

    key = job["result_key"]
    page = client.get(f"/results/{key}")
    assert page.status_code == 200
    stored = client.get(f"/results/{key}/files/cka.json")
    assert stored.status_code == 200
    cka = stored.json()
    cells = CELL.findall(page.text)
    assert len(cells) == len(cka["layers_a"]) * len(cka["layers_b"])
    by_pair = {(html.unescape(a), html.unescape(b)): (v, se) for a, b, v, se in cells}
    for i, la in enumerate(cka["layers_a"]):
        for j, lb in enumerate(cka["layers_b"]):
            v, se = by_pair[(la, lb)]
            assert float(v) == cka["cka"][i][j] and float(se) == cka["se"][i][j]
    assert 'id="hover"' in page.text and 'svg id="heatmap"' in page.text and "/static/heatmap.js" in page.text
    assert page.text.count('class="stage"') == len(cka["stage_boundaries_a"]) + len(cka["stage_boundaries_b"])
    assert f'/results/{key}/files/cka.png' in page.text and "key-inputs" in page.text
    assert f'<img src="/results/{key}/files/cka.png"' not in page.text  # the heatmap once: drawn, not again as a figure
    assert f'<p class="muted result-meta">key <span class="ref" id="result-key">{key}</span></p>' in page.text  # own line, wraps
    row = re.search(rf'<tr class="result" data-key="{key}">(.*?)</tr>', client.get("/results").text, re.S).group(1)
    assert re.search(r'<td class="num models">2</td>', row)  # two models, not the four names they are found under
    assert "128 examples" in row and re.search(r'<td class="nowrap created"[^>]*>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d', row)

    listed = client.get("/api/results", params={"model": "digits-a"}).json()
    assert key in [x["key"] for x in listed["results"]] and "path" not in listed["results"][0]
    assert key in client.get("/results?kind=cross-cka").text
    assert key in client.get("/models/digits-a").text  # "the comparisons it appears in"

    # asked again: the stored result, at once (no recomputation)
    hit = wait_job(client, client.post("/api/jobs", json=REQUEST).json()["id"])
    assert hit["state"] == "done" and hit["from_store"] and hit["result_key"] == key
    assert hit["id"] != job["id"]  # a finished job is not reused: the store answers


def test_form_post_queues_a_job_and_a_bad_reference_fails_readably(client):
    # the form refuses a name the registry lacks before anything is queued, with advice for the page (no CLI flags)
    queued = len(client.get("/api/jobs").json()["jobs"])
    refused = client.post("/compare", data={"kind": "cross-cka", "model_a": "digits-a", "model_b": "no-such-model",
                                            "examples": "128"}, follow_redirects=False)
    assert refused.status_code == 400 and 'form id="compare"' in refused.text
    error = html.unescape(re.search(r'<p class="error" id="error">([^<]*)</p>', refused.text).group(1))
    assert "model B: 'no-such-model' is not a model registered on this server: pick a model from the list" in error
    assert "hubcompare" not in error and "--" not in error
    assert len(client.get("/api/jobs").json()["jobs"]) == queued  # nothing queued
    side = client.post("/compare", data={"kind": "agreement", "model_a": "population:nope", "model_b": "digits-a"})
    assert side.status_code == 400 and "no registered model is in the population" in html.unescape(side.text)
    # the API refuses a name the registry lacks too, before queueing, with advice for an API client
    api = client.post("/api/jobs", json={**REQUEST, "refs": ["digits-a", "no-such-model"]})
    assert api.status_code in (400, 422), api.text
    assert "refs[1]: 'no-such-model' is not a model registered on this server: the API lists the models" in api.json()["error"]
    side = client.post("/api/jobs", json={"kind": "agreement", "refs": ["population:nope", "digits-a"]})
    assert side.status_code in (400, 422) and "at api/models?population=NAME" in side.json()["error"]
    assert len(client.get("/api/jobs").json()["jobs"]) == queued  # nothing queued
    # a job that fails in its worker (a registered model whose folder is gone) fails readably
    job_id = client.post("/api/jobs", json={**REQUEST, "refs": ["digits-a", "vanished"]}).json()["id"]
    job = wait_job(client, job_id)
    assert job["state"] == "failed" and "vanished" in job["error"] and "Traceback" not in job["error"]
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and 'id="job-state"' in page.text and ">failed<" in page.text
    assert re.search(r'<p id="progress" hidden>', page.text) and re.search(r'<progress id="progress-bar"[^>]* hidden>', page.text)
    error = re.search(r'<p id="error" class="error">([^<]*)</p>', page.text)
    assert error and "vanished" in html.unescape(error.group(1))
    assert job["advice"] and "pick the models from the list" in job["advice"] and "hubcompare" not in job["advice"]
    assert re.search(r'<p id="advice">[^<]*pick the models from the list', page.text)  # what to do, on the pages
    assert client.get("/api/health").json()["status"] == "ok"  # the server carries on

    form = client.post("/compare", data={"kind": "cross-cka", "model_a": "digits-a", "model_b": "", "examples": "128"})
    assert form.status_code == 400 and "model B is empty" in form.text and 'form id="compare"' in form.text
    assert 'value="digits-a"' in form.text  # what was typed is kept


def test_population_result_page_shows_its_figure_and_table(client):
    job = wait_job(client, client.post("/api/jobs", json={"kind": "agreement", "refs": ["digits-a", "digits-b"]}).json()["id"])
    assert job["state"] == "done", job
    page = client.get(f"/results/{job['result_key']}")
    assert page.status_code == 200 and 'id="summary"' in page.text and 'svg id="heatmap"' not in page.text
    assert f"/results/{job['result_key']}/files/agreement.png" in page.text
    summary = client.get(f"/results/{job['result_key']}/files/agreement.json").json()["summary"]
    assert page.text.count(f"<th>num_examples</th><td>{summary['num_examples']}</td>") == 1  # the numbers once
    # one model a side: a McNemar test, no split-half null (said in words, not a blank cell)
    assert "<th>null_from</th><td>none (no split-half null: see the warnings)</td>" in page.text
    assert "<td></td>" not in page.text.split('id="summary"')[1].split("</table>")[0]
    assert client.get(f"/results/{job['result_key']}/files/agreement.csv").headers["content-disposition"].startswith("attachment")


# --- refused requests -------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, expect", [
    ({"kind": "cross-cka", "refs": ["/etc", "digits-a"], "examples": 128}, 400, "refs\\[0\\]: '/etc' is not a reference this server"),
    ({"kind": "cross-cka", "refs": ["local-dir:/tmp", "digits-a"], "examples": 128}, 400, "not a reference this server takes"),
    ({"kind": "agreement", "refs": ["@/etc/passwd", "digits-a"]}, 400, "not a reference this server takes: give population:NAME"),
    ({"kind": "probes", "refs": ["digits-a"], "examples": 128, "options": {"train_examples": 128, "blocks": "/etc/passwd"}}, 400,
     "options.blocks"),
    ({"kind": "probes", "refs": ["digits-a"], "examples": 128}, 400, "options.train_examples"),
    ({"kind": "cross-cka", "refs": ["/tmp/model.pkl", "digits-a"], "examples": 128}, 400, "refs\\[0\\]"),
    ({"kind": "cross-cka", "refs": ["digits-a", "digits-b"], "examples": 128, "data_dir": "/"}, 400, "data_dir.*not a request field"),
    ({"kind": "cross-cka", "refs": ["digits-a", "digits-b"], "examples": 100000}, 400, "examples: this server computes at most 256"),
    ({"kind": "cross-cka", "refs": ["digits-a", "digits-b"]}, 400, "examples"),
    ({"kind": "cross-cka", "refs": ["digits-a", "digits-b"], "examples": 128, "layers": ["../x"]}, 400, "layers\\[0\\]"),
    ({"kind": "cross-cka", "refs": ["a"] * 9, "examples": 128}, 400, "at most 8 models"),
    ({"kind": "nope", "refs": ["a"]}, 400, "kind"),
    (["not", "an", "object"], 400, "not an object"),
])
def test_invalid_requests_are_refused_with_4xx(client, body, status, expect):
    r = client.post("/api/jobs", json=body)
    assert r.status_code == status, r.text
    assert re.search(expect, r.json()["error"]), r.json()


def test_malformed_and_oversized_bodies_are_refused(client):
    post = lambda content, ctype="application/json": client.post("/api/jobs", content=content, headers={"content-type": ctype})  # noqa: E731
    assert post(b'{"kind": "cross-cka", "refs": ["a", "b"], "examples": NaN}').status_code == 400
    assert "twice" in post(b'{"kind": "cka", "kind": "cross-cka", "refs": ["a", "b"]}').json()["error"]
    assert post(b"[" * 30000 + b"]" * 30000).status_code == 400
    assert post(b"\x80\x04K\x01.", "application/octet-stream").status_code == 415  # a pickle is not even read
    big = json.dumps({"kind": "cross-cka", "refs": ["a", "b"], "labels": ["x" * 70000, "y"]}).encode()
    r = post(big)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert client.get("/api/health").status_code == 200


def test_cross_site_writes_and_foreign_host_names_are_refused(client):
    body = {"kind": "cross-cka", "refs": ["digits-a", "digits-b"], "examples": 128}
    r = client.post("/api/jobs", json=body, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "another site" in r.json()["error"]
    form = client.post("/compare", data={"kind": "cka", "model_a": "digits-a", "examples": "128"},
                       headers={"origin": "http://evil.example"}, follow_redirects=False)
    assert form.status_code == 403
    assert client.get("/models", headers={"host": "evil.example"}).status_code == 421  # DNS rebinding


def test_file_downloads_are_only_the_results_own_files(client, done_job):
    key = done_job["result_key"]
    assert client.get(f"/results/{key}/files/cka.png").headers["content-type"] == "image/png"
    for name in ("index.sqlite", "..%2Findex.sqlite", "%2E%2E", "cka.json%00"):
        r = client.get(f"/results/{key}/files/{name}")
        assert r.status_code == 404, (name, r.status_code)
    assert client.get(f"/results/{key}/files/..%2F..%2Fregistry.sqlite").status_code == 404
    assert client.get("/results/not-hex/files/cka.json").status_code == 400
    assert client.get(f"/api/results/{key[:-1]}Z/files/cka.json").status_code == 400
    assert client.get("/results/" + "0" * 64).status_code == 404


# --- security of the configuration -------------------------------------------------------------------
def test_writes_need_the_token_off_loopback(home):
    with pytest.raises(ServiceConfigError, match="not a loopback address, without a token"):
        create_app(config_for(home, host="0.0.0.0"))
    with pytest.raises(ServiceConfigError, match="at least 16"):
        create_app(config_for(home, host="0.0.0.0", token="short"))
    queue = JobQueue({}, crashing_runner)  # never started: the writes below are refused or invalid before any job
    app = create_app(config_for(home, host="0.0.0.0", token=TOKEN), jobs=queue)
    client = TestClient(app, base_url="http://192.0.2.1:8765")
    bad = {"kind": "cross-cka", "refs": ["digits-a"], "examples": 128}  # one ref: invalid once the token is accepted
    assert client.get("/models").status_code == 200  # reads are open
    r = client.post("/api/jobs", json=bad)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/jobs", json=bad, headers={"authorization": "Bearer " + TOKEN[:-1] + "x"}).status_code == 401
    ok = client.post("/api/jobs", json=bad, headers={"authorization": "Bearer " + TOKEN})
    assert ok.status_code == 400 and "refs" in ok.json()["error"]
    form = client.post("/compare", data={"kind": "cka", "model_a": "digits-a", "examples": "128"})
    assert form.status_code == 401 and "token" in form.text and 'name="token"' in form.text
    assert client.get("/api/health").json()["writes_need_token"] is True


def test_serve_refuses_a_public_address_without_a_token(monkeypatch):
    from typer.testing import CliRunner

    from hubcompare.cli.main import app

    monkeypatch.delenv("HUBCOMPARE_TOKEN", raising=False)
    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert r.exit_code == 2 and "ServiceConfigError" in r.output and "without a token" in " ".join(r.output.split())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = CliRunner().invoke(app, ["serve", "--port", str(busy.getsockname()[1])])
    assert r.exit_code == 2 and "cannot listen on 127.0.0.1" in " ".join(r.output.split())


# --- the worker pool ---------------------------------------------------------------------------------
@pytest.mark.slow  # fault injection: a worker process killed (~5 s)
def test_a_crashing_worker_fails_its_job_and_the_server_carries_on(client, done_job):
    r = client.post("/api/jobs", json={"kind": "cross-cka", "refs": [CRASH, "digits-a"], "examples": 128})
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "failed" and job["error_type"] == "WorkerCrashed", job
    assert "worker process running this job stopped (exit code 3)" in job["error"]
    page = client.get(f"/jobs/{job['id']}")
    assert "exit code 3" in page.text and ">failed<" in page.text
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["worker_restarts"] == 1
    after = wait_job(client, client.post("/api/jobs", json=REQUEST).json()["id"])  # the new worker takes the next job
    assert after["state"] == "done" and after["result_key"] == done_job["result_key"]


# --- the heatmap's drawing -----------------------------------------------------------------------------
def test_heatmap_geometry_matches_the_figures():
    assert magma(0.0) == "#000004" and magma(1.0) == "#fcfdbf" and magma(2.0) == "#fcfdbf" and magma(None) == "#bbbbbb"
    cka = {"layers_a": ["s", "l1", "l2", "l3"], "layers_b": ["s", "l1"], "cka": [[1, 0.5], [0.5, None], [0.2, 0.1], [0.3, 0.4]],
           "se": [[0, 0.01], [0.01, None], [0.02, 0.03], [0.0, 0.1]], "stage_boundaries_a": [2], "stage_boundaries_b": [1],
           "label_a": "A", "label_b": "B"}
    h = build_heatmap(cka, blocks=[{"start": 1, "stop": 2, "mean_cka": 0.8}])
    first = next(c for c in h.cells if (c.a, c.b) == ("s", "s"))
    top = next(c for c in h.cells if (c.a, c.b) == ("l3", "s"))
    assert first.y > top.y and first.x == top.x == h.left  # origin lower: A's first layer at the bottom
    assert next(c for c in h.cells if (c.a, c.b) == ("l1", "l1")).fill == "#bbbbbb"
    assert h.plot_w == h.plot_h and h.size == 2 * h.size_h  # a square plot: 2 columns twice as wide as 4 rows are high
    assert h.lines_a == [h.top + 2 * h.size_h] and h.lines_b == [h.left + h.size]  # between layers 1|2 of A, 0|1 of B
    (block,) = h.blocks
    assert (block["w"], block["h"]) == (2 * h.size, 2 * h.size_h) and block["y"] == next(c for c in h.cells if c.a == "l2").y


# --- what the pages say -------------------------------------------------------------------------------
def test_missing_pages_link_to_the_lists_and_empty_values_are_said_in_words(client):
    page = client.get("/results/0123456789abcdef")
    assert page.status_code == 404 and "hubcompare results list" not in page.text
    assert 'href="/results"' in page.text.split('id="error-links"')[1] and 'href="/models"' in page.text
    rows = dict(headline_rows({"mcnemar_p": None, "null_from": None, "num_blocks": 0, "blocks": [], "significant_classes": [],
                               "classes": [3, 7], "ok": True, "nested": {"p": 0.012345}, "other": None}))
    assert rows == {"mcnemar_p": "n/a (McNemar's test needs one model a side)", "null_from": "none (no split-half null: see the "
                    "warnings)", "num_blocks": "0", "blocks": "none detected", "significant_classes": "none", "classes": "3, 7",
                    "ok": "yes", "nested.p": "0.01235", "other": "n/a"}


def test_the_form_makes_a_cross_cka_of_two_population_sides_an_across_seeds(home):
    config = config_for(home)
    sides = form_request({"kind": "cross-cka", "model_a": "population:pop-a", "model_b": "population:pop-b", "examples": "128"},
                         config)
    assert sides.kind == "across-seeds" and sides.refs == ("population:pop-a", "population:pop-b") and sides.examples == 128
    api = check_request({"kind": "cross-cka", "refs": ["digits-a+digits-b", "scripted-card"], "examples": 64}, config)
    assert api.kind == "across-seeds"
    assert form_request({"kind": "cross-cka", "model_a": "digits-a", "model_b": "digits-b", "examples": "64"}, config).kind == "cross-cka"
    probes = form_request({"kind": "probes", "model_a": "digits-a", "model_b": "ignored", "examples": "64"}, config)
    assert probes.refs == ("digits-a",) and probes.options["train_examples"] == 64
    with pytest.raises(ServiceRequestError, match=r"refs\[1\]: '\.\./secrets' is not a reference this server takes: give a "
                                                  r"registered model's name, hf-hub:OWNER/NAME\[@REV\] or timm:NAME$"):
        form_request({"kind": "cross-cka", "model_a": "digits-a", "model_b": "../secrets", "examples": "64"}, config)


def _store_blocks_result(home: Path) -> tuple[str, dict]:
    """A synthetic blocks result of digits-a (6 layers, two stages, two blocks) put in the service's store."""
    layers = ["stem", "s1.b1", "s1.b2", "s2.b1", "s2.b2", "head"]
    n = len(layers)
    cka = {"layers_a": layers, "layers_b": layers, "cka": [[1.0 - abs(i - j) / n for j in range(n)] for i in range(n)],
           "se": [[0.01] * n for _ in range(n)], "stage_boundaries_a": [3], "stage_boundaries_b": [3], "ref_a": "digits-a",
           "ref_b": "digits-a", "label_a": "digits-a", "label_b": "digits-a"}
    blocks = [{"start": 1, "stop": 2, "layers": layers[1:3], "size": 2, "mean_cka": 0.9, "outside_cka": 0.5, "mean_pc1": 0.7},
              {"start": 3, "stop": 5, "layers": layers[3:6], "size": 3, "mean_cka": 0.8, "outside_cka": 0.4, "mean_pc1": 0.6}]
    store = ResultStore(home / "results")
    key = result_key("blocks", {"synthetic": True})
    with store.staging() as staging:
        (staging / "blocks.json").write_text(json.dumps({"ref": "digits-a", "blocks": blocks, "layers": layers, "cka": cka}))
        store.put(key, "blocks", title="blocks: digits-a (synthetic)", request={"kind": "blocks", "refs": ["digits-a"]},
                  key_inputs={"synthetic": True}, summary={"num_blocks": 2, "blocks": [{"first": b["layers"][0]} for b in blocks]},
                  models=["digits-a"], dataset="digits", staging=staging, seconds=0.1)
    return key, cka | {"blocks": blocks}


def test_results_sharing_a_title_say_what_differs(client, home):
    store = ResultStore(home / "results")
    for examples, seed in ((300, 0), (500, 0), (500, 1)):
        inputs = {"models": [{"ref": "digits-a"}], "settings": [examples, seed]}
        key = result_key("cka", inputs)
        with store.staging() as staging:
            (staging / "note.json").write_text("{}")
            store.put(key, "cka", title="cka: twins", request={"kind": "cka", "refs": ["digits-a"], "examples": examples, "seed": seed},
                      key_inputs=inputs, summary={}, models=["digits-a", "local-dir:digits-a@x"],
                      dataset="digits", staging=staging, seconds=0.1)
    page = client.get("/results?kind=cka").text
    rows = re.findall(r'<a href="/results/[0-9a-f]+">cka: twins</a><div class="differs muted">([^<]*)</div>', page)
    assert sorted(rows) == ["examples 300 · seed 0", "examples 500 · seed 0", "examples 500 · seed 1"], rows
    assert page.count('<td class="num models">1</td>') >= 3


def test_a_blocks_heatmap_outlines_each_block_and_draws_the_stage_lines(client, home, done_job):
    key, data = _store_blocks_result(home)
    page = client.get(f"/results/{key}").text
    cells = {(html.unescape(m.group("a")), html.unescape(m.group("b"))): (float(m.group("x")), float(m.group("y")))
             for m in re.finditer(r'<rect class="cell" x="(?P<x>[^"]+)" y="(?P<y>[^"]+)" width="(?P<w>[^"]+)" height="[^"]+" '
                                  r'fill="[^"]+" data-a="(?P<a>[^"]*)" data-b="(?P<b>[^"]*)"', page)}
    size = float(re.search(r'<rect class="cell"[^>]* width="([^"]+)"', page).group(1))
    outlines = [tuple(float(v) for v in m) for m in re.findall(
        r'<rect class="block" x="([^"]+)" y="([^"]+)" width="([^"]+)" height="([^"]+)"', page)]
    layers = data["layers_a"]
    expected = []
    for b in data["blocks"]:  # from the first layer's column to the last's, from the last layer's row (top) down to the first's
        first, last = layers[b["start"]], layers[b["stop"]]
        x, y = cells[(last, first)][0], cells[(last, first)][1]
        expected.append((x, y, round(b["size"] * size, 3), round(b["size"] * size, 3)))
    assert outlines == expected
    lines_h = [float(y) for y in re.findall(r'<line class="stage" x1="[^"]+" x2="[^"]+" y1="([^"]+)" y2="\1"/>', page)]
    lines_v = [float(x) for x in re.findall(r'<line class="stage" y1="[^"]+" y2="[^"]+" x1="([^"]+)" x2="\1"/>', page)]
    boundary = data["stage_boundaries_a"][0]  # between layers 2 and 3: the bottom edge of row 3 and the left edge of column 3
    row_3, row_2 = cells[(layers[boundary], "stem")][1], cells[(layers[boundary - 1], "stem")][1]
    assert lines_h == [row_2] and row_2 - row_3 == pytest.approx(size)
    assert lines_v == [cells[("stem", layers[boundary])][0]]
    assert re.findall(r'<tr class="block-row"><td>([^<]*)</td>', page) == ["s1.b1 … s1.b2", "s2.b1 … head"]

    model = client.get("/models/digits-a").text  # two stored comparisons tapped different layers: both lists, each named
    sources = re.findall(r'<p class="muted layers-source">(\d+) layers, as tapped in\s*(.*?):</p>', model, re.S)
    assert [int(n) for n, _ in sources] == sorted([len(json.loads(client.get(
        f"/results/{done_job['result_key']}/files/cka.json").content)["layers_a"]), len(layers)], reverse=True)
    assert any(f'/results/{key}"' in where for _, where in sources)
    assert any(f'/results/{done_job["result_key"]}"' in where for _, where in sources)


# --- stopping ------------------------------------------------------------------------------------------
@pytest.mark.slow  # a server process started and stopped (~6 s)
def test_an_idle_server_stops_within_two_seconds_of_sigterm(tmp_path):
    from service_harness import running_service

    with running_service(tmp_path / "home") as service:
        time.sleep(0.5)
        started = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)  # the server alone, as `kill PID` or a service manager sends it
        service.proc.wait(timeout=30)
        took = time.monotonic() - started
        assert took < 2.0, f"took {took:.2f} s to stop:\n{service.log_tail()}"
        assert service.proc.returncode in (0, -signal.SIGTERM)


# --- the Ray backend ---------------------------------------------------------------------------------
@pytest.mark.slow  # ~30 s: a server with a local Ray started and stopped
def test_a_ray_server_stops_in_order_on_sigterm(tmp_path):
    """Issue #23 item 18: starting Ray replaced the server's SIGTERM handler, so SIGTERM printed a native stack dump
    and two tracebacks and skipped the shutdown (Ray's processes left to die with it). Now it shuts down in order."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'hubcompare[ray]')")
    from service_harness import running_service, service_env

    env = service_env(tmp_path / "home")
    env.pop("RAY_ADDRESS", None)
    with running_service(tmp_path / "home", args=("--backend", "ray"), env=env) as service:
        assert service.get_json("/api/health")["backend"] == "ray"
        service.proc.send_signal(signal.SIGTERM)
        service.proc.wait(timeout=60)
        log = service.log_tail(20_000)
        assert "SIGTERM received" not in log and "Traceback" not in log and "SystemExit" not in log, log
        assert "Application shutdown complete" in log, log
        assert service.proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), log


@pytest.mark.slow  # ~17 s: Ray's start and a torch import in its worker
def test_jobs_run_on_ray_and_store_the_same_result_as_local_ones(home, done_job, local_ray, tmp_path):
    config = config_for(home, backend="ray", results_dir=tmp_path / "ray-results")
    with TestClient(create_app(config), base_url=LOOPBACK) as ray_client:
        assert ray_client.get("/api/health").json()["backend"] == "ray"
        good = ray_client.post("/api/jobs", json=REQUEST).json()["id"]
        bad = ray_client.post("/api/jobs", json={**REQUEST, "refs": ["digits-a", "vanished"]}).json()["id"]
        job, failed = wait_job(ray_client, good), wait_job(ray_client, bad)
        assert failed["state"] == "failed" and "vanished" in failed["error"]  # only its own job
        assert job["state"] == "done" and not job["from_store"] and job["total"] and job["done"] == job["total"], job
        assert job["result_key"] == done_job["result_key"]  # the same content key: Ray is not in it
        on_ray = ray_client.get(f"/results/{job['result_key']}/files/cka.json").json()
    local = json.loads((home / "results" / done_job["result_key"] / "cka.json").read_text())
    assert on_ray["layers_a"] == local["layers_a"] and on_ray["layers_b"] == local["layers_b"]
    # the same numbers up to float rounding (a Ray task runs torch on its one CPU, the local worker on the machine's)
    np.testing.assert_allclose(np.array(on_ray["cka"], dtype=float), np.array(local["cka"], dtype=float), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.array(on_ray["se"], dtype=float), np.array(local["se"], dtype=float), rtol=1e-6, atol=1e-12)

    # a job the Ray server had not finished when it stopped: the next one runs it as a Ray task (from the store now)
    journal = JobJournal(tmp_path / "ray-results" / JOURNAL_FILE)
    journal.save({"id": "0123456789abcdef", "request": REQUEST, "fingerprint": "", "state": "running", "stage": "running",
                  "notices": [], "warnings": [], "created": "2026-11-30T10:00:00+00:00"})
    with TestClient(create_app(config), base_url=LOOPBACK) as ray_client:
        again = wait_job(ray_client, "0123456789abcdef")
    assert again["state"] == "done" and again["from_store"] and again["result_key"] == done_job["result_key"]
    assert any("queued again" in n for n in again["notices"])


# --- the other writes: the registry and sharing a result ------------------------------------------
def user_entries(home: Path) -> dict:
    return {n: e.reference for n, e in Registry(home / "registry.sqlite", curated_dirs=[]).user().items()}


@pytest.fixture(scope="module")
def hub_model(hub, trained_run, tmp_path_factory):
    """The digits model pushed to the test Hub (a copy: a push records itself in the folder)."""
    from hubcompare.hub.client import push

    return push(shutil.copytree(trained_run, tmp_path_factory.mktemp("svc-push") / "r8"), "svc/digits-r8")


def test_registry_add_and_remove_through_the_api(client, home, hub_model):
    r = client.post("/api/registry", json={"name": "svc-r8", "reference": "hf-hub:svc/digits-r8"})
    assert r.status_code == 201, r.text
    pinned = f"hf-hub:svc/digits-r8@{hub_model.commit_sha}"
    entry = r.json()
    assert entry["reference"] == pinned and entry["commit"] == hub_model.commit_sha and entry["source"] == "user"
    assert (entry["depth"], entry["dataset"]) == (8, "digits") and r.headers["location"] == "/api/models/svc-r8"
    assert user_entries(home)["svc-r8"] == pinned
    assert "svc-r8" in [m["name"] for m in client.get("/api/models", params={"dataset": "digits"}).json()["models"]]
    assert 'data-name="svc-r8"' in client.get("/models").text
    assert client.get("/api/models/svc-r8").json()["reference"] == pinned

    # the same name for another model: refused before anything is pulled, unless replace
    taken = client.post("/api/registry", json={"name": "svc-r8", "reference": "timm:resnet18.a1_in1k"})
    assert taken.status_code == 409 and "already names" in taken.json()["error"]
    assert user_entries(home)["svc-r8"] == pinned

    gone = client.delete("/api/registry/svc-r8")
    assert gone.status_code == 200 and gone.json()["removed"]["reference"] == pinned
    assert "svc-r8" not in user_entries(home) and client.get("/api/models/svc-r8").status_code == 404
    again = client.delete("/api/registry/svc-r8")
    assert again.status_code == 404 and "no registry entry 'svc-r8'" in again.json()["error"]


def test_curated_entries_cannot_be_removed_or_replaced_through_the_api(client, home):
    before = user_entries(home)
    r = client.delete("/api/registry/timm-resnet18-a1")  # a bundled, curated entry
    assert r.status_code == 409 and "curated entry (from timm-imagenet.txt)" in r.json()["error"]
    r = client.post("/api/registry", json={"name": "timm-resnet18-a1", "reference": "timm:resnet18.a1_in1k", "replace": True})
    assert r.status_code == 409 and "cannot replace it" in r.json()["error"]
    assert client.get("/api/models/timm-resnet18-a1").json()["source"] == "curated: timm-imagenet.txt"
    assert user_entries(home) == before


@pytest.mark.parametrize("body, status, expect", [
    ({"name": "../up", "reference": "hf-hub:svc/digits-r8"}, 400, r"^name: registry name '\.\./up'"),
    ({"name": "a b", "reference": "hf-hub:svc/digits-r8"}, 400, r"^name: registry name"),
    ({"name": "p1", "reference": "/etc"}, 400, r"never a path on the server"),
    ({"name": "p2", "reference": "local-dir:/tmp"}, 400, r"never a path on the server"),
    ({"name": "p3", "reference": "results"}, 400, r"reference: 'results' is not a reference this server records"),
    ({"name": "p4", "reference": "hf-hub:svc/../x"}, 400, r"never a path"),
    ({"name": "p5", "reference": "hf-hub:svc/digits-r8", "path": "/tmp"}, 400, r"'path' is not a field here"),
    ({"name": "p6", "reference": "hf-hub:svc/digits-r8", "replace": "yes"}, 400, r"^replace: 'yes' is not a true/false"),
    ({"name": "p7"}, 400, r"^reference is missing"),
    ({"name": "p8", "reference": "hf-hub:svc/digits-r8", "populations": ["a/b"]}, 400, r"^populations\[0\]: population"),
    ({"name": "p9", "reference": "hf-hub:svc/no-such-model"}, 404, r"svc/no-such-model"),
])
def test_bad_registry_writes_are_refused_and_record_nothing(client, home, hub_model, body, status, expect):
    before = user_entries(home)
    r = client.post("/api/registry", json=body)
    assert r.status_code == status, r.text
    assert re.search(expect, r.json()["error"]), r.json()
    assert "Traceback" not in r.text and user_entries(home) == before
    assert client.post("/api/registry", content=b'{"name": "x"}', headers={"content-type": "text/plain"}).status_code == 415


def test_a_compare_job_stores_every_measure_and_its_page_draws_each(client):
    body = {"kind": "compare", "refs": ["digits-a", "digits-b"], "examples": 128, "batch_size": 128,
            "options": {"measures": ["rsa", "rbf-cka(frac=0.5)"]}}
    r = client.post("/api/jobs", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    key = job["result_key"]
    stored = client.get(f"/api/results/{key}").json()
    assert stored["kind"] == "compare" and stored["key_inputs"]["options"] == {"measures": ["rsa", "rbf-cka(frac=0.5)"]}
    doc = client.get(f"/results/{key}/files/measures.json").json()
    assert list(doc["pairs"][0]["measures"]) == ["rsa", "rbf-cka"]
    page = client.get(f"/results/{key}")
    assert page.status_code == 200 and 'data-measure="rsa"' in page.text  # the first measure's heatmap, hoverable
    assert "measures:rbf-cka" in page.text  # a link to the other one
    other = client.get(f"/results/{key}", params={"pair": "measures:rbf-cka.json"})
    assert other.status_code == 200 and 'data-measure="rbf-cka(frac=0.5)"' in other.text
    cells = CELL.findall(other.text)
    value = doc["pairs"][0]["measures"]["rbf-cka"]["value"]
    assert len(cells) == len(value) * len(value[0])  # every layer pair drawn, from the stored numbers
    listed = client.get("/api/measures").json()
    assert [m["name"] for m in listed["measures"]][:3] == ["cka", "rbf-cka", "rsa"]
    bad = client.post("/api/jobs", json=body | {"options": {"measures": ["rsa", "cca"]}})
    assert bad.status_code == 400 and bad.json()["field"] == "options.measures[1]", bad.text
    assert "'cca' is not a measure" in bad.json()["error"]
    page = client.get("/compare")
    assert 'id="measures"' in page.text and "procrustes" in page.text  # the form's field, with the names it takes


def test_api_kinds_lists_each_kinds_spec_and_the_request_schema(client):
    """What a script needs to build a request for any kind: its arity, its typed options, its files; the schema
    POST /api/jobs validates against is the same one (openapi.json carries it)."""
    from hubcompare.comparisons.kinds import kind_names

    listed = client.get("/api/kinds").json()
    kinds = {k["name"]: k for k in listed["kinds"]}
    assert list(kinds) == list(kind_names())
    assert kinds["agreement"]["refs"] == {"min": 2, "max": 2, "of": "sides"} and kinds["cka"]["refs"]["of"] == "models"
    assert kinds["agreement"]["options"]["null_side"]["enum"] == ["a", "b", "auto"]
    assert kinds["probes"]["options"]["validation_fraction"]["exclusiveMinimum"] == 0.0
    assert kinds["compare"]["files"]["document"] == "measures.json"
    assert kinds["delete-blocks"]["fixed"]["layers"] is None
    clauses = {c["if"]["properties"]["kind"]["const"]: c["then"] for c in listed["schema"]["allOf"]}
    assert clauses["blocks"]["properties"]["options"]["properties"]["min_size"]["minimum"] == 1
    body = client.get("/openapi.json").json()["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["allOf"] == listed["schema"]["allOf"]


def test_a_dead_hub_behind_a_registration_is_a_bad_gateway(client, home, monkeypatch):
    from huggingface_hub import constants

    from helpers import free_port

    before = user_entries(home)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    r = client.post("/api/registry", json={"name": "gone", "reference": "hf-hub:svc/never-pulled"})  # not cached
    assert r.status_code == 502, r.text
    assert r.json()["type"] == "HubUnavailableError" and "did not answer" in r.json()["error"]
    assert user_entries(home) == before


def test_each_error_class_declares_its_http_status():
    from hubcompare.errors import (AmbiguousResultKeyError, CrossSiteWriteError, HubUnavailableError,
                                   RegistryConflictError, RequestMediaTypeError, ResultNotFoundError, ServiceBusyError,
                                   WriteNotAllowedError)
    from hubcompare.service.views import status_for

    expected = {WriteNotAllowedError("x"): 401, CrossSiteWriteError("x"): 403, ResultNotFoundError("x"): 404,
                AmbiguousResultKeyError("x", ["a", "b"]): 400, RegistryConflictError("x"): 409,
                RequestMediaTypeError("x"): 415, HubUnavailableError("x"): 502, ServiceBusyError("x", 5): 503,
                ServiceRequestError("x"): 400, ServiceConfigError("x"): 400}
    assert {type(e).__name__: status_for(e) for e in expected} == {type(e).__name__: s for e, s in expected.items()}
    assert ServiceBusyError("x", retry_after=5).retry_after == 5


def test_a_result_pushed_through_the_api_pulls_into_another_store(client, done_job, hub, tmp_path):
    from hubcompare.results.share import pull_result

    key = done_job["result_key"]
    r = client.post(f"/api/results/{key}/push", json={"repo": "svc/cka-digits"})
    assert r.status_code == 200, r.text
    shared = r.json()
    assert shared["reference"] == f"hf-hub-result:svc/cka-digits@{shared['commit_sha']}" and shared["key"] == key
    assert shared["repo_id"] == "svc/cka-digits" and shared["url"].endswith("/datasets/svc/cka-digits")
    theirs = ResultStore(tmp_path / "theirs")
    pulled = pull_result(shared["reference"], theirs)
    mine = ResultStore(Path(client.app.state.service.config.results_dir)).get(key)
    assert pulled.key == key and pulled.files == mine.files
    for name in mine.files:
        assert pulled.file(name).read_bytes() == mine.file(name).read_bytes()

    assert client.post(f"/api/results/{key[:10]}/push", json={"repo": "svc/cka-digits"}).json()["commit_sha"] == \
        shared["commit_sha"]  # a prefix names it too; unchanged files: no new commit
    for url, body, status, expect in [
        (f"/api/results/{key}/push", {"repo": "not a repo"}, 400, "^repo: "),
        (f"/api/results/{key}/push", {"repo": "svc/x", "branch": "main"}, 400, "'branch' is not a field here"),
        ("/api/results/not-hex/push", {"repo": "svc/x"}, 400, "is not a result key"),
        ("/api/results/" + "0" * 64 + "/push", {"repo": "svc/x"}, 404, "no stored result"),
    ]:
        bad = client.post(url, json=body)
        assert bad.status_code == status and re.search(expect, bad.json()["error"]), (url, bad.text)


def test_every_write_needs_the_token_off_loopback(home, hub_model, done_job):
    queue = JobQueue({}, crashing_runner)  # never started
    app = create_app(config_for(home, host="0.0.0.0", token=TOKEN), jobs=queue)
    client = TestClient(app, base_url="http://192.0.2.1:8765")
    key = done_job["result_key"]
    writes = [("post", "/api/registry", {"name": "svc-token", "reference": "hf-hub:svc/digits-r8"}, 201),
              ("delete", "/api/registry/svc-token", None, 200),
              ("post", f"/api/results/{key}/push", {"repo": "svc/cka-token"}, 200)]
    for method, url, body, ok in writes:
        send = lambda **headers: client.request(method, url, json=body, headers=headers)  # noqa: E731
        r = send()
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (url, r.text)
        assert send(authorization="Bearer " + TOKEN[:-1] + "x").status_code == 401
        assert send(authorization="Bearer " + TOKEN, origin="http://evil.example").status_code == 403
        if method == "post":
            assert user_entries(home).get("svc-token") is None  # nothing written by a refused request
        good = send(authorization="Bearer " + TOKEN)
        assert good.status_code == ok, (url, good.text)
    assert "svc-token" not in user_entries(home)
    assert "svc/cka-token" in [d.id for d in __import__("huggingface_hub").HfApi().list_datasets(author="svc")]


def test_the_result_page_shares_on_the_hub_through_its_form(client, home, done_job, hub):
    key = done_job["result_key"]
    page = client.get(f"/results/{key}")
    assert 'form id="share"' in page.text and 'id="share-token"' not in page.text  # loopback, no token: none asked
    r = client.post(f"/results/{key}/push", data={"repo": "svc/cka-form"})
    assert r.status_code == 200 and 'id="share-reference"' in r.text, r.text[-2000:]
    sha = re.search(r"hf-hub-result:svc/cka-form@([0-9a-f]{40})", r.text)[1]
    assert 'svg id="heatmap"' in r.text  # the result page itself, with the reference on it
    assert __import__("huggingface_hub").HfApi().dataset_info("svc/cka-form").sha == sha
    bad = client.post(f"/results/{key}/push", data={"repo": "no repo"})
    assert bad.status_code == 400 and 'id="share-error"' in bad.text and "repo: " in html.unescape(bad.text)
    foreign = client.post(f"/results/{key}/push", data={"repo": "svc/x"}, headers={"origin": "http://evil.example"})
    assert foreign.status_code == 403 and "another site" in foreign.text

    guarded = TestClient(create_app(config_for(home, host="0.0.0.0", token=TOKEN), jobs=JobQueue({}, crashing_runner)),
                         base_url="http://192.0.2.1:8765")
    refused = guarded.post(f"/results/{key}/push", data={"repo": "svc/cka-form-2"})
    assert refused.status_code == 401 and 'id="share-token"' in refused.text and "needs its token" in refused.text
    ok = guarded.post(f"/results/{key}/push", data={"repo": "svc/cka-form-2", "token": TOKEN})
    assert ok.status_code == 200 and "hf-hub-result:svc/cka-form-2@" in ok.text


# --- bounded pages: a result of any size (issue #23, item 4) -------------------------------------------------
def _store_big_cka(root: Path, n: int, rows: int = 0) -> tuple[str, np.ndarray]:
    """A synthetic n-layer CKA result (and a summary table of ``rows`` rows) put straight into a store at ``root``."""
    rng = np.random.default_rng(n)
    values = rng.random((n, n))
    values[0, 0] = np.nan  # one undefined pair
    layers = [f"s{i // 100}.b{i % 100}" for i in range(n)]
    cka = {"layers_a": layers, "layers_b": layers, "cka": [[None if np.isnan(v) else round(v, 4) for v in r] for r in values],
           "se": np.round(rng.random((n, n)) / 100, 4).tolist(), "stage_boundaries_a": list(range(100, n, 100)),
           "stage_boundaries_b": list(range(100, n, 100)), "label_a": "big-a", "label_b": "big-b", "ref_a": "a", "ref_b": "b"}
    store = ResultStore(root)
    key = result_key("cka", {"layers": n})
    with store.staging() as staging:
        (staging / "cka.json").write_text(json.dumps(cka))
        store.put(key, "cka", title=f"{n} layers", request={"kind": "cka", "refs": ["a"], "layers": layers},
                  key_inputs={"layers": n}, summary={"mean_cka": 0.5, "stages": [{"stage": i, "mean": 0.5} for i in range(rows)],
                                                       "names": {f"k{i}": i for i in range(rows)}},
                  models=["a"], dataset="digits", staging=staging, seconds=1.0)
    return key, np.round(np.where(np.isnan(values), np.nan, values), 4)


def _bare_client(root: Path) -> TestClient:
    app = create_app(ServiceConfig(results_dir=root, registry_path=root.parent / "registry.sqlite"), jobs=JobQueue({}, crashing_runner))
    return TestClient(app, base_url=LOOPBACK)


def test_a_large_heatmap_is_block_averaged_and_its_tables_paginated(tmp_path):
    key, values = _store_big_cka(tmp_path / "results", 200, rows=1_500)
    client = _bare_client(tmp_path / "results")
    page = client.get(f"/results/{key}")
    assert page.status_code == 200 and len(page.content) < 1_500_000, len(page.content)
    cells = re.findall(r'<rect class="cell"[^>]*data-a="([^"]*)" data-b="([^"]*)" data-cka="([^"]*)" data-se="[^"]*" '
                       r'data-n="(\d+)" data-min="[^"]*" data-max="[^"]*"', page.text)
    assert len(cells) == 50 * 50 and page.text.count('<rect class="cell"') == 2500  # 200 layers, 4 a cell
    assert 'id="downsampled"' in page.text and "200 × 200 layers drawn as" in html.unescape(page.text)
    by_layers = {(html.unescape(a), html.unescape(b)): (float(v), int(n)) for a, b, v, n in cells}
    first, nxt = by_layers[("s0.b0 … s0.b3", "s0.b0 … s0.b3")], by_layers[("s0.b4 … s0.b7", "s1.b96 … s1.b99")]
    assert first == (pytest.approx(np.nanmean(values[:4, :4])), 16)  # the undefined pair left out of the mean
    assert nxt == (pytest.approx(values[4:8, 196:200].mean()), 16)
    assert len(re.findall(r'<line class="stage"', page.text)) == 2  # the boundary at layer 100, on each side

    rows = re.findall(r'<table class="list-table" id="table-stages">.*?</table>', page.text, re.S)[0].count("<tr>") - 1
    assert rows == 100 and "rows 1–100 of 1,500" in page.text
    third = client.get(f"/results/{key}?page=3").text
    stages = re.findall(r'<table class="list-table" id="table-stages">.*?</table>', third, re.S)[0]
    assert "rows 201–300 of 1,500" in third and re.findall(r"<tr><td>(\d+)</td>", stages) == [str(i) for i in range(200, 300)]
    assert client.get(f"/results/{key}?page=999").status_code == 200  # past the end: the last page
    assert "summary.names" in html.unescape(page.text) or "summary:" in html.unescape(page.text)  # cut, and said so

    api = client.get(f"/api/results/{key}").json()
    assert len(api["summary"]["stages"]) == 1_500 and "truncated" not in api  # within one result's budget
    listed = client.get("/api/results").json()["results"][0]
    assert len(json.dumps(listed)) < 40_000 and any("summary" in t for t in listed["truncated"])


@pytest.mark.slow  # ~25 s: a 1,500-layer result written, parsed and drawn
def test_a_1500_layer_result_page_is_bounded_in_size_and_time(tmp_path):
    key, _ = _store_big_cka(tmp_path / "results", 1_500, rows=30_000)
    client = _bare_client(tmp_path / "results")
    started = time.monotonic()
    page = client.get(f"/results/{key}")
    first = time.monotonic() - started
    assert page.status_code == 200 and len(page.content) < 2_000_000, len(page.content)  # was 417 MB (and 107 s)
    assert page.text.count('<rect class="cell"') <= 64 * 64 and 'id="downsampled"' in page.text
    assert first < 45, first  # one parse of the 40 MB JSON (~4 s on an idle machine; it was 107 s and 417 MB)
    started = time.monotonic()
    for _ in range(3):  # parsed once: later views are quick
        assert len(client.get(f"/results/{key}").content) < 2_000_000
    assert time.monotonic() - started < max(3.0, first / 2), (first, time.monotonic() - started)
    api = client.get(f"/api/results/{key}")
    assert len(api.content) < 2_000_000 and api.json()["truncated"]


# --- registrations do not stall the server (issue #23, item 10) -------------------------------------------------
REGISTRATIONS = 60


@pytest.mark.slow  # ~40 s: a throttled Hub, a server and 60 concurrent registrations
def test_concurrent_registrations_leave_reads_answering(trained_run, tmp_path):
    """60 registrations of a slow-to-download model at once: /api/health and the pages answer within a second
    throughout (they took every thread of the server waiting for one global lock); the ones over the bound are
    refused with 503 and Retry-After, the others are recorded, and the registry holds exactly those."""
    import threading

    from service_harness import running_service

    from hubcompare.hub.client import push
    from hubcompare.hub.server import HubServer
    from hubcompare.models.checkpoint import WEIGHTS_FILE

    size = (trained_run / WEIGHTS_FILE).stat().st_size
    with HubServer(tmp_path / "hub", max_bytes_per_second=size / 8) as hub:  # the download takes ~8 s
        push(shutil.copytree(trained_run, tmp_path / "r8"), "slow/r8", api=__import__("huggingface_hub").HfApi(endpoint=hub.endpoint))
        with running_service(tmp_path / "home", hub_endpoint=hub.endpoint, args=("--quiet",)) as service:
            answers: list[tuple[int, dict]] = []

            def register(i: int) -> None:
                status, headers, body = service.request("POST", "/api/registry", {"name": f"r8-{i}", "reference": "hf-hub:slow/r8"},
                                                        timeout=300)
                answers.append((status, {k.lower(): v for k, v in headers.items()} | {"body": body[:300]}))

            threads = [threading.Thread(target=register, args=(i,)) for i in range(REGISTRATIONS)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            latencies = []
            for path in ["/api/health", "/models", "/api/health", "/results", "/api/health"] * 2:
                started = time.monotonic()
                status, _, _ = service.request("GET", path, timeout=120)
                latencies.append((path, round(time.monotonic() - started, 3)))
                assert status == 200
                time.sleep(0.2)
            for t in threads:
                t.join(300)
            print("read latencies under", REGISTRATIONS, "registrations:", latencies)
            assert max(s for _, s in latencies) < 1.0, latencies
            codes = sorted(s for s, _ in answers)
            print("registration answers:", {c: codes.count(c) for c in set(codes)})
            assert set(codes) <= {201, 503} and 201 in codes, answers[:5]
            assert all("retry-after" in h for s, h in answers if s == 503)
            names = {m["name"] for m in service.get_json("/api/models")["models"] if m["source"] == "user"}
            assert len(names) == codes.count(201)


# --- oversized weights: refused before downloading, never left in the cache, no server path shown (item 8) ------
BIG_WEIGHTS = 20_000_000


@pytest.fixture(scope="module")
def oversized_repo(hub, trained_run) -> str:
    """A Hub repo with the digits model's config.json and a 20 MB model.safetensors (far more than its ~80k
    parameters could need)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo("svc/oversized", exist_ok=True)
    api.create_commit("svc/oversized", [
        CommitOperationAdd("config.json", (trained_run / "config.json").read_bytes()),
        CommitOperationAdd("model.safetensors", np.random.default_rng(0).bytes(BIG_WEIGHTS))], commit_message="big")
    return "svc/oversized"


def _cached_bytes(repo_id: str) -> int:
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) if folder.is_dir() else 0


def test_weights_over_the_cap_are_refused_from_the_repos_metadata_before_downloading(oversized_repo):
    from hubcompare.errors import ModelTooLargeError
    from hubcompare.hub.references import resolve_reference

    with pytest.raises(ModelTooLargeError, match=r"model\.safetensors is 20,000,000 bytes.*refused before downloading"):
        resolve_reference(f"hf-hub:{oversized_repo}", max_params=1_000)
    assert _cached_bytes(oversized_repo) < 1_000_000  # nothing of the weights was downloaded


@pytest.fixture(scope="module")
def mismatched_repo(hub, trained_run, home) -> str:
    """A Hub repo with the digits model's config.json and another model's weights (same size, another sha256)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo("svc/mismatched", exist_ok=True)
    api.create_commit("svc/mismatched", [
        CommitOperationAdd("config.json", (trained_run / "config.json").read_bytes()),
        CommitOperationAdd("model.safetensors", (home / "r8-s1" / "model.safetensors").read_bytes())], commit_message="mixed")
    return "svc/mismatched"


def test_refused_weights_leave_the_cache_and_no_server_path_reaches_a_client(client, home, trained_run, oversized_repo,
                                                                             mismatched_repo):
    from huggingface_hub import constants

    before = user_entries(home)
    r = client.post("/api/registry", json={"name": "oversized", "reference": f"hf-hub:{oversized_repo}"})
    assert r.status_code == 400 and "larger than any weights of the model its config.json describes" in r.json()["error"]
    assert "refused before downloading it" in r.json()["error"] and _cached_bytes(oversized_repo) < 1_000_000

    weights = (trained_run / "model.safetensors").stat().st_size
    r = client.post("/api/registry", json={"name": "mismatched", "reference": f"hf-hub:{mismatched_repo}"})
    assert r.status_code == 400 and "does not match the sha256" in r.json()["error"], r.text  # known only once downloaded
    assert constants.HF_HUB_CACHE not in r.text and "/snapshots/" not in r.text and "…/model.safetensors" in r.text
    assert _cached_bytes(mismatched_repo) < weights  # the refused weights were removed
    assert user_entries(home) == before


@pytest.mark.slow  # jobs run in a worker (~10 s when it is the worker's first)
def test_jobs_with_refused_weights_leave_no_cache_and_show_no_server_path(client, trained_run, oversized_repo, mismatched_repo):
    from huggingface_hub import constants

    for repo, says in ((oversized_repo, "refused before downloading it"), (mismatched_repo, "does not match the sha256")):
        job = client.post("/api/jobs", json={"kind": "cka", "refs": [f"hf-hub:{repo}"], "examples": 64}).json()
        failed = wait_job(client, job["id"])
        assert failed["state"] == "failed" and says in failed["error"], failed
        assert constants.HF_HUB_CACHE not in failed["error"] and "/snapshots/" not in failed["error"]
        assert constants.HF_HUB_CACHE not in client.get(f"/jobs/{job['id']}").text
        assert _cached_bytes(repo) < (trained_run / "model.safetensors").stat().st_size


def test_the_results_list_counts_each_kinds_models_once():
    from types import SimpleNamespace

    from hubcompare.service.listing import model_count

    ids = [{"resolved": f"local-dir:/m{i}", "commit_sha": None} for i in range(4)]
    across = SimpleNamespace(key_inputs={"sides": {"a": {"spec": "population:a", "models": ids[:2]},
                                                   "b": {"spec": "population:b", "models": ids[2:]}}}, models=[])
    agreement = SimpleNamespace(key_inputs={"sides": {"a": ids[:1], "b": ids[1:]}}, models=[])
    cross = SimpleNamespace(key_inputs={"models": ids[:2]}, models=["a", "a@1", "b", "b@2"])
    assert (model_count(across), model_count(agreement), model_count(cross)) == (4, 4, 2)
