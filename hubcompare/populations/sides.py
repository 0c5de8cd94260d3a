"""The two sides of a population comparison: naming them, finding their predictions, aligning them.

A side is one model, several, or a population, written as one string (see ``SIDE_FORMS``).
Each member's per-example predictions come from its checkpoint's ``predictions.safetensors``;
a model without them for the requested dataset (e.g. a community model) is run once and its
predictions cached under ``$HUBCOMPARE_HOME/predictions/`` keyed by model sha + dataset
fingerprint. Every member of both sides must be about the same examples (same fingerprint and
ids): anything else is a :class:`DatasetMismatchError`, never a silent misalignment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from huggingface_hub.errors import HfHubHTTPError

from ..data.datasets import load_dataset
from ..errors import (
    DatasetMismatchError,
    EmptyPopulationError,
    HubcompareError,
    InvalidReferenceError,
    PredictionsUnavailableError,
)
from ..hub.endpoint import hub_api, listed_reference, listed_repo_id, with_retries
from ..hub.names import check_collection_slug
from ..hub.references import resolve_reference
from ..hub.sidespec import FILE_PREFIX, SideItem, is_local_folder, side_items
from ..hub.registry import Registry, default_registry_path
from ..models.checkpoint import DEFAULT_MAX_PARAMS, WEIGHTS_FILE
from ..models.devices import resolve_device
from ..models.inputs import InputSpec
from ..models.predictions import Predictions, predict, stored_predictions
from ..provenance import sha256_file

__all__ = ["SIDE_FORMS", "Member", "Side", "check_aligned", "default_cache_dir", "expand_side", "load_side"]

SIDE_FORMS = """a side is one string:
  REFERENCE                   one model (checkpoint folder, local-dir:, hf-hub:OWNER/NAME[@REV], timm:, registry name)
  REF1+REF2+...               several models, joined with '+'
  @FILE                       the models listed in FILE, one item per line ('#' comments)
  population:NAME             every registry entry in population NAME
  registry:KEY=VALUE,...      a registry query; keys: population, architecture, depth, width, dataset, fraction, seed
  hf-tag:TAG[,TAG...]         every Hub model carrying all the tags, e.g. hf-tag:population-zoo
  collection:SLUG             every model in a Hub collection"""

QUERY_KEYS = {"population": str, "architecture": str, "depth": int, "width": float, "dataset": str,
              "fraction": float, "seed": int}


def default_cache_dir() -> Path:
    """Where computed predictions are kept: beside the user registry ($HUBCOMPARE_HOME or ~/.cache/hubcompare)."""
    return default_registry_path().parent / "predictions"


@dataclass
class Member:
    """One model of a side and where its predictions came from (provenance)."""

    ref: str  # as named (or as the population query listed it)
    resolved: str  # the reference actually loaded, Hub ones pinned to their commit
    commit_sha: str | None
    registry_name: str | None
    path: str | None
    predictions: str  # stored | cache | computed | given
    weights_sha256: str | None = None
    accuracy: float | None = None
    info: dict = field(default_factory=dict)  # architecture, depth, width, seed, ...
    device: dict | None = None  # what its predictions were computed on, when recorded (describe_device)

    def to_json(self) -> dict:
        return {"ref": self.ref, "resolved": self.resolved, "commit_sha": self.commit_sha,
                "registry_name": self.registry_name, "path": self.path, "predictions": self.predictions,
                "weights_sha256": self.weights_sha256, "accuracy": self.accuracy, **self.info,
                "predictions_device": self.device}


@dataclass(eq=False)
class Side:
    """The aligned predictions of a side's models: ``predicted`` (models, examples) and shared labels/ids."""

    label: str
    spec: str
    members: list[Member]
    predicted: np.ndarray  # (M, N) int
    labels: np.ndarray  # (N,) int
    ids: list[str]
    dataset: dict  # ImageDataset.describe()
    classes: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels[None, :]

    @property
    def num_models(self) -> int:
        return self.predicted.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_arrays(cls, label: str, predicted, labels, classes: list[str] | None = None, ids: list[str] | None = None,
                    dataset: dict | None = None, refs: list[str] | None = None) -> Side:
        """A side from arrays (synthetic populations, predictions held elsewhere)."""
        predicted, labels = np.atleast_2d(np.asarray(predicted)), np.asarray(labels)
        n = labels.shape[0]
        if predicted.shape[1] != n:
            raise DatasetMismatchError(f"{label}: predictions for {predicted.shape[1]} examples but {n} labels")
        k = len(classes) if classes else int(max(labels.max(), predicted.max())) + 1
        ids = ids or [str(i) for i in range(n)]
        dataset = dataset or {"name": "arrays", "split": "test", "num_examples": n, "num_classes": k, "fingerprint": "arrays"}
        refs = refs or [f"{label}[{i}]" for i in range(predicted.shape[0])]
        correct = predicted == labels[None, :]
        members = [Member(r, r, None, None, None, "given", accuracy=float(correct[i].mean())) for i, r in enumerate(refs)]
        return cls(label, label, members, predicted, labels, list(ids), dataset, list(classes or map(str, range(k))))

    def provenance(self) -> dict:
        return {"label": self.label, "spec": self.spec, "num_models": self.num_models,
                "models": [m.to_json() for m in self.members]}


