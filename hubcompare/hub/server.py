"""A Hugging Face Hub-protocol server in the standard library: for tests and offline/air-gapped hubs.

The real Hub is not reachable from every machine, and no existing server speaks the write side of
the protocol offline, so hubcompare ships this one (``hubcompare hub serve --data DIR``). It speaks
what ``huggingface_hub``'s client needs (repos, preupload answering "regular",
NDJSON commits, branches/tags, tree, resolve with ``X-Repo-Commit``/``ETag`` and ``Range``,
``list_models`` with author/search/tag filters and cardData, collections). Point a client at it
with ``HF_ENDPOINT=http://127.0.0.1:PORT`` set before ``huggingface_hub`` is imported.

Storage is plain files under the data folder: content-addressed blobs (git blob sha1), one JSON
file per commit and one ``refs.json`` per repo, each written atomically; a commit becomes visible
only when its branch ref is moved, so a reader never sees half a commit. There is no access
control (any token may write anywhere): bind it to 127.0.0.1 (the default).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..provenance import atomic_write_bytes, atomic_write_json, git_blob_oid

__all__ = ["HubStore", "HubServer", "serve"]

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
NAME = r"[A-Za-z0-9][\w.\-]*"
PAGE_SIZE = 1000
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


class HttpError(Exception):
    """An error answer: status, message and the ``X-Error-Code`` the client maps to an exception."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.body = status, message, code, commit, body


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


FRONT_MATTER = re.compile(r"^---\s*\n(.*?)\n---\s*(\n|$)", re.S)


def _front_matter(text: str):
    """The parsed YAML front matter of a README, or None if it has none (raises yaml.YAMLError).

    The Hub derives tags and cardData from it, so the server must read YAML: PyYAML is already a
    dependency of hubcompare and of huggingface_hub; the HTTP side is standard library only.
    """
    import yaml

    m = FRONT_MATTER.match(text)
    return yaml.safe_load(m.group(1)) if m else None


def _card_data(readme: bytes) -> dict | None:
    """The model card metadata of a README, or None (missing or malformed front matter)."""
    import yaml

    try:
        data = _front_matter(readme.decode("utf-8", errors="replace"))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _tags(card: dict | None) -> list[str]:
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
        import shutil

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
            card = _card_data(self.blob(rtype, repo_id, files["README.md"]["oid"]).read_bytes())
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
        if not re.fullmatch(rf"{NAME}/{NAME}", slug) or not path.is_file():
            raise HttpError(404, f"Collection {slug} not found", "CollectionNotFound")
        return json.loads(path.read_text())

    def collections(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "collections").glob("*/*.json"))]

    def save_collection(self, c: dict) -> dict:
        c["lastUpdated"] = _now()
        atomic_write_json(self.collection_path(c["slug"]), c)
        return c


class Handler(BaseHTTPRequestHandler):
    """One request. Routes are matched on the raw (still quoted) path, then unquoted."""

    protocol_version = "HTTP/1.1"
    server_version = "hubcompare-hub/1"
    store: HubStore
    user: str = "local"
    max_bytes_per_second: float | None = None
    log: "callable | None" = None

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else ~40 ms per request

    def log_message(self, fmt: str, *args) -> None:
        if self.log is not None:
            self.log(f"{self.address_string()} {fmt % args}")

    # --- plumbing -----------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        self._body = None
        try:
            for m, pattern, fn in ROUTES:
                if m == method or (m == "GET" and method == "HEAD"):
                    match = re.fullmatch(pattern, url.path)
                    if match:
                        return fn(self, *[unquote(g) if g is not None else None for g in match.groups()])
            raise HttpError(404, f"No route for {method} {url.path}")
        except HttpError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
            self._json(e.body or {"error": e.message}, e.status, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def body(self) -> bytes:
        if self._body is None:
            n = int(self.headers.get("Content-Length") or 0)
            self._body = self.rfile.read(n) if n else b""
        return self._body

    def json_body(self) -> dict:
        try:
            return json.loads(self.body() or b"{}")
        except json.JSONDecodeError as e:
            raise HttpError(400, f"Invalid JSON body: {e}") from e

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def q(self, key: str, default=None):
        v = self.query.get(key)
        return v[0] if v else default

    def flag(self, key: str) -> bool:
        return str(self.q(key, "")).lower() in ("1", "true")

    # --- info objects -------------------------------------------------------------------------
    def info(self, rtype: str, repo_id: str, sha: str, full: bool = True) -> dict:
        c = self.store.commit(rtype, repo_id, sha)
        meta = self.store.repo_meta(rtype, repo_id)
        card = c.get("cardData")
        out = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": sha, "lastModified": c["date"], "createdAt": meta["createdAt"],
            "private": meta["private"], "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": _tags(card), "siblings": [{"rfilename": p} for p in c["files"]],
        }
        if card:
            out["cardData"] = card
            for key in ("library_name", "pipeline_tag"):
                if card.get(key):
                    out[key] = card[key]
        if self.flag("blobs"):
            out["siblings"] = [{"rfilename": p, "size": f["size"], "blobId": f["oid"]} for p, f in c["files"].items()]
        return out

    def _paginate(self, items: list, limit: int | None = None) -> None:
        start = int(self.q("cursor", 0) or 0)
        size = min(limit or PAGE_SIZE, PAGE_SIZE)
        page = items[start:start + size]
        headers = {}
        if limit is None and start + size < len(items):
            query = {k: v for k, v in self.query.items() if k != "cursor"}
            qs = "&".join(f"{quote(k)}={quote(x)}" for k, vs in query.items() for x in vs)
            nxt = f"{self.endpoint}{urlsplit(self.path).path}?{qs}{'&' if qs else ''}cursor={start + size}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers=headers)


