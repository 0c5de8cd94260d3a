"""What the pages and the JSON API both show, computed once: registry entries, stored results, request checks.

The pages (:mod:`.pages`) and the API (:mod:`.api`) are two renderings of these dicts. Nothing here trusts a
request: filters are parsed into typed values, a result is found by its hex key through the store, a file by a
name the result lists, and comparison requests are checked in :mod:`.checks`.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from threading import BoundedSemaphore, Lock
from urllib.parse import urlsplit

from huggingface_hub import try_to_load_from_cache

from ..errors import CrossSiteWriteError, ResultNotFoundError, ServiceRequestError, short_repr
from ..hub.names import parse_reference
from ..comparisons.kinds import kind_names, spec_for
from ..comparisons.kindspec import Heatmaps, KindSpec
from ..hub.registry import Entry, Registry
from ..results.store import ResultStore, StoredResult, check_key
from .config import ServiceConfig
from .bounded import ONE_RESULT_BUDGET, bounded
from .heatmap import Heatmap, build_heatmap
from .jobs import JobQueue

__all__ = ["ModelFilters", "Service", "entry_json", "result_json"]

MAX_CARD_BYTES = 200_000
MAX_JSON_FILE_BYTES = 50_000_000
SMALL_JSON_BYTES = 1_000_000  # a JSON file over this is parsed in one of PARSE_SLOTS at a time
PARSE_SLOTS = 1
CACHE_SIZE = 32  # digests of result files kept (results are immutable: a key names its content); each is bounded
MAX_DIGEST_ROWS = 10_000  # rows of a result file's table kept for its pages
MAX_MEASURE_HEATMAPS = 64  # a compare result's pairs x measures the page offers (measures.json holds them all)
_parse_slots = BoundedSemaphore(PARSE_SLOTS)


@dataclass
class Service:
    """The server's state: its settings, the registry, the store and the job queue (one of each per app)."""

    config: ServiceConfig
    store: ResultStore
    jobs: JobQueue

    def __post_init__(self) -> None:
        self._cache: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._cache_lock = Lock()
        self._flights: dict[tuple[str, str], Lock] = {}

    def registry(self) -> Registry:
        return Registry(self.config.registry_path)  # cheap; re-read per request so edits elsewhere show at once

    def result(self, key: str) -> StoredResult:
        """A stored result by its key or a unique prefix (hex only)."""
        try:
            return self.store.resolve(key)
        except ResultNotFoundError:
            raise ResultNotFoundError(f"no stored result has a key starting {short_repr(key)}: the stored results are at "
                                      "/results, the models at /models") from None

    def exact_result(self, key: str) -> StoredResult:
        stored = self.store.get(check_key(key))
        if stored is None:
            raise ResultNotFoundError(f"no stored result {key[:16]}…: the stored results are at /results")
        return stored

    def read_json(self, stored: StoredResult, name: str):
        """A result's JSON file, parsed (not cached: pages cache what they show of it, :meth:`digest`). At most
        ``PARSE_SLOTS`` files over ``SMALL_JSON_BYTES`` are parsed at once, so concurrent views of large results take
        a bounded amount of memory."""
        path = stored.file(name)
        size = path.stat().st_size
        if size > MAX_JSON_FILE_BYTES:
            raise ServiceRequestError(f"{name} of result {stored.key[:12]} is too large to show here: download it")
        if size <= SMALL_JSON_BYTES:
            return json.loads(path.read_text(encoding="utf-8"))
        with _parse_slots:
            return json.loads(path.read_text(encoding="utf-8"))

    def digest(self, stored: StoredResult, name: str) -> dict:
        """What the pages show of one of a result's JSON files (its heatmap, layer names, table rows: bounded in
        size), computed once per file (concurrent views of one result wait for the first) and cached (a key's
        files never change)."""
        cache_key = (stored.key, name)
        with self._cache_lock:
            hit = self._cache.get(cache_key)
            if hit is not None:
                self._cache.move_to_end(cache_key)
                return hit
            flight = self._flights.setdefault(cache_key, Lock())
        with flight:
            with self._cache_lock:
                hit = self._cache.get(cache_key)
            if hit is None:
                hit = file_digest(stored, name, self.read_json(stored, name))
                with self._cache_lock:
                    self._cache[cache_key] = hit
                    while len(self._cache) > CACHE_SIZE:
                        self._cache.popitem(last=False)
            with self._cache_lock:
                self._flights.pop(cache_key, None)
        return hit


