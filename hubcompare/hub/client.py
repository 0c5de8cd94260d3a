"""Publishing checkpoint folders to a Hugging Face Hub and pulling models back.

Everything goes through ``huggingface_hub`` (``create_repo``, ``create_commit``, ``model_info``,
``snapshot_download``, collections), so the same code talks to huggingface.co or to hubcompare's
own server (``HF_ENDPOINT``). Design choices:

- one repo per trained model; a population is a card tag (``population-NAME``) plus a collection;
- a push is one commit, made against the current head (``parent_commit``), and skipped when the
  repo already holds identical files: rerunning a failed population push finishes the missing
  models without duplicating commits;
- a pull resolves the revision to a commit sha first, then downloads that sha into the standard
  Hugging Face cache, so what is loaded is pinned and later commits cannot change it; offline
  (``HF_HUB_OFFLINE=1``) it is served from the cache, and an unpinned reference whose branch was never
  cached (the repo was pulled pinned to a sha) falls back to the newest cached commit, with a notice;
- a pull fetches only the files its caller needs (``files``): comparing stored predictions never
  downloads weights; huggingface_hub's own progress bars are off (callers draw one display);
- only safetensors weights are ever downloaded or loaded: pickles (``pytorch_model.bin``, ``.pth``)
  are skipped, and a repo that offers nothing else is refused;
- timeouts, connection errors and 5xx are retried with exponential backoff, for a bounded time, against a checked
  Hub address; an endpoint where nothing answers fails in seconds, naming it (:mod:`.endpoint`);
- a collection's slug, as the server answers it, passes the name rules before anything is added to it.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from huggingface_hub import CommitOperationAdd, HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import tqdm as hf_tqdm

from ..errors import (
    CheckpointMismatchError,
    HubFileNotFoundError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    InvalidNameError,
    NotInCacheError,
    PickleWeightsRefusedError,
    PushError,
)
from ..models.card import build_card, format_number
from ..models.checkpoint import CARD_FILE, CONFIG_FILE, PREDICTIONS_FILE, PULL_FILES, WEIGHTS_FILE, load_checkpoint
from ..models.metadata import ModelMeta
from ..provenance import atomic_write_json, git_blob_oid
from .endpoint import hub_api, with_retries
from .names import check_collection_slug, check_name, check_namespace, check_repo_id

__all__ = [
    "PushResult", "PopulationResult", "Pulled", "push", "push_population", "pull", "population_repo_name",
    "PICKLE_PATTERNS", "with_retries", "cached_commits", "hub_api",
]

UPLOAD_FILES = (WEIGHTS_FILE, CONFIG_FILE, PREDICTIONS_FILE)  # README.md is generated per repo
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle"]
PUSH_RECORD = Path(".hub") / "pushes.json"
def _translate(e: Exception, repo_id: str, revision: str | None, endpoint: str, repo_type: str = "model") -> Exception:
    """huggingface_hub's errors -> hubcompare's typed errors that name the repo, revision or file and the fix."""
    if isinstance(e, RevisionNotFoundError):
        return HubRevisionNotFoundError(
            f"{repo_id} has no revision {revision!r}: use a branch, tag or commit sha that exists (the repo's page, "
            f"{endpoint.rstrip('/')}/{'datasets/' * (repo_type == 'dataset')}{repo_id}, lists its branches and tags)."
        )
    if isinstance(e, RepositoryNotFoundError):
        return HubRepoNotFoundError(
            f"no {repo_type} repo {repo_id} on {endpoint} (or it is private and HF_TOKEN cannot see it): "
            "check the owner and name."
        )
    return e


# --- push -------------------------------------------------------------------------------------
@dataclass
class PushResult:
    run_dir: Path
    repo_id: str
    commit_sha: str
    skipped: bool  # the repo already held exactly these files
    meta: ModelMeta = field(default_factory=ModelMeta)


def _upload_contents(run_dir: Path, repo_id: str, populations: Iterable[str]) -> tuple[dict[str, bytes], ModelMeta]:
    """The files a push uploads (from a validated folder), with a card generated for this repo."""
    ckpt = load_checkpoint(run_dir)
    contents = {name: (run_dir / name).read_bytes() for name in UPLOAD_FILES if (run_dir / name).is_file()}
    meta = ckpt.meta
    expected = meta.weights_sha256
    if expected and hashlib.sha256(contents[WEIGHTS_FILE]).hexdigest() != expected:
        raise CheckpointMismatchError(
            f"{run_dir / WEIGHTS_FILE} does not match the sha256 in {CONFIG_FILE}: refusing to publish it.", run_dir / WEIGHTS_FILE
        )
    if meta.is_hubcompare_run:
        meta.populations = sorted(set(meta.populations) | set(populations))
        contents[CARD_FILE] = str(build_card(meta, repo_id=repo_id)).encode()
    elif (run_dir / CARD_FILE).is_file():  # a plain timm folder: keep its own card
        contents[CARD_FILE] = (run_dir / CARD_FILE).read_bytes()
    return contents, meta


def push(run_dir: str | Path, repo_id: str, *, populations: Iterable[str] = (), private: bool = False,
         commit_message: str | None = None, api: HfApi | None = None) -> PushResult:
    """Upload a checkpoint folder to ``repo_id`` as one commit; returns (and records) the commit sha.

    Skipped (no new commit) when the repo already holds identical files. The sha is recorded in
    ``RUN_DIR/.hub/pushes.json`` once the commit exists.
    """
    run_dir = Path(run_dir)
    check_repo_id(repo_id)
    api = api or hub_api()
    contents, meta = _upload_contents(run_dir, repo_id, populations)
    with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True), f"create {repo_id}", endpoint=api.endpoint)

    def attempt() -> tuple[str, bool]:
        info = api.model_info(repo_id, files_metadata=True)
        remote = {s.rfilename: s.blob_id for s in info.siblings or []}
        if all(remote.get(name) == git_blob_oid(data) for name, data in contents.items()):
            return info.sha, True
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in contents.items()]
        message = commit_message or f"hubcompare: {meta.architecture or 'model'} from {run_dir.name}"
        try:
            return api.create_commit(repo_id, ops, commit_message=message, parent_commit=info.sha).oid, False
        except HfHubHTTPError as e:
            if e.response is not None and e.response.status_code == 412:  # someone (or a retried call) committed first
                raise _Retry() from e
            raise

    for _ in range(5):
        try:
            sha, skipped = with_retries(attempt, f"push {run_dir} to {repo_id}", endpoint=api.endpoint)
            break
        except _Retry:
            continue
    else:
        raise PushError(f"{repo_id} kept changing while pushing {run_dir}: retry later.")
    _record_push(run_dir, repo_id, sha, api.endpoint)
    return PushResult(run_dir=run_dir, repo_id=repo_id, commit_sha=sha, skipped=skipped, meta=meta)


class _Retry(Exception):
    pass


def _record_push(run_dir: Path, repo_id: str, sha: str, endpoint: str) -> None:
    path = run_dir / PUSH_RECORD
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        record = {}
    record[f"{endpoint}/{repo_id}"] = {
        "repo_id": repo_id, "endpoint": endpoint, "commit_sha": sha,
        "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(path, record)


def population_repo_name(meta: ModelMeta, population: str) -> str:
    """One repo per member: ``POPULATION-DATASET-dDEPTH-wWIDTH-fFRACTION-sSEED``."""
    return (f"{population}-{meta.dataset}-d{meta.depth}-w{format_number(meta.width)}"
            f"-f{format_number(meta.data_fraction)}-s{meta.seed}")


@dataclass
class PopulationResult:
    population: str
    collection_slug: str
    pushed: list[PushResult]
    failures: dict[Path, Exception]


def push_population(run_dirs: Iterable[str | Path], population: str, owner: str, *, private: bool = False,
                    workers: int = 4, api: HfApi | None = None,
                    on_done: Callable[[Path, PushResult | None, Exception | None], None] | None = None) -> PopulationResult:
    """Push many checkpoint folders concurrently, one repo each, tagged and collected as ``population``.

    Members already on the Hub with the same content are skipped; a failed member does not stop
    the others (rerun the same command to finish). ``on_done`` is called once per folder.
    """
    check_name(population, "population name")
    check_namespace(owner)
    api = api or hub_api()
    plan: dict[Path, str] = {}
    for d in map(Path, run_dirs):
        meta = load_checkpoint(d).meta
        if not meta.is_hubcompare_run:
            raise PushError(f"{d} is not a hubcompare checkpoint (no training metadata): push it with `hubcompare push`.")
        plan[d] = check_repo_id(f"{owner}/{population_repo_name(meta, population)}")
    names = list(plan.values())
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise PushError(f"several folders would go to the same repo {sorted(dupes)}: a population needs distinct "
                        "dataset/depth/width/fraction/seed per member.")
    collection = with_retries(lambda: api.create_collection(
        population, namespace=owner, exists_ok=True, description=f"hubcompare population {population}"), "create collection",
        endpoint=api.endpoint)
    try:  # the server's word: a slug such as ../x would send the adds (with the token) to another path
        slug = check_collection_slug(collection.slug)
    except InvalidNameError as e:
        raise PushError(f"the Hub {api.endpoint} answered create_collection with {e}: no model was pushed. Is HF_ENDPOINT "
                        "the Hub you meant?") from None

    def one(d: Path) -> PushResult:
        result = push(d, plan[d], populations=[population], private=private, api=api)
        with_retries(lambda: api.add_collection_item(slug, item_id=plan[d], item_type="model", exists_ok=True),
                     f"add {plan[d]} to collection {slug}", endpoint=api.endpoint)
        return result

    pushed, failures = [], {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, d): d for d in plan}
        for fut in as_completed(futures):
            d = futures[fut]
            try:
                r = fut.result()
                pushed.append(r)
                if on_done:
                    on_done(d, r, None)
            except Exception as e:  # reported per member; the others go on
                failures[d] = e
                if on_done:
                    on_done(d, None, e)
    order = list(plan)
    pushed.sort(key=lambda r: order.index(r.run_dir))
    return PopulationResult(population=population, collection_slug=slug, pushed=pushed, failures=failures)


# --- pull ----------------------------------------------------------------------------------------
class _NoBars(hf_tqdm):
    """huggingface_hub's progress bars, always off: a download is one step of a hubcompare command, whose own
    display (a bar or a spinner) is the only one (its "Fetching 5 files" bars otherwise print into it)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


