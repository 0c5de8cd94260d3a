"""Comparison requests as the server takes them: strict JSON, references in the forms it accepts (never a path),
the kinds' fields from the compare form, and this server's own size caps on top of ``ComparisonRequest.from_json``.
"""

from __future__ import annotations

import json
import re

from ..comparisons.kinds import kind_names, spec_for
from ..comparisons.kindspec import KindSpec
from ..comparisons.requests import ComparisonRequest
from ..hub.sidespec import SIDE_SCHEMES, names_many_models, side_items
from ..errors import ServiceRequestError, short_repr
from ..hub.names import NAME
from .config import ServiceConfig

__all__ = ["check_form_references", "check_hub_reference", "check_registered",
           "check_request", "form_request", "job_advice", "names_a_side", "parse_request_body"]

MAX_PASSES = 16


# --- comparison requests -------------------------------------------------------------------------
def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} appears twice")
        out[k] = v
    return out


def parse_request_body(body: bytes) -> dict:
    """Strict JSON (no NaN, no duplicate keys, no deep nesting tricks) of an object."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ServiceRequestError(f"the body is not a JSON object ({str(e)[:200]}): send a ComparisonRequest as JSON, "
                                  'e.g. {"kind": "cross-cka", "refs": ["A", "B"], "examples": 500}') from None
    if not isinstance(data, dict):
        raise ServiceRequestError(f"the body is a JSON {type(data).__name__}, not an object: send a ComparisonRequest object")
    return data


ACCEPTED_REFERENCES = "a registered model's name, hf-hub:OWNER/NAME[@REV] or timm:NAME"
ACCEPTED_SIDES = ("population:NAME, registry:KEY=VALUE, hf-tag:TAG, collection:SLUG, a registered model's name, "
                  "hf-hub:OWNER/NAME[@REV], timm:NAME, or models joined by '+'")


def names_a_side(ref: str) -> bool:
    """A many-model side (population:NAME, A+B, ...) rather than one model: what turns cross-cka into across-seeds,
    as the CLI's cross-cka does."""
    return names_many_models(ref)  # the service opens no paths: no folder is one model


def check_references(data: dict) -> None:
    """Every reference is one of the forms this server takes; anything else (a path, a typo) is refused with the
    accepted forms named, before the request is parsed any further (so no guess about the server's folders is
    echoed back)."""
    refs, kind = data.get("refs"), data.get("kind")
    if not isinstance(refs, list):
        return  # from_json names the problem
    sides = kind in kind_names() and spec_for(kind).sides
    for i, ref in enumerate(refs):
        if not isinstance(ref, str):
            continue
        parts = [item.text for item in side_items(ref)] if sides else [ref.strip()]
        for part in parts:
            if not _reference_form(part, sides):
                raise ServiceRequestError(f"refs[{i}]: {short_repr(ref)} is not a reference this server takes: give "
                                          f"{ACCEPTED_SIDES if sides else ACCEPTED_REFERENCES}", params=(f"refs[{i}]",))


HUB_REFERENCES = "hf-hub:OWNER/NAME[@REV] or timm:NAME"


def check_hub_reference(ref, field: str = "reference") -> str:
    """A Hub or timm model reference, as a registry entry written from a request must be: never a path, and never a
    bare word either (the resolver would take one that is a folder on the server for a checkpoint folder)."""
    text = ref.strip() if isinstance(ref, str) else ""
    if text.partition(":")[0] not in ("hf-hub", "timm") or not _reference_form(text, sides=False):
        raise ServiceRequestError(f"{field}: {short_repr(ref)} is not a reference this server records: give {HUB_REFERENCES} "
                                  "(a registry entry written here names a model on the Hub, never a path on the server)",
                                  params=(field,))
    return text


