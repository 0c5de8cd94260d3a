"""The on-disk repo store behind hubcompare's Hub server: repos, commits, refs and collections.

Kept apart from the HTTP side so the storage rules are in one place: content-addressed blobs (git
blob sha1), one JSON file per commit and one ``refs.json`` per repo, each written atomically; a
commit becomes visible only when its branch ref is moved, so a reader never sees half a commit.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ..provenance import atomic_write_bytes, atomic_write_json, git_blob_oid
from .names import NAME_PATTERN

__all__ = ["HttpError", "HubStore", "card_data", "derived_tags", "front_matter"]

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
    """Repos, commits, refs and collections on disk. All mutations hold one lock."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # --- repos -----------------------------------------------------------------------------
    def repo_dir(self, rtype: str, repo_id: str) -> Path:
        return self.root / "repos" / rtype / repo_id

    def exists(self, rtype: str, repo_id: str) -> bool:
        return (self.repo_dir(rtype, repo_id) / "refs.json").is_file()

    def require(self, rtype: str, repo_id: str) -> Path:
        if not self.exists(rtype, repo_id):
            raise HttpError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repo_dir(rtype, repo_id)

    def create_repo(self, rtype: str, repo_id: str, private: bool) -> None:
        with self.lock:
            if self.exists(rtype, repo_id):
                raise HttpError(409, f"You already created this {rtype} repo: {repo_id}", body={"url": repo_id})
            d = self.repo_dir(rtype, repo_id)
            atomic_write_json(d / "repo.json", {"private": bool(private), "createdAt": _now()})
            atomic_write_json(d / "refs.json", {"branches": {}, "tags": {}})
            self._commit(rtype, repo_id, "main", None, "initial commit", "", [("file", ".gitattributes", GITATTRIBUTES)])

    def delete_repo(self, rtype: str, repo_id: str) -> None:
        with self.lock:
            d = self.require(rtype, repo_id)
            shutil.rmtree(d)

    def repo_meta(self, rtype: str, repo_id: str) -> dict:
        return json.loads((self.require(rtype, repo_id) / "repo.json").read_text())

    def refs(self, rtype: str, repo_id: str) -> dict:
        return json.loads((self.require(rtype, repo_id) / "refs.json").read_text())

    def resolve(self, rtype: str, repo_id: str, rev: str) -> str:
        """A branch, tag or commit id (full or abbreviated) -> full commit id."""
        refs = self.refs(rtype, repo_id)
        rev = rev.removeprefix("refs/heads/").removeprefix("refs/tags/")
        for kind in ("branches", "tags"):
            if rev in refs[kind]:
                return refs[kind][rev]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            found = [p.stem for p in (self.repo_dir(rtype, repo_id) / "commits").glob(f"{rev}*.json")]
            if len(found) == 1:
                return found[0]
        raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def commit(self, rtype: str, repo_id: str, sha: str) -> dict:
        return json.loads((self.repo_dir(rtype, repo_id) / "commits" / f"{sha}.json").read_text())

    def blob(self, rtype: str, repo_id: str, oid: str) -> Path:
        return self.repo_dir(rtype, repo_id) / "objects" / oid[:2] / oid

    def _commit(self, rtype, repo_id, branch, parent, title, description, ops) -> str:
        d = self.repo_dir(rtype, repo_id)
        refs = json.loads((d / "refs.json").read_text())
        head = refs["branches"].get(branch)
        if parent is not None and head is not None and parent != head:
            raise HttpError(412, f"A commit has happened since {parent}. Please refresh and try again.", "PreconditionFailed")
        files = dict(self.commit(rtype, repo_id, head)["files"]) if head else {}
        for op in ops:
            kind, path = op[0], op[1]
            if kind == "file":
                data = op[2]
                oid = git_blob_oid(data)
                blob = self.blob(rtype, repo_id, oid)
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
            card = card_data(self.blob(rtype, repo_id, files["README.md"]["oid"]).read_bytes())
        record = {
            "parents": [head] if head else [], "title": title, "message": description, "date": _now(),
            "files": dict(sorted(files.items())), "cardData": card, "nonce": secrets.token_hex(8),
        }
        sha = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()
        record["id"] = sha
        atomic_write_json(d / "commits" / f"{sha}.json", record)
        refs["branches"][branch] = sha
        atomic_write_json(d / "refs.json", refs)
        return sha

    def apply_commit(self, rtype, repo_id, branch, parent, title, description, ops) -> str:
        with self.lock:
            refs = self.refs(rtype, repo_id)
            if branch not in refs["branches"]:
                raise HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            return self._commit(rtype, repo_id, branch, parent, title, description, ops)

    def set_ref(self, rtype, repo_id, kind: str, name: str, sha: str | None, exist_ok: bool = False) -> None:
        with self.lock:
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
        base = self.root / "repos" / rtype
        return sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in base.glob("*/*/refs.json"))

    # --- collections ------------------------------------------------------------------------
    def collection_path(self, slug: str) -> Path:
        return self.root / "collections" / f"{slug}.json"

    def collection(self, slug: str) -> dict:
        path = self.collection_path(slug)
        if not re.fullmatch(rf"{NAME_PATTERN}/{NAME_PATTERN}", slug) or not path.is_file():
            raise HttpError(404, f"Collection {slug} not found", "CollectionNotFound")
        return json.loads(path.read_text())

    def collections(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "collections").glob("*/*.json"))]

    def save_collection(self, c: dict) -> dict:
        c["lastUpdated"] = _now()
        atomic_write_json(self.collection_path(c["slug"]), c)
        return c

