"""The shape of every JSON document a result kind writes, checked whole before a pulled result is stored.

The pages and exports read these documents by key (``layers_a``, ``cka[i][j]``, a block's ``start``...), so a pulled
one of the wrong shape (a list for an object, numbers for layer names, a matrix that does not match its layers) would
fail every page that reads it. Each kind's documents are described here from what ``comparisons/*_kinds.py`` writes
(``CKAResult.to_json``, ``BlockReport.to_json``, the population, seed and probe results); fields a reader may not
need are allowed but typed, and a kind this version does not know is refused (its documents cannot be checked).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable

from ..errors import SharedResultError, SharedResultTooLargeError
from .limits import PullLimits, over

__all__ = ["KIND_DOCUMENTS", "check_document", "check_summary", "json_depth", "document_spec"]

Check = Callable[[Any, str], None]


class _Bad(Exception):
    pass


def _fail(path: str, what: str, value: Any) -> None:
    kind = "null" if value is None else type(value).__name__
    raise _Bad(f"{path or 'the document'} is {kind}, not {what}")


def _num(value: Any, path: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        _fail(path, "a number or null", value)


def _int(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, "a whole number", value)


def _str(value: Any, path: str) -> None:
    if not isinstance(value, str):
        _fail(path, "a string", value)


def _opt_str(value: Any, path: str) -> None:
    if value is not None:
        _str(value, path)


def _bool(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        _fail(path, "true or false", value)


def _dict(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        _fail(path, "an object", value)


def _list(value: Any, path: str) -> None:
    if not isinstance(value, list):
        _fail(path, "a list", value)


def _any(value: Any, path: str) -> None:
    pass


def list_of(item: Check) -> Check:
    def check(value: Any, path: str) -> None:
        _list(value, path)
        for i, v in enumerate(value):
            item(v, f"{path}[{i}]")
    return check


def dict_of(item: Check) -> Check:
    def check(value: Any, path: str) -> None:
        _dict(value, path)
        for k, v in value.items():
            item(v, f"{path}.{k}")
    return check


def one_of(*checks: Check, what: str) -> Check:
    def check(value: Any, path: str) -> None:
        for c in checks:
            try:
                c(value, path)
                return
            except _Bad:
                continue
        _fail(path, what, value)
    return check


def literal(expected: str) -> Check:
    def check(value: Any, path: str) -> None:
        if value != expected:
            raise _Bad(f"{path} is {value!r:.40}, not {expected!r}")
    return check


def obj(required: dict[str, Check], optional: dict[str, Check] | None = None) -> Check:
    """An object with these fields (each checked); other fields are allowed (nothing reads them)."""
    def check(value: Any, path: str) -> None:
        _dict(value, path)
        missing = [k for k in required if k not in value]
        if missing:
            raise _Bad(f"{path or 'the document'} lacks {', '.join(missing)}")
        for k, c in {**required, **(optional or {})}.items():
            if k in value:
                c(value[k], f"{path}.{k}" if path else k)
    return check


_STRS, _NUMS, _INTS = list_of(_str), list_of(_num), list_of(_int)
_OPT_LIST_OR_NONE = one_of(lambda v, p: None if v is None else _fail(p, "null", v), list_of(_any), what="a list or null")
BLOCK = obj({"start": _int, "stop": _int, "layers": _STRS, "mean_cka": _num, "outside_cka": _num, "contrast": _num,
             "mean_pc1": _num}, {"mean_cka_pc1_removed": _num, "size": _int})
_CKA_FIELDS = obj({"kind": _str, "ref_a": _str, "ref_b": _str, "layers_a": _STRS, "layers_b": _STRS,
                   "stage_boundaries_a": _INTS, "stage_boundaries_b": _INTS, "cka": list_of(_NUMS), "se": list_of(_NUMS),
                   "warnings": _STRS, "provenance": _dict}, {"label_a": _opt_str, "label_b": _opt_str, "summary": _dict})


def _cka_document(limits: PullLimits) -> Check:
    def check(value: Any, path: str) -> None:
        # sizes first (cheap), so a huge matrix is refused before its cells are looked at one by one
        obj({"layers_a": _list, "layers_b": _list, "cka": _list, "se": _list})(value, path)
        p = f"{path}." if path else ""
        na, nb = len(value["layers_a"]), len(value["layers_b"])
        over(limits, "max_layers", max(na, nb), f"{p}layers_a x layers_b ({na} x {nb})", unit="layers")
        for name in ("cka", "se"):
            m = value[name]
            if len(m) != na or any(not isinstance(row, list) or len(row) != nb for row in m):
                raise _Bad(f"{p}{name} is not a {na} x {nb} matrix (one row per layer of layers_a, one column per layer "
                           "of layers_b)")
        _CKA_FIELDS(value, path)
        for side, n in (("a", na), ("b", nb)):
            if any(not 0 <= b <= n for b in value[f"stage_boundaries_{side}"]):
                raise _Bad(f"{p}stage_boundaries_{side} has a boundary outside 0..{n}")
    return check


def _blocks_document(limits: PullLimits) -> Check:
    cka = _cka_document(limits)
    fields = obj({"ref": _str, "params": _dict, "blocks": list_of(BLOCK), "layers": _STRS, "pc1_fraction": _NUMS,
                  "pc1_cosine": list_of(_NUMS), "pc_examples": _int, "cka": cka, "cka_pc1_removed": cka},
                 {"label": _opt_str, "pc1_summary": _dict, "constant_layers": list_of(_any)})

    def check(value: Any, path: str) -> None:
        obj({"layers": _list})(value, path)
        n = len(value["layers"])
        over(limits, "max_layers", n, "layers", unit="layers")
        fields(value, path)
        if len(value["pc1_fraction"]) != n or len(value["cka"]["layers_a"]) != n:
            raise _Bad(f"pc1_fraction and cka must have one entry per layer ({n})")
        if len(value["pc1_cosine"]) != n or any(len(row) != n for row in value["pc1_cosine"]):
            raise _Bad(f"pc1_cosine is not a {n} x {n} matrix (one row and column per layer)")
        for i, b in enumerate(value["blocks"]):
            if not 0 <= b["start"] <= b["stop"] < n:
                raise _Bad(f"blocks[{i}] spans {b['start']}..{b['stop']}, outside the {n} layers")
    return check


def _seed_side(limits: PullLimits) -> Check:
    fields = obj({"label": _str, "spec": _str, "layers": _STRS, "stage_boundaries": _INTS, "models": _STRS,
                  "blocks": dict_of(list_of(BLOCK)), "pc1_fraction": dict_of(_NUMS)})

    def check(value: Any, path: str) -> None:
        fields(value, path)
        over(limits, "max_layers", len(value["layers"]), f"{path}.layers", unit="layers")
    return check


def _probes_document(limits: PullLimits) -> Check:
    fields = obj({"kind": literal("linear-probes"), "ref": _str, "model": _dict, "model_test_accuracy": _num,
                  "layers": list_of(obj({"name": _str, "test_accuracy": _num})), "stage_boundaries": _INTS,
                  "detected_blocks": _OPT_LIST_OR_NONE, "settings": _dict})

    def check(value: Any, path: str) -> None:
        fields(value, path)
        over(limits, "max_layers", len(value["layers"]), "layers", unit="layers")
    return check


def _measures_document(limits: PullLimits) -> Check:
    """``measures.json`` of a compare result: every pair, each measure's value and SE matrices over its layers."""
    top = obj({"command": literal("compare"), "models": list_of(obj({"ref": _str, "label": _str})), "measure_keys": _STRS,
               "pairs": _list, "warnings": _STRS, "settings": _dict})
    pair = obj({"a": _str, "b": _str, "label_a": _str, "label_b": _str, "index_a": _int, "index_b": _int, "stem": _str,
                "measures": _dict})
    entry = obj({"key": _str, "value": list_of(_NUMS), "se": list_of(_NUMS), "layers_a": _STRS, "layers_b": _STRS,
                 "orientation": _str, "range": _NUMS}, {"params": _dict, "symmetric": _bool})

    def check(value: Any, path: str) -> None:
        top(value, path)
        n = len(value["models"])
        for i, p in enumerate(value["pairs"]):
            where = f"pairs[{i}]"
            pair(p, where)
            if not (0 <= p["index_a"] < n and 0 <= p["index_b"] < n) or not re.fullmatch(r"measures(-.+-vs-.+)?", p["stem"]):
                raise _Bad(f"{where} names a model outside the {n} models or a figure that is not its own")
            for name, e in p["measures"].items():
                at = f"{where}.measures.{name}"
                obj({"layers_a": _list, "layers_b": _list, "value": _list, "se": _list})(e, at)
                na, nb = len(e["layers_a"]), len(e["layers_b"])
                over(limits, "max_layers", max(na, nb), f"{at}: layers_a x layers_b ({na} x {nb})", unit="layers")
                for m in ("value", "se"):
                    if len(e[m]) != na or any(not isinstance(row, list) or len(row) != nb for row in e[m]):
                        raise _Bad(f"{at}.{m} is not a {na} x {nb} matrix")
                entry(e, at)
    return check


