"""The HTML pages: the registry (filters, a model's card and comparisons), stored results (hoverable heatmap,
figures, provenance, downloads), the compare form and a job's live progress.

Element ids the browser tests rely on (keep them): ``#filters``, ``#models`` (``tr.model`` rows),
``svg#heatmap`` (``rect.cell`` with ``data-a``, ``data-b``, ``data-cka``, ``data-se``), ``#hover``,
``form#compare`` (``model_a``, ``model_b``, ``kind``, ``dataset``, ``layers``, ``examples``, ``button#submit``),
``#job-state``, ``#progress``, ``#error``, ``form#share`` (``repo``, ``private``, ``token``; ``#share-reference``,
``#share-error``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ..comparisons.requests import KINDS
from ..data.datasets import DATASETS
from ..errors import HubcompareError, ServiceRequestError
from .api import download
from .card import render_card
from .checks import LAYER_KINDS, ONE_MODEL_KINDS, SIZED_KINDS, form_request
from .views import (
    SETTINGS_KEYS,
    ModelFilters,
    Service,
    bearer,
    card_text,
    check_same_origin,
    cka_pairs,
    entry_json,
    headline_rows,
    heatmap_for,
    list_tables,
    model_layers,
    model_results,
    pair_rows,
    result_title,
    seed_rows,
    status_for,
)
from .writes import push_stored_result

__all__ = ["render", "router"]

router = APIRouter(include_in_schema=False)
FORM_FIELDS = ("model_a", "model_b", "kind", "dataset", "layers", "examples")
DEFAULT_EXAMPLES = 500


def service_of(request: Request) -> Service:
    return request.app.state.service


def render(request: Request, template: str, *, status: int = 200, headers: dict | None = None, **context) -> HTMLResponse:
    """A page from the package's templates (autoescaped), with what every page shows (the nav, whether writes need
    the token)."""
    service: Service = request.app.state.service
    html = request.app.state.templates.get_template(template).render(
        path=request.url.path, writes_need_token=service.config.writes_need_token, **context)
    return HTMLResponse(html, status_code=status, headers=headers)


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/models", status_code=307)


@router.get("/models")
def models_page(request: Request) -> HTMLResponse:
    registry = service_of(request).registry()
    filters = ModelFilters.parse(request.query_params)
    everything = list(registry.entries().values())
    found = filters.apply(registry)
    return render(request, "models.html", models=[entry_json(e) for e in found], filters=filters.to_json(),
                  total=len(everything), populations=sorted({p for e in everything for p in e.populations}),
                  datasets=sorted({e.dataset for e in everything if e.dataset}))


@router.get("/models/{name}")
def model_page(request: Request, name: str) -> HTMLResponse:
    service = service_of(request)
    entry = service.registry().get(name)
    results = model_results(service, entry)
    text = card_text(entry)
    return render(request, "model.html", model=entry_json(entry), card=render_card(text) if text is not None else None,
                  results=results, layer_groups=model_layers(service, results, entry))


@router.get("/results")
def results_page(request: Request) -> HTMLResponse:
    kind = request.query_params.get("kind") or None
    model = (request.query_params.get("model") or "").strip() or None
    if kind is not None and kind not in KINDS:
        raise ServiceRequestError(f"kind: {kind!r} is not a comparison kind (one of {', '.join(KINDS)})")
    found = service_of(request).store.list(kind=kind, model=model, limit=500)
    return render(request, "results.html", results=found, kinds=KINDS, kind=kind, model=model)


@router.get("/results/{key}")
def result_page(request: Request, key: str) -> HTMLResponse:
    return _result_response(request, key)


@router.post("/results/{key}/push")
async def result_push_submit(request: Request, key: str) -> HTMLResponse:
    """The result page's "share on the Hub" form: the same push (and the same write rule) as the API's."""
    service = service_of(request)
    form = await request.form(max_files=0, max_fields=5)
    repo = str(form.get("repo") or "").strip()
    share: dict = {"repo": repo}
    status = 200
    try:
        check_same_origin(request)
        service.config.check_write(bearer(request) or str(form.get("token") or "") or None)
        share |= await run_in_threadpool(push_stored_result, service, key, {"repo": repo, "private": form.get("private") == "on"})
    except HubcompareError as e:
        status, share["error"] = status_for(e), str(e)
    return _result_response(request, key, status=status, share=share)


def _result_response(request: Request, key: str, *, status: int = 200, share: dict | None = None) -> HTMLResponse:
    service = service_of(request)
    stored = service.result(key)
    pairs = cka_pairs(stored)
    pair = request.query_params.get("pair") or (pairs[0] if pairs else None)
    if pair is not None and pair not in pairs:
        raise ServiceRequestError(f"pair: {pair!r} is not one of this result's CKA files ({', '.join(pairs) or 'none'})")
    heatmap = heatmap_for(service, stored, pair) if pair else None
    blocks, classes = [], []
    if stored.kind == "blocks" and "blocks.json" in stored.files:
        blocks = service.read_json(stored, "blocks.json").get("blocks") or []
    if stored.kind == "class-diff" and "class_diff.json" in stored.files:
        classes = service.read_json(stored, "class_diff.json").get("classes") or []
    figures = [n for n in stored.files if n.endswith(".png")]
    summary = stored.summary
    settings = [(k, rows) for k, v in summary.items() if k in SETTINGS_KEYS and isinstance(v, dict) for rows in [headline_rows(v)] if rows]
    skip = SETTINGS_KEYS + (("blocks",) if blocks else ())
    return render(request, "result.html", status=status, share=share or {}, result=stored, title=result_title(stored), headline=headline_rows(summary, skip=skip),
                  settings=settings, pair_table=pair_rows(summary), pairs=pairs, pair=pair, heatmap=heatmap, blocks=blocks,
                  classes=classes, list_tables=list_tables(summary, skip=skip), seed_table=seed_rows(summary),
                  figures=figures, warnings=list(summary.get("warnings") or []))


@router.get("/results/{key}/files/{name}")
def result_file_page(request: Request, key: str, name: str) -> Response:
    stored = service_of(request).exact_result(key)
    return download(stored.file(name), name)


def _compare_context(request: Request, values: dict, error: str | None = None) -> dict:
    registry = service_of(request).registry()
    entries = list(registry.entries().values())
    pops = sorted({p for e in entries for p in e.populations})
    config = service_of(request).config
    return {"values": values, "error": error, "names": [e.name for e in entries], "populations": pops, "kinds": KINDS,
            "one_model_kinds": ONE_MODEL_KINDS, "sized_kinds": SIZED_KINDS, "layer_kinds": LAYER_KINDS, "datasets": list(DATASETS),
            "max_examples": config.max_examples}


@router.get("/compare")
def compare_page(request: Request) -> HTMLResponse:
    values = {k: request.query_params.get(k, "") for k in FORM_FIELDS}
    values["kind"] = values["kind"] or "cross-cka"
    values["examples"] = values["examples"] or str(min(DEFAULT_EXAMPLES, service_of(request).config.max_examples))
    return render(request, "compare.html", **_compare_context(request, values))


@router.post("/compare")
async def compare_submit(request: Request) -> Response:
    service = service_of(request)
    form = await request.form(max_files=0, max_fields=20)
    values = {k: str(form.get(k) or "") for k in FORM_FIELDS}
    try:
        check_same_origin(request)
        service.config.check_write(bearer(request) or str(form.get("token") or "") or None)
        req = form_request(values, service.config)
        job, _ = service.jobs.submit(req.to_json())
    except HubcompareError as e:
        return render(request, "compare.html", status=status_for(e), **_compare_context(request, values, str(e)))
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> HTMLResponse:
    job = service_of(request).jobs.get(job_id)
    return render(request, "job.html", job=job)


@router.get("/docs")
def docs_page(request: Request) -> HTMLResponse:
    """The API's operations from the OpenAPI schema, as a plain page (Swagger UI would need a CDN)."""
    schema = request.app.openapi()
    ops = [{"method": m.upper(), "path": p, "summary": op.get("summary", "")} for p, item in schema["paths"].items()
           for m, op in item.items()]
    return render(request, "docs.html", ops=ops, title=schema["info"]["title"], version=schema["info"]["version"])