@dataclass
class Pulled:
    repo_id: str
    revision: str | None  # what was asked for (None = main)
    commit_sha: str  # what was downloaded
    path: Path  # the snapshot folder in the Hugging Face cache
    offline: bool
    notice: str | None = None  # set when the commit was chosen from the cache rather than by the revision (offline)


def _refuse_pickles(repo_id: str, rev: str, files: Iterable[str]) -> None:
    files = list(files)
    if WEIGHTS_FILE in files:
        return
    pickles = [f for f in files if any(Path(f).match(p) for p in PICKLE_PATTERNS)]
    if pickles:
        raise PickleWeightsRefusedError(
            f"{repo_id}@{rev} offers only pickled weights ({', '.join(sorted(pickles))}) and no {WEIGHTS_FILE}. "
            "Loading a pickle can run arbitrary code, so hubcompare never does: ask the owner to publish "
            f"safetensors weights (timm's push_to_hf_hub does by default), or convert a copy you trust and push it."
        )
    raise HubFileNotFoundError(f"{repo_id}@{rev} has no {WEIGHTS_FILE}: it is not a timm/hubcompare model repo.")


def cached_commits(repo_id: str, cache_dir: str | Path | None = None, needs: Iterable[str] = (CONFIG_FILE,)) -> list[tuple[str, float]]:
    """The commits of ``repo_id`` in the Hugging Face cache that hold every file of ``needs``, newest download
    first, as (sha, when it was downloaded: the snapshot folder's modification time)."""
    snapshots = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    if not snapshots.is_dir():
        return []
    found = [(d.name, d.stat().st_mtime) for d in snapshots.iterdir()
             if d.is_dir() and all((d / f).is_file() for f in needs)]
    return sorted(found, key=lambda c: c[1], reverse=True)


