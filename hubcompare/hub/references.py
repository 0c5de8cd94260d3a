"""Resolving a model reference to what it names: the one resolver every caller uses.

Parsing lives in :mod:`.names` (a leaf); this module follows a reference through the registry,
pulls Hub and timm weights pinned to a commit, and opens the checkpoint folder. The torch model is
built only when ``.model`` is first read, so callers that only need a checkpoint's stored files
(e.g. its predictions) never build one; with ``weights=False`` a Hub model's weights are not even
downloaded until ``.model`` asks for them.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from huggingface_hub import HfApi, constants
from timm.models import get_pretrained_cfg

from ..errors import (
    CheckpointCorruptError,
    CheckpointFileMissingError,
    CheckpointMismatchError,
    InvalidReferenceError,
    ModelTooLargeError,
    PickleWeightsRefusedError,
    ReferenceNotFoundError,
    RegistryConflictError,
    RegistryError,
)
from ..models.checkpoint import (
    CARD_FILE,
    CONFIG_FILE,
    DEFAULT_MAX_PARAMS,
    PREDICTIONS_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    load_checkpoint,
)
from ..models.guard import check_size, estimate_size, plan_build
from ..models.metadata import ModelMeta
from ..models.weights import load_model
from .client import Pulled, cached_commits, pull, with_retries
from .names import ACCEPTED_FORMS, Reference, check_name, check_registry_name, parse_reference
from .registry import Entry, Registry, entry_from_meta

__all__ = ["Reference", "ResolvedModel", "parse_reference", "register_reference", "resolve_reference", "fetch_timm_weights",
           "ACCEPTED_FORMS"]


@dataclass(eq=False)
class ResolvedModel:
    """A reference resolved: what was followed, from which registry entry and commit, and what was opened.

    ``checkpoint`` is the opened folder for local and Hub references (None for ``timm:``, whose
    model is built at once); ``model`` is built from the checkpoint on first use, in eval mode (a Hub
    model resolved with ``weights=False`` downloads its weights, at the same commit, then).
    ``notices``: what the user should know about how it was resolved (e.g. offline, the newest cached commit
    stood in for an unpinned reference); commands print them.
    """

    reference: Reference  # the non-registry reference followed (a registry name's target)
    config: dict
    commit_sha: str | None  # the Hub commit the weights came from (None for local folders)
    path: Path | None  # the folder (or cached snapshot) loaded from
    registry_name: str | None = None
    checkpoint: Checkpoint | None = None
    _model: torch.nn.Module | None = field(default=None, repr=False)
    max_params: int = DEFAULT_MAX_PARAMS  # the model is refused, before it is built, when its config describes more
    notices: list[str] = field(default_factory=list)
    api: object = field(default=None, repr=False)

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            if self.checkpoint is not None and not (self.checkpoint.path / WEIGHTS_FILE).is_file() and self.commit_sha:
                _check_remote_size(self.reference.pinned(self.commit_sha), self.api, self.max_params)
                pulled = pull(self.reference.target, self.commit_sha, api=self.api)  # the weights, at the same commit
                self.checkpoint = load_checkpoint(pulled.path)
            try:
                self._model = load_model(self.checkpoint, self.max_params)
            except (ModelTooLargeError, CheckpointMismatchError, CheckpointCorruptError):
                if self.reference.kind == "hf-hub":  # refused: not left in the cache to take its space
                    _forget_weights(self.checkpoint.path)
                raise
        return self._model

    @property
    def meta(self) -> ModelMeta:
        """What describes the model (its config's ``hubcompare`` block, or timm's keys)."""
        return ModelMeta.from_config(self.config)

    @property
    def pinned(self) -> Reference:
        return self.reference.pinned(self.commit_sha)


def resolve_reference(ref: str | Reference, registry: Registry | None = None, api=None, *,
                      max_params: int = DEFAULT_MAX_PARAMS, weights: bool = True) -> ResolvedModel:
    """Follow ``ref`` (through the registry) to a checkpoint: pulled, pinned to a commit sha, for Hub and timm references.

    Checkpoint folders are opened and validated, not built: read ``.model`` to build the model (refused
    before anything is allocated when its config describes more than ``max_params`` parameters).
    ``weights=False``: a Hub model whose repo holds predictions is pulled without its weights (config, card and
    predictions only), for callers that read stored predictions; ``.model`` fetches the weights if it is read.
    """
    if isinstance(ref, str):
        ref = parse_reference(ref, registry.names() if registry is not None else None)
    if ref.kind == "registry":
        registry = registry if registry is not None else Registry()
        entry = registry.get(ref.target)
        inner = parse_reference(entry.reference)
        if inner.kind == "registry":
            raise InvalidReferenceError(
                f"registry entry {entry.name} points at another registry name ({entry.reference}): "
                "point it at an hf-hub:, timm: or local-dir: reference."
            )
        resolved = resolve_reference(inner, registry, api, max_params=max_params, weights=weights)
        resolved.registry_name = entry.name
        return resolved
    if ref.kind == "local-dir":
        path = Path(ref.target).expanduser()
        if not path.is_dir():
            raise ReferenceNotFoundError(f"no checkpoint folder at {path} (from reference {ref}).\n{ACCEPTED_FORMS}")
        ckpt = load_checkpoint(path)
        return ResolvedModel(ref, ckpt.config, None, ckpt.path, checkpoint=ckpt, max_params=max_params)
    if ref.kind == "hf-hub":
        pulled = None if weights else _pull_without_weights(ref, api)
        if pulled is None:
            _check_remote_size(ref, api, max_params)
        pulled = pulled or pull(ref.target, ref.revision, api=api)
        ckpt = _open_pulled(pulled)
        return ResolvedModel(ref, ckpt.config, pulled.commit_sha, pulled.path, checkpoint=ckpt, max_params=max_params,
                             notices=[pulled.notice] if pulled.notice else [], api=api)
    return _resolve_timm(ref, api, max_params)


def register_reference(registry: Registry, name: str, reference: str | Reference, *, populations=(), replace: bool = False,
                       max_params: int = DEFAULT_MAX_PARAMS, api=None) -> tuple[Entry, ResolvedModel]:
    """What ``registry add`` does (the CLI and the service's ``POST /api/registry`` both call this): check the name,
    resolve (pull pinned and load, within ``max_params``) the reference, then record it pinned to the commit it
    resolved to. Only a model that loads is recorded; a name already taken by another model is refused before
    anything is pulled (unless ``replace``)."""
    check_registry_name(name)
    populations = [check_name(p, "population") for p in populations]
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if ref.kind == "registry":
        raise RegistryError(f"{str(ref)!r} is a registry name; register the reference it points at instead")
    if ref.kind == "local-dir":
        ref = parse_reference(f"local-dir:{Path(ref.target).expanduser().resolve()}")
    existing = registry.entries().get(name)
    if existing is not None and not replace:
        before = parse_reference(existing.reference)
        if (before.kind, before.target) != (ref.kind, ref.target):
            raise RegistryConflictError(f"{name} already names {existing.reference} ({existing.source}); replace it "
                                        "explicitly (replace) or use another name", params=("replace",))
    resolved = resolve_reference(ref, registry, api, max_params=max_params)
    resolved.model  # noqa: B018  (load it: only a model that loads is recorded)
    entry = registry.add(entry_from_meta(name, str(resolved.pinned), resolved.meta, resolved.commit_sha, populations),
                         replace=replace)
    return entry, resolved


def weights_limit(max_params: int) -> int:
    """The largest weights file a model within ``max_params`` can have (as :func:`~hubcompare.models.weights.load_model`
    bounds it: float64 everything, plus a generous header)."""
    return 8 * max_params + (1 << 24)


def _check_remote_size(ref: Reference, api, max_params: int) -> None:
    """Before a byte of the weights is downloaded: their size from the repo's metadata, against what a model within
    ``max_params`` can need (a repo that is not there, or a Hub that does not answer, is left to the pull to say)."""
    if constants.HF_HUB_OFFLINE:
        return
    if ref.revision and any(sha == ref.revision for sha, _ in cached_commits(ref.target, needs=(CONFIG_FILE, WEIGHTS_FILE))):
        return  # already on this machine: nothing to download
    api = api or HfApi()
    try:
        info = with_retries(lambda: api.model_info(ref.target, revision=ref.revision, files_metadata=True),
                            f"look up {ref.target}", attempts=2)
    except Exception:  # noqa: BLE001 - the pull that follows reports it, in its own words (or falls back to the cache)
        return
    size = next((s.size for s in info.siblings or [] if s.rfilename == WEIGHTS_FILE), None)
    if not isinstance(size, int):
        return
    where = f"hf-hub:{ref.target}@{(info.sha or ref.revision or 'main')[:12]}"
    limit = weights_limit(max_params)
    if size > limit:
        raise ModelTooLargeError(f"{where}: its {WEIGHTS_FILE} is {size:,} bytes, more than a model within max_params="
                                 f"{max_params:,} can have ({limit:,} bytes): refused before downloading it", params=("max_params",))
    if not info.sha:
        return
    # the model its config.json describes (refused here when over max_params), and the most weights it can have
    config_path = pull(ref.target, info.sha, api=api, files=(CONFIG_FILE,)).path / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the load that follows says what is wrong with it
    plan = plan_build(config, CONFIG_FILE, max_params) if isinstance(config, dict) else None
    if plan is not None and size > 8 * (plan.params + plan.buffers) + (1 << 24):
        raise CheckpointMismatchError(f"{where}: its {WEIGHTS_FILE} ({size:,} bytes) is larger than any weights of the model "
                                      f"its {CONFIG_FILE} describes ({plan.params + plan.buffers:,} numbers) could be: "
                                      "refused before downloading it")


def _forget_weights(folder: Path) -> None:
    """Remove refused weights from the Hugging Face cache: the snapshot's link and the blob it points at."""
    link = Path(folder) / WEIGHTS_FILE
    try:
        blob = link.resolve() if link.is_symlink() else None
        link.unlink(missing_ok=True)
        if blob is not None and blob.is_file() and blob.parent.name == "blobs":
            blob.unlink()
    except OSError:
        pass


def _pull_without_weights(ref: Reference, api) -> Pulled | None:
    """The repo's config, card and predictions, not its weights; None when it holds no predictions (pull it all)."""
    pulled = pull(ref.target, ref.revision, api=api, files=(CONFIG_FILE, CARD_FILE, PREDICTIONS_FILE))
    return pulled if (pulled.path / PREDICTIONS_FILE).is_file() else None


def _open_pulled(pulled: Pulled) -> Checkpoint:
    """Open a pulled snapshot; one pulled without weights is opened from its validated config alone."""
    try:
        return load_checkpoint(pulled.path)
    except CheckpointFileMissingError as e:
        # load_checkpoint checks config.json fully before it looks for the weights, so only the weights are missing
        if e.path != pulled.path / WEIGHTS_FILE or (pulled.path / WEIGHTS_FILE).is_file():
            raise
        return Checkpoint(path=pulled.path, config=json.loads((pulled.path / CONFIG_FILE).read_text()))


def _timm_source(ref: Reference, max_params: int):
    """A timm reference checked (architecture, pretrained tag, safetensors on the Hub, size within ``max_params``):
    its name, architecture and pretrained config."""
    name = ref.target
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else "timm's names look like resnet18 or vit_base_patch16_224."
        raise ReferenceNotFoundError(f"timm has no architecture {arch!r} (reference {ref}): {hint}")
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag (x) for arch"
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ReferenceNotFoundError(
            f"timm has no pretrained weights for {name!r}: pick one of {arch}'s pretrained tags "
            f"({', '.join(timm.list_pretrained(arch + '.*')[:6]) or 'it has none'})."
        )
    if not cfg.hf_hub_id:
        raise PickleWeightsRefusedError(
            f"timm's weights for {name!r} are only published as a pickled file ({cfg.url or cfg.file}); hubcompare "
            "only loads safetensors. Use a tag whose weights are on the Hub."
        )
    check_size(*estimate_size(name), max_params, f"timm:{name}")
    return name, arch, cfg


def fetch_timm_weights(ref: Reference, api=None, max_params: int = DEFAULT_MAX_PARAMS) -> Pulled:
    """A timm reference's weights into the Hugging Face cache, checked as :func:`resolve_reference` checks them, without
    building the model (the service downloads outside its one-model-at-a-time load; the load then finds them cached)."""
    _, _, cfg = _timm_source(ref, max_params)
    return pull(cfg.hf_hub_id, api=api)


def _resolve_timm(ref: Reference, api, max_params: int = DEFAULT_MAX_PARAMS) -> ResolvedModel:
    """timm's pretrained config says where the weights live; only its Hub safetensors are used."""
    name, arch, cfg = _timm_source(ref, max_params)
    pulled = pull(cfg.hf_hub_id, api=api)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(pulled.path / WEIGHTS_FILE), "source": "timm"})
    config = {"architecture": arch, "num_classes": model.num_classes, "pretrained_cfg": dict(model.pretrained_cfg)}
    config["pretrained_cfg"].pop("file", None)
    return ResolvedModel(ref, config, pulled.commit_sha, pulled.path, _model=model.eval(), max_params=max_params,
                         notices=[pulled.notice] if pulled.notice else [])