def _reference_form(ref: str, sides: bool) -> bool:
    scheme, sep, rest = ref.partition(":")
    if not sep:
        return NAME.fullmatch(ref) is not None and ".." not in ref
    if scheme == "hf-hub":
        return re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*(@[\w.\-/]+)?", rest) is not None and ".." not in rest
    if scheme == "timm":
        return NAME.fullmatch(rest) is not None
    return sides and scheme in SIDE_SCHEMES and bool(rest.strip()) and not rest.startswith(("/", "~", "."))


def check_request(data: dict, config: ServiceConfig) -> ComparisonRequest:
    """A comparison request this server will run: valid (no paths), and inside its size caps. A cross-cka of two
    population sides is an across-seeds comparison, as the CLI's cross-cka makes it."""
    refs, kind = data.get("refs"), data.get("kind")
    many = spec_for(kind).many_sides_kind if isinstance(kind, str) and kind in kind_names() else None
    if many and isinstance(refs, list) and any(isinstance(r, str) and names_a_side(r) for r in refs):
        data = data | {"kind": many}
    check_references(data)
    req = ComparisonRequest.from_json(data, allow_paths=False)
    spec = spec_for(req.kind)

    def refuse(field: str, message: str) -> ServiceRequestError:
        return ServiceRequestError(f"{field}: {message}", params=(field,))

    if spec.sized:
        if req.examples is None or req.examples > config.max_examples:
            raise refuse("examples", f"this server computes at most {config.max_examples:,} examples per comparison: "
                                     f"give examples from 4 to {config.max_examples:,}")
        if req.passes > MAX_PASSES:
            raise refuse("passes", f"at most {MAX_PASSES} passes on this server")
        if req.batch_size is not None and req.batch_size > config.max_examples:
            raise refuse("batch_size", f"at most {config.max_examples:,} (the server's examples cap)")
        if len(req.refs) > config.max_models:
            raise refuse("refs", f"at most {config.max_models} models in one comparison on this server")
    for opt in spec.options:  # the kind's own caps on this server
        v, cap = req.options.get(opt.name), opt.server_cap
        cap = config.max_examples if cap == "examples" else cap
        if opt.server_required and v is None:
            raise refuse(f"options.{opt.name}", f"give {opt.doc} (at most {cap:,} on this server)")
        if v is not None and cap is not None and v > cap:
            raise refuse(f"options.{opt.name}", f"at most {cap:,} on this server")
    if spec.sides:
        for i, side in enumerate(req.refs):
            if side.count("+") + 1 > config.max_models:
                raise refuse(f"refs[{i}]", f"at most {config.max_models} models listed on a side on this server "
                                           "(name a population instead: population:NAME)")
    return req


PICK_ADVICE = ("pick a model from the list that opens under the field (the Models page lists them all), or type "
               "hf-hub:OWNER/NAME for a model on the Hub, timm:NAME for a timm model")
SIDE_ADVICE = "population:NAME from the list, or models joined by '+'"


# failed jobs whose cause is a model the request named: what to do about it on the pages
MODEL_ERRORS = ("InvalidReferenceError", "ReferenceNotFoundError", "HubRepoNotFoundError", "HubRevisionNotFoundError",
                "HubFileNotFoundError", "NotInCacheError", "RegistryEntryNotFoundError", "EmptyPopulationError",
                "PickleWeightsRefusedError")
JOB_ADVICE = ("A model this request names could not be found or loaded here. On the Compare page, pick the models "
              "from the list under each field (the Models page lists those registered on this server), or name one on "
              "this server's Hub as hf-hub:OWNER/NAME.")


def job_advice(error_type: str | None) -> str | None:
    """What a failed job's page suggests doing on the pages (the error itself is the typed error's message)."""
    return JOB_ADVICE if error_type in MODEL_ERRORS else None


API_ADVICE = ("the API lists the models registered here (and their populations) at api/models; or give "
              "hf-hub:OWNER/NAME for a model on this server's Hub, timm:NAME for a timm model")