def _grounding_document(limits: PullLimits) -> Check:
    score = obj({"test": _str, "measure": _str, "score": _num, "chance": _num, "passed": _bool, "count": _int})
    ladder = obj({"layer": _str, "end": _str, "removed": _INTS, "kept": _INTS, "accuracy": _NUMS,
                  "values": dict_of(_NUMS)})
    fields = obj({"command": literal("grounding"), "tests": _STRS, "rules": dict_of(_str),
                  "table": list_of(obj({"measure": _str, "orientation": _str, "passed": _int, "tests": dict_of(score)})),
                  "measures": list_of(obj({"name": _str, "key": _str, "params": _dict, "orientation": _str})),
                  "layers": _STRS, "real": list_of(obj({"ref": _str})), "control": list_of(obj({"ref": _str})),
                  "pairs": list_of(obj({"a": _str, "b": _str, "kind": _str, "agreement": _num, "values": dict_of(_num)})),
                  "pc_removal": list_of(ladder), "settings": obj({"dataset": _dict, "num_examples": _int}),
                  "warnings": _STRS})

    def check(value: Any, path: str) -> None:
        fields(value, path)
        over(limits, "max_layers", len(value["layers"]), f"{path}.layers" if path else "layers", unit="layers")
    return check


_POPULATION = {"side_a": _str, "side_b": _str, "summary": _dict, "warnings": _STRS, "provenance": _dict}
_CLASS_ROW = obj({"class": one_of(_str, _int, what="a class name"), "index": _int, "mean_a": _num, "mean_b": _num,
                  "difference": _num, "p": _num, "q": _num, "significant": _bool})