def _newest_cached(repo_id: str, cache_dir, files: tuple[str, ...]) -> tuple[str, str] | None:
    """Offline, for an unpinned reference whose branch the cache never recorded (it was pulled pinned to a sha, which
    writes no refs/main): the newest cached commit, and the notice that says so."""
    commits = cached_commits(repo_id, cache_dir, [f for f in files if f in (CONFIG_FILE, WEIGHTS_FILE, PREDICTIONS_FILE)])
    if not commits:
        return None
    sha, when = commits[0]
    stamp = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="seconds")
    others = f" ({len(commits)} commits cached)" if len(commits) > 1 else ""
    return sha, (f"offline: the cache does not record which commit {repo_id}@main is (it was pulled pinned to a commit), "
                 f"so the newest cached commit is used: {sha} (downloaded {stamp}){others}. Name it exactly as "
                 f"hf-hub:{repo_id}@{sha}.")


def pull(repo_id: str, revision: str | None = None, *, api: HfApi | None = None, cache_dir: str | Path | None = None,
         attempts: int = 5, files: Iterable[str] = PULL_FILES) -> Pulled:
    """Download a model (safetensors only) into the Hugging Face cache, pinned to a commit sha.

    Only ``files`` are downloaded (default ``PULL_FILES``: weights, config.json, card, predictions, all that
    loading reads; timm's own Hub repos hold model.safetensors and config.json too), never the rest of the repo.
    Without the weights file in ``files`` (e.g. only predictions are needed) the weights are neither fetched
    nor required. ``snapshot_download`` resolves the revision to a commit once and downloads that commit; the
    snapshot folder is named by it. With ``HF_HUB_OFFLINE=1`` (or when the Hub cannot be reached) the cached
    snapshot is used; an unpinned pull whose branch the cache does not record uses the newest cached commit
    and says so in ``Pulled.notice``.
    """
    check_repo_id(repo_id)
    api = api or hub_api()
    files = tuple(dict.fromkeys(files))
    rev = revision or "main"
    offline = bool(constants.HF_HUB_OFFLINE)
    notice = None

    def download(revision: str) -> Path:
        return Path(with_retries(lambda: snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(files), ignore_patterns=PICKLE_PATTERNS,
            endpoint=api.endpoint, token=api.token, local_files_only=offline, tqdm_class=_NoBars),
            f"download {repo_id}@{revision}", attempts, endpoint=api.endpoint))

    not_cached = NotInCacheError(
        f"{repo_id}@{rev} is not in the Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}) and the Hub "
        "cannot be used (offline or unreachable): pull it once while online, or unset HF_HUB_OFFLINE."
    )
    try:
        try:
            path = download(rev)
        except LocalEntryNotFoundError:
            fallback = _newest_cached(repo_id, cache_dir, files) if revision is None else None
            if fallback is None:
                raise
            offline = True
            path, notice = download(fallback[0]), fallback[1]
    except LocalEntryNotFoundError as e:
        raise not_cached from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise _translate(e, repo_id, rev, api.endpoint) from None
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if f in files and not (path / f).is_file()]
    if offline and missing and path.is_dir() and (path / CONFIG_FILE).is_file():
        raise NotInCacheError(
            f"{repo_id}@{path.name} is cached without {', '.join(missing)} (an earlier command needed only its "
            "predictions) and the Hub cannot be used: pull it once while online, or unset HF_HUB_OFFLINE."
        )
    if WEIGHTS_FILE in files and not (path / WEIGHTS_FILE).is_file():
        listed = [p.name for p in path.iterdir()] if path.is_dir() else []  # no snapshot folder when nothing matched
        if not offline:
            listed = with_retries(lambda: api.list_repo_files(repo_id, revision=path.name), f"list {repo_id}", attempts,
                                  endpoint=api.endpoint)
        _refuse_pickles(repo_id, rev, listed)
    if not (path / CONFIG_FILE).is_file():
        raise HubFileNotFoundError(f"{repo_id}@{rev} has no {CONFIG_FILE}: it is not a timm/hubcompare model repo.")
    return Pulled(repo_id=repo_id, revision=revision, commit_sha=path.name, path=path, offline=offline, notice=notice)
