"""One HTTP request to hubcompare's Hub server: dispatch on the route table, bodies, auth, JSON answers, paging.

The plumbing every route shares, apart from the routes themselves (:mod:`.routes`) so that each
stays readable; the route table is bound per server (``Handler.routes``). Every request ends in an
answer the client can map (errors carry ``X-Error-Message``/``X-Error-Code``) and in one log line.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import re
import socket
from http.server import BaseHTTPRequestHandler
from typing import Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..errors import InvalidNameError, InvalidReferenceError, short_repr
from .deadlines import DROPPED, WORK, DeadlineReader, RequestDeadline, Slot
from .store import HttpError, HubStore, derived_tags

__all__ = ["Handler", "PAGE_SIZE", "header_safe"]

PAGE_SIZE = 1000
MAX_BODY_BYTES = 1 << 30  # a commit carries its files base64-encoded; upload_folder splits at 100 MiB
MIN_UPLOAD_RATE = 16 * 1024  # bytes/s: a request has ``timeout`` s plus 1 s per MIN_UPLOAD_RATE bytes of body
logger = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^\x20-\x7e]")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
_HOST_PARTS = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.\-]+))(?::([0-9]{1,5}))?")


def header_safe(value: str) -> str:
    """``value`` with control and non-ASCII characters escaped (``\\x0d``): nothing can end a header line."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", value)


