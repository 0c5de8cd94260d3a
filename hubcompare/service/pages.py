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

from ..comparisons.kinds import kind_names, specs
from ..data.datasets import DATASETS
from ..errors import HubcompareError, ServiceRequestError
from ..similarity.measures import measure_names
from .api import download
from .bounded import ONE_RESULT_BUDGET, bounded, page_number, page_of
from .card import render_card
from .checks import form_request, job_advice
from .listing import result_rows
from .views import (
    SETTINGS_KEYS,
    ModelFilters,
    Service,
    bearer,
    card_text,
    check_same_origin,
    cka_pairs,
    document_tables,
    drawn_figures,
    entry_json,
    headline_rows,
    heatmap_for,
    heatmaps_of,
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
FORM_FIELDS = ("model_a", "model_b", "kind", "dataset", "layers", "examples", "measures")
DEFAULT_EXAMPLES = 500
MAX_HEADLINE_ROWS = 300  # a summary's values on its page


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
                  results=result_rows(results), layer_groups=model_layers(service, results, entry))


@router.get("/results")
def results_page(request: Request) -> HTMLResponse:
    kind = request.query_params.get("kind") or None
    model = (request.query_params.get("model") or "").strip() or None
    if kind is not None and kind not in kind_names():
        raise ServiceRequestError(f"kind: {kind!r} is not a comparison kind (one of {', '.join(kind_names())})")
    found = service_of(request).store.list(kind=kind, model=model, limit=500)
    return render(request, "results.html", results=result_rows(found), kinds=kind_names(), kind=kind, model=model)


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
    """A result's page, bounded whatever the store holds: a large heatmap block-averaged, at most ONE_RESULT_BUDGET
    values of the summary and provenance, long tables ``MAX_TABLE_ROWS`` rows a page (``?page=N``)."""
    service = service_of(request)
    stored = service.result(key)
    pairs = cka_pairs(stored)
    pair = request.query_params.get("pair") or (pairs[0] if pairs else None)
    if pair is not None and pair not in pairs:
        raise ServiceRequestError(f"pair: {pair!r} is not one of this result's CKA files ({', '.join(pairs) or 'none'})")
    heatmap = heatmap_for(service, stored, pair) if pair else None
    number = page_number(request.query_params.get("page"))
    blocks, classes, cut = page_of([], 1), page_of([], 1), []
    rows, digests = document_tables(service, stored)
    blocks = page_of(rows.get("blocks") or [], number) if "blocks" in rows else blocks
    classes = page_of(rows.get("classes") or [], number) if "classes" in rows else classes
    for (what, digest), field_name in zip(digests, rows):
        cut += _cut_rows(what, digest, field_name)
    drawn = drawn_figures(stored, pairs) if heatmap is not None else set()
    per_measure = bool((shown := heatmaps_of(stored)) and shown.per_measure)  # compare: its pairs are per measure
    figures = [n for n in stored.files if n.endswith(".png") and n not in drawn]  # the heatmap is drawn once, as SVG
    summary, cut_summary = bounded(stored.summary, ONE_RESULT_BUDGET, "summary")
    key_inputs, cut_inputs = bounded(stored.key_inputs, ONE_RESULT_BUDGET, "key_inputs")
    asked, cut_request = bounded(stored.request, ONE_RESULT_BUDGET, "request")
    summary = summary if isinstance(summary, dict) else {}
    warnings = summary.get("warnings") if isinstance(summary.get("warnings"), list) else []
    settings = [(k, rows) for k, v in summary.items() if k in SETTINGS_KEYS and isinstance(v, dict) for rows in [headline_rows(v)] if rows]
    skip = SETTINGS_KEYS + (("blocks",) if blocks.total else ())
    headline = headline_rows(summary, skip=skip)
    if len(headline) > MAX_HEADLINE_ROWS:
        cut.append(f"summary: the first {MAX_HEADLINE_ROWS:,} of {len(headline):,} values shown")
        headline = headline[:MAX_HEADLINE_ROWS]
    tables = [t | {"page": page_of(t["rows"], number)} for t in list_tables(summary, skip=skip)]
    return render(request, "result.html", status=status, share=share or {}, result=stored, title=result_title(stored), headline=headline,
                  settings=settings, pair_table=page_of([] if per_measure else pair_rows(summary), number), pairs=pairs, pair=pair, heatmap=heatmap,
                  blocks=blocks, classes=classes, list_tables=tables, seed_table=seed_rows(summary), figures=figures,
                  warnings=[str(w)[:2000] for w in warnings[:50]],
                  key_inputs=key_inputs, asked=asked, truncated=cut + cut_summary + cut_inputs + cut_request, page=number)


def _cut_rows(what: str, digest: dict, field: str) -> list[str]:
    total, kept = digest.get(f"{field}_total", 0), len(digest.get(field) or [])
    return [f"{what}: the first {kept:,} of {total:,} rows shown"] if total > kept else []


@router.get("/results/{key}/files/{name}")
def result_file_page(request: Request, key: str, name: str) -> Response:
    stored = service_of(request).exact_result(key)
    return download(stored.file(name), name)


def _compare_context(request: Request, values: dict, error: str | None = None) -> dict:
    registry = service_of(request).registry()
    entries = list(registry.entries().values())
    pops = sorted({p for e in entries for p in e.populations})
    config = service_of(request).config
    return {"values": values, "error": error, "names": [e.name for e in entries], "choices": [(e.name, _choice_label(e)) for e in entries],
            "populations": pops, "kinds": kind_names(),
            "one_model_kinds": [s.name for s in specs() if s.one_model], "sized_kinds": [s.name for s in specs() if s.sized],
            "layer_kinds": [s.name for s in specs() if s.layers],
            "measures_kinds": [s.name for s in specs() if s.option("measures")],
            "kind_summaries": [(s.name, s.summary) for s in specs()], "datasets": list(DATASETS),
            "max_examples": config.max_examples, "measure_names": measure_names()}


def _choice_label(e) -> str:
    """What the model picker shows beside a registry name: depth, width, dataset, seed, accuracy."""
    parts = [f"depth {e.depth}" if e.depth else "", f"width {e.width:g}" if e.width else "", e.dataset or "",
             f"seed {e.seed}" if e.seed is not None else "", f"acc {e.accuracy:.3f}" if e.accuracy is not None else ""]
    return " · ".join(p for p in parts if p) or (e.architecture or e.reference)


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
        req = form_request(values, service.config, service.registry())
        job, _ = service.jobs.submit(req.to_json())
    except HubcompareError as e:
        return render(request, "compare.html", status=status_for(e), **_compare_context(request, values, str(e)))
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> HTMLResponse:
    job = service_of(request).jobs.get(job_id)
    return render(request, "job.html", job=job, advice=job_advice(job.error_type) if job.state == "failed" else None)


@router.get("/docs")
def docs_page(request: Request) -> HTMLResponse:
    """The API's operations from the OpenAPI schema, as a plain page (Swagger UI would need a CDN)."""
    schema = request.app.openapi()
    ops = [{"method": m.upper(), "path": p, "summary": op.get("summary", "")} for p, item in schema["paths"].items()
           for m, op in item.items()]
    return render(request, "docs.html", ops=ops, title=schema["info"]["title"], version=schema["info"]["version"])
