"""The Hub protocol routes hubcompare's server answers: what ``huggingface_hub``'s client needs.

Repos, preupload answering "regular", NDJSON commits, branches/tags, tree, resolve with
``X-Repo-Commit``/``ETag`` and ``Range``, ``list_models`` with author/search/tag filters and
cardData; collections are in :mod:`.collection_routes`. Each route is a function of the request
(:class:`.handler.Handler`) and the path's groups; ``ROUTES`` maps method and path pattern to it.
Every body field is type-checked and every name goes through :mod:`.names` (a 400 otherwise).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, quote

import yaml

from .collection_routes import add_item, collection, create_collection, item, list_collections, text
from .handler import Handler
from .names import NAME_PATTERN as NAME  # one owner or repo name (route segments)
from .names import check_namespace, check_path_in_repo, check_repo_id, check_revision
from .store import HttpError, front_matter

__all__ = ["ROUTES"]

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def _rtype(t: str) -> str:
    return REPO_TYPES[t]


def _reads(fn):
    """A POST that only reads (the client sends these without meaning to write): no write token needed."""
    fn.read_only = True
    return fn


# --- route handlers ---------------------------------------------------------------------------
def whoami(h: Handler):
    if not h.authorised:
        raise HttpError(401, "Invalid credentials in Authorization header",
                        body={"error": "Invalid credentials in Authorization header: set HF_TOKEN to one of this hub's tokens"})
    h._json({"type": "user", "id": "0" * 24, "name": h.user, "fullname": h.user, "orgs": [],
             "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}})


def _repo_body(h: Handler, b: dict) -> tuple[str, str]:
    """(type, repo id) of a create/delete body: ``type``, ``organization`` (default: the user) and ``name``."""
    rtype = h.field(b, "type", str, "model")
    if rtype not in PREFIX:
        raise HttpError(400, f"Invalid repo type {rtype!r}: use model, dataset or space")
    ns = check_namespace(h.field(b, "organization", str) or h.user)
    return rtype, check_repo_id(f"{ns}/{h.field(b, 'name', str, required=True)}")


def create_repo(h: Handler):
    b = h.json_body()
    rtype, repo_id = _repo_body(h, b)
    private = h.field(b, "private", bool, False)
    url = f"{h.endpoint}/{PREFIX[rtype]}{repo_id}"
    try:
        h.store.create_repo(rtype + "s", repo_id, private)
    except HttpError as e:
        e.body = {"error": e.message, "url": url}
        raise
    h._json({"url": url, "name": repo_id, "id": repo_id})


def delete_repo(h: Handler):
    rtype, repo_id = _repo_body(h, h.json_body())
    h.store.delete_repo(rtype + "s", repo_id)
    h._json({})


def settings(h: Handler, t, repo_id):
    private = h.field(h.json_body(), "private", bool)
    h.repo(t, repo_id)
    if private is not None:
        h.store.set_private(t, repo_id, private)
    h._json({})


@_reads
def validate_yaml(h: Handler):
    """The client sends the whole README; its YAML front matter must be a mapping."""
    try:
        data = front_matter(text(h, h.json_body(), "content", 10**7, ""))
    except yaml.YAMLError as e:
        return h._json({"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []}, 400)
    if data is not None and not isinstance(data, dict):
        return h._json({"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []}, 400)
    h._json({"errors": [], "warnings": []})


def preupload(h: Handler, t, repo_id, rev):
    wanted = h.field(h.json_body(), "files", list, [])
    for f in wanted:
        if not isinstance(f, dict):
            raise HttpError(400, "Field 'files' must be a list of {path, size, sample} objects")
        check_path_in_repo(h.field(f, "path", str, required=True))
        h.field(f, "size", int)
        h.field(f, "sample", str)
    h.repo(t, repo_id)
    files = {}
    try:
        sha = h.store.resolve(t, repo_id, rev)
        files = h.store.commit(t, repo_id, sha)["files"]
    except HttpError:
        pass  # a new branch: nothing to compare against
    out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": (files.get(f["path"]) or {}).get("oid")}
           for f in wanted]
    h._json({"files": out, "commitOid": None})


def _commit_lines(h: Handler) -> tuple[dict, list]:
    """The NDJSON body: one header, then file/deletedFile/deletedFolder lines, all checked before any is applied."""
    header, ops = None, []
    for n, line in enumerate(h.body().split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise HttpError(400, f"Line {n} of the commit is not JSON ({e}); nothing was applied") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), dict):
            raise HttpError(400, f'Line {n} of the commit is not {{"key": ..., "value": {{...}}}}; nothing was applied')
        key, value = entry.get("key"), entry["value"]
        if key == "header":
            if header is not None:
                raise HttpError(400, f"Line {n}: a second header line")
            header = value
        elif key == "file":
            path = check_path_in_repo(h.field(value, "path", str, required=True))
            if h.field(value, "encoding", str, "base64") != "base64":
                raise HttpError(400, f"Line {n}: unsupported encoding {value.get('encoding')!r}; use base64")
            try:
                ops.append(("file", path, base64.b64decode(h.field(value, "content", str, required=True), validate=True)))
            except (binascii.Error, ValueError) as e:
                raise HttpError(400, f"Line {n}: the content of {path!r} is not valid base64 ({e})") from None
        elif key in ("deletedFile", "deletedFolder"):
            ops.append((key, check_path_in_repo(h.field(value, "path", str, required=True), folder=key == "deletedFolder")))
        elif key == "lfsFile":
            raise HttpError(400, "LFS uploads are not supported: this hub answers 'regular' to preupload")
        else:
            raise HttpError(400, f"Line {n}: unknown commit operation {key!r}")
    if header is None:
        raise HttpError(400, "The commit has no header line")
    return header, ops


def commit(h: Handler, t, repo_id, rev):
    check_revision(rev)
    if h.flag("create_pr"):
        raise HttpError(400, "This hub does not support pull requests; commit to a branch instead.")
    header, ops = _commit_lines(h)
    parent = h.field(header, "parentCommit", str)
    if parent is not None and not re.fullmatch(r"[0-9a-f]{40}", parent):
        raise HttpError(400, f"parentCommit {parent!r} is not a commit id (40 hex digits)")
    summary, description = text(h, header, "summary", 10**4, ""), text(h, header, "description", 10**6, "")
    h.repo(t, repo_id)
    sha = h.store.apply_commit(t, repo_id, rev, parent, summary, description, ops)
    prefix = PREFIX[_rtype(t)]
    h._json({"commitOid": sha, "commitUrl": f"{h.endpoint}/{prefix}{repo_id}/commit/{sha}",
             "success": True, "hookOutput": ""})


def repo_info(h: Handler, t, repo_id, rev=None):
    h.repo(t, repo_id)
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
    folder = check_path_in_repo(folder, folder=True) if folder else ""
    h.repo(t, repo_id)
    sha = h.store.resolve(t, repo_id, rev)
    h._paginate(_entries(h, t, repo_id, sha, folder, h.flag("recursive")))


@_reads
def paths_info(h: Handler, t, repo_id, rev):
    if "json" in h.headers.get("Content-Type", ""):
        paths = h.field(h.json_body(), "paths", list, [])
    else:
        try:
            paths = parse_qs(h.body().decode("utf-8"), keep_blank_values=True, max_num_fields=10**5).get("paths", [])
        except ValueError as e:
            raise HttpError(400, f"Invalid form body: {e}") from None
    if not all(isinstance(p, str) for p in paths):
        raise HttpError(400, "Field 'paths' must be a list of strings")
    paths = [check_path_in_repo(p, folder=True) for p in paths]
    h.repo(t, repo_id)
    sha = h.store.resolve(t, repo_id, rev)
    files = h.store.commit(t, repo_id, sha)["files"]
    out = []
    for p in paths:
        if p in files:
            out.append({"type": "file", "oid": files[p]["oid"], "size": files[p]["size"], "path": p})
        elif any(f.startswith(p.rstrip("/") + "/") for f in files):
            out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
    h._json(out)


def list_refs(h: Handler, t, repo_id):
    h.repo(t, repo_id)
    refs = h.store.refs(t, repo_id)
    out = {kind: [{"name": n, "ref": f"refs/{'heads' if kind == 'branches' else 'tags'}/{n}", "targetCommit": s}
                  for n, s in refs[kind].items()] for kind in ("branches", "tags")}
    out["converts"] = []
    if h.flag("include_prs"):
        out["pullRequests"] = []
    h._json(out)


def list_commits(h: Handler, t, repo_id, rev):
    h.repo(t, repo_id)
    sha, out = h.store.resolve(t, repo_id, rev), []
    while sha:
        c = h.store.commit(t, repo_id, sha)
        out.append({"id": sha, "title": c["title"], "message": c["message"], "date": c["date"], "authors": [{"user": h.user}]})
        sha = c["parents"][0] if c["parents"] else None
    h._paginate(out)


def branch(h: Handler, t, repo_id, name):
    check_revision(name)
    start = (h.field(h.json_body(), "startingPoint", str) or "main") if h.command == "POST" else None
    h.repo(t, repo_id)
    if h.command == "DELETE":
        h.store.set_ref(t, repo_id, "branches", name, None)
    else:
        h.store.set_ref(t, repo_id, "branches", name, h.store.resolve(t, repo_id, start), exist_ok=h.flag("exist_ok"))
    h._json({})


def tag(h: Handler, t, repo_id, rev):
    check_revision(rev)
    if h.command == "POST":
        b = h.json_body()
        name, _ = check_revision(h.field(b, "tag", str, required=True)), text(h, b, "message", 10**4)
    h.repo(t, repo_id)
    if h.command == "DELETE":
        h.store.set_ref(t, repo_id, "tags", rev, None)
    else:
        h.store.set_ref(t, repo_id, "tags", name, h.store.resolve(t, repo_id, rev))
    h._json({})


def list_repos(h: Handler, t):
    author, search = h.q("author"), (h.q("search") or "").lower()
    filters, limit = h.query.get("filter", []), h.int_q("limit")
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
        if not all(f in info["tags"] for f in filters) or not h.can_see(info["private"]):
            continue
        if not (h.flag("cardData") or h.flag("full")):
            info.pop("cardData", None)
        items.append(info)
    sort, desc = h.q("sort"), h.q("direction") == "-1"
    if sort in ("lastModified", "last_modified", "createdAt", "created_at"):
        key = "lastModified" if "odified" in sort else "createdAt"
        items.sort(key=lambda i: i[key], reverse=desc)
    h._paginate(items, limit)


def resolve_file(h: Handler, prefix, repo_id, rev, path):
    t = {"": "models", "datasets/": "datasets", "spaces/": "spaces"}[prefix or ""]
    path = check_path_in_repo(path)
    h.repo(t, repo_id)
    sha = h.store.resolve(t, repo_id, rev)
    files = h.store.commit(t, repo_id, sha)["files"]
    if path not in files:
        raise HttpError(404, f"Entry not found: {path} at {rev}", "EntryNotFound", commit=sha)
    f = files[path]
    blob = h.store.blob(t, repo_id, f["oid"])
    size, start, end, status = f["size"], 0, f["size"] - 1, 200
    rng = re.fullmatch(r"bytes=([0-9]{0,18})-([0-9]{0,18})", h.headers.get("Range", "").strip())
    if rng and h.command == "GET" and (rng.group(1) or rng.group(2)):
        if rng.group(1):
            start = int(rng.group(1))
            end = min(int(rng.group(2)), size - 1) if rng.group(2) else size - 1
        else:
            start = max(size - int(rng.group(2)), 0)
        if start >= size or start > end:
            raise HttpError(416, f"Range not satisfiable for {path} ({size} bytes)")
        status = 206
    with open(blob, "rb") as fh:  # before the headers: a missing blob is still an error answer
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(end - start + 1 if status == 206 else size))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{f["oid"]}"')
        h.send_header("X-Repo-Commit", sha)
        name = Path(path).name
        h.send_header("Content-Disposition", f'inline; filename="{re.sub(r"[^A-Za-z0-9._-]", "_", name)}"; '
                      f"filename*=UTF-8''{quote(name, safe='')}")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        if h.command == "HEAD":
            return
        fh.seek(start)
        remaining, chunk = end - start + 1, 1 << 16
        rate = h.max_bytes_per_second
        if rate:
            chunk = max(1, min(chunk, int(rate / 20)))
        while remaining > 0:
            data = fh.read(min(chunk, remaining))
            if not data:  # a blob shorter than its record: cut the answer rather than frame it wrongly
                h.close_connection = True
                break
            h.wfile.write(data)
            remaining -= len(data)
            if rate:
                time.sleep(len(data) / rate)


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
    ("PATCH", rf"/api/collections/({NAME}/{NAME})/items/([0-9a-f]{{24}})", item),
    ("DELETE", rf"/api/collections/({NAME}/{NAME})/items/([0-9a-f]{{24}})", item),
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

