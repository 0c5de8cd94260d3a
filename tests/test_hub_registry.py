"""The registry (SQLite + curated text files) and the hub CLI commands as a user drives them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubcompare.errors import RegistryConflictError, RegistryCorruptError, RegistryError
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
    ("onlyname", "'onlyname' names no model: write NAME REFERENCE"),
    ("x hf-hub:not-a-repo", "f.txt:1: .*not-a-repo"),
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
    assert "1 entry" in r.output
    bad = shutil.copytree(trained_run, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"not the weights")
    r = runner.invoke(app, ["push-population", str(bad), "--population", "broken", "--owner", "erin"])
    flat = " ".join(r.output.split())
    assert r.exit_code == 2 and "1 of 1 pushes failed" in flat and "does not match the sha256" in flat


def test_an_unusable_registry_database_is_a_typed_error_naming_the_fix(tmp_path):
    import sqlite3

    garbage = tmp_path / "garbage" / "registry.sqlite"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a database" * 100)
    reg = Registry(garbage, curated_dirs=[])
    for call in (reg.names, lambda: reg.add(Entry("x", "hf-hub:a/b")), lambda: reg.remove("x")):
        with pytest.raises(RegistryCorruptError, match=r"not a readable registry .*mv .*registry.sqlite.bad.*HUBCOMPARE_HOME"):
            call()
    assert garbage.read_bytes() == b"not a database" * 100  # the user's file is never moved or rewritten

    other = tmp_path / "other.sqlite"  # an SQLite file of something else
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE entries (name TEXT)")
    with pytest.raises(RegistryCorruptError, match="no such column"):
        Registry(other, curated_dirs=[]).names()

    home_is_file = tmp_path / "a-file"
    home_is_file.write_text("x")
    with pytest.raises(RegistryError, match="cannot open the registry database.*writable folder"):
        Registry(home_is_file / "registry.sqlite", curated_dirs=[]).names()


def test_unreadable_curated_files_are_typed_errors(tmp_path):
    curated = tmp_path / "curated"
    curated.mkdir()
    (curated / "zoo.txt").write_bytes(b"zoo-a hf-hub:a/b depth=\xff\n")
    with pytest.raises(RegistryCorruptError, match="zoo.txt is not UTF-8 text.*save it as UTF-8"):
        Registry(tmp_path / "r.sqlite", curated_dirs=[curated]).names()
    (curated / "zoo.txt").unlink()
    (curated / "folder.txt").mkdir()
    with pytest.raises(RegistryCorruptError, match="cannot read the curated registry file"):
        Registry(tmp_path / "r.sqlite", curated_dirs=[curated]).names()


def test_sync_checks_its_arguments_and_the_database_before_asking_the_hub(tmp_path):
    from hubcompare.errors import InvalidNameError, InvalidReferenceError
    from hubcompare.hub.registry import sync

    class NoHub:
        def list_models(self, **kwargs):
            raise AssertionError("the Hub must not be asked")

    reg = Registry(tmp_path / "r.sqlite", curated_dirs=[])
    with pytest.raises(InvalidNameError, match="bad owner!"):
        sync(reg, "bad owner!", api=NoHub())
    with pytest.raises(InvalidReferenceError, match="bad pop!"):
        sync(reg, "me", "bad pop!", api=NoHub())
    (tmp_path / "r.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(RegistryCorruptError):
        sync(reg, "me", api=NoHub())


def test_push_succeeds_and_warns_when_the_registry_cannot_record_it(hub, trained_run, tmp_path, monkeypatch):
    """The commit has landed: a broken registry is a warning with the fix, not a failure that makes the user push again."""
    from hubcompare.cli import app

    (tmp_path / "registry.sqlite").write_bytes(b"garbage" * 100)
    monkeypatch.setenv("HUBCOMPARE_HOME", str(tmp_path))
    r = runner.invoke(app, ["push", str(trained_run), "--repo", "frank/corrupt-registry"])
    flat = " ".join(r.output.split())
    assert r.exit_code == 0 and r.exception is None, r.output
    sha = flat.split("committed")[1].split()[0]
    assert "the push succeeded, but recording it in the registry failed" in flat and "mv " in flat
    assert f"hubcompare registry add frank--corrupt-registry hf-hub:frank/corrupt-registry@{sha}" in flat
    assert "no need to push again" in flat and "Traceback" not in r.output

    r = runner.invoke(app, ["push-population", str(trained_run), "--population", "corrupt", "--owner", "frank"])
    flat = " ".join(r.output.split())
    assert r.exit_code == 0 and r.exception is None, r.output
    assert "1 members" in flat and "registry sync --author frank --population corrupt" in flat

    r = runner.invoke(app, ["push", str(trained_run), "--repo", "frank/x", "--name", "bad/name"])
    assert r.exit_code == 2 and "registry name 'bad/name'" in r.output and "committed" not in r.output


# --- trust boundaries (#23 items 13, 19): registry names are ASCII; a listing is checked; a dead Hub fails fast ----------
LOOKALIKES = [  # each differs from an ASCII name by one character (the first is always ASCII: \w let them all in)
    "digits-r1\u0430",  # Cyrillic а
    "alice--digits-r14-s\u03bf",  # Greek omicron
    "d\uff49gits",  # fullwidth i
    "digits\u200b",  # zero-width space
    "digits-caf\u00e9",
    "d\u0131gits",  # dotless i
    "r\u0661\u0664",  # Arabic-Indic digits
    "r\u00b2",  # superscript two
    "zoo-\u2163",  # Roman numeral four
    "\ufb01le".replace("\ufb01", "x\ufb01"),  # fi ligature
    "digits\u00a0r14",  # no-break space
    "e\u0301",  # combining acute
    "a\u05d0",  # Hebrew alef
    "a\u4e00",  # CJK
    "x" * 201,  # over the length limit
]


def test_registry_names_are_ascii_by_every_way_in(tmp_path):
    """registry add (CLI and POST /api/registry: register_reference), push --name, a curated line, a sync: one rule."""
    from hubcompare.errors import InvalidReferenceError
    from hubcompare.hub.names import check_name, check_registry_name
    from hubcompare.hub.references import register_reference

    class NoHub:
        def __getattr__(self, name):
            raise AssertionError("nothing may be pulled for a refused name")

    reg = Registry(tmp_path / "r.sqlite", curated_dirs=[])
    reg.add(Entry("digits-r1a", "hf-hub:alice/digits-r1a"))
    assert check_registry_name("alice--digits-r14-s0") == "alice--digits-r14-s0" and check_registry_name("x" * 200)
    for name in LOOKALIKES:
        with pytest.raises(RegistryError, match="registry name .*ASCII"):
            check_registry_name(name)
        with pytest.raises(RegistryError, match="registry name"):
            reg.add(Entry(name, "hf-hub:alice/digits-r1a"))
        with pytest.raises(RegistryError, match="registry name"):
            register_reference(reg, name, "hf-hub:alice/digits-r1a", api=NoHub())
        with pytest.raises(RegistryError, match="registry name" if len(name.split()) == 1 else "unknown field"):
            parse_line(f"{name} hf-hub:alice/digits-r1a", "f.txt:1")  # (a no-break space splits the line)
        if name.isascii():  # the over-long one: population names have no length rule
            continue
        with pytest.raises(InvalidReferenceError, match="population .*not ASCII"):
            check_name(name, "population")
    assert sorted(reg.names()) == ["digits-r1a"]  # no look-alike stored
    with pytest.raises(RegistryError, match=r"'а' is U\+0430 CYRILLIC SMALL LETTER A, not ASCII"):
        check_registry_name("digits-r1\u0430")
    print(f"{len(LOOKALIKES)} look-alike names refused by 5 entry points")


def test_sync_checks_what_the_hub_lists_and_writes_nothing_unless_all_pass(hub, tmp_path):
    """A Hub whose list_models answers ids that are paths or look-alikes: a typed error, and no entry written, not even
    the good ones before it (the fake client answers; the test server only answers the endpoint probe)."""
    from types import SimpleNamespace as NS

    from hubcompare.errors import InvalidNameError
    from hubcompare.hub.registry import sync

    class Listing:
        endpoint = hub.endpoint

        def __init__(self, models):
            self.models = models

        def list_models(self, **kwargs):
            return self.models

        def model_info(self, repo_id):
            raise AssertionError(f"model_info({repo_id!r}) asked of a hostile listing")

    good = NS(id="alice/good", sha="a" * 40, card_data=None, tags=["hubcompare"])
    reg = Registry(tmp_path / "r.sqlite", curated_dirs=[])
    hostile = ["../../api/whoami-v2", "alice/../x", "\u0430lice/x", "alice/digits-r1\u0430", "a/b/c", "alice/x--y", None]
    for bad in hostile:
        with pytest.raises(InvalidNameError, match="listed a model"):
            sync(reg, "alice", api=Listing([good, NS(id=bad, sha=None, card_data=None, tags=[])]))
    with pytest.raises(InvalidNameError, match="not a commit"):
        sync(reg, "alice", api=Listing([good, NS(id="alice/x", sha="../../x", card_data=None, tags=[])]))
    assert reg.names() == set()
    assert [e.name for e in sync(reg, "alice", api=Listing([good]))] == ["alice--good"]


def test_sync_against_a_dead_endpoint_fails_fast_naming_it(tmp_path, monkeypatch):
    """`registry sync` against a closed port on 127.0.0.1 retried for over 90 s (huggingface_hub's retries inside
    ours): now it looks at the endpoint before listing, and each retry is one look, so the total is the backoff's
    (0.5 + 1 + 2 + 4 s by default; 10 ms steps here), and the typed error names the endpoint and what to do."""
    import time

    from helpers import free_port
    from huggingface_hub import HfApi

    from hubcompare.errors import HubUnavailableError
    from hubcompare.hub import endpoint
    from hubcompare.hub.registry import sync

    defaults = dict(zip(("attempts", "base_wait", "max_wait", "on_retry", "endpoint", "budget", "probe_first"),
                        endpoint.with_retries.__defaults__))
    assert (defaults["attempts"], defaults["base_wait"]) == (5, 0.5)  # what the docstring's arithmetic assumes
    monkeypatch.setattr(endpoint.with_retries, "__defaults__", tuple((defaults | {"base_wait": 0.01}).values()))
    dead = f"http://127.0.0.1:{free_port()}"
    reg, heard = Registry(tmp_path / "r.sqlite", curated_dirs=[]), []
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match=f"registry sync: list the models of alice: the Hub {dead} did not answer "
                                                  "after 5 attempts in 0 s: nothing answers there .*Connection refused.*"
                                                  "hub serve.*HF_ENDPOINT.*HF_HUB_OFFLINE"):
        sync(reg, "alice", api=HfApi(endpoint=dead), on_retry=lambda n, e: heard.append(n))
    assert time.monotonic() - start < 2 and reg.names() == set() and heard == [1, 2, 3, 4]
