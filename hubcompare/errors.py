"""Typed errors: every failure a user can cause has its own class and a message naming the fix.

All inherit from :class:`HubcompareError`, so callers (and the CLI) can catch one base class.
Where a built-in exception type also fits (``ValueError``, ``FileNotFoundError``) the error
subclasses it too, so generic handlers keep working.

Messages speak in library terms (parameter names such as ``data_dir`` or ``batch_size``, never
command-line flags). An error whose fix is to change an argument lists those parameters in
``params``; the command line maps them to its own options when it prints the error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting a bad value (from a hostile file, say) in a message."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."

class HubcompareError(Exception):
    """Base class of every error hubcompare raises on purpose.

    ``params``: the names of the arguments whose values the message asks to change (e.g.
    ``("data_dir",)``), so a front end can name its own spelling of them; empty when none.
    ``http_status``: what a web front end answers with, declared by the class (None: 404 for what is not there, a
    ``LookupError``, else 400).
    """

    params: tuple[str, ...] = ()
    http_status: int | None = None

    def __init__(self, *args, params: tuple[str, ...] | list[str] = ()):
        super().__init__(*args)
        if params:
            self.params = tuple(params)


class InstallError(HubcompareError, RuntimeError):
    """The installed packages cannot work together (torch and torchvision from different releases)."""


class InvalidArchitectureError(HubcompareError, ValueError):
    """A model configuration that cannot be built (bad depth, bad width)."""


class RecipeError(HubcompareError, ValueError):
    """A training recipe that is missing, malformed or has invalid values."""


class DatasetError(HubcompareError, ValueError):
    """A dataset name, split or fraction that hubcompare cannot serve."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files are not on disk (and could not be downloaded)."""


class CheckpointError(HubcompareError):
    """Base class for problems with a checkpoint folder; ``path`` names the offending file."""

    def __init__(self, message: str, path: str | Path | None = None, *, params: tuple[str, ...] = ()):
        super().__init__(message, params=params)
        self.path = Path(path) if path is not None else None


class CheckpointFileMissingError(CheckpointError, FileNotFoundError):
    """A file the checkpoint folder must contain is absent."""


