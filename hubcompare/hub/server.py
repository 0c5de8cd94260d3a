"""A Hugging Face Hub-protocol server in the standard library: for tests and offline/air-gapped hubs.

The real Hub is not reachable from every machine, and no existing server speaks the write side of
the protocol offline, so hubcompare ships this one (``hubcompare hub serve``). This module runs it
(bind, thread, stop, crash); what it answers is in :mod:`.routes`, what it stores in :mod:`.store`.
Point a client at it with ``HF_ENDPOINT=http://127.0.0.1:PORT`` set before ``huggingface_hub`` is
imported. Without tokens any API client may write (with any ``Authorization: Bearer`` token, which no
web page can send), so it then binds only loopback addresses and answers only a loopback ``Host``; with
tokens (a token file, ``HUBCOMPARE_HUB_TOKENS``) every write needs ``Authorization: Bearer TOKEN``. A
request from a web page (a foreign ``Origin``) is always refused. Slow clients cannot hold every
connection: see :mod:`.deadlines`.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Iterable

from ..errors import HubServerConfigError, InvalidNameError
from .deadlines import Slot, pick_victim, raw_503
from .handler import Handler
from .names import check_namespace
from .routes import ROUTES
from .store import HubStore

__all__ = ["HubStore", "HubServer", "TOKENS_ENV", "is_loopback", "load_tokens", "serve"]

TOKENS_ENV = "HUBCOMPARE_HUB_TOKENS"
logger = logging.getLogger(__name__)


def load_tokens(token_file: str | Path | None = None, environ=None) -> frozenset[str] | None:
    """The write tokens: one a line in ``token_file`` (blank lines and ``#`` comments skipped) plus those in
    ``$HUBCOMPARE_HUB_TOKENS`` (comma or space separated). None when neither gives any."""
    tokens: list[str] = []
    if token_file is not None:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise HubServerConfigError(f"cannot read the token file {token_file}: {getattr(e, 'strerror', None) or e}; "
                                       "give token_file a readable text file, one token a line", params=("token_file",)) from e
        found = [t.strip() for t in lines if t.strip() and not t.strip().startswith("#")]
        if not found:
            raise HubServerConfigError(f"the token file {token_file} holds no token; write one token a line",
                                       params=("token_file",))
        tokens += found
    tokens += [t for t in re.split(r"[\s,]+", (os.environ if environ is None else environ).get(TOKENS_ENV, "")) if t]
    for t in tokens:
        if len(t) < 8 or not re.fullmatch(r"[\x21-\x7e]+", t):
            raise HubServerConfigError(f"a hub token must be at least 8 visible ASCII characters without spaces; fix "
                                       f"the token file or {TOKENS_ENV}", params=("token_file",))
    return frozenset(tokens) or None


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None) if host else []
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


_FULL = raw_503("too many open connections, all busy; retry later")


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers open connections (so ``kill`` can drop them) and caps their number.

    When all ``max_connections`` slots are taken, a new connection takes the slot of the slowest idle or
    still-arriving request (:func:`.deadlines.pick_victim`); only when every connection is being answered or
    keeping up is it refused (503). Dropped connections still closing may take the count to twice the cap.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 drops connections under a burst (clients then wait seconds to retry)
    max_connections = 256

    def __init__(self, *args, **kwargs):
        self.slots: dict[socket.socket, Slot] = {}
        self._conn_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    @property
    def connections(self) -> set[socket.socket]:
        return set(self.slots)

    def process_request(self, request, client_address):
        victim, full = None, False
        with self._conn_lock:
            live = [s for s in self.slots.values() if not s.evicted]
            if len(live) >= self.max_connections:
                victim = pick_victim(live, self.RequestHandlerClass.min_upload_rate)
                if victim is not None:
                    victim.evicted = True
            full = (len(live) >= self.max_connections and victim is None) or len(self.slots) >= 2 * self.max_connections
            if not full:
                self.slots[request] = Slot(request, self._conn_lock)
        if victim is not None:
            try:  # its thread's read ends at once; it answers 503 if a request was arriving, and closes
                victim.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        if full:  # refuse at once rather than start one more thread
            try:
                request.sendall(_FULL)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conn_lock:
            self.slots.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        """A connection that broke outside a request (the client went away): a debug log line, not a traceback."""
        logger.debug("connection from %s ended with an error", client_address[0], exc_info=True)

    def drop_connections(self) -> None:
        with self._conn_lock:
            for conn in list(self.slots):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class HubServer:
    """The server bound to ``host:port`` (port 0 = any free port), run in a background thread.

    ``with HubServer(data_dir) as server: ...`` starts and stops it; ``server.endpoint`` is the
    URL to give ``HF_ENDPOINT``. ``tokens``: the bearer tokens that may write (and read private
    repos); required to bind anything but loopback. ``timeout``: seconds a connection may sit idle, and the
    whole-request deadline: a request must arrive within ``timeout`` s of its first byte plus 1 s per
    ``min_upload_rate`` bytes (16 KiB) of body (:mod:`.deadlines`).
    """

    def __init__(self, data: str | Path, host: str = "127.0.0.1", port: int = 0, user: str = "local",
                 max_bytes_per_second: float | None = None, log=None, tokens: Iterable[str] | None = None,
                 timeout: float = 30.0, max_body_bytes: int | None = None):
        tokens = frozenset(tokens) if tokens else None
        if tokens is None and not is_loopback(host):
            raise HubServerConfigError(
                f"refusing to serve on {host or 'every interface'} without tokens: anyone who can reach it could "
                f"delete any repo. Give tokens (token_file, or {TOKENS_ENV}) or bind 127.0.0.1", params=("host", "token_file"))
        try:
            check_namespace(user)
        except InvalidNameError as e:
            raise HubServerConfigError(f"user: {e}", params=("user",)) from None
        if not 0 <= port <= 65535:
            raise HubServerConfigError(f"port {port} is not a TCP port: use 1-65535 (or 0 for any free port)", params=("port",))
        data = Path(data)
        if data.exists() and not data.is_dir():
            raise HubServerConfigError(f"the data folder {data} is a file: give a folder for the repos (it is created if "
                                       "missing)", params=("data",))
        try:
            self.store = HubStore(data)
        except OSError as e:
            raise HubServerConfigError(f"cannot use {data} as the data folder: {e.strerror or e}", params=("data",)) from e
        handler = type("BoundHandler", (Handler,), {
            "routes": ROUTES, "store": self.store, "user": user, "max_bytes_per_second": max_bytes_per_second,
            "log": staticmethod(log) if log else None, "timeout": timeout,
            "tokens": frozenset(t.encode() for t in tokens) if tokens else None,
            "max_body_bytes": max_body_bytes or Handler.max_body_bytes, "loopback": is_loopback(host),
        })
        try:
            self.httpd = _Server((host, port), handler)
        except OSError as e:
            raise HubServerConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another port, or stop "
                                       "what holds it", params=("port",)) from e
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join()

    def kill(self) -> None:
        """Stop abruptly, dropping connections mid-response (what a crash looks like to clients)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd.drop_connections()
        if self._thread:
            self._thread.join()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(data: str | Path, host: str = "127.0.0.1", port: int = 8080, user: str = "local",
          max_bytes_per_second: float | None = None, log=None, on_ready=None, tokens: Iterable[str] | None = None,
          timeout: float = 30.0) -> None:
    """Serve in the foreground until interrupted (what ``hubcompare hub serve`` runs)."""
    server = HubServer(data, host, port, user, max_bytes_per_second, log, tokens=tokens, timeout=timeout)
    if on_ready:
        on_ready(server)
    try:
        server.httpd.serve_forever()
    finally:
        server.httpd.server_close()