class Handler(BaseHTTPRequestHandler):
    """One request. Routes are matched on the raw (still quoted) path, then unquoted.

    ``routes`` (method, path pattern, function), ``store`` and the settings are bound per server;
    ``tokens`` (None: loopback only, any bearer token writes) are the bearer tokens that may write.

    Trust boundaries, checked before routing: a request from a web page (an ``Origin`` other than the
    hub's own) is refused (403); on a ``loopback`` bind the ``Host`` must be a loopback address or
    ``localhost`` with the server's port (421: a DNS-rebinding page names its own host); a write needs an
    ``Authorization: Bearer`` header even without tokens (401), which a page cannot send cross-site without
    a preflight (OPTIONS) this server never grants. Slow clients: see :mod:`.deadlines`.
    """

    protocol_version = "HTTP/1.1"
    server_version = "hubcompare-hub/1"
    routes: list[tuple[str, str, Callable[..., None]]] = []
    store: HubStore
    user: str = "local"
    max_bytes_per_second: float | None = None
    log: Callable[[str], None] | None = None
    tokens: frozenset[bytes] | None = None
    timeout = 30.0  # seconds a socket may sit idle, and a request's head may take (see .deadlines)
    max_body_bytes = MAX_BODY_BYTES
    min_upload_rate = MIN_UPLOAD_RATE
    loopback = True  # bound to a loopback address: Host must name one

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else ~40 ms per request
        self.slot = getattr(self.server, "slots", {}).get(self.request) or Slot(self.request)
        self.rfile.close()  # makefile's reader, replaced by one that keeps each request to its deadline
        self.reader = DeadlineReader(self.request, self.slot, self.timeout or None, self.timeout or None)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        self._body, self._started, self._failure, self.headers = None, False, None, None  # per request, not per connection
        self.command, self.requestline = "", ""
        self.reader.begin()
        super().handle_one_request()
        if self.reader.expired and not self._started:  # the head was still arriving at the deadline
            self.send_error(408, f"The request's head did not arrive within {self.timeout:g} s of its first byte; "
                                 "send it whole at once")

    def log_error(self, fmt: str, *args) -> None:
        if not (args and isinstance(args[0], RequestDeadline)):  # answered 408 (and logged) instead
            super().log_error(fmt, *args)

    # --- logging and headers: one line per request, nothing unescaped -----------------------------
    def log_message(self, fmt: str, *args) -> None:
        line = header_safe(f"{self.address_string()} {fmt % args}")
        if self.log is not None:
            self.log(line)
        elif self._failure and self._failure[0] >= 500:
            (logger.info if self._failure[0] == 503 else logger.error)(line)  # a slow client dropped is not a fault here

    def log_request(self, code="-", size="-") -> None:
        note = f" - {self._failure[1]}" if self._failure else ""
        self.log_message('"%s" %s %s%s', self.requestline, getattr(code, "value", code), size, note)

    def send_header(self, keyword: str, value) -> None:
        super().send_header(keyword, header_safe(str(value)))

    def send_response(self, code: int, message: str | None = None) -> None:
        self._work()
        self._started = True
        super().send_response(code, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, unknown method, headers too long) in the Hub's form."""
        self.close_connection = True
        self.request_version = self.protocol_version  # unparsed lines default to HTTP/0.9, which has no headers
        self._answer_error(HttpError(code, message or self.responses.get(code, ("Error",))[0]))

    def _work(self) -> None:
        """The request is in: from now on the server will not drop it to make room. If it already did (a full
        server cut its reading short), answer 503 and raise ConnectionAbortedError, after one log line."""
        try:
            self.slot.enter(WORK)
        except ConnectionAbortedError:
            self.close_connection = True
            if not self._started:
                self._started = True
                self._failure = (503, "dropped to make room: the hub was full and this request was arriving slowly")
                self.log_request(503)
                try:
                    self.wfile.write(DROPPED)
                except OSError:
                    pass
            raise

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
        try:
            self._work()
            self._check_origin_and_host()
            url = urlsplit(self.path)
            self.query = parse_qs(url.query, keep_blank_values=True)
            for m, pattern, fn in self.routes:
                if m == method or (m == "GET" and method == "HEAD"):
                    match = re.fullmatch(pattern, url.path)
                    if match:
                        break
            else:
                raise HttpError(404, f"No route for {method} {url.path}")
            if method not in ("GET", "HEAD") and not getattr(fn, "read_only", False) and not self.may_write:
                raise HttpError(401, "Invalid credentials in Authorization header", body={  # the client matches this text
                    "error": "This hub takes writes only with one of its tokens: set HF_TOKEN to a token from its "
                             "--token-file or HUBCOMPARE_HUB_TOKENS" if self.tokens is not None else
                             "Writes need an Authorization header, which web pages cannot send: set HF_TOKEN (any value "
                             "does on this token-less loopback hub, e.g. hf_local)"})
            self._body = self._read_body()  # whole and bounded, before any route can take the store lock
            fn(self, *[unquote(g) if g is not None else None for g in match.groups()])
        except HttpError as e:
            self._answer_error(e)
        except (InvalidNameError, InvalidReferenceError) as e:
            self._answer_error(HttpError(400, str(e)))
        except TimeoutError:
            self.close_connection = True
            self._answer_error(HttpError(408, f"The request did not arrive whole in time ({self.timeout:g} s, plus 1 s per "
                                         f"{self.min_upload_rate / 1024:g} KiB of body, from its first byte); send it faster"))
        except ConnectionError:
            self.close_connection = True
        except OSError as e:
            status = 507 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 500
            self._answer_error(HttpError(status, f"The hub could not use its data folder ({e.strerror or e}); "
                                         "check its free space and permissions"), f"{type(e).__name__}: {e}")
        except Exception as e:  # a bug: still an answer and a log line, never a dropped connection
            self._answer_error(HttpError(500, f"Internal error ({type(e).__name__}); see the server log"),
                               f"{type(e).__name__}: {e} at {_where(e)}")

    def _answer_error(self, e: HttpError, cause: str | None = None) -> None:
        self._failure = (e.status, e.message if cause is None else f"{e.message} [{cause}]")
        if self._body is None and (self.headers is None or self.headers.get("Content-Length", "0").strip() not in ("", "0")
                                   or self.headers.get("Transfer-Encoding")):
            self.close_connection = True  # the body was not read: the next bytes are not a request
        if self._started:  # the answer was already under way: all we can do is cut it
            self.close_connection = True
            self.log_request(e.status)
            return
        headers = {"X-Error-Message": e.message}
        if e.code:
            headers["X-Error-Code"] = e.code
        if e.commit:
            headers["X-Repo-Commit"] = e.commit
        if self.close_connection:
            headers["Connection"] = "close"
        try:
            self._json(e.body or {"error": e.message}, e.status, headers)
        except OSError:
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "Chunked request bodies are not supported: send a Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return b""
        if len(set(lengths)) > 1 or not re.fullmatch(r"[0-9]{1,18}", lengths[0].strip()):
            raise HttpError(400, "Content-Length must be one non-negative integer")
        n = int(lengths[0])
        if n > self.max_body_bytes:
            raise HttpError(413, f"The body ({n} bytes) is over this hub's limit of {self.max_body_bytes} bytes; "
                            "commit fewer or smaller files at a time")
        if not n:
            return b""
        self.reader.extend(n, self.min_upload_rate)  # the whole-request deadline grows with the body
        self.slot.start_body(n)
        buf = bytearray()
        while len(buf) < n:
            chunk = self.rfile.read1(min(n - len(buf), 1 << 20))  # RequestDeadline (a TimeoutError) past the deadline
            if not chunk:
                self.close_connection = True
                raise HttpError(400, f"The body ended after {len(buf)} of its {n} bytes (Content-Length); nothing was applied")
            buf += chunk
            self.slot.body_bytes = len(buf)
        self._work()
        return bytes(buf)

    def body(self) -> bytes:
        return self._body or b""

    def json_body(self) -> dict:
        try:
            data = json.loads(self.body() or b"{}")
        except (ValueError, RecursionError) as e:
            raise HttpError(400, f"Invalid JSON body: {e}") from None
        if not isinstance(data, dict):
            raise HttpError(400, f"Invalid JSON body: expected an object, got {type(data).__name__}")
        return data

    @staticmethod
    def field(body: dict, key: str, kind: type | tuple, default=None, required: bool = False):
        """``body[key]`` if it has the JSON type ``kind`` (null or absent: ``default``), else a 400."""
        value = body.get(key)
        if value is None:
            if required:
                raise HttpError(400, f"The body needs the field {key!r}")
            return default
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise HttpError(400, f"Field {key!r} must be {names}, not {type(value).__name__}")
        return value

    # --- trust boundaries -------------------------------------------------------------------------
    def _check_origin_and_host(self) -> None:
        """Refuse a web page's request (a foreign ``Origin``) and, on loopback, a ``Host`` that names another host."""
        hosts = self.headers.get_all("Host") or []
        given = hosts[0].strip() if len(hosts) == 1 else None
        port = self.server.server_address[1]
        if self.loopback and not _loopback_host(given, port):
            raise HttpError(421, f"This loopback hub answers only Host 127.0.0.1:{port} or localhost:{port}, not "
                            f"{short_repr(hosts[0] if len(hosts) == 1 else hosts)} (a guard against DNS rebinding); point "
                            f"HF_ENDPOINT at http://127.0.0.1:{port}")
        origins = self.headers.get_all("Origin") or []
        if origins and (given is None or any(o.strip().lower() != f"http://{given}".lower() for o in origins)):
            raise HttpError(403, f"Requests from web pages are refused (Origin {short_repr(', '.join(origins))}): this hub "
                            "serves API clients such as huggingface_hub, which send no Origin; call it from a script")

    # --- auth -------------------------------------------------------------------------------------
    @property
    def authorised(self) -> bool:
        """No tokens configured (loopback only): anyone. Else a ``Bearer`` token from the set."""
        if self.tokens is None:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        given = token.strip().encode("utf-8", "replace")
        return scheme.lower() == "bearer" and any(hmac.compare_digest(given, t) for t in self.tokens)

    @property
    def may_write(self) -> bool:
        """With tokens: one of them. Without (loopback only): any ``Bearer`` token, which no web page can send."""
        if self.tokens is not None:
            return self.authorised
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip())

    def repo(self, rtype: str, repo_id: str):
        """The repo's folder, if it exists and this caller may see it (private repos need a token)."""
        d = self.store.require(rtype, repo_id)
        if self.tokens is not None and not self.authorised and self.store.repo_meta(rtype, repo_id)["private"]:
            raise HttpError(401, f"Repository {repo_id} not found", "RepoNotFound")
        return d

    def can_see(self, private: bool) -> bool:
        return not private or self.authorised

    # --- answers ------------------------------------------------------------------------------
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
        given = self.headers.get("Host") or ""
        return f"http://{given if _HOST.fullmatch(given) else f'{host}:{port}'}"

    def q(self, key: str, default=None):
        v = self.query.get(key)
        return v[0] if v else default

    def int_q(self, key: str, default: int | None = None) -> int | None:
        v = self.q(key)
        if v in (None, ""):
            return default
        if not re.fullmatch(r"[0-9]{1,12}", v):
            raise HttpError(400, f"Query parameter {key!r} must be a non-negative integer, not {v!r}")
        return int(v)

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
        start = self.int_q("cursor", 0)
        size = min(limit or PAGE_SIZE, PAGE_SIZE)
        page = items[start:start + size]
        headers = {}
        if limit is None and start + size < len(items):
            query = {k: v for k, v in self.query.items() if k != "cursor"}
            qs = "&".join(f"{quote(k)}={quote(x)}" for k, vs in query.items() for x in vs)
            nxt = f"{self.endpoint}{urlsplit(self.path).path}?{qs}{'&' if qs else ''}cursor={start + size}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers=headers)


def _loopback_host(host: str | None, port: int) -> bool:
    """``host`` (a Host header) is ``localhost`` or a loopback address, with ``port`` (80 when absent).

    Never resolved: a rebinding name resolves to 127.0.0.1, which is the point of the attack."""
    m = _HOST_PARTS.fullmatch(host or "")
    if not m or int(m.group(3) or 80) != port:
        return False
    name = m.group(1) or m.group(2)
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _where(e: BaseException) -> str:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
