"""The stored-results list as a page shows it: each result's model count (models, not the names it is found
under), its examples and settings in a few words, its time on one line, and, where results share a title, what
tells them apart."""

from __future__ import annotations

from ..results.store import StoredResult
from ..comparisons.kinds import kind_names, spec_for

__all__ = ["model_count", "result_rows", "short_time"]

# request fields that tell two results apart, in the order a row names them (refs first: the models themselves)
DIFFERING_FIELDS = ("refs", "dataset", "split", "examples", "layers", "passes", "seed", "batch_size", "options", "labels")
MAX_DIFFERS_TEXT = 300


def model_count(s: StoredResult) -> int:
    """How many models the result compares. ``s.models`` lists every name a model is found under (as asked, and
    pinned), so it holds each model twice; the key's inputs list each model once."""
    inputs = s.key_inputs if isinstance(s.key_inputs, dict) else {}
    models, sides = inputs.get("models"), inputs.get("sides")
    if isinstance(models, list):
        return len(models)
    if isinstance(sides, dict):  # agreement/class-diff: a list of members a side; across-seeds: {"spec", "models"}
        members = [v.get("models") if isinstance(v, dict) else v for v in sides.values()]
        return sum(len(v) for v in members if isinstance(v, list))
    pinned = [m for m in s.models if "@" in m or m.startswith("local-dir:")]
    return len(pinned) or len(s.models)


def short_time(created: str) -> str:
    """``2026-11-30T14:45:28+00:00`` as ``2026-11-30 14:45:28`` (UTC; the page says so)."""
    text = str(created or "")
    return text[:19].replace("T", " ") if len(text) >= 19 and text[10:11] == "T" else text


def _value(v) -> str:
    if v is None:
        return "default"
    if isinstance(v, list):
        return " ".join(str(x) for x in v) or "none"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value(x)}" for k, x in v.items()) or "none"
    return str(v)


def _settings(request: dict) -> str:
    """The settings a row always shows: examples, layers, passes, seed, the kind's options (what most often differs)."""
    parts = []
    if request.get("examples") is not None:
        parts.append(f"{request['examples']:,} examples" if isinstance(request["examples"], int) else f"examples {request['examples']}")
    elif request.get("kind") in kind_names() and spec_for(request["kind"]).sized:
        parts.append(f"all {request.get('split') or ''} examples".replace("  ", " "))
    if request.get("layers"):
        parts.append(f"layers {_value(request['layers'])}")
    if isinstance(request.get("passes"), int) and request["passes"] != 1:
        parts.append(f"{request['passes']} passes")
    if request.get("seed") not in (None, 0):
        parts.append(f"seed {request['seed']}")
    if isinstance(request.get("options"), dict) and request["options"]:
        parts.append(_value(request["options"]))
    return " · ".join(parts)


def _differs(group: list[StoredResult]) -> dict[str, str]:
    """For results sharing one title: each one's values of the request fields that differ within the group."""
    requests = [r.request if isinstance(r.request, dict) else {} for r in group]
    fields = [f for f in DIFFERING_FIELDS if len({repr(q.get(f)) for q in requests}) > 1]
    out = {}
    for r, q in zip(group, requests):
        text = " · ".join(f"{f} {_value(q.get(f))}" for f in fields)
        out[r.key] = (text or f"computed {short_time(r.created)}")[:MAX_DIFFERS_TEXT]
    return out


def result_rows(results: list[StoredResult]) -> list[dict]:
    """One row per stored result, for the results page and a model's page."""
    by_title: dict[str, list[StoredResult]] = {}
    titles = {}
    for r in results:
        titles[r.key] = r.title or f"{r.kind}: {r.key[:12]}"
        by_title.setdefault(titles[r.key], []).append(r)
    differs = {}
    for group in by_title.values():
        if len(group) > 1:
            differs |= _differs(group)
    return [{"result": r, "key": r.key, "title": titles[r.key], "differs": differs.get(r.key, ""), "kind": r.kind,
             "dataset": r.dataset, "models": model_count(r), "settings": _settings(r.request if isinstance(r.request, dict) else {}),
             "created": short_time(r.created), "created_full": r.created, "seconds": r.seconds, "pulled": r.pulled,
             "source": r.source} for r in results]
