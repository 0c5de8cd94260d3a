"""The JSON API under /api: the registry, stored results and comparison jobs (the pages' operations, for scripts).

Reads are open. The writes (``POST /api/jobs``, ``POST /api/registry``, ``DELETE /api/registry/{name}``,
``POST /api/results/{key}/push``) share one rule, the :func:`write_access` dependency: ``Authorization: Bearer TOKEN``
whenever the server has a token (always off loopback), no Origin of another site, and a body only as JSON
(``Content-Type: application/json``, so another site's page cannot post one from a browser without CORS, which this
server does not grant). Errors are ``{"error": ...}`` with 4xx.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from ..comparisons.kinds import kind_names, specs
from ..errors import RequestMediaTypeError, ServiceRequestError
from ..similarity.measures import measure_info, measure_names
from .bounded import LIST_BUDGET
from .checks import check_registered, check_request, job_advice, parse_request_body
from .views import (
    ModelFilters,
    Service,
    bearer,
    card_text,
    check_same_origin,
    entry_json,
    model_results,
    result_json,
)
from .writes import add_entry, push_stored_result, remove_entry

__all__ = ["download", "router"]

router = APIRouter(prefix="/api", tags=["api"])

KINDS = kind_names()


def request_schema() -> dict:
    """The JSON schema of a comparison request, each kind's options from its spec (``if kind then options``)."""
    by_kind = [{"if": {"properties": {"kind": {"const": s.name}}},
                "then": {"properties": {"options": s.options_schema(), "refs": {"minItems": s.refs[0], "maxItems": s.refs[1]}}}}
               for s in specs()]
    return REQUEST_SCHEMA | {"allOf": by_kind}


REQUEST_SCHEMA = {
    "type": "object", "required": ["kind", "refs"], "additionalProperties": False,
    "properties": {
        "kind": {"type": "string", "enum": list(KINDS)},
        "refs": {"type": "array", "items": {"type": "string"}, "description": "model references (registry names, "
                 "hf-hub:OWNER/NAME@REV, timm:NAME); agreement/class-diff: two side specs (population:NAME, A+B, ...)"},
        "dataset": {"type": ["string", "null"]}, "split": {"type": "string", "enum": ["test", "train"]},
        "layers": {"type": ["array", "null"], "items": {"type": "string"}}, "batch_size": {"type": ["integer", "null"]},
        "passes": {"type": "integer"}, "seed": {"type": "integer"},
        "examples": {"type": ["integer", "null"], "description": "required for CKA kinds; at most the server's max_examples"},
        "options": {"type": "object", "description": "the kind's own settings (GET /api/kinds lists each kind's)"},
        "labels": {"type": ["array", "null"]}, "fmt": {"type": "string"},
    },
    "example": {"kind": "cross-cka", "refs": ["MODEL-A", "MODEL-B"], "examples": 500},
}


REGISTRY_SCHEMA = {
    "type": "object", "required": ["name", "reference"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "description": "the registry name (letters, digits, '-', '_', '.')"},
        "reference": {"type": "string", "description": "hf-hub:OWNER/NAME[@REV] or timm:NAME (never a path); pulled, "
                      "loaded and recorded pinned to its commit"},
        "replace": {"type": "boolean", "default": False, "description": "overwrite a user entry of that name"},
        "populations": {"type": "array", "items": {"type": "string"}},
    },
    "example": {"name": "r20-a", "reference": "hf-hub:alice/r20-1x", "replace": False},
}
PUSH_SCHEMA = {
    "type": "object", "required": ["repo"], "additionalProperties": False,
    "properties": {"repo": {"type": "string", "description": "OWNER/NAME of the Hub dataset repo (created if missing)"},
                   "private": {"type": "boolean", "default": False}},
    "example": {"repo": "alice/r20-widths", "private": False},
}
WRITE_ERRORS = {400: {"description": "invalid request"}, 401: {"description": "token required (or wrong)"},
                403: {"description": "sent from another site's page"}, 413: {"description": "body over the limit"},
                415: {"description": "not sent as application/json"}}


