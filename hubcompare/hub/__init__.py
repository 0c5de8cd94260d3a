"""The Hugging Face Hub: push/pull through the real client, model references, the registry, and a
standard-library Hub-protocol server for offline machines."""

from __future__ import annotations

from .references import ACCEPTED_FORMS, Reference, ResolvedModel, parse_reference, resolve_reference
from .client import PopulationResult, PushResult, Pulled, check_repo_id, pull, push, push_population, with_retries
from .registry import Entry, Registry, default_registry_path, entry_from_meta, sync

__all__ = ["ACCEPTED_FORMS", "Reference", "ResolvedModel", "parse_reference", "resolve_reference", "PopulationResult", "PushResult", "Pulled", "check_repo_id", "pull", "push", "push_population", "with_retries", "Entry", "Registry", "default_registry_path", "entry_from_meta", "sync"]
