"""The reference parser: every accepted form, and the promised errors for malformed or ambiguous ones."""

from __future__ import annotations

import pytest

from hubcompare.errors import InvalidReferenceError, ReferenceNotFoundError, RegistryEntryNotFoundError
from hubcompare.hub.references import ACCEPTED_FORMS, Reference, parse_reference, resolve_reference


def test_accepted_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "r14").mkdir(parents=True)
    assert parse_reference("hf-hub:alice/digits-r14") == Reference("hf-hub", "alice/digits-r14")
    sha = "a" * 40
    ref = parse_reference(f"hf-hub:alice/digits-r14@{sha}")
    assert (ref.target, ref.revision, str(ref)) == ("alice/digits-r14", sha, f"hf-hub:alice/digits-r14@{sha}")
    assert parse_reference("hf-hub:alice/x@v1.0").revision == "v1.0"
    assert parse_reference("local-dir:runs/r14") == Reference("local-dir", "runs/r14")
    assert parse_reference("runs/r14") == Reference("local-dir", "runs/r14")
    assert parse_reference("timm:resnet18.a1_in1k") == Reference("timm", "resnet18.a1_in1k")
    assert parse_reference("my-model_1") == Reference("registry", "my-model_1")
    assert parse_reference("hf-hub:alice/x").pinned(sha) == Reference("hf-hub", "alice/x", sha)


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("hf-hub:", "nothing follows"),
    ("hf-hub:alice", "not a Hub repo id"),
    ("hf-hub:alice/x/y", "not a Hub repo id"),
    ("hf-hub:alice/x@v1@v2", "one '@' at most"),
    ("hf-hub:alice/bad--name", "not a Hub repo id"),
    ("hf:alice/x", "unknown scheme 'hf:'"),
    ("timm:org/model", "no '/'"),
    ("alice/digits-r14", "hf-hub:alice/digits-r14"),
    ("no such folder!", "not a registry name"),
])
def test_malformed_references_list_the_accepted_forms(text, why, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidReferenceError) as e:
        parse_reference(text)
    assert why in str(e.value) and ACCEPTED_FORMS in str(e.value)