# --- naming a side ------------------------------------------------------------------------------
def _query(text: str, registry) -> list[str]:
    filters: dict = {}
    for pair in filter(None, text.split(",")):
        key, eq, value = pair.partition("=")
        key = {"fraction": "data_fraction"}.get(key.strip(), key.strip())
        kind = QUERY_KEYS.get("fraction" if key == "data_fraction" else key)
        if not eq or kind is None:
            raise InvalidReferenceError(f"registry:{text}: {pair!r} is not KEY=VALUE with a key among {', '.join(QUERY_KEYS)}.\n{SIDE_FORMS}")
        try:
            filters[key] = kind(value.strip())
        except ValueError:
            raise InvalidReferenceError(f"registry:{text}: {key}={value!r} is not a {kind.__name__}") from None
    if not filters:
        raise InvalidReferenceError(f"registry: needs at least one KEY=VALUE filter.\n{SIDE_FORMS}")
    entries = registry.query(**filters)
    if not entries:
        raise EmptyPopulationError(
            f"no registry entry matches {filters}: list entries with `hubcompare registry list` and fill the registry "
            "with `hubcompare registry sync --author OWNER --population NAME` or `registry add`."
        )
    return [e.name for e in entries]


def _hub_tag(tags: str, api) -> list[str]:
    wanted = [t for t in tags.split(",") if t]
    endpoint = getattr(api, "endpoint", None)
    what = f"list models tagged {wanted}"
    models = with_retries(lambda: list(api.list_models(filter=wanted, full=True)), what, endpoint=endpoint, probe_first=True)
    if not models:
        raise EmptyPopulationError(f"no Hub model on {api.endpoint} carries the tag(s) {wanted}: check the tag "
                                   "(a pushed population is tagged population-NAME).")
    out = []
    for m in sorted(models, key=lambda m: str(m.id)):
        repo = listed_repo_id(m.id, endpoint)
        sha = m.sha or with_retries(lambda: api.model_info(repo).sha, f"look up {repo}", endpoint=endpoint)
        out.append(listed_reference(repo, sha, endpoint))
    return out


def _collection(slug: str, api) -> list[str]:
    """The models of collection ``slug`` (checked by the name rules before anything is requested: a slug such as
    ``../../api/models`` would be another Hub path, asked for with the user's token), pinned to their shas."""
    check_collection_slug(slug)
    endpoint = getattr(api, "endpoint", None)
    what = f"get collection {slug}"
    try:
        coll = with_retries(lambda: api.get_collection(slug), what, endpoint=endpoint, probe_first=True)
        items = [(i.item_id, i.item_type) for i in coll.items]
    except HfHubHTTPError as e:
        raise EmptyPopulationError(f"no collection {slug!r} on {api.endpoint} ({e}): use the slug that "
                                   "`hubcompare push-population` printed.") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # the answer is not a collection
        raise EmptyPopulationError(f"the Hub {api.endpoint} answered for collection {slug} with something that is not a "
                                   f"collection ({type(e).__name__}: {e}): is HF_ENDPOINT the Hub you meant?") from None
    models = [listed_repo_id(i, endpoint) for i, kind in items if kind == "model"]
    if not models:
        raise EmptyPopulationError(f"collection {slug} holds no models")
    return [listed_reference(i, with_retries(lambda repo=i: api.model_info(repo).sha, f"look up {i}", endpoint=endpoint),
                             endpoint) for i in models]


