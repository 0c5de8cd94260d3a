"""What a similarity measure is to the engine: a typed, self-registering class.

A measure subclasses :class:`Measure` with a ``name`` and its metadata (a one-line definition, orientation, range,
citation, typed :class:`Param`\\ s) and is registered by being defined (``__init_subclass__``), the way timm
registers a model where it lives. The engine hands it, for each minibatch, one :class:`LayerInputs` per tapped
layer (of every model) and asks for that minibatch's contribution: a float64 ``(L, L)`` matrix over every layer
pair. The contributions go into the measure's accumulator, which is mergeable like
:class:`~..cka.MinibatchCKA` (contributions made in other processes and added in plan order give the same sums,
bit for bit) and gives a value and a leave-one-minibatch-out jackknife standard error per pair.

Two accumulators cover the measures here: CKA-type measures sum ``n * HSIC`` and normalise at the end (the
minibatch estimator of Nguyen et al., :class:`~..cka.MinibatchCKA`); every other measure is computed per
minibatch and averaged weighted by batch size (:class:`BatchMean`). With one minibatch holding every example
either is the exact full-data value.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from ...errors import MeasureError, short_repr
from ..cka import GRAM_CHUNK_ELEMENTS, MIN_BATCH, flat_features

__all__ = ["BatchMean", "FEATURES", "LayerInputs", "centred_features", "double_centre", "example_stats", "symmetric_pairs", "Measure", "MeasureEstimate", "Param", "measure_names", "make_measure",
           "measure_class", "measure_from_key", "measure_info", "parse_measures", "FLOAT64_GRAM", "ROW_STATS"]

ROW_STATS = "row_stats"  # what a measure may declare in ``needs`` beyond the centred Gram
FLOAT64_GRAM = "float64_gram"  # the Gram's products in float64 (a float32 Gram's rounding swamps small eigenvalues)
FEATURES = "features"  # the features themselves (n, p), centred, float64: for measures that weigh single neurons
_REGISTRY: dict[str, type[Measure]] = {}


@dataclass(frozen=True)
class Param:
    """A measure's parameter: a number in [low, high] with a default (``integer``: a whole number)."""

    name: str
    default: float
    low: float
    high: float
    help: str
    integer: bool = False

    def check(self, measure: str, value: object) -> float | int:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self.integer:
            ok = float(value).is_integer()
        if not ok or not self.low <= value <= self.high:
            kind = "a whole number" if self.integer else "a number"
            raise MeasureError(f"{measure}: {self.name} = {short_repr(value)} is out of range: give {kind} in "
                               f"[{self.low:g}, {self.high:g}] ({self.help})", params=("measures",))
        return int(value) if self.integer else float(value)


def double_centre(gram: torch.Tensor) -> torch.Tensor:
    """``H K H`` in float64: the Gram of the features centred over the examples, from any Gram of them."""
    k = gram.to(torch.float64)
    rows = k.mean(1, keepdim=True)
    return k - rows - rows.T + rows.mean()