def service_of(request: Request) -> Service:
    return request.app.state.service


async def write_access(request: Request) -> None:
    """The rule of every write: not from another site's page, and the token whenever the server has one (compared
    in constant time; always needed off loopback)."""
    check_same_origin(request)
    service_of(request).config.check_write(bearer(request))


async def write_body(request: Request, _: None = Depends(write_access)) -> dict:
    """A write's body: allowed (:func:`write_access`) first, then JSON only, a strict JSON object."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise RequestMediaTypeError("send the request as JSON (Content-Type: application/json)")
    return parse_request_body(await request.body())


def json_body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.get("/health", summary="Is the server up; its job workers and limits")
def health(request: Request) -> dict:
    s = service_of(request)
    c = s.config
    return {"status": "ok" if not s.jobs.broken else "degraded", "jobs": s.jobs.counts(), "workers": c.workers,
            "backend": c.backend, "worker_restarts": s.jobs.restarts, "broken": s.jobs.broken, "writes_need_token": c.writes_need_token,
            "journal": {"path": str(s.jobs.journal.path) if s.jobs.journal else None, "problem": s.jobs.journal_problem},
            "limits": {"max_examples": c.max_examples, "max_models": c.max_models, "max_body_bytes": c.max_body_bytes}}


@router.get("/measures", summary="The similarity measures a compare request may name (options.measures)")
def measures() -> dict:
    return {"measures": [measure_info(name) for name in measure_names()],
            "key_form": "NAME or NAME(PARAM=NUMBER,...), e.g. rbf-cka(frac=0.5)"}


@router.get("/models", summary="Registry entries matching the filters")
def models(request: Request, population: str | None = None, depth: str | None = None, width: str | None = None,
           dataset: str | None = None, text: str | None = None) -> dict:
    filters = ModelFilters.parse({"population": population, "depth": depth, "width": width, "dataset": dataset, "text": text})
    found = filters.apply(service_of(request).registry())
    return {"filters": filters.to_json(), "count": len(found), "models": [entry_json(e) for e in found]}


@router.get("/models/{name}", summary="One registry entry, its card text (when cached) and its stored comparisons")
def model(request: Request, name: str) -> dict:
    s = service_of(request)
    entry = s.registry().get(name)
    results = model_results(s, entry)
    return entry_json(entry) | {"card": card_text(entry), "results": [result_json(r, LIST_BUDGET) for r in results]}


@router.get("/results", summary="Stored results, newest first")
def results(request: Request, kind: str | None = None, model: str | None = None,
            limit: int = Query(100, ge=1, le=1000)) -> dict:
    if kind is not None and kind not in KINDS:
        raise ServiceRequestError(f"kind: {kind!r} is not a comparison kind (one of {', '.join(KINDS)})", params=("kind",))
    found = service_of(request).store.list(kind=kind, model=model or None, limit=limit)
    return {"count": len(found), "results": [result_json(r, LIST_BUDGET) for r in found]}


@router.get("/results/{key}", summary="One stored result (its key or a unique prefix of 6+ hex characters)")
def result(request: Request, key: str) -> dict:
    return result_json(service_of(request).result(key))


@router.get("/results/{key}/files/{name}", summary="One of a result's files (only the names it lists)")
def result_file(request: Request, key: str, name: str) -> FileResponse:
    stored = service_of(request).exact_result(key)
    return download(stored.file(name), name)


@router.post("/jobs", status_code=202, summary="Queue a comparison (a ComparisonRequest as JSON)",
             openapi_extra=json_body(request_schema()),
             responses={202: {"description": "queued (or the same request's job, already queued or running)"}, **WRITE_ERRORS})
async def create_job(request: Request, data: dict = Depends(write_body)) -> JSONResponse:
    s = service_of(request)
    req = check_request(data, s.config)
    check_registered(req, s.registry())  # a name that is not here is refused now, not in a failed job later
    job, new = s.jobs.submit(req.to_json())
    return JSONResponse({"id": job.id, "url": f"/jobs/{job.id}", "api": f"/api/jobs/{job.id}", "state": job.state, "new": new},
                        status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


@router.post("/registry", status_code=201, summary="Record a Hub or timm model under a name (pulled, loaded, pinned)",
             description="What `hubcompare registry add` does: the reference (hf-hub:OWNER/NAME[@REV] or timm:NAME, never "
                         "a path) is pulled and loaded within the size cap, then recorded pinned to the commit it resolved "
                         "to. A write: needs the token when the server has one. Curated entries cannot be replaced (409).",
             openapi_extra=json_body(REGISTRY_SCHEMA),
             responses={201: {"description": "the entry, as GET /api/models/{name} shows it"},
                        404: {"description": "no such repo, revision or timm model"},
                        409: {"description": "the name is taken (use replace) or is a curated entry"},
                        503: {"description": "too many registrations at once: retry after Retry-After seconds"}, **WRITE_ERRORS})
async def create_entry(request: Request, data: dict = Depends(write_body)) -> JSONResponse:
    entry = await request.app.state.registrations.run(add_entry, service_of(request), data)
    return JSONResponse(entry, status_code=201, headers={"Location": f"/api/models/{entry['name']}"})


@router.delete("/registry/{name}", summary="Remove a user entry of the registry",
               description="What `hubcompare registry remove` does. A write: needs the token when the server has one. "
                           "Curated entries (the registry's text files) are refused with 409.",
               dependencies=[Depends(write_access)],
               responses={404: {"description": "no such entry"}, 409: {"description": "a curated entry"},
                          **{k: v for k, v in WRITE_ERRORS.items() if k not in (413, 415)}})
def delete_entry(request: Request, name: str) -> dict:
    return {"removed": remove_entry(service_of(request), name)}


@router.post("/results/{key}/push", summary="Share a stored result on the Hub as a dataset repo",
             description="What `hubcompare push-result` does, with the server's HF_ENDPOINT and HF_TOKEN. The answer's "
                         "`reference` (hf-hub-result:OWNER/NAME@SHA) pulls it into another store (`hubcompare results "
                         "pull`). A write: needs the token when the server has one.",
             openapi_extra=json_body(PUSH_SCHEMA),
             responses={200: {"description": '{"key", "repo_id", "url", "commit_sha", "reference"}'},
                        404: {"description": "no stored result with that key"}, **WRITE_ERRORS})
async def push_result(request: Request, key: str, data: dict = Depends(write_body)) -> dict:
    return await run_in_threadpool(push_stored_result, service_of(request), key, data)


@router.get("/kinds", summary="Every comparison kind: its models or sides, its options (typed, with ranges), its files")
def kinds() -> dict:
    return {"kinds": [s.to_json() for s in specs()], "schema": request_schema()}


@router.get("/jobs", summary="Jobs this server knows, newest first")
def jobs(request: Request) -> dict:
    return {"jobs": [job_json(j) for j in service_of(request).jobs.jobs()]}


@router.get("/jobs/{job_id}", summary="A job's state and progress")
def job(request: Request, job_id: str) -> dict:
    return job_json(service_of(request).jobs.get(job_id))


def job_json(job) -> dict:
    d = job.to_json()
    d["result_url"] = f"/results/{job.result_key}" if job.result_key else None
    d["advice"] = job_advice(job.error_type) if job.state == "failed" else None  # for the job page: what to do there
    return d


MEDIA = {".json": "application/json", ".csv": "text/csv; charset=utf-8", ".png": "image/png", ".npz": "application/octet-stream",
         ".svg": "image/svg+xml", ".pdf": "application/pdf", ".md": "text/plain; charset=utf-8", ".npy": "application/octet-stream"}


def download(path, name: str) -> FileResponse:
    """A stored file: images shown inline, everything else as an attachment (an SVG too: it could carry script)."""
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    media = MEDIA.get(suffix, "application/octet-stream")
    inline = suffix == ".png"
    return FileResponse(path, media_type=media, filename=name, content_disposition_type="inline" if inline else "attachment")
