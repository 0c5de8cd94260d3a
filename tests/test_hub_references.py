"""The reference parser: every accepted form, and the promised errors for malformed or ambiguous ones."""

from __future__ import annotations

import pytest

from hubcompare.errors import InvalidReferenceError, ReferenceNotFoundError, RegistryEntryNotFoundError
from hubcompare.hub.references import ACCEPTED_FORMS, Reference, parse_reference, resolve_reference


def test_accepted_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "r14").mkdir(parents=True)
    assert parse_reference("hf-hub:alice/digits-r14") == Reference("hf-hub", "alice/digits-r14")
    sha = "a" * 40
    ref = parse_reference(f"hf-hub:alice/digits-r14@{sha}")
    assert (ref.target, ref.revision, str(ref)) == ("alice/digits-r14", sha, f"hf-hub:alice/digits-r14@{sha}")
    assert parse_reference("hf-hub:alice/x@v1.0").revision == "v1.0"
    assert parse_reference("local-dir:runs/r14") == Reference("local-dir", "runs/r14")
    assert parse_reference("runs/r14") == Reference("local-dir", "runs/r14")
    assert parse_reference("timm:resnet18.a1_in1k") == Reference("timm", "resnet18.a1_in1k")
    assert parse_reference("my-model_1") == Reference("registry", "my-model_1")
    assert parse_reference("hf-hub:alice/x").pinned(sha) == Reference("hf-hub", "alice/x", sha)


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("hf-hub:", "nothing follows"),
    ("hf-hub:alice", "not a Hub repo id"),
    ("hf-hub:alice/x/y", "not a Hub repo id"),
    ("hf-hub:alice/x@v1@v2", "one '@' at most"),
    ("hf-hub:alice/bad--name", "not a Hub repo id"),
    ("hf:alice/x", "unknown scheme 'hf:'"),
    ("timm:org/model", "no '/'"),
    ("alice/digits-r14", "hf-hub:alice/digits-r14"),
    ("no such folder!", "not a registry name"),
])
def test_malformed_references_list_the_accepted_forms(text, why, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidReferenceError) as e:
        parse_reference(text)
    assert why in str(e.value) and ACCEPTED_FORMS in str(e.value)


def test_folder_that_is_also_a_registry_name_is_ambiguous(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r14").mkdir()
    with pytest.raises(InvalidReferenceError, match="both a folder and a registry name.*local-dir:r14"):
        parse_reference("r14", registry_names={"r14"})
    assert parse_reference("local-dir:r14", registry_names={"r14"}).kind == "local-dir"


def test_references_that_name_nothing(tmp_path):
    from hubcompare.hub.registry import Registry

    registry = Registry(tmp_path / "r.sqlite", curated_dirs=[])
    with pytest.raises(RegistryEntryNotFoundError, match="no registry entry 'nobody'.*registry add nobody"):
        resolve_reference("nobody", registry)
    with pytest.raises(ReferenceNotFoundError, match="no checkpoint folder"):
        resolve_reference(f"local-dir:{tmp_path / 'missing'}", registry)
    with pytest.raises(ReferenceNotFoundError, match="timm has no architecture 'not_a_model'"):
        resolve_reference("timm:not_a_model", registry)


def test_timm_weights_only_published_as_pickles_are_refused():
    from timm.models import get_pretrained_cfg

    from hubcompare.errors import PickleWeightsRefusedError

    name = next(n for n in __import__("timm").list_models(pretrained=True)
                if (c := get_pretrained_cfg(n)) is not None and c.url and not c.hf_hub_id)
    with pytest.raises(PickleWeightsRefusedError, match="only loads safetensors"):
        resolve_reference(f"timm:{name}")


def test_local_folder_resolves_to_its_model(trained_run):
    resolved = resolve_reference(str(trained_run))
    assert resolved.commit_sha is None and resolved.path == trained_run and resolved.meta.depth == 8


def _cells(table_text: str, column: int) -> list[str]:
    """The text of one column of a rich table drawn with a rule between rows: each row's folded lines joined."""
    rows: list[str] = []
    new_row = True
    for line in table_text.splitlines():
        if line.startswith(("├", "└", "┡")):
            new_row = True
        elif line.startswith("│"):
            cell = line.split("│")[column + 1].strip()
            if new_row:
                rows.append(cell)
                new_row = False
            else:
                rows[-1] += cell
    return rows


def test_registry_list_piped_at_80_columns_prints_names_and_references_whole(tmp_path):
    """Piped output is 80 columns wide: names and references (what a user copies) fold onto more lines, never '…'."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hubcompare.hub.registry import Entry, Registry

    home = tmp_path / "home"
    sha = "0123456789abcdef0123456789abcdef01234567"
    entries = [Entry(f"alice--digits-zoo-digits-d{d}-w1-f1-s{s}", f"hf-hub:alice/digits-zoo-digits-d{d}-w1-f1-s{s}@{sha}", sha,
                     "cifar_resnet", d, 1.0, "digits", 1.0, s, 0.98, ["digits-zoo"]) for d in (8, 14) for s in (0, 1)]
    registry = Registry(home / "registry.sqlite", curated_dirs=[])
    for e in entries:
        registry.add(e)
    env = dict(os.environ, HUBCOMPARE_HOME=str(home), HUBCOMPARE_REGISTRY_DIRS="", COLUMNS="80")
    cli = [str(Path(sys.executable).parent / "hubcompare"), "registry", "list", "--population", "digits-zoo"]
    out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout and max(map(len, out.stdout.splitlines())) <= 80, out.stdout
    assert sorted(_cells(out.stdout, 0)) == sorted(e.name for e in entries), out.stdout
    assert sorted(_cells(out.stdout, 1)) == sorted(e.reference for e in entries), out.stdout
    assert "4 entries" in out.stdout
    listed = json.loads(subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True, timeout=120).stdout)
    assert {e["name"]: e["reference"] for e in listed} == {e.name: e.reference for e in entries}
    shown = json.loads(subprocess.run([cli[0], "registry", "show", entries[0].name, "--json"], env=env, capture_output=True,
                                      text=True, timeout=120).stdout)
    assert shown["reference"] == entries[0].reference and shown["commit_sha"] == sha and shown["populations"] == ["digits-zoo"]