def expand_side(spec: str, registry=None, api=None) -> list[str]:
    """The model references a side string names, in a stable order (see ``SIDE_FORMS``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidReferenceError(f"an empty side.\n{SIDE_FORMS}")
    spec = spec.strip()
    if spec.startswith(FILE_PREFIX):
        path = Path(spec[len(FILE_PREFIX):]).expanduser()
        if not path.is_file():
            raise InvalidReferenceError(f"{spec}: no file {path} listing the side's models.\n{SIDE_FORMS}")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidReferenceError(f"{spec}: {path} is not UTF-8 text (byte {e.start}: {e.reason}): save it as "
                                        "UTF-8, one model a line.") from None
        except OSError as e:
            raise InvalidReferenceError(f"{spec}: cannot read {path} ({e.strerror or e}).") from None
        lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
        refs = [r for ln in lines if ln for r in expand_side(ln, registry, api)]
    else:
        refs = [r for item in side_items(spec, is_local_folder) for r in _expand_item(item, registry, api)]
    if not refs:
        raise EmptyPopulationError(f"{spec} names no model.\n{SIDE_FORMS}")
    dupes = sorted({r for r in refs if refs.count(r) > 1})
    if dupes:
        raise InvalidReferenceError(f"{spec} names {', '.join(dupes)} more than once: list each model once.")
    return refs


def _expand_item(item: SideItem, registry, api) -> list[str]:
    if not item.text:
        raise InvalidReferenceError(f"an empty item in a side ('+' at the start, end, or twice).\n{SIDE_FORMS}")
    scheme, rest = item.scheme, item.rest
    if scheme is not None:
        if not rest:
            raise InvalidReferenceError(f"nothing follows '{scheme}:'.\n{SIDE_FORMS}")
        if scheme in ("population", "registry"):
            registry = registry if registry is not None else Registry()
            return _query(f"population={rest}" if scheme == "population" else rest, registry)
        if scheme == "collection":
            check_collection_slug(rest)  # before any client is made or request sent
        api = api or hub_api()
        return _hub_tag(rest, api) if scheme == "hf-tag" else _collection(rest, api)
    return [item.text]


# --- predictions --------------------------------------------------------------------------------
def _compute(model, ds, cache_file: Path, label: str, device):
    if cache_file.is_file():
        cached = Predictions.load(cache_file)
        if cached.ids == list(ds.ids) and cached.dataset.get("fingerprint") == ds.fingerprint:
            return cached, "cache"
    preds = predict(model, ds, preprocess=InputSpec.from_model(model, ds.image_shape), device=device)
    if preds.logits.shape[1] != ds.num_classes:
        raise PredictionsUnavailableError(
            f"{label} has a {preds.logits.shape[1]}-way head but {ds.name} has {ds.num_classes} classes: right/wrong per "
            "example needs a model trained on this dataset's classes."
        )
    preds.save(cache_file)
    return preds, "computed"


def _member_predictions(ref_text: str, registry, api, dataset, data_dir, cache_dir: Path, max_params: int, device):
    # a checkpoint is opened, its model not built; a Hub model's weights are downloaded only if its predictions must be computed
    resolved = resolve_reference(ref_text, registry, api, max_params=max_params, weights=False)
    ckpt, sha = resolved.checkpoint, resolved.commit_sha
    meta = resolved.meta
    source = None
    if ckpt is not None and ckpt.has_predictions:
        stored = stored_predictions(ckpt)
        if dataset is None or (stored.dataset.get("fingerprint") == dataset.fingerprint and stored.ids == list(dataset.ids)):
            preds, source = stored, "stored"
    if source is None:
        ds = dataset
        if ds is None:
            if not meta.dataset:
                raise PredictionsUnavailableError(
                    f"{ref_text} has no stored predictions and records no dataset: pass a dataset to compute them on."
                )
            ds = load_dataset(meta.dataset, "test", data_dir)
        model = resolved.model  # (a Hub model pulled without weights fetches them now, at the same commit)
        if resolved.checkpoint is not None:
            key = meta.weights_sha256 or sha256_file(resolved.checkpoint.path / WEIGHTS_FILE)
        else:
            key = f"{resolved.reference.target}-{sha}"
        preds, source = _compute(model, ds, cache_dir / f"{key}-{ds.fingerprint}.safetensors", ref_text, device)
    member = Member(
        ref=ref_text, resolved=str(resolved.pinned), commit_sha=sha, registry_name=resolved.registry_name,
        path=str(resolved.path) if resolved.path else None, predictions=source, weights_sha256=meta.weights_sha256,
        accuracy=preds.accuracy,
        info=meta.summary(),
        device=preds.device,
    )
    return member, preds, resolved.notices


def _describe_groups(groups: dict[tuple, list[str]]) -> str:
    return "; ".join(f"fingerprint {fp} ({n} examples): {', '.join(refs[:4])}{' ...' if len(refs) > 4 else ''}"
                     for (fp, n), refs in groups.items())


def _check_same_data(members_preds: list, where: str) -> None:
    groups: dict[tuple, list[str]] = {}
    for member, preds in members_preds:
        groups.setdefault((preds.dataset.get("fingerprint"), len(preds.ids)), []).append(member.ref)
    if len(groups) > 1:
        raise DatasetMismatchError(
            f"{where}: the models' predictions are about different data ({_describe_groups(groups)}). Pass a dataset "
            "(and its data_dir) to recompute every model's predictions on one dataset, or compare models evaluated on the same test set.",
            params=("dataset", "data_dir"),
        )
    first = members_preds[0][1]
    for member, preds in members_preds[1:]:
        if preds.ids != first.ids or not np.array_equal(preds.labels.numpy(), first.labels.numpy()):
            raise DatasetMismatchError(
                f"{where}: {member.ref} and {members_preds[0][0].ref} share a dataset fingerprint but not the same example ids "
                "and labels in the same order: regenerate their predictions (`hubcompare eval` with write)."
            )


def _class_names(describe: dict, dataset, data_dir) -> tuple[list[str], list[str]]:
    if dataset is not None:
        return list(dataset.classes), []
    k = describe.get("num_classes")
    try:
        ds = load_dataset(describe["name"], describe.get("split", "test"), data_dir)
        if ds.fingerprint == describe.get("fingerprint"):
            return list(ds.classes), []
    except (HubcompareError, KeyError):
        pass
    return [str(i) for i in range(k)], [f"class names of {describe.get('name')} not available here (no data_dir holds that dataset): classes are shown by index"]


def load_side(spec: str, label: str, *, dataset=None, data_dir=None, registry=None, api=None,
              cache_dir: str | Path | None = None, on_member: Callable[[int, int, str], None] | None = None,
              max_params: int = DEFAULT_MAX_PARAMS, device="cpu") -> Side:
    """Resolve a side string to its models' aligned predictions.

    ``dataset`` (an :class:`~hubcompare.data.datasets.ImageDataset`): compare on it, recomputing (and caching)
    predictions of models whose stored ones are about other data. Without it, the stored predictions
    are used and must all be about the same examples. ``max_params``: a model whose config describes more
    parameters is refused before it is built (see :mod:`hubcompare.models.guard`). ``device``: where models
    whose predictions must be computed run (``auto``, ``cpu``, ``cuda[:N]``, ``mps``); each member records
    the device its predictions were computed on, when known (``predictions_device``).
    """
    device = resolve_device(device)
    refs = expand_side(spec, registry, api)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    loaded = []
    for i, ref in enumerate(refs):
        if on_member:
            on_member(i, len(refs), ref)
        loaded.append(_member_predictions(ref, registry, api, dataset, data_dir, cache_dir, max_params, device))
    notices = [n for *_, member_notices in loaded for n in member_notices]
    loaded = [(member, preds) for member, preds, _ in loaded]
    _check_same_data(loaded, f"side {label} ({spec})")
    first = loaded[0][1]
    if first.logits.shape[1] != first.dataset.get("num_classes", first.logits.shape[1]):
        raise PredictionsUnavailableError(f"{loaded[0][0].ref}: {first.logits.shape[1]} logits for a {first.dataset.get('num_classes')}-class dataset")
    classes, warnings = _class_names(first.dataset, dataset, data_dir)
    warnings = notices + warnings
    predicted = np.stack([p.predicted.numpy() for _, p in loaded]).astype(np.int32)
    return Side(label, spec, [m for m, _ in loaded], predicted, first.labels.numpy().astype(np.int64), list(first.ids),
                dict(first.dataset), classes, warnings)


def check_aligned(a: Side, b: Side) -> None:
    """Both sides must be about the same examples, in the same order, with the same labels."""
    fa, fb = a.dataset.get("fingerprint"), b.dataset.get("fingerprint")
    if fa != fb or a.ids != b.ids or not np.array_equal(a.labels, b.labels):
        why = (f"dataset fingerprints differ ({a.label}: {fa} on {a.dataset.get('name')}, {b.label}: {fb} on {b.dataset.get('name')})"
               if fa != fb else "the example ids or labels differ")
        raise DatasetMismatchError(
            f"{a.label} and {b.label} are not about the same examples: {why}. Pass a dataset (and its data_dir) to recompute "
            "both sides on one dataset, or compare models evaluated on the same test set.",
            params=("dataset", "data_dir"),
        )
    if a.num_classes != b.num_classes:
        raise DatasetMismatchError(f"{a.label} has {a.num_classes} classes and {b.label} {b.num_classes}")
