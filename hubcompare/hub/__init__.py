"""The Hugging Face Hub: push/pull through the real client, model references, the registry, and a
standard-library Hub-protocol server for offline machines."""

from __future__ import annotations

from .names import ACCEPTED_FORMS, Reference, check_name, check_registry_name, check_repo_id, parse_reference
from .client import PopulationResult, PushResult, Pulled, pull, push, push_population, with_retries
from .registry import Entry, Registry, default_registry_path, entry_from_meta, sync
from .references import ResolvedModel, resolve_reference
from .store import HubStore
from .server import HubServer, serve

__all__ = ["ACCEPTED_FORMS", "Reference", "check_name", "check_registry_name", "check_repo_id", "parse_reference",
           "PopulationResult", "PushResult", "Pulled", "pull", "push", "push_population", "with_retries",
           "Entry", "Registry", "default_registry_path", "entry_from_meta", "sync", "ResolvedModel", "resolve_reference",
           "HubStore", "HubServer", "serve"]
