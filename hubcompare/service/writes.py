"""The service's writes other than queueing a job: editing the registry and sharing a stored result on the Hub.

Each takes a strict JSON object (unknown fields refused), checks every value before anything is pulled, written or
pushed, and then calls the same library function as the CLI (``register_reference`` as ``registry add`` does,
``Registry.remove``, ``push_result`` as ``push-result`` does), so the server and the command line cannot drift.
Curated entries (the registry's text files) are never changed from a request, nor shadowed by a user entry.
The write rule itself (token, Origin, content type) is the API's ``write_access`` dependency, shared with jobs.
"""

from __future__ import annotations

from threading import Lock

import anyio
import anyio.to_thread

from ..errors import HubcompareError, RegistryConflictError, ServiceBusyError, ServiceRequestError, short_repr
from ..hub.names import check_name, check_registry_name, check_repo_id, parse_reference
from ..hub.references import fetch_timm_weights, register_reference, resolve_reference
from ..hub.registry import Registry
from ..results.share import REFERENCE_PREFIX, push_result
from .checks import check_hub_reference
from .views import Service, entry_json

__all__ = ["REGISTRY_ADD_FIELDS", "PUSH_FIELDS", "RegistrationGate", "add_entry", "push_stored_result", "remove_entry"]

REGISTRY_ADD_FIELDS = {"name": str, "reference": str, "replace": bool, "populations": list}
PUSH_FIELDS = {"repo": str, "private": bool}
MAX_NAME = 200  # a registry name or population from a request
MAX_POPULATIONS = 20
_one_at_a_time = Lock()  # a registration loads a model in the server process: never several at once (downloads overlap)
REGISTRATIONS_RUNNING = 2  # registrations downloading or loading at once (each on a thread of the gate's own)
REGISTRATIONS_WAITING = 8  # more waiting for one of those; beyond, 503
RETRY_AFTER_S = 5


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
    replace = bool(data.get("replace", False))
    _refuse_taken(registry, name, reference, replace)
    reference = _download(registry, reference)  # outside the lock: downloads of several registrations overlap
    with _one_at_a_time:  # loading a model (its memory) one at a time
        entry, _ = register_reference(registry, name, reference, populations=populations, replace=replace)
    return entry_json(entry)


def _refuse_taken(registry: Registry, name: str, reference: str, replace: bool) -> None:
    """A name that already names another model: refused before anything is downloaded (as ``register_reference``
    refuses it before it pulls)."""
    existing = registry.entries().get(name)
    if existing is None or replace:
        return
    before, ref = parse_reference(existing.reference), parse_reference(reference)
    if (before.kind, before.target) != (ref.kind, ref.target):
        raise RegistryConflictError(f"{name} already names {existing.reference} ({existing.source}); replace it "
                                    "explicitly or use another name")


def _download(registry: Registry, reference: str) -> str:
    """A Hub model's files into the server's cache (its size checked from the repo's metadata first, within the
    CLI's default cap) without building it: the reference pinned to the commit it resolved to, which the
    registration then loads from the cache. A timm reference's weights likewise (checked as the registration checks
    them); its registration finds them in the cache."""
    ref = parse_reference(reference)
    if ref.kind == "timm":
        fetch_timm_weights(ref)
        return reference
    if ref.kind != "hf-hub":
        return reference
    resolved = resolve_reference(ref, registry)
    return str(ref.pinned(resolved.commit_sha))


class RegistrationGate:
    """``POST /api/registry`` runs on threads of its own (``running`` at once), never on the server's shared pool,
    and at most ``waiting`` more wait for one: a burst of registrations neither takes the threads pages and
    ``/api/health`` answer on, nor queues without bound (beyond, 503 with Retry-After)."""

    def __init__(self, running: int = REGISTRATIONS_RUNNING, waiting: int = REGISTRATIONS_WAITING):
        self.limiter = anyio.CapacityLimiter(running)
        self.most = running + waiting
        self.pending = 0  # changed on the event loop only

    async def run(self, fn, *args):
        if self.pending >= self.most:
            raise ServiceBusyError(f"{self.pending} registrations are running or waiting, the most this server takes at "
                                   "once: retry in a few seconds", retry_after=RETRY_AFTER_S)
        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        finally:
            self.pending -= 1


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
        raise RegistryConflictError(
            f"{name} is a curated entry (from {entry_json(curated)['source'].removeprefix('curated: ')}): a request cannot "
            f"{what} it; whoever runs the server edits that file. Pick another name for a new entry")


def push_stored_result(service: Service, key: str, data: dict) -> dict:
    """``POST /api/results/{key}/push``: publish a stored result as a Hub dataset repo (the server's HF_ENDPOINT and
    HF_TOKEN), as ``hubcompare push-result`` does; the answer names the ``hf-hub-result:`` reference to pull it by."""
    data = _fields(data, PUSH_FIELDS, ("repo",), '{"repo": "OWNER/NAME", "private": false}')
    try:
        repo = check_repo_id(data["repo"])
    except HubcompareError as e:
        raise _as_request_error(e, "repo") from None
    stored = service.result(key)
    url, sha = push_result(stored, repo, private=bool(data.get("private", False)))
    return {"key": stored.key, "repo_id": repo, "url": url, "commit_sha": sha, "reference": f"{REFERENCE_PREFIX}{repo}@{sha}"}
