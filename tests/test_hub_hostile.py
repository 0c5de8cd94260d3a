"""Hostile requests against a running Hub server (issue #16): every endpoint and identifier field, bodies short,
long and garbage, slow clients, concurrent writers, storage failures, kill -9 under load then restart.

After each request (after each phase for slow clients, concurrent writers and kill -9) the invariant is
checked: nothing outside --data changed (canaries beside it, one of which
looks like a repo), every repo is consistent (refs -> commits -> blobs whose bytes match their oid, a main
branch, nothing half-made or left in scratch), and the server still answers. ``COUNTS`` tallies both.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import http.client
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import free_port

COUNTS = {"requests": 0, "invariants": 0}
BY_TEST: dict[str, tuple[int, int]] = {}
TIMEOUT = 2.0  # the servers' idle timeout here
TOKEN = "hostile-test-token-0123"
ANY = "hf_any_value"  # what a client sends a token-less loopback hub (writes need some Authorization, issue #23)
CLI = str(Path(sys.executable).parent / "hubcompare")


# --- the invariant ----------------------------------------------------------------------------
class Sandbox:
    """``root/data`` is --data; everything else under ``root`` is a canary that must never change."""

    def __init__(self, root: Path):
        self.root, self.data, self.outside = root, root / "data", root / "outside"
        (self.outside / "victim" / "prey").mkdir(parents=True)
        (self.outside / "victim" / "prey" / "refs.json").write_text('{"branches": {}, "tags": {}}')  # looks like a repo
        (self.outside / "victim" / "keep.txt").write_text("keep")
        self.before = self.snapshot()
        self._verified: set = set()

    def snapshot(self) -> dict:
        out = {}
        for dirpath, dirs, files in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirs[:] = [d for d in dirs if d != "data"]
            for n in dirs + files:
                p = Path(dirpath) / n
                out[str(p.relative_to(self.root))] = (p.lstat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
        return out

    def consistent(self) -> None:
        assert {p.name for p in self.data.iterdir()} <= {"repos", "collections", ".scratch", "quarantine"}
        assert not list((self.data / ".scratch").glob("*")), "a staged creation or deletion was left behind"
        for d in sorted(self.data.glob("repos/*/*/*")):
            refs = json.loads((d / "refs.json").read_text())
            json.loads((d / "repo.json").read_text())
            assert "main" in refs["branches"], f"{d} has no main"
            todo, seen = [*refs["branches"].values(), *refs["tags"].values()], set()
            while todo:
                sha = todo.pop()
                if sha in seen:
                    continue
                seen.add(sha)
                c = json.loads((d / "commits" / f"{sha}.json").read_text())
                assert c["id"] == sha
                todo += c["parents"]
                for path, f in c["files"].items():
                    assert path and ".." not in path.split("/") and not path.startswith("/") and "\\" not in path
                    blob = d / "objects" / f["oid"][:2] / f["oid"]
                    if (blob, f["oid"]) not in self._verified:
                        data = blob.read_bytes()
                        assert len(data) == f["size"] and hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == f["oid"]
                        self._verified.add((blob, f["oid"]))
        for p in self.data.glob("collections/*/*.json"):
            assert json.loads(p.read_text())["slug"] == f"{p.parent.name}/{p.stem}"

    def check(self, port: int, token: str | None = None) -> None:
        assert self.snapshot() == self.before, "something outside --data changed"
        self.consistent()
        assert req(port, "GET", "/api/whoami-v2", auth=token, count=False).status == 200
        COUNTS["invariants"] += 1


# --- raw HTTP ---------------------------------------------------------------------------------
class Answer:
    def __init__(self, status: int, headers: list, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str):
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def send(port: int, raw: bytes, method: str = "GET", timeout: float = 20.0, count: bool = True) -> Answer:
    COUNTS["requests"] += count
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        resp = http.client.HTTPResponse(s, method=method)
        resp.begin()
        return Answer(resp.status, resp.getheaders(), resp.read())


def head_bytes(port, method, path, headers, auth=ANY) -> bytes:
    h = {"Host": f"127.0.0.1:{port}", "Connection": "close", **({"Authorization": f"Bearer {auth}"} if auth else {}), **headers}
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode("latin-1")


def req(port, method, path, body=b"", headers=None, auth=ANY, count=True) -> Answer:
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    h = {"Content-Length": str(len(body)), "Content-Type": "application/json", **(headers or {})}
    return send(port, head_bytes(port, method, path, h, auth) + body, method, count=count)


def add(path, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}


def ndjson(*ops, summary="s", parent=None) -> bytes:
    header = {"summary": summary, "description": "", **({"parentCommit": parent} if parent else {})}
    return b"".join(json.dumps(x).encode() + b"\n" for x in [{"key": "header", "value": header}, *ops])


def refused(a: Answer, *statuses: int) -> None:
    """An error answer in the Hub's form: the status, X-Error-Message, and no header a request smuggled in."""
    assert a.status in (statuses or (400,)), (a.status, a.body[:300])
    assert a.header("X-Error-Message"), a.headers
    assert not any(k.lower() == "injected" for k, _ in a.headers)


def head(sb: Sandbox, repo="own/base") -> str:
    return json.loads((sb.data / "repos" / "models" / repo / "refs.json").read_text())["branches"]["main"]