def file_digest(s: StoredResult, name: str, data) -> dict:
    """The bounded part of a result's JSON file the pages show: ``heatmap`` (a CKA file, block-averaged when large),
    ``layers`` ({"a", "b", "ref_a", "ref_b", "label_a", "label_b"}), ``blocks`` / ``classes`` (table rows, at most
    ``MAX_DIGEST_ROWS``)."""
    out: dict = {}
    if not isinstance(data, dict):
        return out
    shown = heatmaps_of(s)
    if shown is not None and shown.per_measure and name in role_files(s, shown.role):
        out["heatmaps"] = _measure_heatmaps(data)
        return out
    if shown is not None and not shown.per_measure and name in cka_pairs(s):
        cka = data.get(shown.key) if shown.key else data
        if isinstance(cka, dict):
            blocks = [b for b in data.get("blocks") or [] if isinstance(b, dict)] if shown.key else []
            title = (f"within-model CKA of {cka.get('label_a') or data.get('ref')}" if shown.within
                     else f"{cka.get('label_a')} vs {cka.get('label_b')}")
            out["heatmap"] = build_heatmap(cka, title=title, blocks=blocks)
            layers = {side: [str(x) for x in cka.get(f"layers_{side}") or []] for side in ("a", "b")}
            out["layers"] = layers | {k: str(cka.get(k) or "") for k in ("ref_a", "ref_b", "label_a", "label_b")}
    for field_name in ("blocks", "classes"):
        rows = data.get(field_name)
        if isinstance(rows, list):
            out[field_name] = [r for r in rows[:MAX_DIGEST_ROWS] if isinstance(r, dict)]
            out[f"{field_name}_total"] = len(rows)
    return out


def _measure_heatmaps(doc: dict) -> dict[str, Heatmap]:
    """Each pair's each measure of a compare result's ``measures.json``, by ``STEM:MEASURE.json``, on the measure's
    own range."""
    out: dict[str, Heatmap] = {}
    for pair in doc.get("pairs") or []:
        if not isinstance(pair, dict) or not isinstance(pair.get("measures"), dict):
            continue
        for name, e in pair["measures"].items():
            if not isinstance(e, dict):
                continue
            low, high = (e.get("range") or [0.0, 1.0])[:2]
            values = {"layers_a": e.get("layers_a") or [], "layers_b": e.get("layers_b") or [], "cka": e.get("value"),
                      "se": e.get("se"), "label_a": pair.get("label_a"), "label_b": pair.get("label_b")}
            out[f"{pair.get('stem')}:{name}.json"] = build_heatmap(
                values, title=f"{e.get('key', name)}: {pair.get('label_a')} vs {pair.get('label_b')}",
                measure=str(e.get("key", name)), value_range=(float(low), float(high)))
            if len(out) >= MAX_MEASURE_HEATMAPS:
                return out
    return out


# --- the registry ------------------------------------------------------------------------------
@dataclass
class ModelFilters:
    population: str | None = None
    depth: int | None = None
    width: float | None = None
    dataset: str | None = None
    text: str | None = None

    @classmethod
    def parse(cls, params) -> "ModelFilters":
        """From query parameters (strings); a bad number is a typed error naming the field."""
        def value(name: str) -> str | None:
            v = params.get(name)
            return v.strip() or None if isinstance(v, str) else None

        out = cls(population=value("population"), dataset=value("dataset"), text=value("text"))
        depth, width = value("depth"), value("width")
        try:
            out.depth = int(depth) if depth is not None else None
        except ValueError:
            raise ServiceRequestError(f"depth: {short_repr(depth)} is not a whole number", params=("depth",)) from None
        try:
            out.width = float(width) if width is not None else None
        except ValueError:
            raise ServiceRequestError(f"width: {short_repr(width)} is not a number", params=("width",)) from None
        if out.width is not None and not math.isfinite(out.width):
            raise ServiceRequestError(f"width: {short_repr(width)} is not a finite number", params=("width",))
        return out

    def apply(self, registry: Registry) -> list[Entry]:
        found = registry.query(population=self.population, depth=self.depth, width=self.width, dataset=self.dataset)
        if self.text:
            needle = self.text.lower()
            found = [e for e in found if needle in e.name.lower() or needle in e.reference.lower()
                     or needle in (e.architecture or "").lower()]
        return found

    def to_json(self) -> dict:
        return {"population": self.population, "depth": self.depth, "width": self.width, "dataset": self.dataset, "text": self.text}