def example_stats(act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """:attr:`LayerInputs.row_stats` of an activation (n, ...): O(n p) work in float64 over feature chunks, against the
    Gram's O(n^2 p). One pass: each chunk is copied into one reused float64 buffer (a fresh float64 copy per chunk
    costs more in page faults than the arithmetic), centred there, and summed; float32 values sum exactly in float64
    over a minibatch, so the features' means are exact."""
    x = flat_features(act)
    n, p = x.shape
    step = max(1, GRAM_CHUNK_ELEMENTS // max(n, 1))
    buffer = torch.empty(n, min(step, p), dtype=torch.float64, device=x.device)
    mu = torch.empty(p, dtype=torch.float64, device=x.device)
    a = torch.zeros(n, dtype=torch.float64, device=x.device)
    b = torch.zeros(n, dtype=torch.float64, device=x.device)
    for j in range(0, p, step):
        chunk = buffer[:, : min(step, p - j)]
        chunk.copy_(x[:, j : j + step])
        means = mu[j : j + step]
        torch.mean(chunk, 0, out=means)
        chunk.sub_(means)
        a += chunk.sum(1)  # a = Xc 1
        b.addmv_(chunk, means)  # Xc mu
    mean = mu.mean()
    return a, b - a * mean, float(((mu - mean) ** 2).sum()), p


def centred_features(act: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """:attr:`LayerInputs.features` of an activation (n, ...): a float64 copy, each feature centred over the examples
    (a copy: the model may overwrite its activation in place after the tap)."""
    x = flat_features(act).to(device=device or act.device, dtype=torch.float64, copy=True)
    return x.sub_(x.mean(0))


def symmetric_pairs(items: list, value, diagonal: float | None = None, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """``value(a, b)`` for every pair i <= j of ``items`` into a symmetric float64 (L, L) matrix, NaN where either item
    is None (a layer on which the measure is undefined) or outside the boolean mask ``pairs``; ``diagonal``: the value
    of an item against itself where the measure fixes it (then not computed).

    The pairs run on a pool of ``torch.get_num_threads()`` threads: a small dense factorisation (an SVD of a
    255 x 255 matrix) gains nothing from LAPACK's own threads, but pairs side by side keep every core busy. Each
    pair's value is the same, bit for bit, whichever thread computes it."""
    out = torch.full((len(items), len(items)), float("nan"), dtype=torch.float64)
    todo = [(i, j) for i, a in enumerate(items) if a is not None for j in range(i, len(items))
            if items[j] is not None and (pairs is None or pairs[i, j])]
    if diagonal is not None:
        for i, j in todo:
            if i == j:
                out[i, i] = diagonal
        todo = [(i, j) for i, j in todo if i != j]
    workers = min(torch.get_num_threads(), len(todo))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            values = list(pool.map(lambda ij: value(items[ij[0]], items[ij[1]]), todo))
    else:
        values = [value(items[i], items[j]) for i, j in todo]
    for (i, j), v in zip(todo, values):
        out[i, j] = out[j, i] = v
    return out


@dataclass
class LayerInputs:
    """One tapped layer on one minibatch, as the engine hands it to measures.

    ``gram``: the Gram matrix of the layer's features centred over the minibatch's examples, ``Xc Xc^T`` (n, n)
    float64 (its products made in float32 from the float32 activations, or in float64 when a chosen measure declares
    :data:`FLOAT64_GRAM`). ``row_stats`` (only when a chosen measure declares
    :data:`ROW_STATS`): what turns it into the Gram of the raw features centred per example (each example's feature
    vector minus its own mean), ``Xr Xr^T = gram - a a^T / p + c 1^T + 1 c^T + v``, as ``(a, c, v, p)``:
    ``a = Xc 1``, ``c = Xc mu - a mean(mu)``, ``v = p var(mu)`` (``mu`` the features' means, ``p`` their number)."""

    gram: torch.Tensor
    row_stats: tuple[torch.Tensor, torch.Tensor, float, int] | None = None
    features: torch.Tensor | None = None  # only when a chosen measure declares FEATURES: (n, p) centred, float64
    _spectrum: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def spectrum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The centred Gram's eigenvalues above rounding (largest first, ``> n eps`` of the largest) and their
        eigenvectors (n, r): the examples' coordinates on the features' principal directions are ``V sqrt(evals)``.
        Computed once per layer and minibatch, shared by every measure that needs it (empty for a constant layer)."""
        if self._spectrum is None:
            evals, evecs = torch.linalg.eigh(self.gram)
            evals, evecs = evals.flip(0), evecs.flip(1)
            top = float(evals[0]) if evals.numel() else 0.0
            keep = evals > top * self.gram.shape[0] * torch.finfo(torch.float64).eps if top > 0 else evals < 0
            self._spectrum = evals[keep], evecs[:, keep]
        return self._spectrum

    def centred(self) -> torch.Tensor:
        """The layer's features (n, p), centred over the examples, float64 (measures that declare :data:`FEATURES`)."""
        if self.features is None:
            raise MeasureError(f"this measure needs the layer's features, which the engine did not keep (declare "
                               f"{FEATURES!r} in its needs)")
        return self.features

    def example_centred_gram(self) -> torch.Tensor:
        """``Xr Xr^T`` (float64): the inner products of the examples' feature vectors each centred on its own mean."""
        if self.row_stats is None:
            raise MeasureError("this measure needs per-example statistics the engine did not compute (declare "
                               f"{ROW_STATS!r} in its needs)")
        a, c, v, p = self.row_stats
        return self.gram - torch.outer(a, a) / p + c.unsqueeze(1) + c.unsqueeze(0) + v


@dataclass
class MeasureEstimate:
    """A measure over every accumulated layer pair: ``value`` and jackknife ``se`` (L, L) float64 tensors (``se`` NaN
    with one minibatch); ``undefined``: layers on which it is undefined (their rows and columns are NaN)."""

    value: torch.Tensor
    se: torch.Tensor
    num_batches: int
    num_examples: int
    undefined: list[int]


class Accumulator(Protocol):
    """What the engine needs of a measure's accumulator (``MinibatchCKA`` and :class:`BatchMean` are two)."""

    num_batches: int

    def add(self, h: torch.Tensor, n: int) -> None: ...


class BatchMean:
    """The batch-size-weighted mean of per-minibatch values over every layer pair, with a leave-one-minibatch-out
    jackknife SE. A contribution is ``n_b * value_b`` (L, L) float64 (NaN where the measure is undefined on that
    batch, which makes the pair NaN); adding the same contributions in the same order gives the same sums."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.total = torch.zeros(num_layers, num_layers, dtype=torch.float64)
        self.batches: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.num_batches = 0
        self.num_examples = 0

    def add(self, h: torch.Tensor, n: int) -> None:
        if tuple(h.shape) != (self.num_layers, self.num_layers) or h.dtype != torch.float64:
            raise MeasureError(f"a minibatch contribution must be a ({self.num_layers}, {self.num_layers}) float64 "
                               f"matrix, got {tuple(h.shape)} {h.dtype}")
        h = h.cpu()
        self.total += h
        self.batches.append(h)
        self.sizes.append(n)
        self.num_batches += 1
        self.num_examples += n

    def compute(self) -> MeasureEstimate:
        if self.num_batches == 0:
            raise MeasureError("no minibatch was accumulated")
        value = self.total / self.num_examples
        se = torch.full_like(value, float("nan"))
        b = self.num_batches
        if b >= 2:
            sizes = torch.tensor(self.sizes, dtype=torch.float64).view(-1, 1, 1)
            loo = (self.total.unsqueeze(0) - torch.stack(self.batches)) / (self.num_examples - sizes)
            se = ((b - 1) / b * ((loo - loo.mean(0)) ** 2).sum(0)).sqrt()
        diag = value.diagonal()
        undefined = [i for i in range(self.num_layers) if not torch.isfinite(diag[i])]
        return MeasureEstimate(value, se, b, self.num_examples, undefined)


class Measure(ABC):
    """A similarity measure between layers, computed in the engine's streaming pass (module doc).

    Subclasses set the class attributes below and implement :meth:`contribution`; defining one registers it under
    ``name``. An instance holds checked parameter values (``make_measure(name, **params)``)."""

    name: ClassVar[str]
    listing: ClassVar[int] = 100  # where `hubcompare measures` and 'all' put it (then by name)
    definition: ClassVar[str]  # one line, as `hubcompare measures` prints it
    citation: ClassVar[str]
    orientation: ClassVar[str] = "similarity"  # or "distance"
    value_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    symmetric: ClassVar[bool] = True
    params: ClassVar[tuple[Param, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset()  # beyond the centred Gram: ROW_STATS, FLOAT64_GRAM, FEATURES
    estimator: ClassVar[str] = "per-minibatch value, batch-size-weighted mean"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise MeasureError(f"two measures are named {name!r}: {_REGISTRY[name].__qualname__} and {cls.__qualname__}")
        _REGISTRY[name] = cls

    def __init__(self, **values: object):
        known = {p.name: p for p in self.params}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise MeasureError(f"{self.name} has no parameter {', '.join(map(short_repr, unknown))}: its parameters are "
                               f"{', '.join(known) or 'none'}", params=("measures",))
        self.values = {p.name: p.check(self.name, values.get(p.name, p.default)) for p in self.params}

    @property
    def key(self) -> str:
        """The measure with its parameters, as results and store keys name it: ``rbf-cka(frac=0.8)``."""
        return self.name + ("(" + ",".join(f"{k}={v:g}" for k, v in self.values.items()) + ")" if self.values else "")

    def smallest_batch(self) -> int:
        """The fewest examples a minibatch may hold for this measure (the plan merges a shorter last slice)."""
        return MIN_BATCH

    def check_batch(self, n: int) -> None:
        """Raise :class:`MeasureError` when a minibatch of ``n`` examples is too small for this measure."""

    @abstractmethod
    def contribution(self, layers: list[LayerInputs], pairs: torch.Tensor | None = None) -> torch.Tensor:
        """What one minibatch adds to :meth:`accumulator`: a float64 (L, L) matrix over the L layers given.
        ``pairs``: an (L, L) boolean mask of the layer pairs asked for (None: all); a measure whose pairs are costly
        skips the others (the engine sets every pair outside the mask to NaN, computed or not)."""

    def accumulator(self, num_layers: int) -> Accumulator:
        return BatchMean(num_layers)

    def estimate(self, acc) -> MeasureEstimate:
        est = acc.compute()
        return MeasureEstimate(est.value, est.se, est.num_batches, est.num_examples, list(est.undefined))

    def derived(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """Quantities reported beside the value (e.g. an angular distance), computed from it."""
        return {}

    def describe(self) -> dict:
        """What settings and JSON documents record of this measure."""
        return {"name": self.name, "key": self.key, "params": dict(self.values), "orientation": self.orientation,
                "range": list(self.value_range), "symmetric": self.symmetric, "definition": self.definition,
                "estimator": self.estimator, "citation": self.citation}


def measure_names() -> list[str]:
    """Every registered measure's name, in listing order."""
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].listing, n))


def measure_info(name: str) -> dict:
    """What ``hubcompare measures`` and the service's ``api/measures`` say of measure ``name``: its definition,
    orientation, range, estimator, parameters (default and range) and citation."""
    cls = measure_class(name)
    return {"name": name, "definition": cls.definition, "orientation": cls.orientation, "range": list(cls.value_range),
            "symmetric": cls.symmetric, "estimator": cls.estimator,
            "params": {p.name: {"default": p.default, "min": p.low, "max": p.high, "help": p.help, "integer": p.integer}
                       for p in cls.params},
            "citation": cls.citation}


def measure_class(name: str) -> type[Measure]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise MeasureError(f"{short_repr(name)} is not a measure: choose from {', '.join(measure_names())} (or 'all')",
                           params=("measures",)) from None


def make_measure(name: str, **params: object) -> Measure:
    """The measure ``name`` with ``params`` checked (defaults for the rest)."""
    return measure_class(name)(**params)


def measure_from_key(key: str) -> Measure:
    """The measure a key names (:attr:`Measure.key`: ``rsa``, ``rbf-cka(frac=0.5)``, ``mknn(k=20)``), its parameters
    checked: how a stored request or an API call names a measure with its parameters in one string."""
    text = key.strip() if isinstance(key, str) else ""
    name, paren, rest = text.partition("(")
    values: dict[str, float | int] = {}
    if paren:
        if not rest.endswith(")"):
            raise MeasureError(f"{short_repr(key)} is not a measure key: write NAME or NAME(PARAM=NUMBER,...), e.g. "
                               "rbf-cka(frac=0.5)", params=("measures",))
        for item in filter(None, (part.strip() for part in rest[:-1].split(","))):
            param, eq, number = item.partition("=")
            try:
                value = float(number)
            except ValueError:
                value = None
            if not eq or not param.strip() or value is None:
                raise MeasureError(f"{short_repr(key)}: {short_repr(item)} is not PARAM=NUMBER (e.g. rbf-cka(frac=0.5))",
                                   params=("measures",))
            values[param.strip()] = int(value) if value.is_integer() and "." not in number and "e" not in number.lower() else value
    return make_measure(name.strip(), **values)


def parse_measures(names: list[str] | tuple[str, ...], params: dict[str, dict] | None = None) -> list[Measure]:
    """Measures from names as the command line gives them (``all`` = every one), in the order given, each once;
    ``params``: per-measure parameter values (``{"rbf-cka": {"frac": 0.5}}``)."""
    params = dict(params or {})
    chosen: list[str] = []
    for name in names:
        for n in (measure_names() if name == "all" else [name]):
            measure_class(n)
            if n not in chosen:
                chosen.append(n)
    for n in params:
        if n not in chosen:
            measure_class(n)
            raise MeasureError(f"parameters were given for {n}, which is not among the chosen measures "
                               f"({', '.join(chosen)})", params=("measures",))
    if not chosen:
        raise MeasureError(f"no measure was chosen: give one or more of {', '.join(measure_names())} (or 'all')",
                           params=("measures",))
    return [make_measure(n, **params.get(n, {})) for n in chosen]