@pytest.fixture(autouse=True)
def _tally(request):
    before = dict(COUNTS)
    yield
    BY_TEST[request.node.name] = (COUNTS["requests"] - before["requests"], COUNTS["invariants"] - before["invariants"])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A sandbox and an in-process server on it, with own/base (two commits, a tag) and a collection."""
    from hubcompare.hub.server import HubServer

    sb = Sandbox(tmp_path_factory.mktemp("hostile"))
    log: list[str] = []
    with HubServer(sb.data, timeout=TIMEOUT, log=log.append) as server:
        port = server.port
        assert req(port, "POST", "/api/repos/create", {"name": "base", "organization": "own"}).status == 200
        assert req(port, "POST", "/api/models/own/base/commit/main", ndjson(add("config.json", b"{}"))).status == 200
        assert req(port, "POST", "/api/models/own/base/tag/main", {"tag": "v1"}).status == 200
        c = json.loads(req(port, "POST", "/api/collections", {"namespace": "own", "title": "Pop"}).body)
        item = json.loads(req(port, "POST", f"/api/collections/{c['slug']}/items", {"item": {"id": "own/base", "type": "model"}}).body)
        sb.check(port)
        yield sb, server, log, c["slug"], item["items"][0]["_id"]


EVIL_NAMES = ["../..", "../../outside/victim", "../../../outside/victim", "..", ".", "a/../../b", "a\x00b", "a\r\nInjected: yes", "a\\..\\b",
              "ünï", "x" * 300, "-lead", "trail-", "a--b", "a..b", "%2e%2e", " s ", "a/b", "\ud800"]
EVIL_PATHS = ["../x", "a/../../x", "/etc/passwd", "a\\b", "a\x00b", "a\r\nInjected: yes", "", ".", "a//b", "./a",
              ".git/config", "a/.cache/x", "x/", "a" * 300, "\ud800", "..\\..\\x"]
EVIL_REVS = ["..", "a/../b", "/main", "main/", "ma in", "a\x00", "a\r\nInjected: yes", "~1", "a^", "a:b", "a?", "a*",
             "a[", "a\\b", "@{-1}", ".hidden", "x.lock", "-x", "x" * 300, "a//b"]
NON_STRINGS = [1, 1.5, True, [], {}, ["x"]]


@pytest.mark.slow  # fuzzing every field (~3 s)
def test_every_identifier_field_of_every_body(env):
    sb, server, _, slug, item_id = env
    port, victim, base = server.port, str(sb.outside / "victim"), "/api/models/own/base"
    cases = []
    for v in [*EVIL_NAMES, victim, *NON_STRINGS]:
        cases += [("POST", "/api/repos/create", {"name": "ok", "organization": v}),
                  ("POST", "/api/repos/create", {"name": v}),
                  ("DELETE", "/api/repos/delete", {"name": "prey", "organization": v}),
                  ("DELETE", "/api/repos/delete", {"name": v, "organization": "own"}),
                  ("POST", "/api/collections", {"namespace": v, "title": "t"}),
                  ("POST", f"/api/collections/{slug}/items", {"item": {"id": f"own/{v}" if isinstance(v, str) else v, "type": "model"}})]
    for v in [*EVIL_PATHS, *NON_STRINGS]:
        cases += [("POST", f"{base}/preupload/main", {"files": [{"path": v, "size": 1, "sample": ""}]}),
                  ("POST", f"{base}/commit/main", ndjson(add("ok.txt", b"ok"), {"key": "file", "value": {
                      "path": v, "content": "aGk=", "encoding": "base64"}})),
                  ("POST", f"{base}/commit/main", ndjson({"key": "deletedFile", "value": {"path": v}}))]
        if v != "x/":  # a folder path may end in '/'
            cases += [("POST", f"{base}/commit/main", ndjson({"key": "deletedFolder", "value": {"path": v}})),
                      ("POST", f"{base}/paths-info/main", {"paths": [v]})]
    for v in [*EVIL_REVS, *NON_STRINGS]:
        cases += [("POST", f"{base}/branch/dev", {"startingPoint": v}), ("POST", f"{base}/tag/main", {"tag": v})]
    for v in ["yes", 1, "x" * 10, [], 2.5]:
        cases += [("POST", "/api/repos/create", {"name": "ok", "private": v}),
                  ("POST", "/api/repos/create", {"name": "ok", "type": v}),
                  ("PUT", f"{base}/settings", {"private": v}),
                  ("PATCH", f"/api/collections/{slug}", {"private": v}),
                  ("PATCH", f"/api/collections/{slug}", {"theme": v}),
                  ("PATCH", f"/api/collections/{slug}", {"position": v if v != 1 else -1}),
                  ("POST", f"/api/collections/{slug}/items", {"item": {"id": "own/base", "type": v}}),
                  ("POST", f"/api/collections/{slug}/items", {"item": "own/base", "note": v})]
    for v in [1, "", "   ", "x" * 1000, [], {}]:
        cases += [("POST", "/api/collections", {"title": v}), ("PATCH", f"/api/collections/{slug}", {"title": v})]
    for v in [1, [], {}, "x" * 6000, True]:
        cases.append(("POST", f"/api/collections/{slug}/items", {"item": {"id": "own/base", "type": "model"}, "note": v}))
    for v in [99, -1, "x", True, 1.5]:
        cases.append(("PATCH", f"/api/collections/{slug}/items/{item_id}", {"position": v}))
    bad_b64 = ["!!!", "aGk", "aGk=\n", "é", 5]
    cases += [("POST", f"{base}/commit/main", ndjson(add("a.txt", b"a"), {"key": "file", "value": {
        "path": "b.txt", "content": c, "encoding": "base64"}})) for c in bad_b64]
    cases += [("POST", f"{base}/commit/main", body) for body in [
        ndjson(add("a.txt", b"a"), summary=1), ndjson(add("a.txt", b"a"), parent="../x"), ndjson(add("a.txt", b"a"), parent="1" * 40),
        ndjson(add("a.txt", b"a"), {"key": "lfsFile", "value": {"path": "w.bin"}}), ndjson({"key": "nope", "value": {}}),
        ndjson(add("a.txt", b"a"), {"key": "header", "value": {}}), ndjson(add("a.txt", b"a"), {"key": "deletedFile", "value": {"path": "no"}}),
        json.dumps(add("a.txt", b"a")).encode(), b'{"key": "header", "value": []}', b"[1]\n", b"{not json\n"]]
    cases += [("POST", f"{base}/paths-info/main", b"paths=\xff\xfe", {"Content-Type": "application/x-www-form-urlencoded"}),
              ("POST", "/api/validate-yaml", {"content": 1})]
    before = head(sb)
    for method, path, body, *hdrs in cases:
        a = req(port, method, path, body, *hdrs)
        try:
            refused(a, 400, 404, 412)
        except AssertionError as e:
            raise AssertionError(f"{method} {path} {body!r:.300}") from e
        assert head(sb) == before and "ok.txt" not in json.dumps(json.loads(req(port, "GET", base, count=False).body))
        sb.check(port)
    assert len(cases) > 300


@pytest.mark.slow  # fuzzing URLs (~3 s)
def test_every_identifier_in_a_url(env):
    sb, server, _, slug, item_id = env
    port = server.port
    templates = ["GET /api/models/{r}", "GET /api/models/own/base/revision/{v}", "GET /api/models/own/base/tree/{v}",
                 "GET /api/models/own/base/tree/main/{p}", "GET /api/models/own/base/commits/{v}", "GET /api/models/{r}/refs",
                 "HEAD /own/base/resolve/{v}/config.json", "GET /own/base/resolve/main/{p}", "GET /{r}/resolve/main/config.json",
                 "POST /api/models/own/base/preupload/{v}", "POST /api/models/own/base/commit/{v}", "POST /api/models/own/base/paths-info/{v}",
                 "POST /api/models/own/base/branch/{v}", "DELETE /api/models/own/base/branch/{v}", "POST /api/models/own/base/tag/{v}",
                 "DELETE /api/models/own/base/tag/{v}", "PUT /api/models/{r}/settings", "GET /api/collections/{s}",
                 "PATCH /api/collections/{s}", "DELETE /api/collections/{s}", "POST /api/collections/{s}/items",
                 f"PATCH /api/collections/{slug}/items/{{i}}", f"DELETE /api/collections/{slug}/items/{{i}}", "GET /api/{t}"]
    kinds = {"{r}": EVIL_NAMES, "{s}": EVIL_NAMES, "{i}": EVIL_NAMES, "{t}": EVIL_NAMES, "{v}": EVIL_REVS, "{p}": EVIL_PATHS}
    before = head(sb)
    for template in templates:
        method, path = template.split(" ")
        values = next(vs for k, vs in kinds.items() if k in path)
        for v in values:
            if v == "\ud800":
                continue  # unquoting turns it into U+FFFD, a legal character
            for quoted in {quote(v, safe=""), quote(v, safe="/")}:
                url = path.format(r=f"own/{quoted}", v=quoted, p=quoted, s=f"own/{quoted}", i=quoted, t=quoted)
                body = ndjson(add("u.txt", b"u")) if "/commit/" in url else b"{}"
                a = req(port, method, url, body)
                refused(a, 400, 404)
                assert head(sb) == before
                sb.check(port)


def test_nothing_reaches_a_header_unescaped(env):
    sb, server, _, _, _ = env
    port = server.port
    for url in ["/api/models/own/base/revision/main%0d%0aInjected:%20yes", "/own/base/resolve/main/a%0d%0aInjected:%20yes",
                "/own/base/resolve/main/%C3%BCber%0d.txt", "/api/models/own/x%0aInjected:%20yes"]:
        a = req(port, "GET", url)
        refused(a, 400, 404)
        assert all(ord(c) < 127 and c not in "\r\n" for _, v in a.headers for c in v)
        sb.check(port)
    weird = 'q"uote é;\u202e.txt'
    assert req(port, "POST", "/api/models/own/base/commit/main", ndjson(add(weird, b"w"))).status == 200
    a = req(port, "HEAD", f"/own/base/resolve/main/{quote(weird)}")
    assert a.status == 200 and a.header("X-Repo-Commit") == head(sb)
    assert a.header("Content-Disposition") == "inline; filename=\"q_uote____.txt\"; filename*=UTF-8''q%22uote%20%C3%A9%3B%E2%80%AE.txt"
    sb.check(port)


@pytest.mark.slow  # fuzzing bodies (~3 s)
def test_bodies_short_long_and_garbage(env):
    sb, server, _, slug, _ = env
    port, base = server.port, "/api/models/own/base"
    before = head(sb)
    for length in ["-1", "abc", "1e3", " ", "0x10", "+5", "\xb2", "1" * 40]:
        refused(send(port, head_bytes(port, "POST", f"{base}/commit/main", {"Content-Length": length}) + b"{}"), 400, 413)
        sb.check(port)
    refused(send(port, head_bytes(port, "POST", "/api/repos/create", {"Content-Length": "2", "content-length": "3"}) + b"{}"))
    t0 = time.monotonic()
    refused(send(port, head_bytes(port, "POST", f"{base}/commit/main", {"Content-Length": str(10**15)})), 413)
    refused(send(port, head_bytes(port, "POST", "/api/repos/create", {"Transfer-Encoding": "chunked"}) + b"2\r\n{}\r\n0\r\n\r\n"), 411)
    assert time.monotonic() - t0 < TIMEOUT  # answered at once, no thread pinned
    # a commit cut short after its config.json line: refused whole, whether the client hangs up or stalls
    body = ndjson(add("cut/config.json", b"{}"), add("cut/weights.bin", os.urandom(50_000)))
    cut = body[:body.index(b"\n", body.index(b"cut/config.json")) + 1]
    for hang_up in (True, False):
        COUNTS["requests"] += 1
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head_bytes(port, "POST", f"{base}/commit/main", {"Content-Length": str(len(body))}) + cut)
            if hang_up:
                s.shutdown(socket.SHUT_WR)
            resp = http.client.HTTPResponse(s, method="POST")
            resp.begin()
            refused(Answer(resp.status, resp.getheaders(), resp.read()), 400 if hang_up else 408)
        assert head(sb) == before
        sb.check(port)
    # more bytes than Content-Length: the rest is read as the next request, which is refused on its own
    COUNTS["requests"] += 2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head_bytes(port, "GET", "/api/whoami-v2", {"Connection": "keep-alive", "Content-Length": "0"})
                  + b"\x16\x03\x01 not http at all\r\n\r\n")
        got = b"".join(iter(lambda: s.recv(65536), b""))
    assert got.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 400" in got and b"X-Error-Message" in got
    rng = random.Random(16)
    garbage = [rng.randbytes(300), b"\xff\xfe\x00", b"[" * 100_000, b"null", b"[]", b'"s"', b"{", b"1e999999", b"9" * 5000]
    posts = [("POST", "/api/repos/create"), ("DELETE", "/api/repos/delete"), ("POST", "/api/collections"),
             ("PATCH", f"/api/collections/{slug}"), ("POST", f"/api/collections/{slug}/items"), ("POST", f"{base}/preupload/main"),
             ("POST", f"{base}/commit/main"), ("POST", f"{base}/branch/dev"), ("POST", f"{base}/tag/main"),
             ("PUT", f"{base}/settings"), ("POST", "/api/validate-yaml"), ("POST", f"{base}/paths-info/main")]
    for method, path in posts:
        for g in garbage:
            a = req(port, method, path, g, {"Content-Type": "application/json"})
            assert a.status in (400, 404), (method, path, g[:20], a.status, a.body[:200])
            refused(a, a.status)
            sb.check(port)
    for raw in [b"GARBAGE\r\n\r\n", b"OPTIONS /api/whoami-v2 HTTP/1.1\r\n\r\n", b"GET /" + b"a" * 66_000 + b" HTTP/1.1\r\n\r\n",
                b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"GET /api/whoami-v2 HTTP/9.9\r\n\r\n"]:
        try:
            refused(send(port, raw), 400, 414, 431, 501, 505)
        except ConnectionResetError:
            pass  # the server closed with the rest of an over-long line unread; the check below shows it still answers
        sb.check(port)
    assert head(sb) == before


@pytest.mark.slow  # slow clients held open (~2 s)
def test_slow_clients_neither_pin_threads_nor_block_writers(env):
    sb, server, _, slug, _ = env
    port = server.port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]  # never send a byte
    half = socket.create_connection(("127.0.0.1", port))  # a PATCH that stalls mid-body
    half.sendall(head_bytes(port, "PATCH", f"/api/collections/{slug}", {"Content-Length": "100"}) + b'{"title": "hij')
    drip = socket.create_connection(("127.0.0.1", port))  # one byte at a time, never idle long enough to time out
    drip.sendall(head_bytes(port, "PATCH", f"/api/collections/{slug}", {"Content-Length": "100"}))
    try:
        time.sleep(0.1)
        for method, path, body in [("PATCH", f"/api/collections/{slug}", {"description": "fast"}),
                                   ("POST", "/api/collections", {"namespace": "own", "title": "Other"}),
                                   ("POST", "/api/repos/create", {"name": "during-slow", "organization": "own"}),
                                   ("POST", "/api/models/own/base/commit/main", ndjson(add("during.txt", b"d")))]:
            t0 = time.monotonic()
            assert req(port, method, path, body).status == 200
            assert time.monotonic() - t0 < TIMEOUT / 2, f"{method} {path} waited for the slow client"
            drip.send(b" ")
        deadline = time.monotonic() + 3 * TIMEOUT
        while time.monotonic() < deadline and not select.select([drip], [], [], TIMEOUT / 4)[0]:
            drip.send(b" ")
        for s, status in [(half, b"408"), (drip, b"408")]:
            s.settimeout(3 * TIMEOUT)
            assert s.recv(200).split(b" ")[1] == status
        for s in idle:
            s.settimeout(3 * TIMEOUT)
            assert s.recv(10) == b""  # closed by the server
        COUNTS["requests"] += len(idle) + 2
    finally:
        for s in [*idle, half, drip]:
            s.close()
    c = json.loads(req(port, "GET", f"/api/collections/{slug}").body)
    assert c["title"] == "Pop" and c["description"] == "fast"
    sb.check(port)


# --- issue #23: web pages, DNS rebinding, slow clients -------------------------------------------
def data_state(sb: Sandbox) -> dict:
    """Every path under --data with its bytes: a refused request changes none of it."""
    return {str(p.relative_to(sb.data)): p.read_bytes() if p.is_file() else None for p in sorted(sb.data.rglob("*"))}


def test_web_pages_and_rebinding_pages_cannot_write(tmp_path):
    """A token-less loopback hub: every write route, as a cross-site form/fetch, without Authorization, and
    from a DNS-rebinding page (Host naming the attacker's host), is refused and --data is unchanged."""
    from hubcompare.hub.server import HubServer

    sb = Sandbox(tmp_path)
    with HubServer(sb.data, timeout=TIMEOUT) as server:
        port = server.port
        assert req(port, "POST", "/api/repos/create", {"name": "base", "organization": "own"}).status == 200
        assert req(port, "POST", "/api/models/own/base/commit/main", ndjson(add("config.json", b"{}"))).status == 200
        c = json.loads(req(port, "POST", "/api/collections", {"namespace": "own", "title": "Pop"}).body)
        item = json.loads(req(port, "POST", f"/api/collections/{c['slug']}/items", {"item": {"id": "own/base", "type": "model"}}).body)
        slug, item_id, base = c["slug"], item["items"][0]["_id"], "/api/models/own/base"
        writes = [("POST", "/api/repos/create", {"name": "pwned", "organization": "own"}),
                  ("DELETE", "/api/repos/delete", {"name": "base", "organization": "own"}),
                  ("PUT", f"{base}/settings", {"private": True}),
                  ("POST", f"{base}/preupload/main", {"files": [{"path": "x.txt", "size": 1, "sample": ""}]}),
                  ("POST", f"{base}/commit/main", ndjson(add("pwned.txt", b"p"))),
                  ("POST", f"{base}/branch/pwned", {}), ("DELETE", f"{base}/branch/main", {}),
                  ("POST", f"{base}/tag/main", {"tag": "pwned"}),
                  ("POST", "/api/collections", {"namespace": "own", "title": "Pwned"}),
                  ("PATCH", f"/api/collections/{slug}", {"title": "pwned"}),
                  ("DELETE", f"/api/collections/{slug}", {}),
                  ("POST", f"/api/collections/{slug}/items", {"item": {"id": "own/pwned", "type": "model"}}),
                  ("PATCH", f"/api/collections/{slug}/items/{item_id}", {"note": "pwned"}),
                  ("DELETE", f"/api/collections/{slug}/items/{item_id}", {})]
        evil = "http://evil.example"
        shapes = [  # (headers, auth, status): what a page can make a browser send
            ({"Content-Type": "text/plain", "Origin": evil}, None, 403),  # cross-site form/fetch: no preflight needed
            ({"Content-Type": "text/plain", "Origin": "null"}, None, 403),  # sandboxed iframe, file://
            ({"Origin": evil}, ANY, 403),  # even with a token (a browser could not add one cross-site)
            ({"Origin": f"http://localhost:{port}"}, ANY, 403),  # another origin on this machine
            ({"Content-Type": "text/plain"}, None, 401),  # no Origin (an old browser): still no Authorization
            ({"Authorization": "Basic dTpw"}, None, 401),  # cached Basic credentials are not a Bearer token
            ({"Authorization": "Bearer "}, None, 401),
            ({"Host": f"rebind.evil.example:{port}", "Origin": f"http://rebind.evil.example:{port}"}, ANY, 421),  # rebinding
            ({"Host": f"rebind.evil.example:{port}"}, ANY, 421),
            ({"Host": f"127.0.0.1.nip.io:{port}"}, ANY, 421), ({"Host": f"localhost.evil.example:{port}"}, ANY, 421),
            ({"Host": "127.0.0.1"}, ANY, 421), ({"Host": f"127.0.0.1:{port + 1}"}, ANY, 421),  # not this server's port
            ({"Host": f"2130706433:{port}"}, ANY, 421), ({"Host": f"127.1:{port}"}, ANY, 421),  # never resolved
        ]
        before = data_state(sb)
        for method, path, body in writes:
            for headers, auth, status in shapes:
                a = req(port, method, path, body, headers, auth=auth)
                try:
                    refused(a, status)
                    assert not any(k.lower().startswith("access-control-") for k, _ in a.headers)
                except AssertionError as e:
                    raise AssertionError(f"{method} {path} {headers} auth={auth}") from e
            assert data_state(sb) == before, f"{method} {path} changed --data"
        two_hosts = head_bytes(port, "DELETE", "/api/repos/delete", {"Host": f"rebind.evil.example:{port}", "Content-Length": "39"})
        no_host = b"DELETE /api/repos/delete HTTP/1.1\r\nAuthorization: Bearer x\r\nConnection: close\r\nContent-Length: 39\r\n\r\n"
        for raw in [two_hosts, no_host]:
            refused(send(port, raw + b'{"name": "base", "organization": "own"}'), 421)
        refused(req(port, "GET", "/api/models", headers={"Origin": evil}), 403)  # reads from pages too
        refused(send(port, b"OPTIONS /api/repos/create HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: %s\r\n"
                     b"Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"
                     % (port, evil.encode())), 501)  # the preflight a page would need is never granted
        assert data_state(sb) == before
        sb.check(port)
        for host in [f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"127.0.0.2:{port}"]:
            a = req(port, "POST", "/api/collections", {"namespace": "own", "title": f"ok {host}"},
                    {"Host": host, "Origin": f"http://{host}"})  # an API client, or this hub's own origin
            assert a.status == 200, (host, a.body)
        assert req(port, "POST", f"{base}/paths-info/main", {"paths": ["config.json"]}, auth=None).status == 200  # reads: no token
        sb.check(port)
    assert len(writes) * len(shapes) > 200


def test_the_real_client_passes_the_trust_checks(tmp_path):
    """huggingface_hub sends Host 127.0.0.1:PORT, no Origin, and a Bearer token on every call."""
    from huggingface_hub import HfApi

    from hubcompare.hub.server import HubServer

    with HubServer(tmp_path / "data", timeout=TIMEOUT) as server:
        seen, base = [], server.httpd.RequestHandlerClass

        class Seen(base):
            def _dispatch(self, method):
                seen.append((method, self.headers.get_all("Host"), self.headers.get("Origin"), self.headers.get("Authorization")))
                return super()._dispatch(method)

        server.httpd.RequestHandlerClass = Seen
        api = HfApi(endpoint=server.endpoint, token="hf_local")
        api.create_repo("own/client")
        api.upload_file(path_or_fileobj=b"hi", path_in_repo="a.txt", repo_id="own/client")
        assert api.list_repo_files("own/client") == [".gitattributes", "a.txt"]
        api.delete_repo("own/client")
    assert len(seen) >= 5 and {m for m, *_ in seen} >= {"GET", "POST", "DELETE"}
    assert all(h == [f"127.0.0.1:{server.port}"] and o is None and a == "Bearer hf_local" for _, h, o, a in seen), seen


def test_every_request_has_a_whole_request_deadline(tmp_path):
    """A head dripped a byte at a time, and a body below the minimum rate, are cut off (408) at their deadline
    however steadily they drip; an upload above the rate may take longer than ``timeout`` and succeeds."""
    from hubcompare.hub.server import HubServer

    sb = Sandbox(tmp_path)
    with HubServer(sb.data, timeout=0.3) as server:
        port, rate = server.port, 64 * 1024
        server.httpd.RequestHandlerClass.min_upload_rate = rate
        assert req(port, "POST", "/api/repos/create", {"name": "up", "organization": "own"}).status == 200
        fast = ndjson(add("fast.bin", os.urandom(48 * 1024)))  # 64 KiB of NDJSON: deadline 0.3 + 1 s
        slow = ndjson(add("slow.bin", os.urandom(12 * 1024)))  # 16 KiB: deadline 0.3 + 0.25 s
        results = {}

        def drip(name, head, body, step, every, limit):
            """Send ``head`` + ``body`` ``step`` bytes every ``every`` s (at most ``limit`` s), then read the answer."""
            COUNTS["requests"] += 1
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                t0, data = time.monotonic(), head + body
                for i in range(0, len(data), step):
                    if time.monotonic() - t0 > limit or select.select([s], [], [], 0)[0]:
                        break  # answered (or cut off) early
                    try:
                        s.sendall(data[i:i + step])
                    except OSError:
                        break
                    time.sleep(every)
                resp = http.client.HTTPResponse(s, method="POST")
                try:
                    resp.begin()
                    results[name] = (resp.status, resp.getheader("X-Error-Message"), time.monotonic() - t0)
                except (OSError, http.client.HTTPException) as e:
                    results[name] = (type(e).__name__, None, time.monotonic() - t0)

        commit = "/api/models/own/up/commit/main"
        runs = [("head", head_bytes(port, "GET", "/api/whoami-v2", {}), b"", 1, 0.02, 2.0),  # 50 B/s, never idle 0.3 s
                ("below", head_bytes(port, "POST", commit, {"Content-Length": str(len(slow))}), slow, 1024, 0.125, 2.0),  # 8 KiB/s
                ("above", head_bytes(port, "POST", commit, {"Content-Length": str(len(fast))}), fast, 8192, 0.06, 3.0)]  # 133 KiB/s
        threads = [threading.Thread(target=drip, args=r) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        status, message, took = results["head"]
        assert status == 408 and "head" in message and 0.25 < took < 1.5, results["head"]
        status, message, took = results["below"]
        assert status == 408 and "send it faster" in message and 0.45 < took < 1.5, results["below"]
        status, _, took = results["above"]
        assert status == 200 and took > 0.3, results["above"]  # longer than timeout: its body earned the time
        files = [f["path"] for f in json.loads(req(port, "GET", "/api/models/own/up/tree/main").body)]
        assert "fast.bin" in files and "slow.bin" not in files
        sb.check(port)


def test_a_full_server_drops_its_slowest_connection_not_a_new_one(tmp_path):
    """8 slots held by heads that never end (refilled as they go): each normal request takes the slot of the
    oldest of them, which is answered 503 in the Hub's form; a body arriving on pace is never the one dropped."""
    from hubcompare.hub.server import HubServer

    sb = Sandbox(tmp_path)
    with HubServer(sb.data, timeout=30.0) as server:
        port = server.port
        server.httpd.max_connections = 8
        assert req(port, "POST", "/api/repos/create", {"name": "steady", "organization": "own"}).status == 200
        steady = socket.create_connection(("127.0.0.1", port), timeout=5)  # the oldest, but its body keeps coming
        body = ndjson(add("steady.bin", os.urandom(30_000)))
        steady.sendall(head_bytes(port, "POST", "/api/models/own/steady/commit/main", {"Content-Length": str(len(body))})
                       + body[:20_000])
        slow = []

        def open_slow():
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(head_bytes(port, "GET", "/api/whoami-v2", {})[:-2] + b"X-Slow: ")
            slow.append(s)
            COUNTS["requests"] += 1
            time.sleep(0.02)

        for _ in range(7):
            open_slow()
        time.sleep(0.1)
        try:
            for i in range(5):
                t0 = time.monotonic()
                assert req(port, "POST", "/api/collections", {"namespace": "own", "title": f"n{i}"}).status == 200
                assert time.monotonic() - t0 < 1.0
                a = http.client.HTTPResponse(slow[i], method="GET")
                a.begin()  # the oldest slow head was dropped, with an answer
                refused(Answer(a.status, a.getheaders(), a.read()), 503)
                assert "send requests whole" in a.getheader("X-Error-Message")
                assert not select.select(slow[i + 1:], [], [], 0)[0]  # the younger ones still wait
                open_slow()  # full again
            steady.sendall(body[20_000:])
            a = http.client.HTTPResponse(steady, method="POST")
            a.begin()
            assert a.status == 200, a.read()
            assert {"rfilename": "steady.bin"} in json.loads(req(port, "GET", "/api/models/own/steady").body)["siblings"]
        finally:
            for s in [steady, *slow]:
                s.close()
        sb.check(port)


class SlowClients:
    """``n`` connections to 127.0.0.1:``port`` that each send a byte about every ``every`` s, in three kinds: heads
    that never end, bodies that never end, and connections that send nothing. One thread, for at most ``limit``
    s; a connection the server drops is reopened (what a determined attacker does)."""

    def __init__(self, port: int, n: int, every: float = 1.0, limit: float = 8.0):
        self.port, self.n, self.every, self.limit = port, n, every, limit
        self.socks: list = [None] * n
        self.opened = self.dropped = self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _open(self, i: int):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        kind = i % 5
        if kind < 3:  # a head that never ends
            s.sendall(head_bytes(self.port, "GET", "/api/whoami-v2", {})[:-2] + b"X-Slow: ")
        elif kind == 3:  # a body that never ends
            s.sendall(head_bytes(self.port, "POST", "/api/collections", {"Content-Length": "1000"}) + b"{")
        self.opened += 1
        COUNTS["requests"] += 1
        return s

    def _run(self):
        deadline = time.monotonic() + self.limit
        for i in range(self.n):
            self.socks[i] = self._open(i)
        while not self.stop.is_set() and time.monotonic() < deadline:
            for i, s in enumerate(self.socks):
                if select.select([s], [], [], 0)[0]:  # answered (503/408) or closed by the server: reopen
                    s.close()
                    self.dropped += 1
                    try:
                        self.socks[i] = self._open(i)
                    except OSError:
                        pass
                elif i % 5 != 4:
                    try:
                        s.send(b"a")
                        self.sent += 1
                    except OSError:
                        pass
            self.stop.wait(self.every)
        for s in self.socks:
            s.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


@pytest.mark.slow  # 300 slow clients held for ~6 s
def test_hundreds_of_slow_clients_do_not_lock_out_a_normal_one(tmp_path):
    """300 slow connections (more than the 256 slots) that each send a byte a second, on a server whose deadline
    (30 s) is far away: a normal client's reads and writes, raw and through huggingface_hub, are each served
    within 1.5 s, and an upload that keeps above the minimum rate is never dropped to make room."""
    from huggingface_hub import HfApi

    from hubcompare.hub.server import HubServer

    sb = Sandbox(tmp_path)
    with HubServer(sb.data, timeout=30.0) as server:
        port, latencies, upload = server.port, [], {}
        api = HfApi(endpoint=server.endpoint, token="hf_local")
        api.create_repo("own/busy")
        steady = ndjson(add("steady.bin", os.urandom(96 * 1024)))  # ~128 KiB sent at ~64 KiB/s (the minimum is 16)

        def steady_upload():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(head_bytes(port, "POST", "/api/models/own/busy/commit/main", {"Content-Length": str(len(steady))}))
                for i in range(0, len(steady), 8192):
                    s.sendall(steady[i:i + 8192])
                    time.sleep(0.125)
                resp = http.client.HTTPResponse(s, method="POST")
                resp.begin()
                upload["status"] = resp.status

        with SlowClients(port, 300) as slow:
            time.sleep(1.5)  # all open, the bodies past their grace second
            uploader = threading.Thread(target=steady_upload)
            uploader.start()
            t_end, n = time.monotonic() + 4.0, 0
            while time.monotonic() < t_end:
                for call in [lambda: req(port, "GET", "/api/whoami-v2"),
                             lambda: req(port, "POST", "/api/models/own/busy/commit/main", ndjson(add(f"n{n}.txt", b"n"))),
                             lambda: api.model_info("own/busy")]:
                    t0 = time.monotonic()
                    a = call()
                    latencies.append(time.monotonic() - t0)
                    assert getattr(a, "status", 200) == 200, (a.status, a.body)
                n += 1
                time.sleep(0.1)
            uploader.join(15)
            assert slow.opened >= 300 and slow.dropped > 0 and slow.thread.is_alive()  # still attacking throughout
        assert upload.get("status") == 200, upload
        assert max(latencies) < 1.5, sorted(latencies)[-5:]
        files = api.list_repo_files("own/busy")
        assert "steady.bin" in files and f"n{n - 1}.txt" in files
        sb.check(port)
    print(f"\n{len(latencies)} normal calls under 300 slow clients: max {max(latencies):.3f} s, "
          f"median {sorted(latencies)[len(latencies) // 2]:.3f} s; {slow.opened} slow connections opened, {slow.dropped} dropped")


@pytest.mark.slow  # a 64 MiB upload through huggingface_hub (~5 s)
def test_a_large_upload_fits_its_deadline(tmp_path):
    """The deadline grows with the body (1 s per 16 KiB past ``timeout``): a 64 MiB file (85 MiB of base64
    NDJSON) uploads through the real client on a server whose timeout is 1 s."""
    from huggingface_hub import HfApi

    from hubcompare.hub.server import HubServer

    data = os.urandom(64 << 20)
    with HubServer(tmp_path / "data", timeout=1.0) as server:
        api = HfApi(endpoint=server.endpoint, token="hf_local")
        api.create_repo("own/large")
        t0 = time.monotonic()
        api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id="own/large")
        took = time.monotonic() - t0
        info = {f.path: f.size for f in api.list_repo_tree("own/large")}
    assert info["w.bin"] == len(data) and took > 1.0  # longer than timeout, within its deadline


def test_concurrent_writers_lose_nothing(env):
    sb, server, _, slug, _ = env
    port, acked, errors = server.port, [], []

    def writer(i):
        try:
            for j in range(8):
                parent = head(sb, "own/conc") if j % 2 else None
                a = req(port, "POST", "/api/models/own/conc/commit/main", ndjson(add(f"w{i}/{j}.txt", b"%d" % j), parent=parent))
                assert a.status in (200, 412), a.body
                if a.status == 200:
                    acked.append(json.loads(a.body)["commitOid"])
                a = req(port, "POST", f"/api/collections/{slug}/items", {"item": {"id": f"own/i{i}-{j}", "type": "model"}})
                assert a.status == 200, a.body
        except BaseException as e:  # reported below
            errors.append(e)

    def flipper():
        try:
            for _ in range(8):
                assert req(port, "POST", "/api/repos/create", {"name": "flip", "organization": "own"}).status in (200, 409)
                assert req(port, "DELETE", "/api/repos/delete", {"name": "flip", "organization": "own"}).status in (200, 404)
        except BaseException as e:  # reported below
            errors.append(e)

    assert req(port, "POST", "/api/repos/create", {"name": "conc", "organization": "own"}).status == 200
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)] + [threading.Thread(target=flipper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    history = {c["id"] for c in json.loads(req(port, "GET", "/api/models/own/conc/commits/main").body)}
    assert set(acked) <= history and len(history) == len(acked) + 1  # every acknowledged commit, in one line
    items = {i["id"] for i in json.loads(req(port, "GET", f"/api/collections/{slug}").body)["items"]}
    assert {f"own/i{i}-{j}" for i in range(6) for j in range(8)} <= items
    sb.check(port)


def test_storage_failures_and_bugs_are_answers_and_one_log_line(env, monkeypatch):
    import hubcompare.hub.store as store

    sb, server, log, _, _ = env
    port = server.port
    before = head(sb)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    for patch, method, path, body, status in [
        (("atomic_write_bytes", full), "POST", "/api/models/own/base/commit/main", ndjson(add("big.bin", b"b" * 100)), 507),
        (("atomic_write_json", read_only), "POST", "/api/repos/create", {"name": "ro", "organization": "own"}, 500),
        (("atomic_write_json", read_only), "POST", "/api/models/own/base/branch/ro", {}, 500),
    ]:
        with monkeypatch.context() as m:
            m.setattr(store, *patch)
            n = len(log)
            a = req(port, method, path, body)
        refused(a, status)
        assert "data folder" in a.header("X-Error-Message")
        lines = log[n:]
        assert len(lines) == 1 and f'"{method} {path} HTTP/1.1" {status}' in lines[0] and "OSError" in lines[0], lines
        sb.check(port)
    with monkeypatch.context() as m:
        m.setattr(store.HubStore, "refs", lambda *a: {}["boom"])
        refused(req(port, "GET", "/api/models/own/base/refs"), 500)
    assert head(sb) == before and req(port, "GET", "/api/models/own/ro").status == 404
    sb.check(port)


def test_half_made_repos_are_repaired_or_set_aside_at_start(tmp_path):
    from hubcompare.hub.server import HubServer

    sb = Sandbox(tmp_path)
    old = sb.data / "repos" / "models" / "old"
    (old / "half").mkdir(parents=True)  # what a crash between create_repo and its first commit left
    (old / "half" / "repo.json").write_text('{"private": false, "createdAt": "2025-01-01T00:00:00.000Z"}')
    (old / "half" / "refs.json").write_text('{"branches": {}, "tags": {}}')
    (old / "bare").mkdir()
    (old / "bare" / "repo.json").write_text("{}")
    (old / "bad--name").mkdir()  # a name an older server let through
    (old / "bad--name" / "refs.json").write_text('{"branches": {}, "tags": {}}')
    (sb.data / ".scratch" / "create-x").mkdir(parents=True)
    with HubServer(sb.data, timeout=TIMEOUT) as server:
        notes = server.store.recovered
        assert len(notes) == 3 and "not serving models/old/bad--name" in notes[0]
        assert "set aside half-made repo models/old/bare" in notes[1] and "repaired models/old/half" in notes[2]
        assert [m["id"] for m in json.loads(req(server.port, "GET", "/api/models?author=old").body)] == ["old/half"]
        (old / "bad--name").rename(sb.root / "bad--name")  # the operator moves it away (the invariant wants main everywhere)
        sb.before = sb.snapshot()
        assert json.loads(req(server.port, "GET", "/api/models/old/half").body)["siblings"] == [{"rfilename": ".gitattributes"}]
        refused(req(server.port, "GET", "/api/models/old/bare"), 404)
        assert req(server.port, "POST", "/api/repos/create", {"name": "bare", "organization": "old"}).status == 200
        sb.check(server.port)


def test_tokens_guard_writes_and_private_repos(tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from hubcompare.errors import HubServerConfigError
    from hubcompare.hub.server import HubServer, is_loopback, load_tokens

    (tmp_path / "tokens").write_text(f"# hub tokens\n\n{TOKEN}\n")
    assert load_tokens(tmp_path / "tokens", {"HUBCOMPARE_HUB_TOKENS": "second-token-1, third-token-22"}) == {
        TOKEN, "second-token-1", "third-token-22"}
    assert load_tokens(None, {}) is None
    for bad in ["# only a comment\n", "short\n"]:
        (tmp_path / "bad").write_text(bad)
        with pytest.raises(HubServerConfigError, match="token"):
            load_tokens(tmp_path / "bad", {})
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "localhost", "::1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "", "::", "192.168.1.1", "10.0.0.1"]))
    for host in ["0.0.0.0", ""]:
        with pytest.raises(HubServerConfigError, match="without tokens.*token_file"):
            HubServer(tmp_path / "d", host=host)
    sb = Sandbox(tmp_path / "sb")
    with HubServer(sb.data, tokens=[TOKEN], timeout=TIMEOUT) as server:
        port = server.port
        for auth in [None, "wrong-token-123", TOKEN + "x", f"{TOKEN}\x00"]:
            a = req(port, "POST", "/api/repos/create", {"name": "x", "organization": "own"}, auth=auth)
            refused(a, 401)
            assert "HF_TOKEN" in json.loads(a.body)["error"]
            sb.check(port, TOKEN)
        refused(req(port, "GET", "/api/whoami-v2", auth=None), 401)
        assert req(port, "POST", "/api/repos/create", {"name": "secret", "organization": "own", "private": True}, auth=TOKEN).status == 200
        a = req(port, "GET", "/api/models/own/secret", auth=None)
        refused(a, 401)
        assert a.header("X-Error-Code") == "RepoNotFound"
        refused(req(port, "HEAD", "/own/secret/resolve/main/.gitattributes", auth=None), 401)
        assert req(port, "GET", "/api/models/own/secret", auth=TOKEN).status == 200
        assert json.loads(req(port, "GET", "/api/models?author=own", auth=None).body) == []
        refused(req(port, "POST", "/api/models/own/secret/paths-info/main", {"paths": [".gitattributes"]}, auth=None), 401)
        assert req(port, "POST", "/api/validate-yaml", {"content": "---\na: 1\n---\n"}, auth=None).status == 200  # reads need no token
        assert req(port, "PUT", "/api/models/own/secret/settings", {"private": False}, auth=TOKEN).status == 200
        assert len(json.loads(req(port, "POST", "/api/models/own/secret/paths-info/main", {"paths": [".gitattributes"]},
                                  auth=None).body)) == 1
        api = HfApi(endpoint=server.endpoint, token=TOKEN)
        api.create_repo("own/by-client")
        api.upload_file(path_or_fileobj=b"hi", path_in_repo="a.txt", repo_id="own/by-client")
        assert api.list_repo_files("own/by-client") == [".gitattributes", "a.txt"]
        with pytest.raises(HfHubHTTPError) as e:
            HfApi(endpoint=server.endpoint, token="hf_not_a_valid_token").create_repo("own/nope")
        assert e.value.response.status_code == 401 and "HF_TOKEN" in str(e.value)
        sb.check(port, TOKEN)
    cli = subprocess.run([CLI, "hub", "serve", "--data", str(tmp_path / "d"), "--host", "0.0.0.0", "--port", str(free_port())],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "HUBCOMPARE_HUB_TOKENS": ""})
    assert cli.returncode == 2 and "HubServerConfigError" in cli.stderr and "--token-file" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) <= 2  # one line (the terminal may wrap it)


def _start(data: Path, port: int, token_file: Path) -> subprocess.Popen:
    proc = subprocess.Popen([CLI, "hub", "serve", "--data", str(data), "--port", str(port), "--quiet", "--timeout", "2",
                             "--token-file", str(token_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)


@pytest.mark.slow  # fault injection: kill -9 under load (~5 s)
def test_kill_9_under_load_then_restart(tmp_path):
    sb = Sandbox(tmp_path)
    (tmp_path / "outside" / "tokens").write_text(TOKEN + "\n")
    sb.before = sb.snapshot()
    port = free_port()
    acked: dict[str, list[str]] = {}  # repo -> acknowledged commits
    for cycle in range(3):
        proc = _start(sb.data, port, tmp_path / "outside" / "tokens")
        refused(req(port, "POST", "/api/repos/create", {"name": "anon"}, auth=None), 401)
        stop = threading.Event()

        def load(w):
            n = 0
            while not stop.is_set():
                repo, n = f"c{cycle}w{w}r{n % 3}", n + 1
                try:
                    a = req(port, "POST", "/api/repos/create", {"name": repo, "organization": "load"}, auth=TOKEN)
                    if a.status == 200:
                        acked.setdefault(f"load/{repo}", [])
                    a = req(port, "POST", f"/api/models/load/{repo}/commit/main",
                            ndjson(add("config.json", b"{}"), add("w.bin", os.urandom(20_000))), auth=TOKEN)
                    if a.status == 200:
                        acked.setdefault(f"load/{repo}", []).append(json.loads(a.body)["commitOid"])
                    req(port, "POST", "/api/collections", {"namespace": "load", "title": f"t{cycle}-{w}-{n}"}, auth=TOKEN)
                    req(port, "POST", "/api/repos/create", {"name": f"gone{w}", "organization": "load"}, auth=TOKEN)
                    req(port, "DELETE", "/api/repos/delete", {"name": f"gone{w}", "organization": "load"}, auth=TOKEN)
                except (OSError, http.client.HTTPException):
                    pass  # killed mid-request

        threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(30)
        proc = _start(sb.data, port, tmp_path / "outside" / "tokens")
        try:
            sb.check(port, TOKEN)
            for repo, shas in acked.items():
                a = req(port, "GET", f"/api/models/{repo}/commits/main", auth=TOKEN)
                assert a.status == 200 and set(shas) <= {c["id"] for c in json.loads(a.body)}, repo
            assert sum(map(len, acked.values())) > cycle
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


@pytest.mark.slow  # the tally of the whole module, most of which is slow-marked fuzzing
def test_zz_counts():
    """The tally (shown with -s): requests tried, invariants checked."""
    if len(BY_TEST) < 10:
        pytest.skip("the tally needs the whole module")
    print(f"\nhostile requests tried: {COUNTS['requests']}, invariants checked: {COUNTS['invariants']}")
    for name, (n, k) in BY_TEST.items():
        print(f"  {name}: {n} requests, {k} invariants")
    assert COUNTS["requests"] > 1000 and COUNTS["invariants"] > 1000
