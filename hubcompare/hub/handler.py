"""One HTTP request to hubcompare's Hub server: dispatch on the route table, bodies, JSON answers, paging.

The plumbing every route shares, apart from the routes themselves (:mod:`.routes`) so that each
stays readable; the route table is bound per server (``Handler.routes``).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from http.server import BaseHTTPRequestHandler
from typing import Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .store import HttpError, HubStore, derived_tags

__all__ = ["Handler", "PAGE_SIZE"]

PAGE_SIZE = 1000


class Handler(BaseHTTPRequestHandler):
    """One request. Routes are matched on the raw (still quoted) path, then unquoted.

    ``routes`` (method, path pattern, function), ``store`` and the settings are bound per server.
    """

    protocol_version = "HTTP/1.1"
    server_version = "hubcompare-hub/1"
    routes: list[tuple[str, str, Callable[..., None]]] = []
    store: HubStore
    user: str = "local"
    max_bytes_per_second: float | None = None
    log: Callable[[str], None] | None = None

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else ~40 ms per request

    def log_message(self, fmt: str, *args) -> None:
        if self.log is not None:
            self.log(f"{self.address_string()} {fmt % args}")

    # --- plumbing -----------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        self._body = None
        try:
            for m, pattern, fn in self.routes:
                if m == method or (m == "GET" and method == "HEAD"):
                    match = re.fullmatch(pattern, url.path)
                    if match:
                        return fn(self, *[unquote(g) if g is not None else None for g in match.groups()])
            raise HttpError(404, f"No route for {method} {url.path}")
        except HttpError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
            self._json(e.body or {"error": e.message}, e.status, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def body(self) -> bytes:
        if self._body is None:
            n = int(self.headers.get("Content-Length") or 0)
            self._body = self.rfile.read(n) if n else b""
        return self._body

    def json_body(self) -> dict:
        try:
            return json.loads(self.body() or b"{}")
        except json.JSONDecodeError as e:
            raise HttpError(400, f"Invalid JSON body: {e}") from e

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def q(self, key: str, default=None):
        v = self.query.get(key)
        return v[0] if v else default

    def flag(self, key: str) -> bool:
        return str(self.q(key, "")).lower() in ("1", "true")

    # --- info objects -------------------------------------------------------------------------
    def info(self, rtype: str, repo_id: str, sha: str, full: bool = True) -> dict:
        c = self.store.commit(rtype, repo_id, sha)
        meta = self.store.repo_meta(rtype, repo_id)
        card = c.get("cardData")
        out = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": sha, "lastModified": c["date"], "createdAt": meta["createdAt"],
            "private": meta["private"], "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": derived_tags(card), "siblings": [{"rfilename": p} for p in c["files"]],
        }
        if card:
            out["cardData"] = card
            for key in ("library_name", "pipeline_tag"):
                if card.get(key):
                    out[key] = card[key]
        if self.flag("blobs"):
            out["siblings"] = [{"rfilename": p, "size": f["size"], "blobId": f["oid"]} for p, f in c["files"].items()]
        return out

    def _paginate(self, items: list, limit: int | None = None) -> None:
        start = int(self.q("cursor", 0) or 0)
        size = min(limit or PAGE_SIZE, PAGE_SIZE)
        page = items[start:start + size]
        headers = {}
        if limit is None and start + size < len(items):
            query = {k: v for k, v in self.query.items() if k != "cursor"}
            qs = "&".join(f"{quote(k)}={quote(x)}" for k, vs in query.items() for x in vs)
            nxt = f"{self.endpoint}{urlsplit(self.path).path}?{qs}{'&' if qs else ''}cursor={start + size}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers=headers)

