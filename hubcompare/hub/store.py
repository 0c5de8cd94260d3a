"""The on-disk repo store behind hubcompare's Hub server: repos, commits, refs and collections.

Kept apart from the HTTP side so the storage rules are in one place: content-addressed blobs (git
blob sha1), one JSON file per commit and one ``refs.json`` per repo, each written atomically; a
commit becomes visible only when its branch ref is moved, so a reader never sees half a commit. A
repo is built in a scratch folder and renamed into place with its initial commit, so a crash never
leaves one half-made; every name is checked (:mod:`.names`) and every path must resolve under the root.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ..provenance import atomic_write_bytes, atomic_write_json, git_blob_oid
from .names import REPO_ID, check_collection_slug, check_path_in_repo, check_repo_id, check_revision

__all__ = ["HttpError", "HubStore", "REPO_TYPES", "card_data", "derived_tags", "front_matter"]

REPO_TYPES = ("models", "datasets", "spaces")
_SHA = re.compile(r"[0-9a-f]{40}")
logger = logging.getLogger(__name__)

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


class HttpError(Exception):
    """An error answer: status, message and the ``X-Error-Code`` the client maps to an exception."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.body = status, message, code, commit, body


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


FRONT_MATTER = re.compile(r"^---\s*\n(.*?)\n---\s*(\n|$)", re.S)


def front_matter(text: str):
    """The parsed YAML front matter of a README, or None if it has none (raises yaml.YAMLError).

    The Hub derives tags and cardData from it, so the server must read YAML: PyYAML is already a
    dependency of hubcompare and of huggingface_hub; the HTTP side is standard library only.
    """
    m = FRONT_MATTER.match(text)
    return yaml.safe_load(m.group(1)) if m else None


def card_data(readme: bytes) -> dict | None:
    """The model card metadata of a README, or None (missing or malformed front matter)."""
    try:
        data = front_matter(readme.decode("utf-8", errors="replace"))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def derived_tags(card: dict | None) -> list[str]:
    """Tags the Hub derives from card metadata (what ``list_models(filter=...)`` matches)."""
    if not card:
        return []
    tags = [str(t) for t in card.get("tags") or []]
    for key in ("library_name", "pipeline_tag"):
        if card.get(key):
            tags.append(str(card[key]))
    datasets = card.get("datasets") or []
    tags += [f"dataset:{d}" for d in ([datasets] if isinstance(datasets, str) else datasets)]
    if card.get("license"):
        tags.append(f"license:{card['license']}")
    return list(dict.fromkeys(tags))