def entry_json(e: Entry) -> dict:
    """An entry as shown: its fields, where it is defined (a curated file's name, not the server's path)."""
    source = "user" if e.source == "user" else "curated: " + Path(e.source.rsplit(":", 1)[0]).name
    return {"name": e.name, "reference": e.reference, "commit": e.commit_sha, "architecture": e.architecture, "depth": e.depth,
            "width": e.width, "dataset": e.dataset, "data_fraction": e.data_fraction, "seed": e.seed, "accuracy": e.accuracy,
            "populations": list(e.populations), "source": source, "added_at": e.added_at}


def card_text(e: Entry) -> str | None:
    """The model card's text when it is already on this machine (a pulled Hub model); None otherwise (never downloaded
    for a page)."""
    try:
        ref = parse_reference(e.reference)
    except Exception:  # noqa: BLE001 - a curated entry that does not parse shows no card
        return None
    path = None
    if ref.kind == "hf-hub":
        found = try_to_load_from_cache(ref.target, "README.md", revision=e.commit_sha or ref.revision)
        path = Path(found) if isinstance(found, str) else None
    elif ref.kind == "local-dir":
        path = Path(ref.target) / "README.md"  # the registry's own entry (server-side), never a request's
    if path is None or not path.is_file():
        return None
    return path.read_bytes()[:MAX_CARD_BYTES].decode("utf-8", errors="replace")


def model_results(service: Service, e: Entry) -> list[StoredResult]:
    """Stored comparisons the model appears in (by registry name or by its reference)."""
    seen: dict[str, StoredResult] = {}
    for name in (e.name, e.reference):
        for s in service.store.list(model=name, limit=200):
            seen.setdefault(s.key, s)
    return sorted(seen.values(), key=lambda s: s.created, reverse=True)


def model_layers(service: Service, results: list[StoredResult], e: Entry) -> list[dict]:
    """The model's tapped layers as its stored CKA comparisons recorded them (building the model is not cheap): one
    group per distinct layer list, ``{"layers": [...], "results": [StoredResult, ...]}``, longest first. Different
    comparisons may tap different layers (a layer glob, a kind's default), so each list names where it came from."""
    groups: dict[tuple[str, ...], list[StoredResult]] = {}
    for s in results:
        layers = _layers_in(service, s, e)
        if layers:
            groups.setdefault(tuple(layers), []).append(s)
    return [{"layers": list(k), "results": v} for k, v in sorted(groups.items(), key=lambda kv: -len(kv[0]))]


def _layers_in(service: Service, s: StoredResult, e: Entry) -> list[str]:
    for name in cka_pairs(s):
        layers = service.digest(s, name).get("layers")
        if not layers:
            continue
        for side in ("a", "b"):
            ref = layers[f"ref_{side}"]
            if e.name in (ref, layers[f"label_{side}"]) or (ref and ref.split("@")[0] == e.reference.split("@")[0]):
                return layers[side]
    return []


# --- stored results --------------------------------------------------------------------------
def result_json(s: StoredResult, budget: int = ONE_RESULT_BUDGET) -> dict:
    """A stored result for the API: everything but the server's folder, with its files' URLs. Its summary, key
    inputs and request show at most ``budget`` values each (``truncated`` names each cut: the files hold it all)."""
    d = s.to_json()
    d.pop("path", None)
    d["pulled"], d["origin"] = s.pulled, s.origin  # computed here, or pulled from hf-hub-result:OWNER/NAME@SHA
    cuts: list[str] = []
    for name in ("summary", "key_inputs", "request"):
        d[name], cut = bounded(d[name], budget, name)
        cuts += cut
    if cuts:
        d["truncated"] = cuts
    d["urls"] = {"page": f"/results/{s.key}", "files": {n: f"/results/{s.key}/files/{n}" for n in s.files}}
    return d


