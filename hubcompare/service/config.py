"""What one `hubcompare serve` is allowed to do: where it listens, who may write, how big a request may be.

Everything here is set by whoever starts the server, never by a request: the data folder, the store, the size
caps. The rules of issue #13: bind 127.0.0.1 unless told otherwise; a non-loopback address needs a token (the
server refuses to start without one); whenever a token is set, every write must present it (compared in constant
time). On loopback the Host header must name a loopback host too, so a web page elsewhere cannot reach the
server through DNS rebinding.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ServiceConfigError, WriteNotAllowedError
from ..hub.server import is_loopback

__all__ = ["BACKENDS", "DEFAULT_PORT", "MIN_TOKEN_LENGTH", "TOKEN_ENV", "ServiceConfig"]

DEFAULT_PORT = 8765
TOKEN_ENV = "HUBCOMPARE_TOKEN"
MIN_TOKEN_LENGTH = 16
BACKENDS = ("local", "ray")
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: it travels in a header


@dataclass
class ServiceConfig:
    """The server's settings. ``check()`` refuses unsafe or impossible ones with a typed error naming the fix."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    workers: int = 1
    data_dir: Path | None = None  # where datasets are read from (server-side only)
    results_dir: Path | None = None  # the result store's root (default: $HUBCOMPARE_HOME/results)
    registry_path: Path | None = None  # the registry database (default: $HUBCOMPARE_HOME/registry.sqlite)
    max_examples: int = 2000  # a job's examples (CKA inputs) at most
    max_models: int = 8  # references in one request at most
    max_body_bytes: int = 64 * 1024  # a request body at most
    max_pending_jobs: int = 100  # queued + running jobs at most (more are refused, 503)
    backend: str = "local"  # where jobs run: "local" (worker processes) or "ray" (one Ray task each)
    ray_address: str | None = None  # the Ray cluster (backend "ray"; none: a local Ray started by the server)
    threads: int | None = None  # torch threads per job (and Ray CPUs per job; None: torch's default, 1 CPU on Ray)
    keep_jobs: bool = True  # the job table in RESULTS/jobs.sqlite: a restarted server keeps its jobs (False: memory only)

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, str):
            self.data_dir = Path(self.data_dir)
        if isinstance(self.results_dir, str):
            self.results_dir = Path(self.results_dir)
        if isinstance(self.registry_path, str):
            self.registry_path = Path(self.registry_path)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"http://{host}:{self.port}"

    def check(self) -> "ServiceConfig":
        """Refuse settings the server must not start with; returns self."""
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ServiceConfigError(f"port must be 0-65535 (got {self.port!r})", params=("port",))
        for name, low in (("workers", 1), ("max_examples", 1), ("max_models", 2), ("max_body_bytes", 1024),
                          ("max_pending_jobs", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ServiceConfigError(f"{name} must be an integer >= {low} (got {value!r})", params=(name,))
        if self.backend not in BACKENDS:
            raise ServiceConfigError(f"backend must be one of {', '.join(BACKENDS)} (got {self.backend!r})", params=("backend",))
        if self.ray_address and self.backend != "ray":
            raise ServiceConfigError("a Ray address is only used with the ray backend: add --backend ray", params=("ray_address",))
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or not 1 <= self.threads <= 256):
            raise ServiceConfigError(f"threads must be an integer from 1 to 256 (got {self.threads!r})", params=("threads",))
        if not isinstance(self.keep_jobs, bool):
            raise ServiceConfigError(f"keep_jobs must be true or false (got {self.keep_jobs!r})", params=("keep_jobs",))
        if self.workers > 64:
            raise ServiceConfigError(f"workers must be at most 64 (got {self.workers})", params=("workers",))
        if self.token is not None:
            if len(self.token) < MIN_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(self.token):
                raise ServiceConfigError(
                    f"the token must be at least {MIN_TOKEN_LENGTH} printable characters without spaces; make one with "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))'", params=("token",))
        if not self.host or not self.loopback and self.token is None:
            raise ServiceConfigError(
                f"refusing to serve on {self.host!r}, which is not a loopback address, without a token: anyone who can reach "
                f"it could queue work. Set a token (${TOKEN_ENV}, e.g. from python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'), or serve on 127.0.0.1", params=("token", "host"))
        if self.data_dir is not None and not self.data_dir.is_dir():
            what = "is a file" if self.data_dir.exists() else "does not exist"
            raise ServiceConfigError(f"data folder {self.data_dir} {what}: name the folder holding the datasets",
                                     params=("data_dir",))
        return self

    @classmethod
    def token_from_env(cls, environ=None) -> str | None:
        value = (os.environ if environ is None else environ).get(TOKEN_ENV, "")
        return value or None

    @property
    def writes_need_token(self) -> bool:
        """Whenever a token is set (and a non-loopback server always has one, see ``check``)."""
        return self.token is not None or not self.loopback

    def check_write(self, bearer: str | None) -> None:
        """Raise :class:`WriteNotAllowedError` unless ``bearer`` is the server's token (when writes need one)."""
        if not self.writes_need_token:
            return
        if self.token is None:  # off loopback without a token: check() refuses to start, so this is belt and braces
            raise WriteNotAllowedError("this server has no token, so it accepts no writes off loopback")
        if not bearer:
            raise WriteNotAllowedError("this server needs its token for writes: send 'Authorization: Bearer TOKEN' "
                                       "(or fill in the token field of the form)")
        if not hmac.compare_digest(bearer.encode("utf-8", "surrogateescape"), self.token.encode("utf-8")):
            raise WriteNotAllowedError("wrong token: ask whoever runs the server for it")

    def host_allowed(self, host_header: str | None) -> bool:
        """On loopback only loopback host names are answered (no DNS rebinding); elsewhere any Host is."""
        if not self.loopback:
            return True
        if not host_header:
            return False
        name = host_header.strip().lower()
        if name.startswith("["):
            name = name[: name.find("]") + 1] if "]" in name else name
        else:
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name.strip("[]")).is_loopback
        except ValueError:
            return False