def check_form_references(fields: dict[str, str], kind: str, names, populations, advice: str = PICK_ADVICE,
                          pick_population: str = "pick population:NAME from the list under the field") -> None:
    """The compare form's models (or an API request's ``refs``), before a job is queued: each one a reference this
    server takes, and a bare name one the registry has (a population one it lists). A refusal says what to do:
    ``advice`` (on the page, or over the API)."""
    sides = spec_for(kind).sides
    for field, ref in fields.items():
        parts = [item.text for item in side_items(ref)] if sides else [ref.strip()]
        for part in parts:
            scheme, sep, rest = part.partition(":")
            what = f"{field}: {short_repr(part)}"
            if not _reference_form(part, sides):
                raise ServiceRequestError(f"{what} is not a model this server can compare: {advice}"
                                          f"{' (a side: ' + SIDE_ADVICE + ')' if sides else ''}", params=(field,))
            if not sep and part not in names:
                raise ServiceRequestError(f"{what} is not a model registered on this server: {advice}"
                                          f"{' (a side: ' + SIDE_ADVICE + ')' if sides else ''}", params=(field,))
            if sep and scheme == "population" and rest.strip() not in populations:
                listed = ", ".join(sorted(populations)[:10]) or "none yet"
                raise ServiceRequestError(f"{what}: no registered model is in the population {short_repr(rest.strip())}: "
                                          f"{pick_population} (populations here: {listed})",
                                          params=(field,))


def check_registered(req: ComparisonRequest, registry) -> None:
    """An API request's models, before its job is queued: a bare name must be a registry entry here and a
    population:NAME must have members, as on the form (a job for a model that is not here would only fail later)."""
    entries = registry.entries()
    check_form_references({f"refs[{i}]": r for i, r in enumerate(req.refs)}, req.kind, set(entries),
                          {p for e in entries.values() for p in e.populations}, API_ADVICE,
                          "the API lists a population's models at api/models?population=NAME")


def form_request(form: dict, config: ServiceConfig, registry=None) -> ComparisonRequest:
    """The compare form's fields (model_a, model_b, kind, dataset, layers, examples) as a checked request. A
    cross-cka of two population sides is an across-seeds comparison (as the CLI's cross-cka); probes train on as
    many examples as they are tested on."""
    kind = (form.get("kind") or "cross-cka").strip()
    if kind not in kind_names():
        raise ServiceRequestError(f"kind: {short_repr(kind)} is not a comparison kind (one of {', '.join(kind_names())})")
    spec: KindSpec = spec_for(kind)
    a, b = (form.get("model_a") or "").strip(), (form.get("model_b") or "").strip()
    if not a:
        raise ServiceRequestError("model A is empty: name a registered model (or a side, e.g. population:NAME)")
    if spec.refs[0] >= 2 and not b:
        raise ServiceRequestError(f"model B is empty: {kind} compares two {'sides' if spec.sides else 'models'}")
    one = spec.one_model or not b  # B is optional where the kind takes one or two (grounding's control side)
    if spec.many_sides_kind and (names_a_side(a) or names_a_side(b)):
        kind = spec.many_sides_kind  # before the fields below, which differ by kind
        spec = spec_for(kind)
    if registry is not None:
        entries = registry.entries()
        check_form_references({"model A": a} | ({} if one else {"model B": b}), kind, set(entries),
                              {p for e in entries.values() for p in e.populations})
    data: dict = {"kind": kind, "refs": [a] if one else [a, b]}
    dataset = (form.get("dataset") or "").strip()
    if dataset:
        data["dataset"] = dataset
    if spec.layers:
        layers = [g for g in (form.get("layers") or "").replace(",", " ").split() if g]
        if layers:
            data["layers"] = layers
    if spec.sized:
        examples = (form.get("examples") or "").strip()
        try:
            data["examples"] = int(examples) if examples else None
        except ValueError:
            raise ServiceRequestError(f"examples: {short_repr(examples)} is not a whole number", params=("examples",)) from None
    if spec.form_options is not None:
        data["options"] = spec.form_options(form, data)
    return check_request(data, config)