def _spec(s: StoredResult) -> KindSpec | None:
    """The stored result's kind's spec (None for a kind this version does not know)."""
    return spec_for(s.kind) if s.kind in kind_names() else None


def heatmaps_of(s: StoredResult) -> Heatmaps | None:
    """Where a stored result's kind keeps its heatmaps (its :class:`Heatmaps`; None for a kind without any, or one
    this version does not know)."""
    spec = _spec(s)
    return spec.heatmaps if spec else None


def role_files(s: StoredResult, role: str) -> list[str]:
    """The stored result's files that play ``role`` for its kind (figures as stored: PNG), sorted by name."""
    spec = _spec(s)
    return spec.paths(sorted(s.files), role) if spec else []


def cka_pairs(s: StoredResult) -> list[str]:
    """The heatmaps the page can show, in order, by name: the JSON files of the role the kind's :class:`Heatmaps`
    names (a cross-cka result's per-pair files, a blocks result's document); with ``per_measure``, each pair's each
    measure of the document, named ``STEM:MEASURE.json``."""
    shown = heatmaps_of(s)
    if shown is None:
        return []
    files = role_files(s, shown.role)
    if not shown.per_measure:
        return files
    stems = [p.get("stem") for p in s.summary.get("pairs") or [] if isinstance(p, dict)]
    names = [str(k).split("(")[0] for k in s.summary.get("measures") or []]
    found = [f"{stem}:{name}.json" for stem in stems for name in names] if files else []
    return found[:MAX_MEASURE_HEATMAPS]


def drawn_figures(s: StoredResult, pairs: list[str]) -> set[str]:
    """The PNG figures of ``pairs``' heatmaps, which the page draws as SVG instead (a pair's own figure, or the one
    figure of a single-document kind)."""
    shown = heatmaps_of(s)
    if shown is None or shown.per_measure:
        return set()
    figures = role_files(s, shown.figure_role)
    stems = {p[: -len(".json")] for p in pairs}
    own = {f for f in figures if f[: -len(".png")] in stems}
    return own or (set(figures) if len(pairs) == 1 else set())


def document_tables(service: Service, s: StoredResult) -> tuple[dict[str, list], list[tuple[str, dict]]]:
    """The row tables the kind's document holds (its ``tables`` fields, at most ``MAX_DIGEST_ROWS`` rows each) by
    field, and (what, digest) for the notes on rows left out."""
    spec = _spec(s)
    documents = role_files(s, "document")
    if not spec or not spec.tables or len(documents) != 1:
        return {}, []
    digest = service.digest(s, documents[0])
    return ({f: digest.get(f) or [] for f in spec.tables}, [(f"{documents[0]}: {f}", digest) for f in spec.tables])


def heatmap_for(service: Service, s: StoredResult, name: str) -> Heatmap | None:
    shown = heatmaps_of(s)
    if shown is not None and shown.per_measure:
        documents = role_files(s, shown.role)
        return service.digest(s, documents[0]).get("heatmaps", {}).get(name) if documents else None
    return service.digest(s, name).get("heatmap")


SETTINGS_KEYS = ("batch_plan", "dataset", "criteria", "models", "labels", "pairs", "warnings", "sides")


def result_title(s: StoredResult) -> str:
    return s.title or f"{s.kind}: {' vs '.join(s.request.get('refs', [])) or s.key[:12]}"


def pair_rows(summary: dict) -> list[dict]:
    """A CKA result's pairs (cross-cka): the two models' labels and the pair's headline numbers."""
    labels = [m.get("label") or m.get("ref") for m in summary.get("models", []) if isinstance(m, dict)]
    rows = []
    for p in summary.get("pairs") or []:
        if not isinstance(p, dict):
            continue
        name = lambda i: labels[i] if isinstance(i, int) and 0 <= i < len(labels) else str(i)  # noqa: E731
        rows.append({"a": name(p.get("a")), "b": name(p.get("b")), "stem": p.get("stem"), "mean_diagonal_cka": p.get("mean_diagonal_cka"),
                     "mean_cka": p.get("mean_cka"), "max_se": p.get("max_se"), "layers": p.get("layers")})
    return rows


