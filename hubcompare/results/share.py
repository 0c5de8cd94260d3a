"""Sharing a stored result on the Hub: one result = one Hub *dataset* repo, pulled back by ``hf-hub-result:``.

The repo holds the result's files, ``hubcompare-result.json`` (the stored record: kind, key, what the key
hashes, summary) and a dataset card saying which models at which commits, on which data (name and
fingerprint), with which settings, and showing the figure. A push is one commit against the current head,
skipped when the repo already holds identical files. A pull resolves the revision to a commit sha, downloads
that commit (only the names the record lists, and only the file types a result has: never a pickle),
checks every file (the key recomputed from its inputs must match; JSON parses; NPZ loads with
``allow_pickle=False``; images are images) before anything enters the store. Retries and offline behaviour
are the model client's (``hub/client.py``).
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
    SharedResultError,
    short_repr,
)
from ..hub.client import PICKLE_PATTERNS, _NoBars, _translate, with_retries
from ..hub.names import check_repo_id, check_revision
from ..provenance import git_blob_oid, strict_json
from .keys import result_key
from .store import ResultStore, StoredResult, check_key

__all__ = ["REFERENCE_PREFIX", "RECORD_FILE", "ALLOWED_SUFFIXES", "parse_result_reference", "push_result", "pull_result",
           "build_result_card"]

REFERENCE_PREFIX = "hf-hub-result:"
RECORD_FILE = "hubcompare-result.json"
CARD_FILE = "README.md"
ALLOWED_SUFFIXES = (".json", ".npz", ".csv", ".png", ".pdf", ".svg", ".md")
IGNORED_REMOTE = (".gitattributes",)
MAX_RECORD_BYTES = 16 << 20
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KIND = re.compile(r"[a-z][a-z0-9-]{0,39}")
RECORD_FIELDS = {"key": str, "kind": str, "created": str, "seconds": (int, float), "title": str, "request": dict,
                 "key_inputs": dict, "summary": dict, "models": list, "dataset": str, "files": list}
OPTIONAL_FIELDS = {"source", "path"}  # written by StoredResult.to_json; the pulled copy gets its own
_SVG_ACTIVE = re.compile(rb"<script|javascript:|<foreignObject|\son[a-z]+\s*=", re.IGNORECASE)


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
    data = DatasetCardData(pretty_name=stored.title or stored.kind, tags=["hubcompare", "hubcompare-result", stored.kind])
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


def push_result(stored: StoredResult, repo_id: str, *, private: bool = False, api: HfApi | None = None) -> tuple[str, str]:
    """Publish ``stored`` as the Hub dataset repo ``repo_id`` (created if missing) in one commit; returns (url, commit sha).

    The repo ends up holding exactly this result (files of an earlier result pushed there are deleted in the same
    commit); pushing it again when nothing changed makes no commit and returns the current sha."""
    check_repo_id(repo_id)
    api = api or HfApi()
    contents: dict[str, bytes] = {}
    for name in stored.files:
        if name in (CARD_FILE, RECORD_FILE):
            raise SharedResultError(f"result {stored.key[:12]} has a file named {name}, which a shared result reserves")
        contents[_check_file_name(name, f"result {stored.key[:12]}")] = stored.file(name).read_bytes()
    contents[RECORD_FILE] = (json.dumps(strict_json(_record(stored)), indent=2, allow_nan=False) + "\n").encode()
    contents[CARD_FILE] = str(build_result_card(stored, repo_id)).encode()
    with_retries(lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True), f"create {repo_id}")

    def attempt() -> str:
        info = api.repo_info(repo_id, repo_type="dataset", files_metadata=True)
        remote = {s.rfilename: s.blob_id for s in info.siblings or []}
        stale = [n for n in remote if n not in contents and n not in IGNORED_REMOTE]
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


def _fetch(repo_id: str, revision: str | None, api: HfApi) -> Path:
    """The snapshot folder (named by its commit sha) of the repo at ``revision``; online, the repo's file list is
    checked before anything is downloaded."""
    rev = revision or "main"
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        if offline:
            return _download(api, repo_id, rev, [RECORD_FILE, *(f"*{s}" for s in ALLOWED_SUFFIXES)], True)
        info = with_retries(lambda: api.repo_info(repo_id, repo_type="dataset", revision=rev), f"look up {repo_id}@{rev}")
        names = [s.rfilename for s in info.siblings or [] if s.rfilename not in IGNORED_REMOTE]
        for name in names:
            _check_file_name(name, f"{repo_id}@{info.sha}")
        if RECORD_FILE not in names:
            raise SharedResultError(f"{repo_id}@{info.sha} has no {RECORD_FILE}: it is not a shared hubcompare result "
                                    "(publish one with `hubcompare push-result`)")
        return _download(api, repo_id, rev, names, False)  # by name, so the cache records the branch for offline use
    except LocalEntryNotFoundError:
        raise NotInCacheError(f"result repo {repo_id}@{rev} is not in the Hugging Face cache and the Hub cannot be used "
                              "(offline or unreachable): pull it once while online, or unset HF_HUB_OFFLINE.") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise _translate(e, repo_id, rev, api.endpoint, "dataset") from None


def _load_record(folder: Path, where: str) -> dict:
    path = folder / RECORD_FILE
    if not path.is_file():
        raise SharedResultError(f"{where} has no {RECORD_FILE}: it is not a shared hubcompare result")
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise SharedResultError(f"{where}: {RECORD_FILE} is over {MAX_RECORD_BYTES >> 20} MiB; a result record is small")
    try:
        record = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise SharedResultError(f"{where}: {RECORD_FILE} is not valid JSON ({e})") from None
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
    if not all(isinstance(m, str) for m in record["models"]) or record["seconds"] < 0:
        raise SharedResultError(f"{where}: {RECORD_FILE} models must be strings and seconds >= 0")
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


def _check_content(path: Path, where: str) -> None:
    """Each file is what its name says (parsed, never executed): a bad one refuses the whole result."""
    name, data = path.name.lower(), path.read_bytes()
    try:
        if name.endswith(".json"):
            json.loads(data.decode("utf-8"), parse_constant=lambda c: float(c))  # result JSON may hold NaN (null in strict)
        elif name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                for array_name in npz.files:
                    npz[array_name]  # noqa: B018  (object arrays raise here: they would need a pickle)
        elif name.endswith((".csv", ".md")):
            data.decode("utf-8")
        elif name.endswith(".png") and not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("not a PNG image")
        elif name.endswith(".pdf") and not data.startswith(b"%PDF-"):
            raise ValueError("not a PDF")
        elif name.endswith(".svg"):
            if b"<svg" not in data[:4096] or _SVG_ACTIVE.search(data):
                raise ValueError("not a plain SVG image (scripts, event handlers and foreign objects are refused)")
    except (ValueError, UnicodeDecodeError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise SharedResultError(f"{where}: {path.name} is refused ({type(e).__name__}: {e})") from None


def pull_result(reference: str, store: ResultStore, *, api: HfApi | None = None) -> StoredResult:
    """Download ``hf-hub-result:OWNER/NAME[@REV]`` at one commit, check every file, and put it into ``store`` with the
    source ``hf-hub-result:OWNER/NAME@SHA``. A result whose key is stored already is returned as stored."""
    repo_id, revision = parse_result_reference(reference)
    api = api or HfApi()
    folder = _fetch(repo_id, revision, api)
    sha = folder.name
    where = f"{repo_id}@{sha}"
    record = _load_record(folder, where)
    present = {p.name for p in folder.iterdir()} - {CARD_FILE, RECORD_FILE, *IGNORED_REMOTE}
    missing, extra = set(record["files"]) - present, present - set(record["files"])
    if missing or extra:
        raise SharedResultError(f"{where}: the files do not match {RECORD_FILE} (" +
                                "; ".join(filter(None, [missing and f"missing {', '.join(sorted(missing))}",
                                                        extra and f"not listed {', '.join(sorted(extra))}"])) + ")")
    for name in record["files"]:
        if not (folder / name).is_file():
            raise SharedResultError(f"{where}: {name} is not a regular file")
        _check_content(folder / name, where)
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
