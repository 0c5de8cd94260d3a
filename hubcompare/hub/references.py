"""The one parser for every way a user names a model, and resolving a name to a loaded model.

Accepted forms (``ACCEPTED_FORMS``): ``hf-hub:OWNER/NAME[@REV]``, ``local-dir:PATH``, a bare path to
a checkpoint folder, ``timm:NAME`` (a timm architecture with timm's pretrained weights) and
registry names. Parsing is lexical and strict: anything else, or a bare word that is both a folder
and a registry name, is an :class:`InvalidReferenceError` that lists the accepted forms.
Resolving gives the model (eval mode), its config/metadata and the commit sha it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import InvalidReferenceError, PickleWeightsRefusedError, ReferenceNotFoundError

if TYPE_CHECKING:
    import torch

    from .registry import Registry

__all__ = ["Reference", "ResolvedModel", "parse_reference", "resolve_reference", "ACCEPTED_FORMS"]

ACCEPTED_FORMS = """accepted forms:
  hf-hub:OWNER/NAME[@REVISION]  a Hub model repo, optionally pinned to a branch, tag or commit sha
  local-dir:PATH                a checkpoint folder on disk
  PATH                          a checkpoint folder on disk (it must exist)
  timm:NAME                     a timm architecture with timm's pretrained weights, e.g. timm:resnet18.a1_in1k
  NAME                          a registry name (see `hubcompare registry list`)"""

Kind = Literal["hf-hub", "local-dir", "timm", "registry"]
_HUB = re.compile(r"(?P<repo>[^@\s]+)(?:@(?P<rev>[^@\s]+))?")
_TIMM = re.compile(r"[A-Za-z0-9][\w.\-]*")
REGISTRY_NAME = re.compile(r"[A-Za-z0-9][\w.\-]*")


@dataclass(frozen=True)
class Reference:
    """A parsed reference: ``kind`` and ``target`` (repo id, path, timm name or registry name)."""

    kind: Kind
    target: str
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "hf-hub":
            return f"hf-hub:{self.target}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "registry":
            return self.target
        return f"{self.kind}:{self.target}"

    def pinned(self, commit_sha: str | None) -> "Reference":
        """The same Hub reference pinned to ``commit_sha`` (other kinds unchanged)."""
        if self.kind != "hf-hub" or not commit_sha:
            return self
        return Reference("hf-hub", self.target, commit_sha)


def _bad(text: str, why: str) -> InvalidReferenceError:
    return InvalidReferenceError(f"{text!r} is not a model reference: {why}.\n{ACCEPTED_FORMS}")


def parse_reference(text: str, registry_names: "set[str] | None" = None) -> Reference:
    """Parse ``text``; ``registry_names`` (when given) lets a bare word be checked for ambiguity."""
    from .client import check_repo_id

    if not isinstance(text, str) or not text.strip():
        raise _bad(str(text), "it is empty")
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if sep and scheme in ("hf-hub", "local-dir", "timm"):
        if not rest:
            raise _bad(text, f"nothing follows '{scheme}:'")
        if scheme == "hf-hub":
            m = _HUB.fullmatch(rest)
            if not m:
                raise _bad(text, "use hf-hub:OWNER/NAME or hf-hub:OWNER/NAME@REVISION (one '@' at most)")
            try:
                check_repo_id(m["repo"])
            except InvalidReferenceError as e:
                raise _bad(text, str(e)) from None
            return Reference("hf-hub", m["repo"], m["rev"])
        if scheme == "local-dir":
            return Reference("local-dir", rest)
        if not _TIMM.fullmatch(rest):
            raise _bad(text, "a timm name has no '/' or spaces (for a Hub repo use hf-hub:OWNER/NAME)")
        return Reference("timm", rest)
    if sep and re.fullmatch(r"[A-Za-z][\w+.\-]*", scheme) and len(scheme) > 1:
        raise _bad(text, f"unknown scheme '{scheme}:'")
    is_dir = Path(text).expanduser().is_dir()
    named = REGISTRY_NAME.fullmatch(text) is not None
    if is_dir and named and registry_names is not None and text in registry_names:
        raise _bad(text, f"it is both a folder and a registry name; write local-dir:{text} or rename the entry")
    if is_dir:
        return Reference("local-dir", text)
    if named:
        return Reference("registry", text)
    hint = f" (for the Hub repo write hf-hub:{text})" if re.fullmatch(r"[^/\s]+/[^/\s]+", text) else ""
    raise _bad(text, f"no folder {text} exists and it is not a registry name{hint}")


@dataclass(eq=False)
class ResolvedModel:
    """A reference resolved to a model: what was asked, what was loaded and from which commit."""

    reference: Reference
    model: "torch.nn.Module"
    config: dict
    commit_sha: str | None  # the Hub commit the weights came from (None for local folders)
    path: Path | None  # the folder (or cached snapshot) loaded from
    registry_name: str | None = None

    @property
    def meta(self) -> dict:
        return self.config.get("hubcompare", {})

    @property
    def pinned(self) -> Reference:
        return self.reference.pinned(self.commit_sha)


def resolve_reference(ref: "str | Reference", registry: "Registry | None" = None, api=None) -> ResolvedModel:
    """Load the model ``ref`` names: pulled (pinned to a commit sha) for Hub and timm references."""
    from ..models import load_checkpoint
    from .client import pull

    if isinstance(ref, str):
        ref = parse_reference(ref, registry.names() if registry is not None else None)
    if ref.kind == "registry":
        if registry is None:
            from .registry import Registry

            registry = Registry()
        entry = registry.get(ref.target)
        inner = parse_reference(entry.reference)
        if inner.kind == "registry":
            raise InvalidReferenceError(f"registry entry {entry.name} points at another registry name ({entry.reference})")
        resolved = resolve_reference(inner, registry, api)
        resolved.registry_name = entry.name
        return resolved
    if ref.kind == "local-dir":
        path = Path(ref.target).expanduser()
        if not path.is_dir():
            raise ReferenceNotFoundError(f"no checkpoint folder at {path} (from reference {ref}).\n{ACCEPTED_FORMS}")
        ckpt = load_checkpoint(path)
        return ResolvedModel(ref, ckpt.model, ckpt.config, None, ckpt.path)
    if ref.kind == "hf-hub":
        pulled = pull(ref.target, ref.revision, api=api)
        ckpt = load_checkpoint(pulled.path)
        return ResolvedModel(ref, ckpt.model, ckpt.config, pulled.commit_sha, pulled.path)
    return _resolve_timm(ref, api)


def _resolve_timm(ref: Reference, api) -> ResolvedModel:
    """timm's pretrained config says where the weights live; only its Hub safetensors are used."""
    import timm
    from timm.models import get_pretrained_cfg

    from ..models import WEIGHTS_FILE
    from .client import pull

    name = ref.target
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise ReferenceNotFoundError(f"timm has no architecture {arch!r} (reference {ref}); list them with timm.list_models().")
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ReferenceNotFoundError(
            f"timm has no pretrained weights for {name!r}: pick a tag from timm.list_models({arch + '*'!r}, pretrained=True)."
        )
    if not cfg.hf_hub_id:
        raise PickleWeightsRefusedError(
            f"timm's weights for {name!r} are only published as a pickled file ({cfg.url or cfg.file}); hubcompare "
            "only loads safetensors. Use a tag whose weights are on the Hub."
        )
    pulled = pull(cfg.hf_hub_id, api=api)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(pulled.path / WEIGHTS_FILE), "source": "timm"})
    config = {"architecture": arch, "num_classes": model.num_classes, "pretrained_cfg": dict(model.pretrained_cfg)}
    config["pretrained_cfg"].pop("file", None)
    return ResolvedModel(ref, model.eval(), config, pulled.commit_sha, pulled.path)