# what a summary's null means, by key (the default: "n/a")
NONE_MEANS = {
    "mcnemar_p": "n/a (McNemar's test needs one model a side)",
    "null_from": "none (no split-half null: see the warnings)",
    "permutation_p": "n/a (no permutation test)",
    "outside_band": "n/a (no split-half null)",
    "outside_band_p": "n/a (no split-half null)",
}
EMPTY_MEANS = {"blocks": "none detected", "significant_classes": "none"}
MAX_LIST_ITEMS = 30


def _text(key: str, v) -> str | None:
    """A summary value as words (None: not shown, e.g. a list of objects with a table of its own)."""
    if v is None:
        return NONE_MEANS.get(key, "n/a")
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (int, str)):
        return str(v)
    if isinstance(v, list):
        if not v:
            return EMPTY_MEANS.get(key, "none")
        if all(isinstance(x, (int, float, str)) and not isinstance(x, bool) for x in v):
            shown = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:MAX_LIST_ITEMS])
            return shown + (f", … ({len(v)} in all)" if len(v) > MAX_LIST_ITEMS else "")
        return f"{len(v)} (in the table below)" if key in EMPTY_MEANS else None
    return None


def headline_rows(summary: dict, prefix: str = "", depth: int = 0, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """A summary's numbers as (name, text) rows, nested objects flattened with dots; a null or empty value says what
    it means ("n/a (...)", "none"); lists of objects are left to their own tables and the JSON."""
    rows: list[tuple[str, str]] = []
    for k, v in summary.items():
        name = f"{prefix}{k}"
        if k == "warnings" or k in skip:
            continue
        if isinstance(v, dict) and depth < 2:
            rows += headline_rows(v, name + ".", depth + 1)
            continue
        text = _text(k, v)
        if text is not None:
            rows.append((name, text))
    return rows


def list_tables(summary: dict, skip: tuple[str, ...] = ()) -> list[dict]:
    """A summary's lists of flat objects (e.g. delete-blocks' stages) as tables: ``{"name", "columns", "rows"}`` with
    each cell in words (as :func:`headline_rows`)."""
    tables = []
    for k, v in summary.items():
        if k in skip or k in ("pairs", "warnings") or not isinstance(v, list) or not v or not all(isinstance(x, dict) for x in v):
            continue
        columns = list(dict.fromkeys(c for x in v for c in x))
        rows = [[_text(c, x.get(c)) or "" for c in columns] for x in v]
        tables.append({"name": k, "columns": columns, "rows": rows})
    return tables


def seed_rows(summary: dict) -> list[dict]:
    """An across-seeds summary's pair sets (within each side, across them): mean, sd, count and range of CKA over
    their model pairs (all classes of layer pair together)."""
    sets = summary.get("across_seeds")
    if not isinstance(sets, dict):
        return []
    rows = []
    for name, v in sets.items():
        stat = v.get("all") if isinstance(v, dict) else None
        if isinstance(stat, dict):
            rows.append({"set": name.replace("_", " "), **{k: _text(k, stat.get(k)) for k in ("mean", "sd", "n", "min", "max")}})
    return rows


def status_for(e: Exception) -> int:
    """The HTTP status of a typed error: the one its class declares (``HubcompareError.http_status``), else 404 for
    what is not there and 400 for the rest."""
    declared = getattr(type(e), "http_status", None)
    if isinstance(declared, int):
        return declared
    return 404 if isinstance(e, LookupError) else 400


# --- writes ------------------------------------------------------------------------------------
def bearer(request) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, if any."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check_same_origin(request) -> None:
    """Refuse a write a browser sent from another site's page (its Origin names another host): without this, any
    page a user of a loopback server opens could queue work on it."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # not a browser's cross-site request (curl, scripts)
    host = (request.headers.get("host") or "").lower()
    if origin == "null" or urlsplit(origin).netloc.lower() != host:
        raise CrossSiteWriteError(f"a write sent from another site's page ({short_repr(origin)}) is refused: use this "
                                  "server's own compare form")