def document_spec(kind: str, limits: PullLimits) -> dict[str, Check] | None:
    """``{file name pattern: check}`` of the JSON documents a kind writes; None for a kind this version does not know."""
    cka = _cka_document(limits)
    seed_pairs = obj({"pairs": list_of(_STRS), "matched_layer": _INTS, "value": list_of(_NUMS), "se": list_of(_NUMS),
                      "class": list_of(_INTS)})
    seeds = obj({"summary": _dict, "layers": list_of(obj({"side": _str, "label": _str, "index": _int, "layer": _str})),
                 "sides": obj({"a": _seed_side(limits), "b": _seed_side(limits)}), "pair_sets": _dict, "warnings": _STRS,
                 "provenance": _dict},
                {"measures": dict_of(obj({"measure": _dict, "summary": _dict, "pair_sets": dict_of(seed_pairs)}))})
    return {
        "cross-cka": {"cka.json": cka, "cka-*-vs-*.json": cka},
        "compare": {"measures.json": _measures_document(limits)},
        "cka": {"cka.json": cka},
        "blocks": {"blocks.json": _blocks_document(limits)},
        "agreement": {"agreement.json": obj({"kind": literal("agreement"), **_POPULATION})},
        "class-diff": {"class_diff.json": obj({"kind": literal("class-diff"), **_POPULATION,
                                               "classes": list_of(_CLASS_ROW)})},
        "across-seeds": {"across_seeds.json": seeds},
        "probes": {"probes.json": _probes_document(limits)},
        "grounding": {"grounding.json": _grounding_document(limits)},
        "delete-blocks": {"deletion.json": obj({"kind": literal("block-deletion"), "ref": _str, "model": _dict,
                                                "full_accuracy": _num, "stages": list_of(_any),
                                                "detected_blocks": _OPT_LIST_OR_NONE, "settings": _dict})},
    }.get(kind)