class CheckpointCorruptError(CheckpointError, ValueError):
    """A checkpoint file exists but cannot be parsed."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """Checkpoint files parse but disagree with each other (weights vs config, predictions vs data)."""


class ModelConfigError(CheckpointCorruptError):
    """config.json describes a model hubcompare will not build: an unknown architecture or a reference to
    another repo in its place, ``model_args`` the architecture does not take or of the wrong type."""


class ModelTooLargeError(CheckpointError, ValueError):
    """The model config.json describes would have more parameters than ``max_params`` allows (refused before
    anything is allocated)."""


class InputMismatchError(HubcompareError, ValueError):
    """Images a model cannot be fed (channel counts that cannot be adapted to the model's)."""


class DeviceError(HubcompareError, ValueError):
    """A device that is malformed (not auto, cpu, cuda, cuda:N or mps) or not available here; the message names
    the devices that are."""


class TrainingError(HubcompareError, RuntimeError):
    """A training run that cannot start, resume or continue (existing output, diverged loss)."""


class InvalidReferenceError(HubcompareError, ValueError):
    """A model reference that is malformed or ambiguous; the message lists the accepted forms."""


class ReferenceNotFoundError(HubcompareError, LookupError):
    """A well-formed reference that names nothing: no such folder, registry name or timm model."""


class HubError(HubcompareError):
    """Base class for failures talking to a Hugging Face Hub (or the local Hub-protocol server)."""


class HubServerConfigError(HubError, ValueError):
    """Settings the Hub-protocol server refuses to start with (a network address without tokens, a bad token file)."""


class InvalidNameError(HubcompareError, ValueError):
    """A revision, a path inside a repo or a collection name that breaks the Hub's name rules."""


class HubRepoNotFoundError(HubError, LookupError):
    """The Hub has no repo of that name (or it is private and the token cannot see it)."""


class HubRevisionNotFoundError(HubError, LookupError):
    """The repo exists but the branch, tag or commit does not."""


class HubFileNotFoundError(HubError, FileNotFoundError):
    """A file the model needs is not in the repo at that revision."""


class HubUnavailableError(HubError, ConnectionError):
    """The Hub did not answer (timeouts, connection errors, 5xx) after every retry."""

    http_status = 502  # a server that relayed the request to the Hub: the gateway's answer


class NotInCacheError(HubError, FileNotFoundError):
    """Offline (HF_HUB_OFFLINE=1 or no connection) and the model is not in the local Hugging Face cache."""


class PickleWeightsRefusedError(HubError, ValueError):
    """The repo offers only pickled weights (pytorch_model.bin, .pth): loading them can run arbitrary code."""


class PushError(HubError):
    """A push (or part of a population push) failed; ``failures`` maps run folders to their errors."""

    def __init__(self, message: str, failures: dict | None = None):
        super().__init__(message)
        self.failures = failures or {}


class RegistryError(HubcompareError):
    """Base class for registry problems (bad entries, unknown names, conflicts)."""


class RegistryEntryNotFoundError(RegistryError, LookupError):
    """No registry entry has that name."""


class RegistryConflictError(RegistryError, ValueError):
    """An entry of that name exists with another reference, or a curated entry would be changed."""

    http_status = 409


class RegistryCorruptError(RegistryError):
    """The registry cannot be read: registry.sqlite is not a registry database, a curated file is malformed or not UTF-8."""


class BackendError(HubcompareError, RuntimeError):
    """A backend that cannot run the work it is given: Ray not installed or not reachable, a worker lost."""


class CompareError(HubcompareError, ValueError):
    """Settings or activations that make a CKA comparison impossible (batch too small, NaN, ...)."""


class MeasureError(CompareError):
    """An unknown similarity measure, or a measure parameter out of its range."""


class LayerSelectionError(CompareError):
    """Layer patterns that match nothing, or a layer that cannot be captured."""


class DatasetChoiceError(CompareError):
    """No dataset was named and the models do not tell which one to compare them on."""


class CompareBackendError(BackendError):
    """A sharded comparison that cannot run: Ray not installed or not reachable, a shard's worker lost, or a worker
    that loaded a model differently from the driver."""


class PopulationError(HubcompareError):
    """Base class for problems naming or aligning the models of a population comparison."""


class EmptyPopulationError(PopulationError, LookupError):
    """A population query, Hub tag or collection that names no model."""


class DatasetMismatchError(PopulationError, ValueError):
    """Models whose predictions are about different data (fingerprints or example ids differ)."""


class TooFewModelsError(PopulationError, ValueError):
    """A statistic that needs more models per side than were given."""


class PredictionsUnavailableError(PopulationError):
    """A model has no stored predictions for the dataset and they cannot be computed (no dataset, wrong head)."""


class GridError(HubcompareError):
    """Base class for problems with a training grid (a population trained from one recipe and its axes)."""


class GridSpecError(GridError, ValueError):
    """A grid file that is missing, malformed, names an unknown axis or expands to invalid or clashing runs."""


class GridBackendError(GridError, BackendError):
    """A backend that cannot run the grid: Ray not installed or not reachable, another grid holding the folder."""


class GridRunsFailedError(GridError, RuntimeError):
    """Some runs of a grid failed after every retry; ``failures`` maps run names to their last error."""

    def __init__(self, message: str, failures: dict | None = None):
        super().__init__(message)
        self.failures = failures or {}


class ComparisonTooLargeError(CompareError):
    """A comparison pass that would hold more memory than allowed (too many models x layers, batches too large)."""


class OverlappingSidesError(PopulationError, ValueError):
    """Two sides that share a model, or a side with none: across-side numbers would compare a model with itself."""


class SideArchitectureError(PopulationError, ValueError):
    """A side whose models do not share their compared layers (it mixes architectures), where layer-by-layer needs one."""


class ProbeError(HubcompareError, ValueError):
    """A linear-probe or block-deletion run that cannot be done as asked (its settings, its data, the model's head)."""


class NoDeletableBlocksError(ProbeError):
    """A model with no residual block whose shortcut is the identity: no block can be deleted keeping the identity path."""


class ReportError(HubcompareError, ValueError):
    """A model report that cannot be written as asked (its output path, a section that cannot be made)."""


class ResultStoreError(HubcompareError):
    """Base class for result-store problems: a store folder or index that cannot be used, files that cannot be stored."""


class ResultKeyInputError(ResultStoreError, ValueError):
    """What a result key would hash cannot be written as canonical JSON (NaN, infinities, non-string keys, objects)."""


class InvalidResultKeyError(ResultStoreError, ValueError):
    """A result key or prefix that is not hex, or too short to name one result (at least 6 characters)."""


class ResultNotFoundError(ResultStoreError, LookupError):
    """No stored result has that key (or starts with that prefix)."""


class AmbiguousResultKeyError(ResultStoreError, LookupError):
    """A key prefix that starts several stored results; ``candidates`` holds their keys."""

    http_status = 400  # found too much, not nothing: the request needs more of the key

    def __init__(self, message: str, candidates: list[str] | None = None):
        super().__init__(message)
        self.candidates = candidates or []


class ResultFileError(ResultStoreError, LookupError):
    """A file name asked of a stored result that is not one of its files (or is a path, not a name)."""


class InvalidResultReferenceError(HubcompareError, ValueError):
    """A shared-result reference that is not ``hf-hub-result:OWNER/NAME[@REVISION]``."""


class SharedResultError(HubError, ValueError):
    """A result repo on the Hub that is not a valid hubcompare result: missing or malformed hubcompare-result.json, a key
    that does not match its inputs, unexpected or pickled files."""


class SharedResultTooLargeError(SharedResultError):
    """A shared result over one of the pull limits (files, bytes, layers, an npz member); ``limit`` names the limit,
    ``size`` how big the thing was and ``maximum`` the limit's value."""

    def __init__(self, message: str, limit: str = "", size: int = 0, maximum: int = 0):
        super().__init__(message)
        self.limit, self.size, self.maximum = limit, size, maximum


class ResultRepoConflictError(PushError, ValueError):
    """``push-result`` to an existing repo that is not a hubcompare result (its card does not say so), or that holds
    files no result push wrote: refused, nothing written or deleted."""

    http_status = 409


class ResultFileMissingError(ResultStoreError, FileNotFoundError):
    """A stored result lists a file that is no longer in its folder (the store was edited or damaged)."""


class ServiceError(HubcompareError):
    """Base class for problems of `hubcompare serve`: its settings, a request it refuses, a job it cannot find."""


class ServiceConfigError(ServiceError, ValueError):
    """Server settings that are refused: a non-loopback address without a token, a token too short, a bad data folder."""


class ServiceDependencyError(ServiceError):
    """The web service's packages (fastapi, uvicorn, python-multipart) are not installed."""


class ServiceRequestError(ServiceError, ValueError):
    """A request the server refuses before any work: over its size limits, malformed JSON, a field it does not accept."""


class RequestMediaTypeError(ServiceRequestError):
    """A request body in another format than the JSON an endpoint takes (its Content-Type)."""

    http_status = 415


class ServiceBusyError(ServiceRequestError):
    """The server takes no more of this work now (its queue or its registrations are full): retry after
    ``retry_after`` seconds (None: when some have finished)."""

    http_status = 503

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ServiceBackendError(ServiceError, BackendError):
    """`hubcompare serve --backend ray` cannot run jobs: Ray is not installed, or nothing answers at --ray-address."""


class JournalWriteError(ServiceError, OSError):
    """The service's job journal stopped taking writes (disk full, file removed or locked): jobs go on in memory."""


class WriteNotAllowedError(ServiceError, PermissionError):
    """A write (queueing a job) without the server's token, or with a wrong one."""

    http_status = 401


class CrossSiteWriteError(WriteNotAllowedError):
    """A write a browser sent from another site's page (its Origin names another host): refused whatever the token."""

    http_status = 403


class JobNotFoundError(ServiceError, LookupError):
    """A job id the server does not know (ids live as long as the server process)."""


class InvalidRequestError(HubcompareError, ValueError):
    """A comparison request refused before any work: an unknown field, a wrong type, a size out of range, a bad layer
    glob, or (for the service) a reference to a file-system path. ``field`` names the request field at fault."""

    def __init__(self, message: str, field: str | None = None, *, params: tuple[str, ...] | list[str] = ()):
        super().__init__(message, params=params)
        self.field = field


class ConfirmationRequiredError(HubcompareError, ValueError):
    """Something that deletes was asked for where no one can confirm it (no terminal) and it was not confirmed up front."""
