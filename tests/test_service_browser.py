"""The service's pages as a user drives them, in headless Chromium against a real ``hubcompare serve``.

The models are pushed to the test Hub and registered in the test (service_harness.py); the server runs as a
subprocess on loopback and pulls them from that Hub itself. The browser fixture skips with the apt command where
Chromium and chromedriver are not installed (and fails under .ci/run, which installs them).

Slow: about 30 s of its own on 2 idle cores (two one-epoch trainings and the pushes, the server's start and its
graceful stop, a worker's first comparison), over the fast lane's share; CI runs it.
"""

from __future__ import annotations

import io
import json
import re
import urllib.parse

import numpy as np
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait
from service_harness import submit_compare

pytestmark = pytest.mark.slow

pytest_plugins = ["service_harness"]  # its fixtures: service_models, service, browser

JOB_TIMEOUT_S = 300  # a small digits comparison takes seconds; a loaded 2-core machine and a cold worker take longer
KEY = re.compile(r"/results/([0-9a-f]{64})$")


def names_listed(driver) -> list[str]:
    return [row.find_element(By.CSS_SELECTOR, "td a").text for row in driver.find_elements(By.CSS_SELECTOR, "#models tr.model")]


def test_registry_page_lists_the_pushed_models_and_the_filters_narrow_it(browser, service, service_models):
    _, models = service_models
    browser.get(service.url("/"))
    listed = names_listed(browser)
    assert {m.name for m in models} <= set(listed), listed
    row = browser.find_element(By.CSS_SELECTOR, '#models tr.model[data-name="svc--digits-r14-s2"]')
    assert "hf-hub:svc/digits-r14-s2@" + models[2].reference.rsplit("@", 1)[1] in row.text

    filters = browser.find_element(By.CSS_SELECTOR, "form#filters")
    Select(filters.find_element(By.NAME, "population")).select_by_value("svc-r8")
    filters.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 30).until(EC.url_contains("population=svc-r8"))
    assert sorted(names_listed(browser)) == ["svc--digits-r8-s0", "svc--digits-r8-s1"]

    filters = browser.find_element(By.CSS_SELECTOR, "form#filters")
    Select(filters.find_element(By.NAME, "population")).select_by_value("")
    filters.find_element(By.NAME, "depth").send_keys("14")
    filters.find_element(By.NAME, "text").send_keys("svc")
    filters.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 30).until(EC.url_contains("depth=14"))
    assert names_listed(browser) == ["svc--digits-r14-s2"]

    browser.find_element(By.LINK_TEXT, "svc--digits-r14-s2").click()  # the model's own page: its card and layers
    WebDriverWait(browser, 30).until(EC.url_contains("/models/svc--digits-r14-s2"))
    assert "svc--digits-r14-s2" in browser.find_element(By.TAG_NAME, "h1").text


def test_compare_form_queues_a_job_that_lands_on_a_result_whose_heatmap_hovers_the_stored_numbers(browser, service, service_models):
    submit_compare(browser, service, kind="cross-cka", model_a="svc--digits-r8-s0", model_b="svc--digits-r14-s2",
                   dataset="digits", layers="stem *.out logits", examples="200")
    WebDriverWait(browser, JOB_TIMEOUT_S).until(EC.url_matches(KEY.pattern), message=service.log_tail())  # via the job page
    key = KEY.search(browser.current_url).group(1)
    jobs = [j for j in service.get_json("/api/jobs")["jobs"] if j["result_key"] == key]
    assert [(j["state"], j["error"], j["from_store"]) for j in jobs] == [("done", None, False)]

    status, _, body = service.request("GET", f"/api/results/{key}/files/cka.json")
    assert status == 200
    stored = json.loads(body)
    layers_a, layers_b = stored["layers_a"], stored["layers_b"]
    assert layers_a[0] == "stem" and layers_a[-1] == "logits" and len(layers_b) > len(layers_a)  # R14 has more blocks
    cells = browser.find_elements(By.CSS_SELECTOR, "svg#heatmap rect.cell")
    assert len(cells) == len(layers_a) * len(layers_b)

    hover = browser.find_element(By.ID, "hover")
    by_pair = {(c.get_attribute("data-a"), c.get_attribute("data-b")): c for c in cells}
    assert len(by_pair) == len(cells)  # each cell is one pair of layers
    for i, j in [(0, 0), (len(layers_a) - 1, len(layers_b) - 1), (1, len(layers_b) // 2)]:
        cell = by_pair[(layers_a[i], layers_b[j])]
        ActionChains(browser).move_to_element(cell).perform()
        expected = f"{layers_a[i]} × {layers_b[j]}: CKA {stored['cka'][i][j]:.4f} ± {stored['se'][i][j]:.4f}"
        WebDriverWait(browser, 10).until(lambda _: hover.text == expected, message=f"{hover.text!r} != {expected!r}")

    links = {a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")}
    assert {"cka.json", "cka.npz", "cka.png"} <= set(links), links
    files = {}
    for name in ("cka.json", "cka.npz", "cka.png"):
        status, headers, files[name] = service.request("GET", urllib.parse.urlsplit(links[name]).path)
        assert status == 200, (name, status, files[name][:300])
        disposition = {k.lower(): v for k, v in headers.items()}["content-disposition"]
        assert disposition.startswith("inline" if name.endswith(".png") else "attachment") and name in disposition
    assert json.loads(files["cka.json"]) == stored
    with np.load(io.BytesIO(files["cka.npz"]), allow_pickle=False) as npz:
        np.testing.assert_allclose(npz["cka"], np.array(stored["cka"], dtype=float), rtol=1e-12, equal_nan=True)
    assert files["cka.png"].startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("bad, where", [("hf-hub:svc/no-such-model", "job"), ("../../etc/passwd", "form"),
                                        ("svc--no-such-model", "form")])  # not in the registry: refused before a job
def test_a_bad_reference_shows_a_readable_error_not_a_traceback(browser, service, service_models, bad, where):
    """A reference that parses but names nothing fails its job, shown on the job page; one that cannot be a reference
    is refused by the form itself. Either way one readable message naming it, and the server carries on."""
    submit_compare(browser, service, kind="cross-cka", model_a="svc--digits-r8-s0", model_b=bad, examples="100")
    if where == "job":
        WebDriverWait(browser, 30).until(EC.url_contains("/jobs/"))
        state = browser.find_element(By.ID, "job-state")
        WebDriverWait(browser, JOB_TIMEOUT_S).until(lambda _: state.text in ("failed", "done"), message=service.log_tail())
        assert state.text == "failed"
        assert not browser.find_element(By.ID, "progress-bar").is_displayed()  # the failure, not a half-full bar
    else:  # the form comes back with the error (wait for it: the click returns before the answer is drawn)
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "error"), message=service.log_tail())
        assert "/compare" in browser.current_url
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and bad.split(":")[-1] in error.text, error.text
    assert len(error.text.splitlines()) == 1 and "Traceback" not in browser.page_source and 'File "' not in browser.page_source
    assert service.get_json("/api/health")["status"] == "ok"
