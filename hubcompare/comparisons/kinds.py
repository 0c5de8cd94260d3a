"""The registered comparison kinds: each kind module declares its kinds (each with its :class:`~.kindspec.KindSpec`)
in a ``KINDS`` tuple, and this module lists the modules. To add a kind, write its module and add it below: its spec
is then what the requests, the service, the API and the CLI check and read."""

from __future__ import annotations

from ..errors import InvalidRequestError, short_repr
from . import cka_kinds, grounding_kind, measure_kinds, population_kinds, probe_kinds, seed_kinds
from .kindspec import Kind, KindSpec

__all__ = ["kind_for", "kind_names", "spec_for", "specs"]

_REGISTERED: dict[str, Kind] = {}
for _module in (cka_kinds, measure_kinds, population_kinds, seed_kinds, probe_kinds, grounding_kind):
    for _kind in _module.KINDS:
        if _kind.spec.name in _REGISTERED:
            raise RuntimeError(f"the comparison kind {_kind.spec.name!r} is declared twice")
        _REGISTERED[_kind.spec.name] = _kind


def kind_names() -> tuple[str, ...]:
    """Every registered kind's name, in the order the modules declare them."""
    return tuple(_REGISTERED)


def kind_for(name: str) -> Kind:
    """The registered kind ``name``; an :class:`InvalidRequestError` naming the kinds for any other."""
    try:
        return _REGISTERED[name]
    except (KeyError, TypeError):
        raise InvalidRequestError(f"kind: {short_repr(name)} is not a comparison kind; use one of {', '.join(_REGISTERED)}",
                                  "kind", params=("kind",)) from None


def spec_for(name: str) -> KindSpec:
    return kind_for(name).spec


def specs() -> tuple[KindSpec, ...]:
    return tuple(k.spec for k in _REGISTERED.values())