KIND_DOCUMENTS = ("cross-cka", "compare", "cka", "blocks", "agreement", "class-diff", "across-seeds", "probes", "delete-blocks",
                  "grounding")
REQUIRED = {"grounding": ("grounding.json",), "compare": ("measures.json",), "cka": ("cka.json",), "blocks": ("blocks.json",), "agreement": ("agreement.json",),
            "class-diff": ("class_diff.json",), "across-seeds": ("across_seeds.json",), "probes": ("probes.json",),
            "delete-blocks": ("deletion.json",)}


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests (iteratively: a hostile document cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def check_document(kind: str, name: str, value: Any, where: str, limits: PullLimits) -> None:
    """Refuse a JSON file that is not one the kind writes, or is not of the shape its readers expect."""
    spec = document_spec(kind, limits)
    if spec is None:
        raise SharedResultError(f"{where}: kind {kind!r} is not one this hubcompare knows ({', '.join(KIND_DOCUMENTS)}), "
                                "so its files cannot be checked: upgrade hubcompare to pull it")
    check = next((c for pattern, c in spec.items() if fnmatch.fnmatchcase(name, pattern)), None)
    if check is None:
        raise SharedResultError(f"{where}: {name} is not a file a {kind} result writes (its JSON files are "
                                f"{', '.join(spec)})")
    try:
        check(value, "")
    except _Bad as e:
        raise SharedResultError(f"{where}: {name} is not a {kind} document: {e}") from None
    except SharedResultTooLargeError as e:
        raise SharedResultTooLargeError(f"{where}: {name}: {e}", e.limit, e.size, e.maximum) from None


_STEM = re.compile(r"cka(-.+-vs-.+)?")


def check_summary(kind: str, summary: dict, files: list[str], where: str) -> None:
    """The record's summary where readers index into it: a CKA kind's pairs name its files and models by position."""
    if document_spec(kind, PullLimits()) is None:
        raise SharedResultError(f"{where}: kind {kind!r} is not one this hubcompare knows ({', '.join(KIND_DOCUMENTS)}), "
                                "so its files cannot be checked: upgrade hubcompare to pull it")
    missing = [n for n in REQUIRED.get(kind, ()) if n not in files]
    if kind == "cross-cka" and not any(fnmatch.fnmatchcase(n, "cka*.json") for n in files):
        missing = ["cka.json or cka-A-vs-B.json"]
    if missing:
        raise SharedResultError(f"{where}: a {kind} result has {', '.join(missing)}; this one lists no such file")
    if kind not in ("cross-cka", "cka") or "pairs" not in summary:
        return
    try:
        list_of(obj({"a": _int, "b": _int, "stem": _str}))(summary["pairs"], "summary.pairs")
        models = summary.get("models")
        n = len(models) if isinstance(models, list) else None
        for i, p in enumerate(summary["pairs"]):
            if not _STEM.fullmatch(p["stem"]) or f"{p['stem']}.json" not in files:
                raise _Bad(f"summary.pairs[{i}].stem {p['stem']!r:.60} names no CKA file of the result")
            if n is not None and not (0 <= p["a"] < n and 0 <= p["b"] < n):
                raise _Bad(f"summary.pairs[{i}] names model {p['a']} or {p['b']}, outside the {n} models")
    except _Bad as e:
        raise SharedResultError(f"{where}: the record's {e}") from None