class HubStore:
    """Repos, commits, refs and collections on disk. All mutations hold one lock.

    Opening a store finishes or sets aside what a crash left half-done; ``recovered`` says what was done.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        self.lock = threading.RLock()
        self.recovered: list[str] = self._recover()

    def _inside(self, path: Path) -> Path:
        """``path`` if it resolves (symlinks followed) under the root; refused otherwise."""
        real = os.path.realpath(path)
        if real != self._real_root and not real.startswith(self._real_root + os.sep):
            raise HttpError(400, f"Refused: {os.path.relpath(path, self.root)} resolves outside the hub's data folder")
        return path

    def _scratch(self, kind: str) -> Path:
        base = self._inside(self.root / ".scratch")
        base.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=base))

    def _discard(self, path: Path) -> None:
        """Move ``path`` out of sight in one rename, then delete it (a crash leaves it in .scratch only)."""
        trash = self._scratch("delete")
        os.rename(path, trash / "d")
        shutil.rmtree(trash)

    # --- repos -----------------------------------------------------------------------------
    def repo_dir(self, rtype: str, repo_id: str) -> Path:
        if rtype not in REPO_TYPES:
            raise HttpError(400, f"Invalid repo type {rtype!r}: use models, datasets or spaces")
        return self._inside(self.root / "repos" / rtype / check_repo_id(repo_id))

    def exists(self, rtype: str, repo_id: str) -> bool:
        return (self.repo_dir(rtype, repo_id) / "refs.json").is_file()

    def require(self, rtype: str, repo_id: str) -> Path:
        if not self.exists(rtype, repo_id):
            raise HttpError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repo_dir(rtype, repo_id)

    def _read(self, rtype: str, repo_id: str, path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            if not self.exists(rtype, repo_id):  # deleted while we read
                raise HttpError(404, f"Repository {repo_id} not found", "RepoNotFound") from None
            raise

    def create_repo(self, rtype: str, repo_id: str, private: bool) -> None:
        with self.lock:
            final = self.repo_dir(rtype, repo_id)
            if self.exists(rtype, repo_id):
                raise HttpError(409, f"You already created this {rtype} repo: {repo_id}", body={"url": repo_id})
            stage = self._scratch("create")
            try:
                atomic_write_json(stage / "repo.json", {"private": bool(private), "createdAt": _now()})
                atomic_write_json(stage / "refs.json", {"branches": {}, "tags": {}})
                self._commit(stage, "main", None, "initial commit", "", [("file", ".gitattributes", GITATTRIBUTES)])
                if final.exists():  # a leftover without refs.json (never visible): keep its files aside
                    self._set_aside(final)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(stage, final)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise

    def delete_repo(self, rtype: str, repo_id: str) -> None:
        with self.lock:
            self._discard(self.require(rtype, repo_id))

    def set_private(self, rtype: str, repo_id: str, private: bool) -> None:
        with self.lock:
            d = self.require(rtype, repo_id)
            atomic_write_json(d / "repo.json", {**json.loads((d / "repo.json").read_text()), "private": bool(private)})

    def repo_meta(self, rtype: str, repo_id: str) -> dict:
        return self._read(rtype, repo_id, self.require(rtype, repo_id) / "repo.json")

    def refs(self, rtype: str, repo_id: str) -> dict:
        return self._read(rtype, repo_id, self.require(rtype, repo_id) / "refs.json")

    def resolve(self, rtype: str, repo_id: str, rev: str) -> str:
        """A branch, tag or commit id (full or abbreviated) -> full commit id."""
        refs = self.refs(rtype, repo_id)
        rev = check_revision(rev).removeprefix("refs/heads/").removeprefix("refs/tags/")
        for kind in ("branches", "tags"):
            if rev in refs[kind]:
                return refs[kind][rev]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            found = [p.stem for p in (self.repo_dir(rtype, repo_id) / "commits").glob(f"{rev}*.json")]
            if len(found) == 1:
                return found[0]
        raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def commit(self, rtype: str, repo_id: str, sha: str) -> dict:
        return self._read(rtype, repo_id, self._commit_path(self.repo_dir(rtype, repo_id), sha))

    def blob(self, rtype: str, repo_id: str, oid: str) -> Path:
        return self._blob_path(self.repo_dir(rtype, repo_id), oid)

    @staticmethod
    def _commit_path(d: Path, sha: str) -> Path:
        if not _SHA.fullmatch(sha or ""):
            raise HttpError(400, f"Invalid commit id {sha!r}")
        return d / "commits" / f"{sha}.json"

    @staticmethod
    def _blob_path(d: Path, oid: str) -> Path:
        if not _SHA.fullmatch(oid or ""):
            raise HttpError(400, f"Invalid blob id {oid!r}")
        return d / "objects" / oid[:2] / oid

    def _commit(self, d: Path, branch, parent, title, description, ops) -> str:
        """Write the blobs and the commit record, then move the branch: until then nothing of it is visible."""
        for op in ops:
            check_path_in_repo(op[1], folder=op[0] == "deletedFolder")
        refs = json.loads((d / "refs.json").read_text())
        head = refs["branches"].get(branch)
        if parent is not None and head is not None and parent != head:
            raise HttpError(412, f"A commit has happened since {parent}. Please refresh and try again.", "PreconditionFailed")
        files = dict(json.loads(self._commit_path(d, head).read_text())["files"]) if head else {}
        for op in ops:
            kind, path = op[0], op[1]
            if kind == "file":
                data = op[2]
                oid = git_blob_oid(data)
                blob = self._blob_path(d, oid)
                if not blob.exists():
                    atomic_write_bytes(blob, data)
                files[path] = {"oid": oid, "size": len(data)}
            elif kind == "deletedFile":
                if files.pop(path, None) is None:
                    raise HttpError(404, f"File {path} does not exist", "EntryNotFound")
            elif kind == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
        card = None
        if "README.md" in files:
            card = card_data(self._blob_path(d, files["README.md"]["oid"]).read_bytes())
        record = {
            "parents": [head] if head else [], "title": title, "message": description, "date": _now(),
            "files": dict(sorted(files.items())), "cardData": card, "nonce": secrets.token_hex(8),
        }
        sha = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()
        record["id"] = sha
        atomic_write_json(self._commit_path(d, sha), record)
        refs["branches"][branch] = sha
        atomic_write_json(d / "refs.json", refs)
        return sha

    def apply_commit(self, rtype, repo_id, branch, parent, title, description, ops) -> str:
        check_revision(branch)
        with self.lock:
            refs = self.refs(rtype, repo_id)
            if branch not in refs["branches"]:
                raise HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            return self._commit(self.repo_dir(rtype, repo_id), branch, parent, title, description, ops)

    def set_ref(self, rtype, repo_id, kind: str, name: str, sha: str | None, exist_ok: bool = False) -> None:
        with self.lock:
            check_revision(name)
            d = self.require(rtype, repo_id)
            refs = json.loads((d / "refs.json").read_text())
            if sha is None:
                if refs[kind].pop(name, None) is None:
                    raise HttpError(404, f"{kind[:-1]} {name} not found", "RevisionNotFound")
            elif name in refs[kind] and not exist_ok:
                raise HttpError(409, f"{kind[:-1]} {name} already exists")
            else:
                refs[kind][name] = sha
            atomic_write_json(d / "refs.json", refs)

    def list_repos(self, rtype: str) -> list[str]:
        if rtype not in REPO_TYPES:
            raise HttpError(400, f"Invalid repo type {rtype!r}: use models, datasets or spaces")
        base = self.root / "repos" / rtype
        found = (f"{p.parent.parent.name}/{p.parent.name}" for p in base.glob("*/*/refs.json"))
        return sorted(r for r in found if REPO_ID.fullmatch(r) and "--" not in r and ".." not in r)

    # --- crash recovery ---------------------------------------------------------------------
    def _recover(self) -> list[str]:
        """Finish or set aside what a crash left half-done, so every repo a client can see is whole."""
        shutil.rmtree(self.root / ".scratch", ignore_errors=True)  # staged creations/deletions: never visible
        notes = []
        for rtype in REPO_TYPES:
            for d in sorted((self.root / "repos" / rtype).glob("*/*")):
                note = self._repair(rtype, d) if d.is_dir() else None
                if note:
                    logger.warning(note)
                    notes.append(note)
        return notes

    def _set_aside(self, d: Path) -> Path:
        aside = self.root / "quarantine" / f"{d.parent.parent.name}--{d.parent.name}--{d.name}-{secrets.token_hex(4)}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.rename(d, aside)
        return aside

    def _repair(self, rtype: str, d: Path) -> str | None:
        name = f"{rtype}/{d.parent.name}/{d.name}"
        try:
            check_repo_id(f"{d.parent.name}/{d.name}")
        except ValueError:
            return f"not serving {name}: the Hub does not accept that name; rename its folder"
        try:
            self._inside(d)
            refs = json.loads((d / "refs.json").read_text())
            json.loads((d / "repo.json").read_text())
            if not isinstance(refs, dict) or not all(isinstance(refs.get(k), dict) for k in ("branches", "tags")):
                raise ValueError("refs.json is not {branches: {...}, tags: {...}}")
        except HttpError:
            return f"left {name} alone: it resolves outside the data folder (a symlink?); remove it"
        except (OSError, ValueError) as e:
            return f"set aside half-made repo {name} ({type(e).__name__}: {e}); its files are in {self._set_aside(d)}"
        commits = list((d / "commits").glob("*.json"))
        if not refs.get("branches") and not refs.get("tags") and not commits:
            self._commit(d, "main", None, "initial commit", "", [("file", ".gitattributes", GITATTRIBUTES)])
            return f"repaired {name}: it was created without its initial commit (a crash); added it"
        dangling = [n for kind in ("branches", "tags") for n, sha in refs.get(kind, {}).items()
                    if not (d / "commits" / f"{sha}.json").is_file()]
        if dangling:
            return f"{name} is inconsistent: {', '.join(dangling)} point at missing commits; delete and push it again"
        return None

    # --- collections ------------------------------------------------------------------------
    def collection_path(self, slug: str) -> Path:
        return self._inside(self.root / "collections" / f"{check_collection_slug(slug)}.json")

    def collection(self, slug: str) -> dict:
        path = self.collection_path(slug)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise HttpError(404, f"Collection {slug} not found", "CollectionNotFound") from None

    def collections(self) -> list[dict]:
        out = []
        for p in sorted((self.root / "collections").glob("*/*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except FileNotFoundError:
                continue  # deleted while listing
        return out

    def save_collection(self, c: dict) -> dict:
        c["lastUpdated"] = _now()
        atomic_write_json(self.collection_path(c["slug"]), c)
        return c