def test_folder_that_is_also_a_registry_name_is_ambiguous(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r14").mkdir()
    with pytest.raises(InvalidReferenceError, match="both a folder and a registry name.*local-dir:r14"):
        parse_reference("r14", registry_names={"r14"})
    assert parse_reference("local-dir:r14", registry_names={"r14"}).kind == "local-dir"


def test_references_that_name_nothing(tmp_path):
    from hubcompare.hub.registry import Registry

    registry = Registry(tmp_path / "r.sqlite", curated_dirs=[])
    with pytest.raises(RegistryEntryNotFoundError, match="no registry entry 'nobody'.*registry add nobody"):
        resolve_reference("nobody", registry)
    with pytest.raises(ReferenceNotFoundError, match="no checkpoint folder"):
        resolve_reference(f"local-dir:{tmp_path / 'missing'}", registry)
    with pytest.raises(ReferenceNotFoundError, match="timm has no architecture 'not_a_model'"):
        resolve_reference("timm:not_a_model", registry)


def test_timm_weights_only_published_as_pickles_are_refused():
    from timm.models import get_pretrained_cfg

    from hubcompare.errors import PickleWeightsRefusedError

    name = next(n for n in __import__("timm").list_models(pretrained=True)
                if (c := get_pretrained_cfg(n)) is not None and c.url and not c.hf_hub_id)
    with pytest.raises(PickleWeightsRefusedError, match="only loads safetensors"):
        resolve_reference(f"timm:{name}")


def test_local_folder_resolves_to_its_model(trained_run):
    resolved = resolve_reference(str(trained_run))
    assert resolved.commit_sha is None and resolved.path == trained_run and resolved.meta.depth == 8


def _cells(table_text: str, column: int) -> list[str]:
    """The text of one column of a rich table drawn with a rule between rows: each row's folded lines joined."""
    rows: list[str] = []
    new_row = True
    for line in table_text.splitlines():
        if line.startswith(("├", "└", "┡")):
            new_row = True
        elif line.startswith("│"):
            cell = line.split("│")[column + 1].strip()
            if new_row:
                rows.append(cell)
                new_row = False
            else:
                rows[-1] += cell
    return rows


def test_registry_list_piped_at_80_columns_prints_names_and_references_whole(tmp_path):
    """Piped at 80 columns: each name and reference (what a user copies or greps) stays whole on its own line, never
    folded or cut with '…' (the line is longer than 80 when a reference is); other columns drop, saying so."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hubcompare.hub.registry import Entry, Registry

    home = tmp_path / "home"
    sha = "0123456789abcdef0123456789abcdef01234567"
    entries = [Entry(f"alice--digits-zoo-digits-d{d}-w1-f1-s{s}", f"hf-hub:alice/digits-zoo-digits-d{d}-w1-f1-s{s}@{sha}", sha,
                     "cifar_resnet", d, 1.0, "digits", 1.0, s, 0.98, ["digits-zoo"]) for d in (8, 14) for s in (0, 1)]
    registry = Registry(home / "registry.sqlite", curated_dirs=[])
    for e in entries:
        registry.add(e)
    env = dict(os.environ, HUBCOMPARE_HOME=str(home), HUBCOMPARE_REGISTRY_DIRS="", COLUMNS="80")
    cli = [str(Path(sys.executable).parent / "hubcompare"), "registry", "list", "--population", "digits-zoo"]
    out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout, out.stdout
    for e in entries:
        assert any(e.name in line and e.reference in line for line in out.stdout.splitlines()), out.stdout
    assert "not shown at 80 columns: model, acc, populations" in out.stdout
    assert sorted(_cells(out.stdout, 0)) == sorted(e.name for e in entries), out.stdout
    assert sorted(_cells(out.stdout, 1)) == sorted(e.reference for e in entries), out.stdout
    assert "4 entries" in out.stdout
    listed = json.loads(subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True, timeout=120).stdout)
    assert {e["name"]: e["reference"] for e in listed} == {e.name: e.reference for e in entries}
    shown = json.loads(subprocess.run([cli[0], "registry", "show", entries[0].name, "--json"], env=env, capture_output=True,
                                      text=True, timeout=120).stdout)
    assert shown["reference"] == entries[0].reference and shown["commit_sha"] == sha and shown["populations"] == ["digits-zoo"]


# --- trust boundaries (#23 items 11, 19): collection slugs and Hub addresses go through one rule each ------------------
HOSTILE_SLUGS = [  # each would be requested as GET {endpoint}/api/collections/{slug} (or turn into another path)
    "../../api/models", "../x", "a/../../b", "..", "a/b/../../../api/whoami-v2", "alice/../../api/models/bob/private",
    "аlice/zoo", "alice/zоo-0123", "alice/zoo?full=true", "alice/zoo#x", "alice/zoo%2f..%2f..", "alice//zoo",
    "/alice/zoo", "alice/zoo/", "alice\\zoo", "alice/zoo/items", "a--b/zoo", "alice/zoo--x", "alice", "x" * 97 + "/zoo",
    "alice/-zoo", "alice/zoo-", "alice/zo o", "\ud800/zoo", "alice/zoo\x00",
]


class NoRequests:
    """A Hub client that fails the test on any use: nothing may be asked of the Hub."""

    endpoint = "http://127.0.0.1:9"

    def __getattr__(self, name):
        raise AssertionError(f"the Hub was asked: {name}")


def test_collection_slugs_follow_the_name_rules_before_any_request():
    """A side's collection:SLUG, a service request's, and what a server answers create_collection with: one rule."""
    from hubcompare.comparisons.requests import ComparisonRequest
    from hubcompare.errors import InvalidNameError, InvalidRequestError
    from hubcompare.hub.names import check_collection_slug
    from hubcompare.populations.sides import expand_side

    assert check_collection_slug("alice/digits-zoo-0123456789abcdef01234567") == "alice/digits-zoo-0123456789abcdef01234567"
    for slug in HOSTILE_SLUGS:
        with pytest.raises(InvalidNameError, match="collection slug"):
            check_collection_slug(slug)
        with pytest.raises(InvalidNameError, match="collection slug"):  # CLI sides (agreement, class-diff, across-seeds)
            expand_side(f"collection:{slug}", api=NoRequests())
        with pytest.raises(InvalidNameError, match="collection slug"):  # one item of a joined side
            expand_side(f"hf-hub:a/b+collection:{slug}", api=NoRequests())
        with pytest.raises(InvalidRequestError, match=r"refs\[1\]: (collection slug|.*control characters)"):  # service
            ComparisonRequest.from_json({"kind": "agreement", "refs": ["hf-hub:a/b", f"collection:{slug}"]}, allow_paths=False)
    print(f"{len(HOSTILE_SLUGS)} hostile slugs refused by 4 entry points")


def test_what_a_hub_lists_passes_the_name_rules_before_it_is_requested(hub):
    """A hostile (or broken) Hub answers a collection or a tag listing with ids that are paths: nothing more is asked
    (the fake client answers; the test server is only there for the endpoint probe to find something listening)."""
    from types import SimpleNamespace as NS

    from hubcompare.errors import EmptyPopulationError, InvalidNameError
    from hubcompare.populations.sides import _collection, _hub_tag

    class Listing(NoRequests):
        def __init__(self, answer):
            self.answer, self.endpoint = answer, hub.endpoint

        def get_collection(self, slug):
            return self.answer

        def list_models(self, **kwargs):
            return self.answer

    for bad in ["../../api/whoami-v2", "alice/../../x", "аlice/x", "a/b/c", None, 5]:
        with pytest.raises(InvalidNameError, match="listed a model"):
            _collection("alice/zoo", Listing(NS(items=[NS(item_id=bad, item_type="model")])))
        with pytest.raises(InvalidNameError, match="listed a model"):
            _hub_tag("population-zoo", Listing([NS(id=bad, sha="a" * 40)]))
    for sha in ["../x", "a b", "", None]:
        with pytest.raises(InvalidNameError, match="not a commit"):
            _hub_tag("population-zoo", Listing([NS(id="alice/x", sha=sha or "x y")]))
    for answer in [[1, 2], {"slug": "x"}, NS(items=5), NS(items=[NS()])]:  # not a collection at all
        with pytest.raises(EmptyPopulationError, match="not a collection"):
            _collection("alice/zoo", Listing(answer))


def test_a_collection_slug_a_server_answers_is_checked_before_items_are_added(trained_run):
    """push_population (and grid --push) adds members to the slug create_collection returned: a hostile one is refused."""
    from types import SimpleNamespace as NS

    from hubcompare.errors import PushError
    from hubcompare.hub.client import push_population

    class Answers(NoRequests):
        def __init__(self, slug):
            self.slug = slug

        def create_collection(self, *args, **kwargs):
            return NS(slug=self.slug)

    for slug in HOSTILE_SLUGS[:8]:
        with pytest.raises(PushError, match="answered create_collection with collection slug.*no model was pushed"):
            push_population([trained_run], "zoo", "alice", api=Answers(slug))


GOOD_ENDPOINTS = ["https://huggingface.co", "http://127.0.0.1:8080", "http://127.0.0.1:8080/", "http://[::1]:8080",
                  "https://hub.example.org/mirror", "http://localhost", "https://hf-mirror.com"]
BAD_ENDPOINTS = ["notaurl", "", "http://", "http:", "ftp://x", "127.0.0.1:8080", "http://a b", "http://[::1",
                 "http://127.0.0.1:99999", "http://h:x", "http://h:-1", "http://u:p@127.0.0.1", "http://tok@127.0.0.1",
                 "http://h?x=1", "http://h#f", "http://h/../x", "http://hóst", "https:/host", "http://:80", "http://h/a b",
                 "http://127.0.0.1:0", "javascript:alert(1)", "http://h\n", "file:///etc/passwd", "http://-h", "HTTP://h",
                 "http://h/%2e%2e", None, 8080]


def test_hub_addresses_follow_one_rule():
    """HF_ENDPOINT (or an api's endpoint) is an http(s) URL, checked before any request, by every way in."""
    from huggingface_hub import constants

    from hubcompare.errors import HubUnavailableError
    from hubcompare.hub.endpoint import hub_api, hub_endpoint, with_retries
    from hubcompare.hub.names import check_endpoint, check_endpoint_parses

    for url in GOOD_ENDPOINTS:
        assert check_endpoint(url) == url.rstrip("/") and hub_api(url).endpoint == url.rstrip("/")
    def never():
        raise AssertionError("called")

    for url in BAD_ENDPOINTS:
        with pytest.raises(HubUnavailableError, match="is not a Hub address.*http\\(s\\)://HOST"):
            check_endpoint(url)
        if url is None:  # None means HF_ENDPOINT below
            continue
        with pytest.raises(HubUnavailableError, match="is not a Hub address"):
            hub_api(url)
        with pytest.raises(HubUnavailableError, match="is not a Hub address"):
            with_retries(never, "x", endpoint=url)
    with pytest.MonkeyPatch.context() as m:  # HF_ENDPOINT as huggingface_hub read it
        m.setattr(constants, "ENDPOINT", "notaurl")
        with pytest.raises(HubUnavailableError, match="HF_ENDPOINT 'notaurl' is not a Hub address"):
            hub_endpoint()
        with pytest.raises(HubUnavailableError, match="HF_ENDPOINT 'notaurl'"):
            with_retries(never, "x")  # what results/share.py's calls go through
    # values that make `import huggingface_hub` itself fail: the CLI refuses them before any command runs
    for url in ("http://[::1", "http://127.0.0.1:99999", "http://h:x"):
        with pytest.raises(HubUnavailableError, match="is not a Hub address"):
            check_endpoint_parses(url)
    for url in ("notaurl", "", None, "http://127.0.0.1:8080"):  # others are refused where the Hub is used
        check_endpoint_parses(url)
    print(f"{len(BAD_ENDPOINTS)} hostile endpoints refused by 3 entry points, {len(GOOD_ENDPOINTS)} good ones kept")


def test_a_dead_endpoint_is_looked_at_not_called_again_and_named():
    """A closed port on 127.0.0.1: after the first refused call, retries only look (one HEAD each) until something
    answers, so pull fails in well under a second with 2 attempts (it took ~25 s with 5: huggingface_hub's retries
    inside ours), naming the endpoint and the fix."""
    import time

    import httpx2
    from helpers import free_port
    from huggingface_hub import HfApi

    from hubcompare.errors import HubUnavailableError
    from hubcompare.hub.client import pull
    from hubcompare.hub.endpoint import endpoint_problem, with_retries

    dead = f"http://127.0.0.1:{free_port()}"
    assert "ConnectError" in endpoint_problem(dead)
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match=f"download alice/x@main: the Hub {dead} did not answer after 2 attempts "
                                                  "in [01] s: nothing answers there .*Connection refused.*hub serve.*HF_ENDPOINT"):
        pull("alice/x", api=HfApi(endpoint=dead), attempts=2)
    assert time.monotonic() - start < 2
    calls = []

    def refused():
        calls.append(1)
        raise httpx2.ConnectError("refused")

    with pytest.raises(HubUnavailableError, match="after 6 attempts"):
        with_retries(refused, "x", attempts=6, base_wait=0.01, endpoint=dead)
    assert len(calls) == 1  # the other five attempts were looks at the endpoint


def test_a_restarted_endpoint_is_called_again(tmp_path):
    """The endpoint comes back while retries look at it (a server restarted): the call is made again and succeeds."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx2
    from helpers import free_port

    from hubcompare.hub.endpoint import with_retries

    port = free_port()
    servers, calls = [], []

    class Answers(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    def restart(attempt, error):
        if attempt == 2:  # two looks found nothing; now it is back
            servers.append(ThreadingHTTPServer(("127.0.0.1", port), Answers))
            threading.Thread(target=servers[-1].serve_forever, daemon=True).start()

    def call():
        calls.append(1)
        if not servers:
            raise httpx2.ConnectError("refused")
        return "answered"

    try:
        assert with_retries(call, "x", attempts=6, base_wait=0.02, endpoint=f"http://127.0.0.1:{port}", on_retry=restart) == "answered"
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert len(calls) == 2


def test_retries_stop_after_a_bounded_time_and_say_what_they_wait_for():
    """A Hub that keeps timing out (not refused: the probe finds it up) is retried for ``budget`` seconds, not more."""
    import time

    import httpx2

    from hubcompare.errors import HubUnavailableError
    from hubcompare.hub.endpoint import with_retries

    heard, calls = [], []

    def times_out():
        calls.append(time.monotonic())
        raise httpx2.ReadTimeout("no answer")

    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match=r"list x: the Hub http://127.0.0.1:9 did not answer after \d+ attempts "
                                                  r"in 0 s \(ReadTimeout: no answer\)"):
        with_retries(times_out, "list x", attempts=1000, base_wait=0.02, max_wait=0.05, endpoint="http://127.0.0.1:9",
                     budget=0.4, on_retry=lambda n, e: heard.append((n, type(e).__name__)))
    assert time.monotonic() - start < 1.0 and 5 < len(calls) < 40
    assert heard == [(n, "ReadTimeout") for n in range(1, len(calls))]