def _rtype(t: str) -> str:
    return REPO_TYPES[t]


# --- route handlers ---------------------------------------------------------------------------
def whoami(h: Handler):
    h._json({"type": "user", "id": "0" * 24, "name": h.user, "fullname": h.user, "orgs": [],
             "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}})


def create_repo(h: Handler):
    b = h.json_body()
    rtype = b.get("type") or "model"
    if rtype not in PREFIX:
        raise HttpError(400, f"Invalid repo type {rtype}")
    ns, name = b.get("organization") or h.user, b.get("name", "")
    if not re.fullmatch(NAME, ns) or not re.fullmatch(NAME, name) or len(name) > 96:
        raise HttpError(400, f"Invalid repo name {ns}/{name}")
    repo_id = f"{ns}/{name}"
    url = f"{h.endpoint}/{PREFIX[rtype]}{repo_id}"
    try:
        h.store.create_repo(rtype + "s", repo_id, b.get("private", False))
    except HttpError as e:
        e.body = {"error": e.message, "url": url}
        raise
    h._json({"url": url, "name": repo_id, "id": repo_id})


def delete_repo(h: Handler):
    b = h.json_body()
    rtype = (b.get("type") or "model") + "s"
    h.store.delete_repo(rtype, f"{b.get('organization') or h.user}/{b.get('name')}")
    h._json({})


def settings(h: Handler, t, repo_id):
    h.store.require(t, repo_id)
    h._json({})


def validate_yaml(h: Handler):
    """The client sends the whole README; its YAML front matter must be a mapping."""
    import yaml

    try:
        data = _front_matter(h.json_body().get("content") or "")
    except yaml.YAMLError as e:
        return h._json({"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []}, 400)
    if data is not None and not isinstance(data, dict):
        return h._json({"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []}, 400)
    h._json({"errors": [], "warnings": []})


def preupload(h: Handler, t, repo_id, rev):
    h.store.require(t, repo_id)
    files = {}
    try:
        sha = h.store.resolve(t, repo_id, rev)
        files = h.store.commit(t, repo_id, sha)["files"]
    except HttpError:
        pass  # a new branch: nothing to compare against
    out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": (files.get(f["path"]) or {}).get("oid")}
           for f in h.json_body().get("files", [])]
    h._json({"files": out, "commitOid": None})


def commit(h: Handler, t, repo_id, rev):
    h.store.require(t, repo_id)
    if h.flag("create_pr"):
        raise HttpError(400, "This hub does not support pull requests; commit to a branch instead.")
    header, ops = None, []
    for line in h.body().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        key, value = item.get("key"), item.get("value", {})
        if key == "header":
            header = value
        elif key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HttpError(400, f"Unsupported encoding {value.get('encoding')}")
            ops.append(("file", value["path"], base64.b64decode(value["content"])))
        elif key in ("deletedFile", "deletedFolder"):
            ops.append((key, value["path"]))
        elif key == "lfsFile":
            raise HttpError(400, "LFS uploads are not supported: this hub answers 'regular' to preupload")
        else:
            raise HttpError(400, f"Unknown commit operation {key!r}")
    if header is None:
        raise HttpError(400, "The commit has no header line")
    sha = h.store.apply_commit(t, repo_id, rev, header.get("parentCommit"), header.get("summary") or "",
                               header.get("description") or "", ops)
    prefix = PREFIX[_rtype(t)]
    h._json({"commitOid": sha, "commitUrl": f"{h.endpoint}/{prefix}{repo_id}/commit/{sha}",
             "success": True, "hookOutput": ""})


def repo_info(h: Handler, t, repo_id, rev=None):
    h.store.require(t, repo_id)
    sha = h.store.resolve(t, repo_id, rev or "main")
    h._json(h.info(t, repo_id, sha))


def _entries(h: Handler, t, repo_id, sha, folder: str, recursive: bool) -> list[dict]:
    files = h.store.commit(t, repo_id, sha)["files"]
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    out, dirs = [], {}
    for path, f in files.items():
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):]
        parts = rest.split("/")
        for i in range(1, len(parts) if recursive else min(2, len(parts))):
            d = prefix + "/".join(parts[:i])
            dirs.setdefault(d, {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
        if recursive or len(parts) == 1:
            out.append({"type": "file", "oid": f["oid"], "size": f["size"], "path": path})
    if prefix and not out and not dirs:
        raise HttpError(404, f"{folder} does not exist at {sha}", "EntryNotFound")
    return sorted(list(dirs.values()) + out, key=lambda e: e["path"])


def tree(h: Handler, t, repo_id, rev, folder=None):
    h.store.require(t, repo_id)
    sha = h.store.resolve(t, repo_id, rev)
    h._paginate(_entries(h, t, repo_id, sha, folder or "", h.flag("recursive")))


def paths_info(h: Handler, t, repo_id, rev):
    h.store.require(t, repo_id)
    sha = h.store.resolve(t, repo_id, rev)
    ctype = h.headers.get("Content-Type", "")
    if "json" in ctype:
        paths = h.json_body().get("paths", [])
    else:
        paths = parse_qs(h.body().decode(), keep_blank_values=True).get("paths", [])
    files = h.store.commit(t, repo_id, sha)["files"]
    out = []
    for p in paths:
        if p in files:
            out.append({"type": "file", "oid": files[p]["oid"], "size": files[p]["size"], "path": p})
        elif any(f.startswith(p.rstrip("/") + "/") for f in files):
            out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
    h._json(out)


def list_refs(h: Handler, t, repo_id):
    refs = h.store.refs(t, repo_id)
    out = {kind: [{"name": n, "ref": f"refs/{'heads' if kind == 'branches' else 'tags'}/{n}", "targetCommit": s}
                  for n, s in refs[kind].items()] for kind in ("branches", "tags")}
    out["converts"] = []
    if h.flag("include_prs"):
        out["pullRequests"] = []
    h._json(out)


def list_commits(h: Handler, t, repo_id, rev):
    h.store.require(t, repo_id)
    sha, out = h.store.resolve(t, repo_id, rev), []
    while sha:
        c = h.store.commit(t, repo_id, sha)
        out.append({"id": sha, "title": c["title"], "message": c["message"], "date": c["date"], "authors": [{"user": h.user}]})
        sha = c["parents"][0] if c["parents"] else None
    h._paginate(out)


def branch(h: Handler, t, repo_id, name):
    h.store.require(t, repo_id)
    if h.command == "DELETE":
        h.store.set_ref(t, repo_id, "branches", name, None)
    else:
        start = h.json_body().get("startingPoint") or "main"
        h.store.set_ref(t, repo_id, "branches", name, h.store.resolve(t, repo_id, start), exist_ok=h.flag("exist_ok"))
    h._json({})


def tag(h: Handler, t, repo_id, rev):
    h.store.require(t, repo_id)
    if h.command == "DELETE":
        h.store.set_ref(t, repo_id, "tags", rev, None)
    else:
        b = h.json_body()
        h.store.set_ref(t, repo_id, "tags", b["tag"], h.store.resolve(t, repo_id, rev))
    h._json({})


def list_repos(h: Handler, t):
    author, search = h.q("author"), (h.q("search") or "").lower()
    filters = h.query.get("filter", [])
    items = []
    for repo_id in h.store.list_repos(t):
        if author and repo_id.split("/")[0] != author:
            continue
        if search and search not in repo_id.lower():
            continue
        try:
            info = h.info(t, repo_id, h.store.resolve(t, repo_id, "main"))
        except (HttpError, FileNotFoundError):
            continue  # deleted while listing
        if not all(f in info["tags"] for f in filters):
            continue
        if not (h.flag("cardData") or h.flag("full")):
            info.pop("cardData", None)
        items.append(info)
    sort, desc = h.q("sort"), h.q("direction") == "-1"
    if sort in ("lastModified", "last_modified", "createdAt", "created_at"):
        key = "lastModified" if "odified" in sort else "createdAt"
        items.sort(key=lambda i: i[key], reverse=desc)
    limit = h.q("limit")
    h._paginate(items, int(limit) if limit else None)


def resolve_file(h: Handler, prefix, repo_id, rev, path):
    t = {"": "models", "datasets/": "datasets", "spaces/": "spaces"}[prefix or ""]
    h.store.require(t, repo_id)
    sha = h.store.resolve(t, repo_id, rev)
    files = h.store.commit(t, repo_id, sha)["files"]
    if path not in files:
        raise HttpError(404, f"Entry not found: {path} at {rev}", "EntryNotFound", commit=sha)
    f = files[path]
    blob = h.store.blob(t, repo_id, f["oid"])
    size, start, end, status = f["size"], 0, f["size"] - 1, 200
    rng = re.fullmatch(r"bytes=(\d*)-(\d*)", h.headers.get("Range", "").strip())
    if rng and h.command == "GET" and (rng.group(1) or rng.group(2)):
        if rng.group(1):
            start = int(rng.group(1))
            end = min(int(rng.group(2)), size - 1) if rng.group(2) else size - 1
        else:
            start = max(size - int(rng.group(2)), 0)
        if start >= size or start > end:
            raise HttpError(416, f"Range not satisfiable for {path} ({size} bytes)")
        status = 206
    h.send_response(status)
    h.send_header("Content-Type", "application/octet-stream")
    h.send_header("Content-Length", str(end - start + 1 if status == 206 else size))
    h.send_header("Accept-Ranges", "bytes")
    h.send_header("ETag", f'"{f["oid"]}"')
    h.send_header("X-Repo-Commit", sha)
    h.send_header("Content-Disposition", f'inline; filename="{Path(path).name}"')
    if status == 206:
        h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
    h.end_headers()
    if h.command == "HEAD":
        return
    with open(blob, "rb") as fh:
        fh.seek(start)
        remaining, chunk = end - start + 1, 1 << 16
        rate = h.max_bytes_per_second
        if rate:
            chunk = max(1, min(chunk, int(rate / 20)))
        while remaining > 0:
            data = fh.read(min(chunk, remaining))
            if not data:
                break
            h.wfile.write(data)
            remaining -= len(data)
            if rate:
                time.sleep(len(data) / rate)


# --- collections ------------------------------------------------------------------------------
def _slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "collection"


def create_collection(h: Handler):
    b = h.json_body()
    ns, title = b.get("namespace") or h.user, b.get("title") or ""
    if not title.strip():
        raise HttpError(400, "A collection needs a title")
    with h.store.lock:
        for c in h.store.collections():
            if c["owner"]["name"] == ns and c["title"] == title:
                raise HttpError(409, f"Collection {title!r} already exists", body={"error": "exists", "slug": c["slug"]})
        slug = f"{ns}/{_slugify(title)}-{secrets.token_hex(12)}"
        position = sum(1 for c in h.store.collections() if c["owner"]["name"] == ns)
        c = {"slug": slug, "title": title, "description": b.get("description"), "owner": {"name": ns, "type": "user"},
             "items": [], "position": position, "private": bool(b.get("private")), "theme": "blue", "upvotes": 0}
        h._json(h.store.save_collection(c))


def collection(h: Handler, slug):
    with h.store.lock:
        c = h.store.collection(slug)
        if h.command == "DELETE":
            h.store.collection_path(slug).unlink()
            return h._json({})
        if h.command == "PATCH":
            b = h.json_body()
            for key in ("title", "description", "private", "theme", "position"):
                if key in b:
                    c[key] = b[key]
            c = h.store.save_collection(c)
        h._json({"data": c} if h.command == "PATCH" else c)


def add_item(h: Handler, slug):
    b = h.json_body()
    item = b.get("item") or {}
    with h.store.lock:
        c = h.store.collection(slug)
        if any(i["id"] == item.get("id") and i["type"] == item.get("type") for i in c["items"]):
            raise HttpError(409, f"Item {item.get('id')} is already in collection {slug}")
        entry = {"_id": secrets.token_hex(12), "id": item.get("id"), "type": item.get("type"), "position": len(c["items"])}
        if b.get("note"):
            entry["note"] = {"text": b["note"], "html": b["note"]}
        c["items"].append(entry)
        h._json(h.store.save_collection(c))


def item(h: Handler, slug, item_id):
    with h.store.lock:
        c = h.store.collection(slug)
        found = [i for i in c["items"] if i["_id"] == item_id]
        if not found:
            raise HttpError(404, f"Item {item_id} not in collection {slug}")
        if h.command == "DELETE":
            c["items"].remove(found[0])
        else:
            b = h.json_body()
            if "note" in b:
                found[0]["note"] = {"text": b["note"], "html": b["note"]}
            if "position" in b:
                c["items"].remove(found[0])
                c["items"].insert(int(b["position"]), found[0])
            for pos, i in enumerate(c["items"]):
                i["position"] = pos
        h.store.save_collection(c)
        h._json({})


def list_collections(h: Handler):
    owner, wanted = h.q("owner"), h.query.get("item", [])
    out = []
    for c in h.store.collections():
        if owner and c["owner"]["name"] != owner:
            continue
        ids = {f"{i['type']}s/{i['id']}" for i in c["items"]} | {i["id"] for i in c["items"]}
        if wanted and not all(w in ids for w in wanted):
            continue
        out.append({k: v for k, v in c.items() if k != "position"})  # the client numbers them itself
    limit = h.q("limit")
    h._paginate(out, int(limit) if limit else None)


T = r"(models|datasets|spaces)"
REPO = rf"({NAME}/{NAME})"
REV = r"([^/]+)"
ROUTES = [
    ("GET", r"/api/whoami-v2", whoami),
    ("POST", r"/api/repos/create", create_repo),
    ("DELETE", r"/api/repos/delete", delete_repo),
    ("POST", r"/api/validate-yaml", validate_yaml),
    ("GET", r"/api/collections", list_collections),
    ("POST", r"/api/collections", create_collection),
    ("POST", rf"/api/collections/({NAME}/{NAME})/items", add_item),
    ("PATCH", rf"/api/collections/({NAME}/{NAME})/items/([0-9a-f]+)", item),
    ("DELETE", rf"/api/collections/({NAME}/{NAME})/items/([0-9a-f]+)", item),
    ("GET", rf"/api/collections/({NAME}/{NAME})", collection),
    ("PATCH", rf"/api/collections/({NAME}/{NAME})", collection),
    ("DELETE", rf"/api/collections/({NAME}/{NAME})", collection),
    ("PUT", rf"/api/{T}/{REPO}/settings", settings),
    ("POST", rf"/api/{T}/{REPO}/preupload/{REV}", preupload),
    ("POST", rf"/api/{T}/{REPO}/commit/{REV}", commit),
    ("GET", rf"/api/{T}/{REPO}/tree/{REV}(?:/(.+))?", tree),
    ("POST", rf"/api/{T}/{REPO}/paths-info/{REV}", paths_info),
    ("GET", rf"/api/{T}/{REPO}/refs", list_refs),
    ("GET", rf"/api/{T}/{REPO}/commits/{REV}", list_commits),
    ("POST", rf"/api/{T}/{REPO}/branch/{REV}", branch),
    ("DELETE", rf"/api/{T}/{REPO}/branch/{REV}", branch),
    ("POST", rf"/api/{T}/{REPO}/tag/{REV}", tag),
    ("DELETE", rf"/api/{T}/{REPO}/tag/{REV}", tag),
    ("GET", rf"/api/{T}/{REPO}/revision/{REV}", repo_info),
    ("GET", rf"/api/{T}/{REPO}", repo_info),
    ("GET", rf"/api/{T}", list_repos),
    ("GET", rf"/(datasets/|spaces/)?{REPO}/resolve/{REV}/(.+)", resolve_file),
]


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers open connections, so ``kill`` can drop them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs):
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self._conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._conn_lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class HubServer:
    """The server bound to ``host:port`` (port 0 = any free port), run in a background thread.

    ``with HubServer(data_dir) as server: ...`` starts and stops it; ``server.endpoint`` is the
    URL to give ``HF_ENDPOINT``.
    """

    def __init__(self, data: str | Path, host: str = "127.0.0.1", port: int = 0, user: str = "local",
                 max_bytes_per_second: float | None = None, log=None):
        handler = type("BoundHandler", (Handler,), {
            "store": HubStore(data), "user": user, "max_bytes_per_second": max_bytes_per_second,
            "log": staticmethod(log) if log else None,
        })
        self.httpd = _Server((host, port), handler)
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join()

    def kill(self) -> None:
        """Stop abruptly, dropping connections mid-response (what a crash looks like to clients)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd.drop_connections()
        if self._thread:
            self._thread.join()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(data: str | Path, host: str = "127.0.0.1", port: int = 8080, user: str = "local",
          max_bytes_per_second: float | None = None, log=None, on_ready=None) -> None:
    """Serve in the foreground until interrupted (what ``hubcompare hub serve`` runs)."""
    server = HubServer(data, host, port, user, max_bytes_per_second, log)
    if on_ready:
        on_ready(server)
    try:
        server.httpd.serve_forever()
    finally:
        server.httpd.server_close()

