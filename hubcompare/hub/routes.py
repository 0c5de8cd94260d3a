"""The Hub protocol routes hubcompare's server answers: what ``huggingface_hub``'s client needs.

Repos, preupload answering "regular", NDJSON commits, branches/tags, tree, resolve with
``X-Repo-Commit``/``ETag`` and ``Range``, ``list_models`` with author/search/tag filters and
cardData, collections. Each route is a function of the request (:class:`.handler.Handler`) and the
path's groups; ``ROUTES`` maps method and path pattern to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs

import yaml

from .handler import Handler
from .names import NAME_PATTERN as NAME  # one owner or repo name (route segments)
from .store import HttpError, front_matter

__all__ = ["ROUTES"]

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


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
    try:
        data = front_matter(h.json_body().get("content") or "")
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

