"""The collection routes of hubcompare's Hub server (``create_collection``, items, listing).

Apart from :mod:`.routes` to keep each module readable. Every body field is type-checked and every
name goes through :mod:`.names`; bodies are already read (by the handler) before the store lock is taken.
"""

from __future__ import annotations

import re
import secrets

from .handler import Handler
from .names import check_collection_slug, check_namespace, check_repo_id
from .store import HttpError

__all__ = ["add_item", "collection", "create_collection", "item", "list_collections"]

ITEM_TYPES = ("model", "dataset", "space", "paper", "collection")
THEMES = ("orange", "blue", "green", "purple", "pink", "indigo")


def text(h: Handler, b: dict, key: str, limit: int, default=None, required: bool = False):
    """A string field of at most ``limit`` characters (what a JSON file and a web page can show)."""
    value = h.field(b, key, str, default, required)
    if value is not None and len(value) > limit:
        raise HttpError(400, f"Field {key!r} is {len(value)} characters long; at most {limit}")
    return value


def _slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "collection"


def _visible(h: Handler, slug: str) -> dict:
    c = h.store.collection(slug)
    if not h.can_see(c.get("private", False)):
        raise HttpError(404, f"Collection {slug} not found", "CollectionNotFound")
    return c


def create_collection(h: Handler):
    b = h.json_body()
    ns = check_namespace(h.field(b, "namespace", str) or h.user)
    title = text(h, b, "title", 200, "")
    if not title.strip():
        raise HttpError(400, "A collection needs a title")
    description = text(h, b, "description", 5000)
    private = h.field(b, "private", bool, False)
    with h.store.lock:
        for c in h.store.collections():
            if c["owner"]["name"] == ns and c["title"] == title:
                raise HttpError(409, f"Collection {title!r} already exists", body={"error": "exists", "slug": c["slug"]})
        slug = check_collection_slug(f"{ns}/{_slugify(title)}-{secrets.token_hex(12)}")
        position = sum(1 for c in h.store.collections() if c["owner"]["name"] == ns)
        c = {"slug": slug, "title": title, "description": description, "owner": {"name": ns, "type": "user"},
             "items": [], "position": position, "private": private, "theme": "blue", "upvotes": 0}
        h._json(h.store.save_collection(c))


def _patch(h: Handler) -> dict:
    b = h.json_body()
    out = {}
    if "title" in b:
        out["title"] = text(h, b, "title", 200, required=True)
        if not out["title"].strip():
            raise HttpError(400, "A collection needs a title")
    if "description" in b:
        out["description"] = text(h, b, "description", 5000)
    if "private" in b:
        out["private"] = h.field(b, "private", bool, required=True)
    if "theme" in b:
        out["theme"] = h.field(b, "theme", str, required=True)
        if out["theme"] not in THEMES:
            raise HttpError(400, f"Unknown theme {out['theme']!r}: use one of {', '.join(THEMES)}")
    if "position" in b:
        out["position"] = h.field(b, "position", int, required=True)
        if not 0 <= out["position"] < 10**6:
            raise HttpError(400, "Field 'position' must be between 0 and 999999")
    return out


def collection(h: Handler, slug):
    check_collection_slug(slug)
    changes = _patch(h) if h.command == "PATCH" else {}
    with h.store.lock:
        c = _visible(h, slug)
        if h.command == "DELETE":
            h.store.collection_path(slug).unlink()
            return h._json({})
        if h.command == "PATCH":
            c = h.store.save_collection({**c, **changes})
        h._json({"data": c} if h.command == "PATCH" else c)


def _item_id(kind: str, item_id: str) -> str:
    if kind in ("model", "dataset", "space"):
        return check_repo_id(item_id)
    if kind == "collection":
        return check_collection_slug(item_id)
    if not re.fullmatch(r"\d{4}\.\d{4,5}", item_id):
        raise HttpError(400, f"Paper id {item_id!r}: use an arXiv id such as 2301.00001")
    return item_id


def add_item(h: Handler, slug):
    check_collection_slug(slug)
    b = h.json_body()
    item = h.field(b, "item", dict, required=True)
    kind = h.field(item, "type", str, required=True)
    if kind not in ITEM_TYPES:
        raise HttpError(400, f"Unknown item type {kind!r}: use one of {', '.join(ITEM_TYPES)}")
    item_id = _item_id(kind, h.field(item, "id", str, required=True))
    note = text(h, b, "note", 5000)
    with h.store.lock:
        c = _visible(h, slug)
        if any(i["id"] == item_id and i["type"] == kind for i in c["items"]):
            raise HttpError(409, f"Item {item_id} is already in collection {slug}")
        entry = {"_id": secrets.token_hex(12), "id": item_id, "type": kind, "position": len(c["items"])}
        if note:
            entry["note"] = {"text": note, "html": note}
        c["items"].append(entry)
        h._json(h.store.save_collection(c))


def item(h: Handler, slug, item_id):
    check_collection_slug(slug)
    b = h.json_body() if h.command == "PATCH" else {}
    note = text(h, b, "note", 5000)
    position = h.field(b, "position", int)
    with h.store.lock:
        c = _visible(h, slug)
        found = [i for i in c["items"] if i["_id"] == item_id]
        if not found:
            raise HttpError(404, f"Item {item_id} not in collection {slug}")
        if h.command == "DELETE":
            c["items"].remove(found[0])
        else:
            if note is not None:
                found[0]["note"] = {"text": note, "html": note}
            if position is not None:
                if not 0 <= position < len(c["items"]):
                    raise HttpError(400, f"Field 'position' must be between 0 and {len(c['items']) - 1}")
                c["items"].remove(found[0])
                c["items"].insert(position, found[0])
        for pos, i in enumerate(c["items"]):
            i["position"] = pos
        h.store.save_collection(c)
        h._json({})


def list_collections(h: Handler):
    owner, wanted = h.q("owner"), h.query.get("item", [])
    limit = h.int_q("limit")
    out = []
    for c in h.store.collections():
        if (owner and c["owner"]["name"] != owner) or not h.can_see(c.get("private", False)):
            continue
        ids = {f"{i['type']}s/{i['id']}" for i in c["items"]} | {i["id"] for i in c["items"]}
        if wanted and not all(w in ids for w in wanted):
            continue
        out.append({k: v for k, v in c.items() if k != "position"})  # the client numbers them itself
    h._paginate(out, limit)
