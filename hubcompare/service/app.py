"""The web application: ``create_app(config)`` wires the pages, the JSON API, the job queue and the guards.

FastAPI (Starlette) with Jinja2 templates shipped in the package (autoescaped: card text and reference strings
anyone can write are shown, never run). Everything the pages need is served from here (styles and two small
scripts under /static): the machine may be offline, so nothing comes from a CDN. That is also why FastAPI's
Swagger UI (/docs) is off: it loads its scripts from a CDN. /openapi.json is the machine-readable schema and
/api/docs lists the operations as a plain page.

Guards, in front of every route (:class:`Guard`): the Host header must be a loopback name when the server is bound
to loopback (DNS rebinding), a body is read at most ``max_body_bytes`` (413 beyond), and every response carries a
strict Content-Security-Policy (scripts and styles from this server only), nosniff and no framing.
Typed errors become 4xx: ``{"error": ...}`` under /api, a readable page elsewhere.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import HubcompareError
from ..results.store import ResultStore
from . import api, pages
from .checks import check_request
from .config import ServiceConfig
from .jobs import JobQueue, Runner
from .journal import JOURNAL_FILE, JobJournal
from .ray_jobs import RayJobQueue
from .runner import run_comparison, worker_settings
from .redact import scrub_paths
from .views import Service, status_for
from .writes import RegistrationGate

__all__ = ["create_app", "status_for"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin")]
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


class Guard:
    """Host check, body-size cap and security headers, as plain ASGI (it runs before any route reads a byte)."""

    def __init__(self, app, config: ServiceConfig):
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        api_path = scope.get("path", "").startswith("/api")

        async def refuse(status: int, message: str) -> None:
            body = json.dumps({"error": message}).encode() if api_path else (
                f"<!doctype html><title>{status}</title><p>{message}</p>").encode()
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json" if api_path else b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS]})
            await send({"type": "http.response.body", "body": body})

        if not self.config.host_allowed(headers.get("host")):
            return await refuse(421, "this server answers only to loopback host names (127.0.0.1, localhost)")
        limit = self.config.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await refuse(413, f"the request body is over this server's limit of {limit:,} bytes")
        if scope.get("method") in ("POST", "PUT", "PATCH", "DELETE"):
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await refuse(413, f"the request body is over this server's limit of {limit:,} bytes")
                chunks.append(chunk)
                more = message.get("more_body", False)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            inner_receive = replay
        else:
            inner_receive = receive

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message = dict(message, headers=[*message.get("headers", []),
                                                 *(h for h in SECURITY_HEADERS if h[0] not in present)])
            await send(message)

        return await self.app(scope, inner_receive, send_with_headers)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("hubcompare.service", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pretty"] = lambda obj: json.dumps(obj, indent=2, sort_keys=True, default=str)
    env.filters["pval"] = lambda v: "-" if v is None else f"{v:.3g}"
    env.filters["num"] = lambda v, digits=4: "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))
    return env


def _static() -> dict[str, tuple[bytes, str]]:
    folder = files("hubcompare.service") / "static"
    out = {}
    for f in folder.iterdir() if folder.is_dir() else ():
        suffix = "." + f.name.rsplit(".", 1)[-1]
        if f.is_file() and suffix in STATIC_TYPES:
            out[f.name] = (f.read_bytes(), STATIC_TYPES[suffix])
    return out


def create_app(config: ServiceConfig | None = None, *, runner: Runner | None = None, jobs: JobQueue | None = None) -> FastAPI:
    """The app for ``config`` (checked: an unsafe configuration raises before anything is served). The job workers
    start with the app (its lifespan) and stop with it. ``runner``: what a worker runs (tests substitute one)."""
    config = (config or ServiceConfig()).check()
    store = ResultStore(config.results_dir)
    journal = JobJournal(store.root / JOURNAL_FILE) if config.keep_jobs and jobs is None else None
    if jobs is not None:
        queue = jobs
    elif config.backend == "ray":
        queue = RayJobQueue(worker_settings(config), runner or run_comparison, address=config.ray_address,
                            cpus_per_job=config.threads or 1, max_pending=config.max_pending_jobs, journal=journal,
                            check=lambda request: check_request(request, config))
    else:
        queue = JobQueue(worker_settings(config), runner or run_comparison, workers=config.workers,
                         max_pending=config.max_pending_jobs, journal=journal, check=lambda request: check_request(request, config))
    service = Service(config, store, queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue.start()
        try:
            yield
        finally:
            queue.stop()

    app = FastAPI(title="hubcompare", summary="Compare neural networks: the registry, stored results and comparison jobs.",
                  version=_version(), docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan)
    app.state.service = service
    app.state.registrations = RegistrationGate()
    app.state.templates = _templates()
    app.state.static = _static()
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        found = app.state.static.get(name)
        if found is None:
            raise StarletteHTTPException(404, f"no static file {name!r}")
        return Response(found[0], media_type=found[1], headers={"cache-control": "public, max-age=3600"})

    def error_response(request: Request, status: int, message: str, kind: str, field: str | None = None,
                       headers: dict | None = None) -> Response:
        if _wants_json(request):
            return JSONResponse({"error": message, "type": kind, "field": field}, status_code=status, headers=headers)
        return pages.render(request, "error.html", status=status, message=message, kind=kind, headers=headers)

    @app.exception_handler(HubcompareError)
    async def typed_error(request: Request, e: HubcompareError) -> Response:
        status = status_for(e)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(getattr(e, "retry_after", None), int):
            headers = {"Retry-After": str(e.retry_after)}
        return error_response(request, status, scrub_paths(str(e)), type(e).__name__, getattr(e, "field", None), headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        message = e.detail if isinstance(e.detail, str) else "request refused"
        if e.status_code == 404 and message == "Not Found":
            message = f"nothing at {request.url.path}: see / for the models, /results for stored results"
        if e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(request, e.status_code, message, "HTTPError")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return error_response(request, 400, f"{where or 'request'}: {first.get('msg', 'invalid')}", "ServiceRequestError", where)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> Response:  # a bug: a readable 500, the server carries on
        return error_response(request, 500, f"internal error ({type(e).__name__}): this is a bug in hubcompare, please "
                              "report it with the server's log", "InternalError")

    app.add_middleware(Guard, config=config)
    return app


def _version() -> str:
    try:
        return version("hubcompare")
    except PackageNotFoundError:
        return "0"
