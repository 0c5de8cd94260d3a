"""The Hub's address, reaching it, and retrying it: the boundary every Hub call of hubcompare crosses.

- ``HF_ENDPOINT`` (or an ``api``'s endpoint) must be an http(s) URL (:func:`~.names.check_endpoint`): anything else
  is one :class:`~hubcompare.errors.HubUnavailableError` naming it and the fix, before any request;
- timeouts, connection errors and 5xx are retried with exponential backoff for a bounded time
  (:data:`RETRY_BUDGET_S` from the first failure; huggingface_hub retries inside some calls as well);
- after a connection that cannot be made, retries only look at the endpoint (:func:`endpoint_problem`, one HEAD)
  until something answers there: a dead endpoint (a closed port, an unknown host) fails in seconds, naming it and
  the fix, not after minutes of huggingface_hub's retries inside ours; listings look before their first call;
- what a Hub lists (model ids, commit shas) passes the same name rules as what a user types before it is
  requested or recorded (:func:`listed_repo_id`, :func:`listed_reference`): a listing is the server's word.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

try:  # the HTTP client huggingface_hub 2.4 uses; earlier 1.x/2.x releases used httpx
    import httpx2
except ImportError:  # pragma: no cover
    import httpx as httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import get_session

from ..errors import HubUnavailableError, InvalidNameError, InvalidReferenceError
from .names import check_endpoint, check_repo_id, check_revision

__all__ = ["PROBE_TIMEOUT_S", "RETRY_BUDGET_S", "endpoint_problem", "hub_api", "hub_endpoint", "listed_reference",
           "listed_repo_id", "with_retries"]

T = TypeVar("T")


def _transient(e: BaseException) -> bool:
    if isinstance(e, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)):
        return True
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        return e.response.status_code in (408, 429) or e.response.status_code >= 500
    if isinstance(e, LocalEntryNotFoundError) and not constants.HF_HUB_OFFLINE:
        # snapshot_download turns a failed look-up into "not cached": retry when the cause was transient
        return e.__cause__ is not None and _transient(e.__cause__)
    return False


RETRY_BUDGET_S = 30.0  # retries stop once the Hub has been failing this long (each call; huggingface_hub retries inside too)
PROBE_TIMEOUT_S = 5.0  # one look at an endpoint: does anything answer HTTP there?
_FIX = ("start it (`hubcompare hub serve --data DIR --port PORT` for a local one), point HF_ENDPOINT at one that runs "
        "(before the command starts), or set HF_HUB_OFFLINE=1 to use cached models")


def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub address calls go to (``endpoint``, else ``HF_ENDPOINT`` as huggingface_hub read it), checked by
    :func:`~.names.check_endpoint`: a HubUnavailableError naming it when it is not an http(s) URL."""
    return check_endpoint(constants.ENDPOINT if endpoint is None else endpoint,
                          "HF_ENDPOINT" if endpoint is None else "the Hub endpoint")


def hub_api(endpoint: str | None = None) -> HfApi:
    """``HfApi`` for the checked Hub address (see :func:`hub_endpoint`): every default client is made here. Offline
    (HF_HUB_OFFLINE) the address is not used, so it is not checked: cached models load whatever it says."""
    if constants.HF_HUB_OFFLINE:
        return HfApi(endpoint=endpoint)
    return HfApi(endpoint=hub_endpoint(endpoint))


