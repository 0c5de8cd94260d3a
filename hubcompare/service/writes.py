"""The service's writes other than queueing a job: editing the registry and sharing a stored result on the Hub.

Each takes a strict JSON object (unknown fields refused), checks every value before anything is pulled, written or
pushed, and then calls the same library function as the CLI (``register_reference`` as ``registry add`` does,
``Registry.remove``, ``push_result`` as ``push-result`` does), so the server and the command line cannot drift.
Curated entries (the registry's text files) are never changed from a request, nor shadowed by a user entry.
The write rule itself (token, Origin, content type) is the API's ``write_access`` dependency, shared with jobs.
"""

from __future__ import annotations

from threading import Lock

from ..errors import HubcompareError, HubUnavailableError, RegistryConflictError, ServiceRequestError, short_repr
from ..hub.names import check_name, check_registry_name, check_repo_id
from ..hub.references import register_reference
from ..hub.registry import Registry
from ..results.share import REFERENCE_PREFIX, push_result
from .checks import check_hub_reference
from .views import Service, entry_json

__all__ = ["REGISTRY_ADD_FIELDS", "PUSH_FIELDS", "add_entry", "push_stored_result", "remove_entry"]

REGISTRY_ADD_FIELDS = {"name": str, "reference": str, "replace": bool, "populations": list}
PUSH_FIELDS = {"repo": str, "private": bool}
MAX_NAME = 200  # a registry name or population from a request
MAX_POPULATIONS = 20
_one_at_a_time = Lock()  # a registration pulls and loads a model in the server process: never several at once


def _fields(data: dict, allowed: dict, required: tuple[str, ...], example: str) -> dict:
    """``data``'s fields, each of its type; an unknown, missing or mistyped field is one readable 400."""
    for name in data:
        if name not in allowed:
            raise ServiceRequestError(f"{short_repr(name)} is not a field here (the fields: {', '.join(allowed)}; e.g. "
                                      f"{example})", params=(str(name)[:40],))
    for name in required:
        if name not in data:
            raise ServiceRequestError(f"{name} is missing (e.g. {example})", params=(name,))
    for name, value in data.items():
        kind = allowed[name]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ServiceRequestError(f"{name}: {short_repr(value)} is not a {'true/false' if kind is bool else kind.__name__}",
                                      params=(name,))
    return data


def _status(e: HubcompareError, status: int) -> HubcompareError:
    e.http_status = status  # type: ignore[attr-defined]
    return e


def _as_request_error(e: HubcompareError, field: str) -> ServiceRequestError:
    return ServiceRequestError(f"{field}: {e}", params=(field,))


def add_entry(service: Service, data: dict) -> dict:
    """``POST /api/registry``: record a Hub or timm model under a name, pinned to the commit it resolves to (pulled and
    loaded within the CLI's default size cap first, as ``hubcompare registry add`` does). Returns the entry as shown."""
    example = '{"name": "r20-a", "reference": "hf-hub:OWNER/NAME", "replace": false}'
    data = _fields(data, REGISTRY_ADD_FIELDS, ("name", "reference"), example)
    name, populations = data["name"], data.get("populations", [])
    try:
        if len(name) > MAX_NAME:
            raise ServiceRequestError(f"registry name is over {MAX_NAME} characters")
        check_registry_name(name)
    except HubcompareError as e:
        raise _as_request_error(e, "name") from None
    reference = check_hub_reference(data["reference"], "reference")
    if len(populations) > MAX_POPULATIONS:
        raise ServiceRequestError(f"populations: at most {MAX_POPULATIONS}", params=("populations",))
    for i, p in enumerate(populations):
        try:
            if not isinstance(p, str) or len(p) > MAX_NAME:
                raise ServiceRequestError(f"{short_repr(p)} is not a population name")
            check_name(p, "population")
        except HubcompareError as e:
            raise _as_request_error(e, f"populations[{i}]") from None
    registry = service.registry()
    _refuse_curated(registry, name, "replace")
    try:
        with _one_at_a_time:
            entry, _ = register_reference(registry, name, reference, populations=populations,
                                          replace=bool(data.get("replace", False)))
    except RegistryConflictError as e:
        raise _status(e, 409) from None
    except HubUnavailableError as e:
        raise _status(e, 502) from None
    return entry_json(entry)


def remove_entry(service: Service, name: str) -> dict:
    """``DELETE /api/registry/{name}``: remove a user entry (404 when there is none; 409 for a curated one)."""
    try:
        check_registry_name(name)
    except HubcompareError as e:
        raise _as_request_error(e, "name") from None
    registry = service.registry()
    _refuse_curated(registry, name, "remove")
    return entry_json(registry.remove(name))


def _refuse_curated(registry: Registry, name: str, what: str) -> None:
    """A curated entry is the server's shared configuration: a request never removes, replaces or shadows one."""
    curated = registry.curated().get(name)
    if curated is not None:
        raise _status(RegistryConflictError(
            f"{name} is a curated entry (from {entry_json(curated)['source'].removeprefix('curated: ')}): a request cannot "
            f"{what} it; whoever runs the server edits that file. Pick another name for a new entry"), 409)


def push_stored_result(service: Service, key: str, data: dict) -> dict:
    """``POST /api/results/{key}/push``: publish a stored result as a Hub dataset repo (the server's HF_ENDPOINT and
    HF_TOKEN), as ``hubcompare push-result`` does; the answer names the ``hf-hub-result:`` reference to pull it by."""
    data = _fields(data, PUSH_FIELDS, ("repo",), '{"repo": "OWNER/NAME", "private": false}')
    try:
        repo = check_repo_id(data["repo"])
    except HubcompareError as e:
        raise _as_request_error(e, "repo") from None
    stored = service.result(key)
    try:
        url, sha = push_result(stored, repo, private=bool(data.get("private", False)))
    except HubUnavailableError as e:
        raise _status(e, 502) from None
    return {"key": stored.key, "repo_id": repo, "url": url, "commit_sha": sha, "reference": f"{REFERENCE_PREFIX}{repo}@{sha}"}
