"""A Hugging Face Hub-protocol server in the standard library: for tests and offline/air-gapped hubs.

The real Hub is not reachable from every machine, and no existing server speaks the write side of
the protocol offline, so hubcompare ships this one (``hubcompare hub serve``). This module runs it
(bind, thread, stop, crash); what it answers is in :mod:`.routes`, what it stores in :mod:`.store`.
Point a client at it with ``HF_ENDPOINT=http://127.0.0.1:PORT`` set before ``huggingface_hub`` is
imported. There is no access control (any token may write anywhere): bind it to 127.0.0.1 (the default).
"""
from __future__ import annotations

import socket
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from .handler import Handler
from .routes import ROUTES
from .store import HubStore

__all__ = ["HubStore", "HubServer", "serve"]


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers open connections, so ``kill`` can drop them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs):
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self._conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._conn_lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class HubServer:
    """The server bound to ``host:port`` (port 0 = any free port), run in a background thread.

    ``with HubServer(data_dir) as server: ...`` starts and stops it; ``server.endpoint`` is the
    URL to give ``HF_ENDPOINT``.
    """

    def __init__(self, data: str | Path, host: str = "127.0.0.1", port: int = 0, user: str = "local",
                 max_bytes_per_second: float | None = None, log=None):
        handler = type("BoundHandler", (Handler,), {
            "routes": ROUTES, "store": HubStore(data), "user": user, "max_bytes_per_second": max_bytes_per_second,
            "log": staticmethod(log) if log else None,
        })
        self.httpd = _Server((host, port), handler)
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
          max_bytes_per_second: float | None = None, log=None, on_ready=None) -> None:
    """Serve in the foreground until interrupted (what ``hubcompare hub serve`` runs)."""
    server = HubServer(data, host, port, user, max_bytes_per_second, log)
    if on_ready:
        on_ready(server)
    try:
        server.httpd.serve_forever()
    finally:
        server.httpd.server_close()

