"""``POST /api/registry`` downloads a model's weights outside the lock that loads one model at a time (#23 item 10):
for ``hf-hub:`` and ``timm:`` references alike, so registrations that download overlap and only the loads queue."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hubcompare.errors import HubUnavailableError
from hubcompare.hub import references
from hubcompare.hub.registry import Registry
from hubcompare.service import writes


def _service(tmp_path):
    registry = Registry(tmp_path / "registry.sqlite", curated_dirs=[])
    return SimpleNamespace(registry=lambda: registry)


@pytest.mark.parametrize("reference", ["timm:resnet18.a1_in1k", "hf-hub:someone/model"])
def test_a_registration_downloads_outside_the_load_lock(tmp_path, monkeypatch, reference):
    seen = []

    def fake_pull(repo_id, revision=None, api=None, **kwargs):  # the first download: note the lock, then stop
        seen.append((repo_id, writes._one_at_a_time.locked()))
        raise HubUnavailableError(f"{repo_id}: no Hub in this test")

    monkeypatch.setattr(references, "pull", fake_pull)
    monkeypatch.setattr(references, "_check_remote_size", lambda *a, **k: None)  # no metadata look-up either
    with pytest.raises(HubUnavailableError):
        writes.add_entry(_service(tmp_path), {"name": "r18", "reference": reference})
    assert seen and seen[0][1] is False, f"{reference}: the first download ran inside the load lock: {seen}"
    assert not writes._one_at_a_time.locked()


def test_a_timm_registration_checks_before_it_downloads(tmp_path, monkeypatch):
    """The download outside the lock refuses what the registration would: an architecture timm does not have."""
    monkeypatch.setattr(references, "pull", lambda *a, **k: pytest.fail("nothing is downloaded for a bad reference"))
    with pytest.raises(references.ReferenceNotFoundError, match="did you mean resnet18"):
        writes.add_entry(_service(tmp_path), {"name": "r18", "reference": "timm:resnt18"})
