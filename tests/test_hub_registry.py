"""The registry (SQLite + curated text files) and the hub CLI commands as a user drives them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubcompare.errors import RegistryConflictError, RegistryError
from hubcompare.hub.registry import Entry, Registry, parse_line

runner = CliRunner()
REPO_REGISTRY = Path(__file__).resolve().parents[1] / "registry"


def test_curated_lines_merge_with_user_entries(tmp_path):
    curated = tmp_path / "curated"
    curated.mkdir()
    (curated / "zoo.txt").write_text(
        "# comment\n\n"
        "zoo-a hf-hub:carol/zoo-a@" + "1" * 40 + " architecture=cifar_resnet depth=62 width=1 dataset=cifar10 fraction=0.25 seed=0 populations=zoo\n"
        "zoo-b hf-hub:carol/zoo-b architecture=cifar_resnet depth=62 width=1 dataset=cifar10 fraction=0.25 seed=1 populations=zoo,extra  # trailing\n"
    )
    reg = Registry(tmp_path / "r.sqlite", curated_dirs=[curated])
    assert sorted(reg.names()) == ["zoo-a", "zoo-b"]
    assert reg.get("zoo-b").populations == ["zoo", "extra"] and reg.get("zoo-a").source.endswith("zoo.txt:3")
    assert [e.seed for e in reg.query(depth=62, width=1, dataset="cifar10", data_fraction=0.25)] == [0, 1]
    assert [e.name for e in reg.query(population="extra")] == ["zoo-b"]
    # the printed line form parses back to the same entry
    line = reg.get("zoo-a").to_line()
    again = parse_line(line, "x")
    assert (again.name, again.reference, again.depth, again.data_fraction, again.populations) == (
        "zoo-a", "hf-hub:carol/zoo-a@" + "1" * 40, 62, 0.25, ["zoo"])

    with pytest.raises(RegistryConflictError, match="curated"):
        reg.remove("zoo-a")
    with pytest.raises(RegistryConflictError, match="replace it explicitly"):
        reg.add(Entry("zoo-a", "hf-hub:someone/else"))
    reg.add(Entry("zoo-a", "hf-hub:someone/else"), replace=True)  # a user entry overrides the curated one
    assert reg.get("zoo-a").reference == "hf-hub:someone/else" and reg.get("zoo-a").source == "user"
    reg.add(Entry("mine", "timm:resnet18.a1_in1k", depth=18, populations=["p"]))
    assert Registry(tmp_path / "r.sqlite", curated_dirs=[]).get("mine").populations == ["p"]  # persisted
    reg.remove("mine")
    assert "mine" not in reg.names()


@pytest.mark.parametrize("line, msg", [
    ("x hf-hub:a/b depth=six", "depth='six' is not a int"),
    ("x hf-hub:a/b colour=red", "unknown field 'colour=red'"),
    ("x some-registry-name", "must be hf-hub:"),
    ("bad/name hf-hub:a/b", "registry name 'bad/name'"),
])
def test_bad_curated_lines_are_errors(line, msg):
    with pytest.raises(RegistryError, match=msg):
        parse_line(line, "f.txt:1")


def test_repository_registry_folder_is_loaded_and_valid(tmp_path):
    import timm
    from timm.models import get_pretrained_cfg

    reg = Registry(tmp_path / "registry.sqlite", curated_dirs=None)
    assert REPO_REGISTRY in reg.curated_dirs
    curated = reg.curated()
    assert len(curated) >= 5
    for e in curated.values():
        assert e.reference.startswith("timm:")
        name = e.reference.removeprefix("timm:")
        assert timm.is_model(name.split(".")[0]) and get_pretrained_cfg(name).hf_hub_id  # safetensors on the Hub
    assert sorted(e.depth for e in reg.query(population="timm-resnet-depth")) == [18, 34, 50, 101, 152]
    assert {(e.depth, e.width) for e in reg.query(population="timm-resnet50-width")} == {(50, 1), (50, 2)}


def test_cli_push_pull_registry_round_trip(hub, trained_run, tmp_path, monkeypatch):
    from hubcompare.cli import app

    monkeypatch.setenv("HUBCOMPARE_HOME", str(tmp_path))
    r = runner.invoke(app, ["push", str(trained_run), "--repo", "dave/cli-r8"])
    assert r.exit_code == 0, r.output
    sha = r.output.split("committed")[1].split()[0]
    assert len(sha) == 40 and "dave--cli-r8" in r.output
    r = runner.invoke(app, ["push", str(trained_run), "--repo", "dave/cli-r8"])
    assert "already up to date" in r.output and sha in r.output

    r = runner.invoke(app, ["registry", "show", "dave--cli-r8"])
    assert r.exit_code == 0 and f"hf-hub:dave/cli-r8@{sha}" in r.output.replace("\n", "")
    r = runner.invoke(app, ["pull", "dave--cli-r8"])
    assert r.exit_code == 0, r.output
    assert sha in r.output.replace("\n", "") and "cifar_resnet" in r.output

    # nothing is written to the registry when the pull it would record fails
    r = runner.invoke(app, ["registry", "add", "ghost", "hf-hub:dave/does-not-exist"])
    assert r.exit_code == 2 and "HubRepoNotFoundError" in r.output and "dave/does-not-exist" in r.output
    r = runner.invoke(app, ["registry", "show", "ghost"])
    assert r.exit_code == 2 and "RegistryEntryNotFoundError" in r.output

    r = runner.invoke(app, ["registry", "add", "local-r8", str(trained_run), "--population", "mine"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["registry", "list", "--population", "mine", "--depth", "8", "--lines"])
    assert r.exit_code == 0 and r.output.startswith("local-r8 local-dir:") and "populations=mine" in r.output
    r = runner.invoke(app, ["registry", "sync", "--author", "dave"])
    assert r.exit_code == 0 and f"dave--cli-r8 -> hf-hub:dave/cli-r8@{sha}" in r.output
    r = runner.invoke(app, ["registry", "remove", "local-r8"])
    assert r.exit_code == 0 and "removed local-r8" in r.output

    r = runner.invoke(app, ["pull", "hf:dave/cli-r8"])
    assert r.exit_code == 2 and "InvalidReferenceError" in r.output and "accepted forms" in r.output


def test_cli_push_population(hub, trained_run, tmp_path, monkeypatch):
    import shutil

    from hubcompare.cli import app

    monkeypatch.setenv("HUBCOMPARE_HOME", str(tmp_path))
    r = runner.invoke(app, ["push-population", str(trained_run), "--population", "solo", "--owner", "erin"])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())  # rich wraps long lines
    assert "1 members (1 pushed, 0 unchanged)" in flat and "tag population-solo" in flat
    r = runner.invoke(app, ["registry", "list", "--population", "solo"])
    assert "1 entries" in r.output
    bad = shutil.copytree(trained_run, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"not the weights")
    r = runner.invoke(app, ["push-population", str(bad), "--population", "broken", "--owner", "erin"])
    flat = " ".join(r.output.split())
    assert r.exit_code == 2 and "1 of 1 pushes failed" in flat and "does not match the sha256" in flat
