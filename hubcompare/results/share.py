"""Sharing a stored result on the Hub: one result = one Hub *dataset* repo, pulled back by ``hf-hub-result:``.

The repo holds the result's files, ``hubcompare-result.json`` (the stored record: kind, key, what the key
hashes, summary) and a dataset card saying which models at which commits, on which data (name and
fingerprint), with which settings, and showing the figure. A push is one commit against the current head,
skipped when the repo already holds identical files; it creates the repo or updates one an earlier result push
made (its card tagged ``hubcompare-result``), deletes only files that push's record listed, and refuses any other
repo without writing. A pull resolves the revision to a commit sha, checks the repo's listing against the pull
limits (``limits.py``) before downloading that commit (only the file types a result has: never a pickle), then
checks every file again on disk (sizes; the key recomputed from its inputs must match; each JSON document against
its kind's schema, ``schemas.py``; NPZ members from their headers, then loaded with ``allow_pickle=False``; SVGs
against an allow-list, ``svg.py``; images are images) before anything enters the store; a refused download is
removed from the cache. Retries and offline behaviour are the model client's (``hub/client.py``).
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    DatasetCard,
    DatasetCardData,
    HfApi,
    constants,
    snapshot_download,
)
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from ..errors import (
    HubcompareError,
    InvalidResultReferenceError,
    NotInCacheError,
    PushError,
    ResultFileMissingError,
    ResultRepoConflictError,
    SharedResultError,
    short_repr,
)
from ..hub.client import PICKLE_PATTERNS, _NoBars, _translate, with_retries
from ..hub.names import check_repo_id, check_revision
from ..provenance import git_blob_oid, strict_json
from .keys import result_key
from .limits import DEFAULT_LIMITS, PullLimits, check_listing, check_npz, over
from .schemas import check_document, check_summary, json_depth
from .store import ResultStore, StoredResult, check_key
from .svg import svg_problem

__all__ = ["REFERENCE_PREFIX", "RECORD_FILE", "ALLOWED_SUFFIXES", "parse_result_reference", "push_result", "pull_result",
           "build_result_card"]

REFERENCE_PREFIX = "hf-hub-result:"
RECORD_FILE = "hubcompare-result.json"
CARD_FILE = "README.md"
ALLOWED_SUFFIXES = (".json", ".npz", ".csv", ".png", ".pdf", ".svg", ".md")
IGNORED_REMOTE = (".gitattributes",)
MAX_CARD_BYTES = 1 << 20  # a result card is a few KB (its summary and settings)
RESULT_TAG = "hubcompare-result"  # the card tag that marks a repo as a shared result (push-result updates only those)
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KIND = re.compile(r"[a-z][a-z0-9-]{0,39}")
RECORD_FIELDS = {"key": str, "kind": str, "created": str, "seconds": (int, float), "title": str, "request": dict,
                 "key_inputs": dict, "summary": dict, "models": list, "dataset": str, "files": list}
OPTIONAL_FIELDS = {"source", "path"}  # written by StoredResult.to_json; the pulled copy gets its own


def parse_result_reference(reference: str) -> tuple[str, str | None]:
    """``hf-hub-result:OWNER/NAME[@REVISION]`` -> (repo id, revision or None)."""
    form = "a shared result is named hf-hub-result:OWNER/NAME[@REVISION], e.g. hf-hub-result:alice/r20-1x-vs-2x"
    if not isinstance(reference, str) or not reference.startswith(REFERENCE_PREFIX):
        raise InvalidResultReferenceError(f"{short_repr(reference)} is not a shared-result reference: {form}")
    repo_id, at, revision = reference[len(REFERENCE_PREFIX):].partition("@")
    try:
        check_repo_id(repo_id)
        if at:
            check_revision(revision)
            if "@" in revision:
                raise InvalidResultReferenceError("one '@' separates the repo from its revision")
    except HubcompareError as e:
        raise InvalidResultReferenceError(f"{short_repr(reference)}: {e} ({form})") from None
    return repo_id, (revision if at else None)


def _check_file_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
        raise SharedResultError(f"{where}: {short_repr(name)} is not a result file name (letters, digits, '.', '-', '_'; "
                                "no folders)")
    if not name.lower().endswith(ALLOWED_SUFFIXES) or any(Path(name).match(p) for p in PICKLE_PATTERNS):
        raise SharedResultError(f"{where}: {name} is not a file type a result holds ({', '.join(ALLOWED_SUFFIXES)}); "
                                "hubcompare never downloads pickles or other files it cannot check")
    return name


# --- the card -------------------------------------------------------------------------------------
def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(strict_json(value), sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")


def _model_rows(stored: StoredResult) -> list[str]:
    models = stored.key_inputs.get("models")
    if isinstance(models, list) and models and all(isinstance(m, dict) for m in models):
        rows = ["| model | commit | weights sha256 |", "|---|---|---|"]
        for m in models:
            rows.append(f"| `{_cell(m.get('ref', '?'))}` | `{_cell(m.get('commit_sha') or '(local folder)')}` | "
                        f"`{_cell(m.get('weights_sha256') or '?')}` |")
        return rows
    return [f"- `{_cell(m)}`" for m in stored.models] or ["(none recorded)"]


def build_result_card(stored: StoredResult, repo_id: str) -> DatasetCard:
    """The dataset card: models at commits, the dataset and its fingerprint, settings, headline numbers, the figure."""
    data = DatasetCardData(pretty_name=stored.title or stored.kind, tags=["hubcompare", RESULT_TAG, stored.kind])
    dataset = stored.key_inputs.get("dataset")
    dataset = dataset if isinstance(dataset, dict) else {"name": stored.dataset}
    settings = stored.key_inputs.get("settings")
    other = {k: v for k, v in stored.key_inputs.items() if k not in ("models", "dataset", "settings")}
    lines = [f"# {stored.title or stored.kind}", "",
             f"A stored hubcompare **{stored.kind}** result, key `{stored.key}`, computed "
             f"{stored.created} in {stored.seconds:.1f} s.", "",
             "Pull it into your own result store (it is checked before it is stored):", "",
             f"```\nhubcompare results pull {REFERENCE_PREFIX}{repo_id}\n```", "", "## Models", "", *_model_rows(stored), "",
             "## Dataset", "", "| field | value |", "|---|---|",
             *(f"| {_cell(k)} | `{_cell(v)}` |" for k, v in dataset.items()), ""]
    if isinstance(settings, dict) and settings:
        lines += ["## Settings", "", "| setting | value |", "|---|---|",
                  *(f"| {_cell(k)} | `{_cell(v)}` |" for k, v in sorted(settings.items())), ""]
    if other:
        lines += ["## Other inputs of the key", "", "```json", json.dumps(strict_json(other), indent=2, sort_keys=True),
                  "```", ""]
    if stored.summary:
        lines += ["## Summary", "", "```json", json.dumps(strict_json(stored.summary), indent=2, sort_keys=True), "```", ""]
    figures = [f for f in stored.files if f.lower().endswith((".png", ".svg"))]
    if figures:
        lines += ["## Figure", "", *(f"![{f}]({f})" for f in figures), ""]
    lines += ["## Files", "", *(f"- [{f}]({f})" for f in stored.files), f"- [{RECORD_FILE}]({RECORD_FILE}): the stored "
              "record (what the key hashes, the request, the summary)", ""]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


# --- push -----------------------------------------------------------------------------------------
def _record(stored: StoredResult) -> dict:
    record = stored.to_json()
    record.pop("path", None)
    return record


def _contents(stored: StoredResult, repo_id: str) -> dict[str, bytes]:
    """Every file the push writes, read before anything is sent: a result whose folder lost a file is a typed error."""
    contents: dict[str, bytes] = {}
    for name in stored.files:
        if name in (CARD_FILE, RECORD_FILE):
            raise SharedResultError(f"result {stored.key[:12]} has a file named {name}, which a shared result reserves")
        path = stored.file(_check_file_name(name, f"result {stored.key[:12]}"))
        try:
            contents[name] = path.read_bytes()
        except OSError as e:
            raise ResultFileMissingError(
                f"result {stored.key[:12]} lists {name}, but {path} cannot be read ({type(e).__name__}: "
                f"{e.strerror or e}): the stored copy is damaged; remove it (`hubcompare results rm {stored.key[:12]}`) and "
                "compute it again") from None
    contents[RECORD_FILE] = (json.dumps(strict_json(_record(stored)), indent=2, allow_nan=False) + "\n").encode()
    contents[CARD_FILE] = str(build_result_card(stored, repo_id)).encode()
    return contents


def _small_remote_file(api: HfApi, repo_id: str, sha: str, name: str, size: int | None, limit: int) -> bytes:
    if size is None or size > limit:
        raise ResultRepoConflictError(f"{repo_id}: its {name} is {'of unknown size' if size is None else f'{size:,} bytes'}"
                                      f" (a hubcompare result's is under {limit:,}): not a hubcompare result repo, so "
                                      "push-result leaves it alone and nothing was written; push to another repo")
    path = with_retries(lambda: api.hf_hub_download(repo_id, name, repo_type="dataset", revision=sha),
                        f"read {name} of {repo_id}@{sha}")
    data = Path(path).read_bytes()
    if len(data) > limit:
        raise ResultRepoConflictError(f"{repo_id}: its {name} is {len(data):,} bytes (a hubcompare result's is under "
                                      f"{limit:,}): not a hubcompare result repo; nothing was written. Push to another repo")
    return data


def _written_by_result_push(api: HfApi, repo_id: str, info) -> set[str]:
    """The files an earlier result push wrote to the repo at ``info.sha`` (empty for an empty repo). A repo its card does
    not mark as a hubcompare result, or one holding files no result push wrote, is refused: nothing is changed."""
    remote = {s.rfilename: s for s in info.siblings or [] if s.rfilename not in IGNORED_REMOTE}
    if not remote:
        return set()  # a new (or empty) repo: nothing of anyone's to keep
    refuse = f"{repo_id} already exists and is not a hubcompare result"
    fix = "push-result only creates a repo or updates one an earlier push-result made; push to another repo"
    if CARD_FILE not in remote or RECORD_FILE not in remote:
        raise ResultRepoConflictError(f"{refuse} (it has no {CARD_FILE if CARD_FILE not in remote else RECORD_FILE}): "
                                      f"nothing was written. {fix}")
    card = _small_remote_file(api, repo_id, info.sha, CARD_FILE, remote[CARD_FILE].size, MAX_CARD_BYTES)
    try:
        tags = DatasetCard(card.decode("utf-8")).data.tags or []
    except Exception:  # noqa: BLE001 - any card that does not parse is not one push-result wrote
        tags = []
    if not isinstance(tags, list) or RESULT_TAG not in tags:
        raise ResultRepoConflictError(f"{refuse} (its card is not tagged {RESULT_TAG}): nothing was written. {fix}")
    record = _small_remote_file(api, repo_id, info.sha, RECORD_FILE, remote[RECORD_FILE].size,
                                DEFAULT_LIMITS.max_record_bytes)
    try:
        files = json.loads(record.decode("utf-8"))["files"]
        if not isinstance(files, list):
            raise TypeError("files is not a list")
        written = {CARD_FILE, RECORD_FILE, *(_check_file_name(f, repo_id) for f in files)}
    except (ValueError, KeyError, TypeError, RecursionError, HubcompareError):
        raise ResultRepoConflictError(f"{refuse}: its {RECORD_FILE} does not list the files a push wrote, so none of them "
                                      f"can be replaced safely; nothing was written. {fix}") from None
    foreign = sorted(set(remote) - written)
    if foreign:
        raise ResultRepoConflictError(
            f"{repo_id} holds files no hubcompare result push wrote ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}): push-result would leave a repo no pull accepts, and never deletes "
            "others' files; nothing was written. Remove them yourself, or push to another repo")
    return written


def push_result(stored: StoredResult, repo_id: str, *, private: bool = False, api: HfApi | None = None) -> tuple[str, str]:
    """Publish ``stored`` as the Hub dataset repo ``repo_id`` in one commit; returns (url, commit sha).

    The repo is created when missing. An existing one is updated only when it is empty or its card marks it as a
    hubcompare result (an earlier push-result); anything else is a :class:`ResultRepoConflictError` and nothing is
    written. The commit deletes only files the previous result push listed in its record; pushing again when nothing
    changed makes no commit and returns the current sha. The check and the commit are against the same head commit
    (``parent_commit``), so a repo that changes in between is looked at again."""
    check_repo_id(repo_id)
    api = api or HfApi()
    contents = _contents(stored, repo_id)
    with_retries(lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True), f"create {repo_id}")

    def attempt() -> str:
        info = api.repo_info(repo_id, repo_type="dataset", files_metadata=True)
        written = _written_by_result_push(api, repo_id, info)
        remote = {s.rfilename: s.blob_id for s in info.siblings or []}
        stale = sorted(n for n in remote if n in written and n not in contents)
        if not stale and all(remote.get(name) == git_blob_oid(data) for name, data in contents.items()):
            return info.sha
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in contents.items()]
        ops += [CommitOperationDelete(path_in_repo=name) for name in stale]
        try:
            return api.create_commit(repo_id, ops, repo_type="dataset", parent_commit=info.sha,
                                     commit_message=f"hubcompare: {stored.kind} result {stored.key[:12]}").oid
        except HfHubHTTPError as e:
            if e.response is not None and e.response.status_code == 412:  # someone committed first: look again
                raise _Moved() from e
            raise

    for _ in range(5):
        try:
            sha = with_retries(attempt, f"push result {stored.key[:12]} to {repo_id}")
            break
        except _Moved:
            continue
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise _translate(e, repo_id, None, api.endpoint, "dataset") from None
    else:
        raise PushError(f"{repo_id} kept changing while pushing result {stored.key[:12]}: retry later.")
    return f"{api.endpoint}/datasets/{repo_id}", sha


class _Moved(Exception):
    pass


# --- pull -----------------------------------------------------------------------------------------
def _download(api: HfApi, repo_id: str, revision: str, patterns: list[str], offline: bool) -> Path:
    return Path(with_retries(lambda: snapshot_download(
        repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns, ignore_patterns=PICKLE_PATTERNS,
        endpoint=api.endpoint, token=api.token, local_files_only=offline, tqdm_class=_NoBars),
        f"download {repo_id}@{revision}"))


def _fetch(repo_id: str, revision: str | None, api: HfApi, limits: PullLimits) -> Path:
    """The snapshot folder (named by its commit sha) of the repo at ``revision``. Online, the repo's file list is checked
    first (names, the number of files, each size and the total, from the Hub's metadata) and nothing is downloaded
    when it fails; what arrives is checked again on disk by the caller."""
    rev = revision or "main"
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        if offline:
            return _download(api, repo_id, rev, [RECORD_FILE, *(f"*{s}" for s in ALLOWED_SUFFIXES)], True)
        info = with_retries(lambda: api.repo_info(repo_id, repo_type="dataset", revision=rev, files_metadata=True),
                            f"look up {repo_id}@{rev}")
        where = f"{repo_id}@{info.sha}"
        sizes = {s.rfilename: s.size for s in info.siblings or [] if s.rfilename not in IGNORED_REMOTE}
        for name in sizes:
            _check_file_name(name, where)
        if RECORD_FILE not in sizes:
            raise SharedResultError(f"{where} has no {RECORD_FILE}: it is not a shared hubcompare result "
                                    "(publish one with `hubcompare push-result`)")
        check_listing(sizes, where, limits)
        return _download(api, repo_id, rev, list(sizes), False)  # by name, so the cache records the branch for offline use
    except LocalEntryNotFoundError:
        raise NotInCacheError(f"result repo {repo_id}@{rev} is not in the Hugging Face cache and the Hub cannot be used "
                              "(offline or unreachable): pull it once while online, or unset HF_HUB_OFFLINE.") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise _translate(e, repo_id, rev, api.endpoint, "dataset") from None


def _forget(folder: Path) -> None:
    """Remove a refused snapshot from the Hugging Face cache: its folder, the blobs no other snapshot of the repo uses,
    and the refs that point at it (an offline pull must not find it either). Best effort: errors are ignored."""
    repo_dir, sha = folder.parent.parent, folder.name
    try:
        blob_dir = (repo_dir / "blobs").resolve()
        blobs = {p.resolve() for p in folder.iterdir() if p.is_symlink()}
        shutil.rmtree(folder, ignore_errors=True)
        for other in (repo_dir / "snapshots").iterdir():
            blobs -= {p.resolve() for p in other.iterdir() if p.is_symlink()}
        for blob in blobs:
            if blob.parent == blob_dir:
                blob.unlink(missing_ok=True)
        for ref in (repo_dir / "refs").rglob("*") if (repo_dir / "refs").is_dir() else ():
            if ref.is_file() and ref.read_text().strip() == sha:
                ref.unlink(missing_ok=True)
    except OSError:
        pass


def _load_record(folder: Path, where: str, limits: PullLimits) -> dict:
    path = folder / RECORD_FILE
    if not path.is_file():
        raise SharedResultError(f"{where} has no {RECORD_FILE}: it is not a shared hubcompare result")
    over(limits, "max_record_bytes", path.stat().st_size, f"{where}: {RECORD_FILE}")
    try:
        record = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise SharedResultError(f"{where}: {RECORD_FILE} is not valid JSON ({e})") from None
    except RecursionError:
        raise SharedResultError(f"{where}: {RECORD_FILE} is refused (it nests too deeply to read)") from None
    over(limits, "max_json_depth", json_depth(record), f"{where}: {RECORD_FILE}'s nesting", unit="levels")
    if not isinstance(record, dict):
        raise SharedResultError(f"{where}: {RECORD_FILE} is not a JSON object")
    unknown = set(record) - set(RECORD_FIELDS) - OPTIONAL_FIELDS
    missing = [k for k in RECORD_FIELDS if k not in record]
    if unknown or missing:
        raise SharedResultError(f"{where}: {RECORD_FILE} " + (f"lacks {', '.join(missing)}" if missing else
                                                              f"has unknown fields {', '.join(sorted(unknown))}"))
    for name, types in RECORD_FIELDS.items():
        if not isinstance(record[name], types) or isinstance(record[name], bool):
            raise SharedResultError(f"{where}: {RECORD_FILE} field {name} is {short_repr(record[name])}, not a "
                                    f"{getattr(types, '__name__', 'number')}")
    if not _KIND.fullmatch(record["kind"]):
        raise SharedResultError(f"{where}: {RECORD_FILE} kind {short_repr(record['kind'])} is not a result kind")
    if not all(isinstance(m, str) for m in record["models"]) or not 0 <= record["seconds"] < 1e12:
        raise SharedResultError(f"{where}: {RECORD_FILE} models must be strings and seconds a finite number >= 0")
    try:
        check_key(record["key"])
        expected = result_key(record["kind"], record["key_inputs"])
    except HubcompareError as e:
        raise SharedResultError(f"{where}: {RECORD_FILE}: {e}") from None
    if expected != record["key"]:
        raise SharedResultError(f"{where}: the key in {RECORD_FILE} ({record['key'][:12]}) is not the key of its inputs "
                                f"({expected[:12]}): the record was edited or is corrupt, so it is refused")
    files = [_check_file_name(f, where) for f in record["files"]]
    if len(set(files)) != len(files) or {CARD_FILE, RECORD_FILE} & set(files):
        raise SharedResultError(f"{where}: {RECORD_FILE} lists repeated or reserved file names")
    return record


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _check_npz(path: Path, where: str, limits: PullLimits) -> None:
    arrays = check_npz(path, where, limits)  # declared sizes and dtypes, before any array is read
    for name in ("cka", "se", "layers_a", "layers_b"):
        shape = arrays.get(name, ((),))[0]
        if shape and max(shape) > limits.max_layers:
            over(limits, "max_layers", max(shape), f"{where}: {path.name}:{name} (shape {shape})", unit="layers")
    with np.load(path, allow_pickle=False) as npz:
        for array_name in npz.files:
            npz[array_name]  # noqa: B018  (reads each array whole: the sizes are known to be within the limits)


def _check_content(path: Path, where: str, kind: str, limits: PullLimits) -> None:
    """Each file is what its name says (parsed, never executed, within the limits): a bad one refuses the whole result."""
    name = path.name.lower()
    try:
        if name.endswith(".npz"):
            return _check_npz(path, where, limits)
        data = path.read_bytes()
        over(limits, "max_file_bytes", len(data), f"{where}: {path.name}")
        if name.endswith(".json"):
            doc = json.loads(data.decode("utf-8"), parse_constant=lambda c: float(c))  # result JSON may hold NaN
            depth = json_depth(doc)
            over(limits, "max_json_depth", depth, f"{where}: {path.name}'s nesting", unit="levels")
            check_document(kind, path.name, doc, where, limits)
        elif name.endswith((".csv", ".md")):
            data.decode("utf-8")
        elif name.endswith(".png") and not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("not a PNG image")
        elif name.endswith(".pdf") and not data.startswith(b"%PDF-"):
            raise ValueError("not a PDF")
        elif name.endswith(".svg"):
            problem = svg_problem(data)
            if problem:
                raise ValueError(f"not a plain SVG image: {problem}")
    except RecursionError:
        raise SharedResultError(f"{where}: {path.name} is refused (it nests too deeply to read)") from None
    except (ValueError, UnicodeDecodeError, OSError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, HubcompareError):
            raise
        raise SharedResultError(f"{where}: {path.name} is refused ({type(e).__name__}: {e})") from None


def pull_result(reference: str, store: ResultStore, *, api: HfApi | None = None,
                limits: PullLimits = DEFAULT_LIMITS) -> StoredResult:
    """Download ``hf-hub-result:OWNER/NAME[@REV]`` at one commit, check every file against ``limits`` and its kind's
    schema, and put it into ``store`` with the source ``hf-hub-result:OWNER/NAME@SHA``. A result whose key is stored
    already is returned as stored. On any refusal the store is unchanged and the download is removed from the cache."""
    repo_id, revision = parse_result_reference(reference)
    api = api or HfApi()
    folder = _fetch(repo_id, revision, api, limits)
    try:
        return _check_and_store(folder, repo_id, store, limits)
    except HubcompareError:
        _forget(folder)
        raise


def _check_and_store(folder: Path, repo_id: str, store: ResultStore, limits: PullLimits) -> StoredResult:
    sha = folder.name
    where = f"{repo_id}@{sha}"
    on_disk = {p.name: p.stat().st_size for p in folder.iterdir() if p.name not in IGNORED_REMOTE}
    check_listing(on_disk, where, limits)  # again, as they arrived (the listing may not have had every size)
    record = _load_record(folder, where, limits)
    check_summary(record["kind"], record["summary"], record["files"], where)
    present = set(on_disk) - {CARD_FILE, RECORD_FILE}
    missing, extra = set(record["files"]) - present, present - set(record["files"])
    if missing or extra:
        raise SharedResultError(f"{where}: the files do not match {RECORD_FILE} (" +
                                "; ".join(filter(None, [missing and f"missing {', '.join(sorted(missing))}",
                                                        extra and f"not listed {', '.join(sorted(extra))}"])) + ")")
    for name in record["files"]:
        if not (folder / name).is_file():
            raise SharedResultError(f"{where}: {name} is not a regular file")
        _check_content(folder / name, where, record["kind"], limits)
    existing = store.get(record["key"])
    if existing is not None:
        return existing
    with store.staging() as staging:
        for name in record["files"]:
            shutil.copyfile(folder / name, staging / name)  # a copy: the cache's files are links to shared blobs
        return store.put(record["key"], record["kind"], title=record["title"], request=record["request"],
                         key_inputs=record["key_inputs"], summary=record["summary"], models=record["models"],
                         dataset=record["dataset"], staging=staging, seconds=float(record["seconds"]),
                         source=f"{REFERENCE_PREFIX}{repo_id}@{sha}", created=record["created"])