def endpoint_problem(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why nothing answers HTTP at ``endpoint`` (connection refused, no such host, no answer within ``timeout``), or
    None when something does (any HTTP status: the endpoint is up, whatever it thinks of the request). One HEAD
    request through huggingface_hub's own HTTP client (its proxies and certificates)."""
    try:
        get_session().head(hub_endpoint(endpoint), timeout=timeout)
    except httpx2.TimeoutException as e:
        return f"no answer within {timeout:g} s ({type(e).__name__})"
    except httpx2.TransportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def _connection_failure(e: BaseException | None) -> bool:
    """A connection that could not be made (refused, unknown host, connect timeout), here or as a cause."""
    for _ in range(4):
        if e is None:
            return False
        if isinstance(e, (httpx2.ConnectError, httpx2.ConnectTimeout)):
            return True
        e = e.__cause__ or e.__context__
    return False


def with_retries(fn: Callable[[], T], what: str, attempts: int = 5, base_wait: float = 0.5, max_wait: float = 8.0,
                 on_retry: Callable[[int, BaseException], None] | None = None, endpoint: str | None = None,
                 budget: float = RETRY_BUDGET_S, probe_first: bool = False) -> T:
    """Call ``fn``, retrying timeouts, connection errors and 5xx with exponential backoff, for a bounded time.

    ``endpoint``: the Hub ``fn`` talks to (default HF_ENDPOINT); it must be an http(s) URL (checked before ``fn``
    runs, unless offline). After a connection that could not be made, the next attempts only look at the endpoint
    (one HEAD, :func:`endpoint_problem`) until something answers there, and then call ``fn`` again: a dead endpoint
    costs ``attempts`` quick looks (~7.5 s with the defaults), not ``fn``'s own retries inside huggingface_hub
    (some calls retry for 23 s each), and a restarted server is picked up again. ``probe_first``: look before the
    first call too (listings, whose huggingface_hub retries are the long ones). Retries stop after ``attempts``
    attempts, or once the Hub has been failing for ``budget`` seconds (from the first failure: a long upload still
    gets its retry). ``on_retry(attempt, error)`` is called before each wait (a command says what it waits for).
    """
    offline = bool(constants.HF_HUB_OFFLINE)
    where = None if offline else hub_endpoint(endpoint)
    look = probe_first and where is not None
    first_failure, error = None, None
    for attempt in range(1, attempts + 1):
        problem = endpoint_problem(where) if look else None
        if problem is None:
            try:
                return fn()
            except OfflineModeIsEnabled:
                raise HubUnavailableError(f"{what}: HF_HUB_OFFLINE is set, and this needs the Hub (the cache cannot "
                                          "answer it): unset HF_HUB_OFFLINE, or name the models by folder or by cached "
                                          "hf-hub:OWNER/NAME@COMMIT references.") from None
            except Exception as e:
                if not _transient(e):
                    raise
                error, look = e, where is not None and _connection_failure(e)
                problem = endpoint_problem(where) if look else None
        error = error or httpx2.ConnectError(problem)
        now = time.monotonic()
        first_failure = now if first_failure is None else first_failure
        wait = min(max_wait, base_wait * 2 ** (attempt - 1))
        if attempt == attempts or now - first_failure + wait > budget:
            tried = f"after {attempt} attempt{'s' if attempt > 1 else ''}" + (
                f" in {now - first_failure:.0f} s" if attempt > 1 else "")
            if problem is not None:
                raise HubUnavailableError(f"{what}: the Hub {where} did not answer {tried}: nothing answers there "
                                          f"({problem}): {_FIX}.") from error
            raise HubUnavailableError(
                f"{what}: the Hub{f' {where}' if where else ''} did not answer {tried} ({type(error).__name__}: {error}). "
                "Check the connection or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use cached models.") from error
        if on_retry:
            on_retry(attempt, error)
        time.sleep(wait)
    raise AssertionError("unreachable")


def listed_repo_id(repo_id, endpoint: str | None) -> str:
    """A model id a Hub listed (list_models, a collection's items), once it passes the repo id rules: an id such as
    ``../x`` would otherwise be requested (model_info, with the token) and recorded as it came."""
    try:
        return check_repo_id(repo_id if isinstance(repo_id, str) else "")
    except InvalidReferenceError as e:
        raise InvalidNameError(f"the Hub {endpoint or constants.ENDPOINT} listed a model {repo_id!r}, which breaks the "
                               f"Hub's name rules ({e}): refusing it. Is HF_ENDPOINT the Hub you meant?") from None


def listed_reference(repo_id, sha, endpoint: str | None) -> str:
    """``hf-hub:ID@SHA`` for a model a Hub listed, once the id (:func:`listed_repo_id`) and the sha pass the rules."""
    listed_repo_id(repo_id, endpoint)
    try:
        check_revision(sha if isinstance(sha, str) else "")
    except InvalidNameError as e:
        raise InvalidNameError(f"the Hub {endpoint or constants.ENDPOINT} listed {repo_id} at {sha!r}, which is not a "
                               f"commit ({e}): refusing it. Is HF_ENDPOINT the Hub you meant?") from None
    return f"hf-hub:{repo_id}@{sha}"
