"""Sharing stored results through a Hub dataset repo (the project's own Hub-protocol server): push, card, pull,
pinning, offline, and repos that must be refused before anything enters the store.

The trust-boundary tests (issue #23) count the hostile inputs they try: a push into a repo that is not a result (each
left exactly as it was), a result missing a file, pulls over each limit (layers, file size, total, number of files,
npz members and zip bombs), JSON documents of the wrong shape for every kind, and SVGs that would run script."""

from __future__ import annotations

import io
import json
import os
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, constants

from hubcompare.errors import (
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    InvalidResultReferenceError,
    NotInCacheError,
    ResultFileMissingError,
    ResultRepoConflictError,
    SharedResultError,
    SharedResultTooLargeError,
)
from hubcompare.results.keys import result_key
from hubcompare.results.limits import DEFAULT_LIMITS, PullLimits
from hubcompare.results.schemas import check_document, check_summary
from hubcompare.results.share import RECORD_FILE, parse_result_reference, pull_result, push_result
from hubcompare.results.svg import svg_problem
from hubcompare.results.store import ResultStore

COMMIT = "c" * 40
KEY_INPUTS = {"models": [{"ref": f"hf-hub:alice/r20-1x@{COMMIT}", "commit_sha": COMMIT, "weights_sha256": "a" * 64},
                         {"ref": f"hf-hub:alice/r20-2x@{COMMIT}", "commit_sha": COMMIT, "weights_sha256": "b" * 64}],
              "dataset": {"name": "digits", "split": "test", "fingerprint": "fp0123456789abcd"},
              "settings": {"batch_size": 64, "seed": 0, "passes": 1}}


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def cka_doc(n_a: int = 2, n_b: int = 2, **changes) -> dict:
    """A cka.json as CKAResult.to_json writes it (n_a x n_b layers)."""
    doc = {"kind": "linear", "ref_a": "hf-hub:alice/r20-1x", "ref_b": "hf-hub:alice/r20-2x", "label_a": "1x", "label_b": "2x",
           "layers_a": [f"layer{i}" for i in range(n_a)], "layers_b": [f"layer{j}" for j in range(n_b)],
           "stage_boundaries_a": [0], "stage_boundaries_b": [0], "cka": [[0.5] * n_b for _ in range(n_a)],
           "se": [[None] * n_b for _ in range(n_a)], "summary": {"mean_cka": 0.5}, "warnings": [], "provenance": {}}
    doc.update(changes)
    return doc


def store_result(store: ResultStore, key_inputs: dict = KEY_INPUTS, kind: str = "cross-cka", files: dict | None = None,
                 summary: dict | None = None):
    files = files if files is not None else {
        "cka.json": json.dumps(cka_doc()).encode(),
        "cka.npz": npz_bytes(cka=np.array([[1.0, 0.5], [0.5, 1.0]]), se=np.zeros((2, 2))),
        "cka.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 32}
    with store.staging() as staging:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        return store.put(result_key(kind, key_inputs), kind, title="cross-cka: ResNet-20 (1x) vs ResNet-20 (2x)",
                         request={"kind": kind, "refs": ["a", "b"]}, key_inputs=key_inputs,
                         summary=summary if summary is not None else {"mean_cka": 0.75},
                         models=[m["ref"] for m in key_inputs["models"]], dataset="digits", staging=staging, seconds=2.5)


def upload(repo_id: str, files: dict[str, bytes]) -> str:
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=d) for n, d in files.items()]
    return api.create_commit(repo_id, ops, repo_type="dataset", commit_message="test").oid


def record_of(stored, **changes) -> bytes:
    record = stored.to_json()
    record.pop("path")
    record.update(changes)
    return json.dumps(record).encode()


def test_push_then_pull_into_another_store_gives_the_same_result(hub, tmp_path):
    stored = store_result(ResultStore(tmp_path / "mine"))
    url, sha = push_result(stored, "alice/r20-widths")
    assert url.endswith("/datasets/alice/r20-widths") and len(sha) == 40
    assert push_result(stored, "alice/r20-widths")[1] == sha  # unchanged: no new commit

    theirs = ResultStore(tmp_path / "theirs")
    pulled = pull_result("hf-hub-result:alice/r20-widths", theirs)
    assert pulled.source == f"hf-hub-result:alice/r20-widths@{sha}"
    assert pulled.key == stored.key and pulled.files == stored.files and pulled.created == stored.created
    assert {k: v for k, v in pulled.to_json().items() if k not in ("source", "path")} == \
        {k: v for k, v in stored.to_json().items() if k not in ("source", "path")}
    for name in stored.files:
        assert pulled.file(name).read_bytes() == stored.file(name).read_bytes()
    assert theirs.resolve(stored.key[:8]).source == pulled.source  # in the store, found by prefix


def test_the_card_names_models_commits_dataset_fingerprint_settings_and_the_figure(hub, tmp_path):
    stored = store_result(ResultStore(tmp_path))
    push_result(stored, "alice/card-check")
    card = DatasetCard.load("alice/card-check", repo_type="dataset")
    assert {"hubcompare", "hubcompare-result", "cross-cka"} <= set(card.data.tags)
    text = card.text
    for needle in (f"hf-hub:alice/r20-1x@{COMMIT}", f"hf-hub:alice/r20-2x@{COMMIT}", "a" * 64, "fp0123456789abcd",
                   "| batch_size | `64` |", "![cka.png](cka.png)", "hubcompare results pull hf-hub-result:alice/card-check",
                   stored.key):
        assert needle in text, needle


def test_a_pinned_pull_gets_that_commit_after_the_repo_moved_on(hub, tmp_path):
    mine = ResultStore(tmp_path / "mine")
    first = store_result(mine)
    _, first_sha = push_result(first, "alice/moving")
    second = store_result(mine, {**KEY_INPUTS, "settings": {**KEY_INPUTS["settings"], "seed": 1}},
                          files={"cka.json": json.dumps(cka_doc(3, 3)).encode(),
                                 "cka.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>'})
    _, second_sha = push_result(second, "alice/moving")
    assert second_sha != first_sha
    files = set(HfApi().list_repo_files("alice/moving", repo_type="dataset", revision=second_sha))
    assert files - {".gitattributes"} == {"README.md", RECORD_FILE, "cka.json", "cka.svg"}  # the first one's files are gone
    theirs = ResultStore(tmp_path / "theirs")
    assert pull_result(f"hf-hub-result:alice/moving@{first_sha}", theirs).key == first.key
    latest = pull_result("hf-hub-result:alice/moving", theirs)
    assert latest.key == second.key and latest.source.endswith(second_sha)


def test_offline_pull_is_served_from_the_cache(hub, tmp_path, monkeypatch):
    stored = store_result(ResultStore(tmp_path / "mine"))
    push_result(stored, "alice/offline-result")
    pull_result("hf-hub-result:alice/offline-result", ResultStore(tmp_path / "online"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    pulled = pull_result("hf-hub-result:alice/offline-result", ResultStore(tmp_path / "offline"))
    assert pulled.key == stored.key and pulled.file("cka.npz").read_bytes() == stored.file("cka.npz").read_bytes()
    with pytest.raises(NotInCacheError, match="alice/never-pulled-result"):
        pull_result("hf-hub-result:alice/never-pulled-result", ResultStore(tmp_path / "offline"))


@pytest.mark.parametrize("reference", ["hf-hub:alice/x", "alice/x", "hf-hub-result:", "hf-hub-result:alice",
                                       "hf-hub-result:../etc/passwd", "hf-hub-result:alice/x@a..b", "hf-hub-result:a/b@c@d"])
def test_malformed_references_are_refused(reference):
    with pytest.raises(InvalidResultReferenceError, match="hf-hub-result:OWNER/NAME"):
        parse_result_reference(reference)


def test_a_missing_repo_or_revision_is_a_typed_error(hub, tmp_path):
    with pytest.raises(HubRepoNotFoundError, match="no dataset repo alice/does-not-exist"):
        pull_result("hf-hub-result:alice/does-not-exist", ResultStore(tmp_path))
    push_result(store_result(ResultStore(tmp_path / "mine")), "alice/has-main")
    with pytest.raises(HubRevisionNotFoundError, match="no revision 'no-such-branch'"):
        pull_result("hf-hub-result:alice/has-main@no-such-branch", ResultStore(tmp_path))


def _hostile_repos(stored) -> dict[str, tuple[dict[str, bytes], str]]:
    good = {name: stored.file(name).read_bytes() for name in stored.files}
    record = record_of(stored)
    edited = {**stored.key_inputs, "settings": {**stored.key_inputs["settings"], "seed": 7}}
    return {
        "edited-inputs": ({**good, RECORD_FILE: record_of(stored, key_inputs=edited)}, "not the key of its inputs"),
        "pickle-beside": ({**good, RECORD_FILE: record, "model.pkl": b"\x80\x04."}, "model.pkl is not a file type"),
        "object-npz": ({**good, RECORD_FILE: record, "cka.npz": npz_bytes(x=np.array([{"a": 1}], dtype=object))},
                       "cka.npz:x.npy has dtype object"),
        "not-png": ({**good, RECORD_FILE: record, "cka.png": b"GIF89a"}, "cka.png is refused.*not a PNG"),
        "script-svg": ({**good, RECORD_FILE: record_of(stored, files=[*stored.files, "x.svg"]),
                        "x.svg": b"<svg><script>alert(1)</script></svg>"}, "x.svg is refused"),
        "no-record": (good, f"no {RECORD_FILE}"),
        "record-not-json": ({**good, RECORD_FILE: b"{nope"}, "not valid JSON"),
        "record-nan": ({**good, RECORD_FILE: record.replace(b'"seconds": 2.5', b'"seconds": NaN')}, "not valid JSON"),
        "record-traversal": ({**good, RECORD_FILE: record_of(stored, files=["../../index.sqlite"])}, "not a result file name"),
        "unlisted-file": ({**good, RECORD_FILE: record_of(stored, files=stored.files[:1])}, "not listed"),
        "missing-file": ({**good, RECORD_FILE: record_of(stored, files=[*stored.files, "extra.csv"])}, "missing extra.csv"),
        "unknown-field": ({**good, RECORD_FILE: record_of(stored, code="import os")}, "unknown fields code"),
        "wrong-type": ({**good, RECORD_FILE: record_of(stored, seconds="fast")}, "seconds"),
        "record-nested": ({**good, RECORD_FILE: b"[" * 100_000 + b"]" * 100_000}, "nests too deeply"),
        "record-nested-100": ({**good, RECORD_FILE: record_of(stored, summary={"a": json.loads("[" * 100 + "]" * 100)})},
                              "nesting is 102 levels, over the pull limit max_json_depth = 64"),
        "record-infinite-seconds": ({**good, RECORD_FILE: record.replace(b'"seconds": 2.5', b'"seconds": 1e999')},
                                    "seconds a finite number"),
        "record-unknown-kind": ({**good, RECORD_FILE: record_of(stored, kind="mystery",
                                                                key=result_key("mystery", stored.key_inputs))},
                                "kind 'mystery' is not one this hubcompare knows"),
    }


def test_repos_that_are_not_valid_results_are_refused_and_nothing_is_stored(hub, tmp_path):
    stored = store_result(ResultStore(tmp_path / "mine"))
    theirs = ResultStore(tmp_path / "theirs")
    for name, (files, expect) in _hostile_repos(stored).items():
        upload(f"mallory/{name}", files)
        with pytest.raises(SharedResultError, match=expect):
            pull_result(f"hf-hub-result:mallory/{name}", theirs)
        assert theirs.list() == [], name
    assert not any(p.name != "index.sqlite" and not p.name.startswith(("index.sqlite", ".staging"))
                   for p in theirs.root.iterdir())


def test_push_refuses_file_types_a_pull_would_refuse(hub, tmp_path):
    stored = store_result(ResultStore(tmp_path), files={"cka.json": b"{}", "weights.pt": b"\x80\x04."})
    with pytest.raises(SharedResultError, match="weights.pt is not a file type"):
        push_result(stored, "alice/never-created")
    assert not HfApi().repo_exists("alice/never-created", repo_type="dataset")


def test_cli_push_result_then_pull_and_show_elsewhere(hub, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hubcompare.cli.main import app

    runner = CliRunner()
    stored = store_result(ResultStore(tmp_path / "mine" / "results"))
    r = runner.invoke(app, ["push-result", stored.key[:8], "--repo", "alice/cli-shared", "--json"],
                      env={"HUBCOMPARE_HOME": str(tmp_path / "mine")})
    assert r.exit_code == 0, r.output
    pushed = json.loads(r.stdout)
    assert pushed["key"] == stored.key and pushed["reference"] == f"hf-hub-result:alice/cli-shared@{pushed['commit_sha']}"
    theirs = {"HUBCOMPARE_HOME": str(tmp_path / "theirs")}
    r = runner.invoke(app, ["results", "pull", "hf-hub-result:alice/cli-shared", "--json"], env=theirs)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["source"] == pushed["reference"]
    r = runner.invoke(app, ["results", "show", pushed["reference"], "--json"], env=theirs)
    assert r.exit_code == 0 and json.loads(r.stdout)["key"] == stored.key
    r = runner.invoke(app, ["results", "list", "--json"], env=theirs)
    assert [d["key"] for d in json.loads(r.stdout)] == [stored.key]


# --- trust boundaries (issue #23) -------------------------------------------------------------------------------------
def head(repo_id: str) -> tuple[str, dict[str, str]]:
    """The repo's head commit and {file: blob id}."""
    info = HfApi().repo_info(repo_id, repo_type="dataset", files_metadata=True)
    return info.sha, {s.rfilename: s.blob_id for s in info.siblings or []}


TAGGED_CARD = b"---\ntags:\n- hubcompare-result\n---\n# a result\n"
FOREIGN_REPOS = {  # existing repos push-result must leave alone: name -> files
    "someones-dataset": {"README.md": b"---\nlicense: mit\n---\n# My dataset\n", "train.csv": b"a,b\n1,2\n"},
    "readme-only": {"README.md": b"# created on the website\n"},
    "data-only": {"data.json": b"{}", "images.npz": b"PK"},
    "card-tagged-other": {"README.md": b"---\ntags:\n- hubcompare\n---\n# a model\n", RECORD_FILE: b"{}"},
    "tagged-no-record": {"README.md": TAGGED_CARD, "cka.json": b"{}"},
    "record-not-json": {"README.md": TAGGED_CARD, RECORD_FILE: b"{nope"},
    "record-no-files": {"README.md": TAGGED_CARD, RECORD_FILE: b'{"key": "x"}'},
    "record-traversal": {"README.md": TAGGED_CARD, RECORD_FILE: b'{"files": ["../../etc/passwd"]}'},
    "record-files-not-list": {"README.md": TAGGED_CARD, RECORD_FILE: b'{"files": 7}'},
    "tags-a-string": {"README.md": b"---\ntags: not-a-hubcompare-result-list\n---\n", RECORD_FILE: b'{"files": []}'},
    "card-too-big": {"README.md": TAGGED_CARD + b"x" * (1 << 20), RECORD_FILE: b'{"files": []}'},
    "record-files-a-string": {"README.md": TAGGED_CARD, RECORD_FILE: b'{"files": "cka.json"}'},
    "record-nested": {"README.md": TAGGED_CARD, RECORD_FILE: b"[" * 100_000 + b"]" * 100_000},
    "result-plus-foreign": {"README.md": TAGGED_CARD, RECORD_FILE: b'{"files": ["cka.json"]}', "cka.json": b"{}",
                            "notes.csv": b"mine\n"},
}


def test_push_result_refuses_repos_that_are_not_results_and_writes_nothing(hub, tmp_path):
    """Item 1: 14 existing repos that are not a hubcompare result (or hold others' files): each push is a typed refusal
    naming the repo, and the repo keeps its head commit and every file."""
    stored = store_result(ResultStore(tmp_path))
    for name, files in FOREIGN_REPOS.items():
        repo = f"bob/{name}"
        upload(repo, files)
        before = head(repo)
        with pytest.raises(ResultRepoConflictError, match=repo) as info:
            push_result(stored, repo)
        assert "nothing was written" in str(info.value), name
        assert head(repo) == before, name  # no commit: nothing replaced, nothing deleted
    assert len(FOREIGN_REPOS) == 14


def test_a_repush_deletes_only_files_the_previous_result_push_wrote(hub, tmp_path):
    mine = ResultStore(tmp_path)
    first = store_result(mine)
    push_result(first, "alice/repush")
    second = store_result(mine, {**KEY_INPUTS, "settings": {**KEY_INPUTS["settings"], "seed": 3}},
                          files={"cka.json": json.dumps(cka_doc()).encode()})
    push_result(second, "alice/repush")
    assert set(head("alice/repush")[1]) - {".gitattributes"} == {"README.md", RECORD_FILE, "cka.json"}
    # someone adds a file of their own: the next push refuses rather than deleting it or leaving an unpullable repo
    upload("alice/repush", {"their-notes.md": b"# mine\n"})
    before = head("alice/repush")
    with pytest.raises(ResultRepoConflictError, match=r"alice/repush holds files no hubcompare result push wrote "
                                                      r"\(their-notes.md\)"):
        push_result(first, "alice/repush")
    assert head("alice/repush") == before


@pytest.mark.slow
def test_the_service_push_refuses_a_foreign_repo_with_409(hub, tmp_path):
    from fastapi.testclient import TestClient

    from hubcompare.service.app import create_app
    from hubcompare.service.config import ServiceConfig

    stored = store_result(ResultStore(tmp_path / "results"))
    upload("bob/service-target", FOREIGN_REPOS["someones-dataset"])
    before = head("bob/service-target")
    client = TestClient(create_app(ServiceConfig(registry_path=tmp_path / "registry.sqlite", results_dir=tmp_path / "results",
                                                 keep_jobs=False)), base_url="http://127.0.0.1:8765")
    r = client.post(f"/api/results/{stored.key}/push", json={"repo": "bob/service-target"})
    assert r.status_code == 409 and r.json()["type"] == "ResultRepoConflictError", r.text
    assert "bob/service-target" in r.json()["error"] and head("bob/service-target") == before


def test_a_result_missing_a_file_is_a_typed_error_and_creates_no_repo(hub, tmp_path):
    """Item 19: push-result of a result whose folder lost a file."""
    from typer.testing import CliRunner

    from hubcompare.cli.main import app

    store = ResultStore(tmp_path / "home" / "results")
    stored = store_result(store)
    stored.file("cka.npz").unlink()
    with pytest.raises(ResultFileMissingError, match=r"lists cka.npz, but .* cannot be read .*results rm"):
        push_result(stored, "alice/lost-a-file")
    r = CliRunner().invoke(app, ["push-result", stored.key[:8], "--repo", "alice/lost-a-file"],
                           env={"HUBCOMPARE_HOME": str(tmp_path / "home")})
    assert r.exit_code == 2 and "cannot be read" in r.output and "Traceback" not in r.output, r.output
    assert not HfApi().repo_exists("alice/lost-a-file", repo_type="dataset")


def test_cli_push_result_into_a_foreign_repo_is_refused_readably(hub, tmp_path):
    from typer.testing import CliRunner

    from hubcompare.cli.main import app

    stored = store_result(ResultStore(tmp_path / "results"))
    upload("bob/cli-target", FOREIGN_REPOS["readme-only"])
    r = CliRunner().invoke(app, ["push-result", stored.key[:8], "--repo", "bob/cli-target"],
                           env={"HUBCOMPARE_HOME": str(tmp_path)})
    assert r.exit_code == 2 and "bob/cli-target already exists and is not a hubcompare result" in r.output, r.output
    assert "Traceback" not in r.output


# --- pull limits (items 4, 5, 6) ---------------------------------------------------------------------------------------
def snapshots(repo_id: str) -> list[Path]:
    """What the Hugging Face cache holds of the repo: snapshot folders and blobs."""
    repo = Path(os.environ["HF_HUB_CACHE"]) / f"datasets--{repo_id.replace('/', '--')}"
    return [p for sub in ("snapshots", "blobs") if (repo / sub).is_dir() for p in (repo / sub).iterdir()]


def hostile_upload(stored, repo_id: str, files: dict[str, bytes]) -> None:
    """The result's own files with ``files`` added or replaced, and a record listing them all (its key still valid)."""
    good = {name: stored.file(name).read_bytes() for name in stored.files}
    merged = {**good, **files}
    upload(repo_id, {**merged, RECORD_FILE: record_of(stored, files=sorted(merged))})


def assert_refused(repo_id: str, store: ResultStore, error=SharedResultError, match: str = "", limits=DEFAULT_LIMITS):
    with pytest.raises(error, match=match) as info:
        pull_result(f"hf-hub-result:{repo_id}", store, **({} if limits is DEFAULT_LIMITS else {"limits": limits}))
    assert store.list() == [] and snapshots(repo_id) == [], repo_id  # nothing stored, the download removed
    return info.value


@pytest.mark.slow
def test_the_issues_1500_layer_cka_json_is_refused_by_the_layer_limit(hub, tmp_path):
    """Item 4 with the default limits: cka.json with 1,500 x 1,500 layers (~13 MB)."""
    stored = store_result(ResultStore(tmp_path / "mine"))
    big = json.dumps(cka_doc(1500, 1500, cka=[[0] * 1500] * 1500, se=[[0] * 1500] * 1500)).encode()
    hostile_upload(stored, "mallory/layers-1500", {"cka.json": big})
    e = assert_refused("mallory/layers-1500", ResultStore(tmp_path / "theirs"), SharedResultTooLargeError,
                       r"cka.json: layers_a x layers_b \(1500 x 1500\) is 1,500 layers, over the pull limit max_layers = "
                       "640 layers")
    assert (e.limit, e.size, e.maximum) == ("max_layers", 1500, 640)


def test_a_cka_json_over_the_layer_limit_is_refused_and_the_store_keeps_nothing(hub, tmp_path):
    """Item 4, scaled down (the issue's 1,500 layers with the default limits is the slow test above)."""
    stored = store_result(ResultStore(tmp_path / "mine"))
    hostile_upload(stored, "mallory/layers-9", {"cka.json": json.dumps(cka_doc(9, 2)).encode()})
    e = assert_refused("mallory/layers-9", ResultStore(tmp_path / "theirs"), SharedResultTooLargeError,
                       r"is 9 layers, over the pull limit max_layers = 8", PullLimits(max_layers=8))
    assert (e.limit, e.size, e.maximum) == ("max_layers", 9, 8)
    pull_result("hf-hub-result:mallory/layers-9", ResultStore(tmp_path / "theirs"))  # within the defaults: stored


def test_pull_limits_on_files_sizes_and_totals_are_checked_before_downloading(hub, tmp_path, monkeypatch):
    """Items 4 and 6: each limit refuses from the repo's listing, before one byte of the files is downloaded."""
    stored = store_result(ResultStore(tmp_path / "mine"))
    hostile_upload(stored, "mallory/big-csv", {"rows.csv": b"0\n" * 3000})
    downloads = []
    monkeypatch.setattr("hubcompare.results.share._download", lambda *a: downloads.append(a))
    theirs = ResultStore(tmp_path / "theirs")
    cases = [(PullLimits(max_file_bytes=5000), "max_file_bytes", r"rows.csv is 5.9 KiB \(6,000 bytes\), over the pull "
                                                                 r"limit max_file_bytes = 4.9 KiB \(5,000 bytes\)"),
             (PullLimits(max_total_bytes=6000), "max_total_bytes", "the files together is .*over the pull limit "
                                                                    "max_total_bytes"),
             (PullLimits(max_files=4), "max_files", "the number of files is 5 files, over the pull limit max_files = 4")]
    for limits, limit, match in cases:
        e = assert_refused("mallory/big-csv", theirs, SharedResultTooLargeError, match, limits)
        assert e.limit == limit
    assert downloads == []


def test_sizes_are_checked_again_on_disk_and_a_refused_download_is_removed(hub, tmp_path, monkeypatch):
    """Item 6: a size the listing did not give (or a cached copy, offline) is checked as it lies on disk."""
    stored = store_result(ResultStore(tmp_path / "mine"))
    hostile_upload(stored, "mallory/no-sizes", {"rows.csv": b"0\n" * 3000})
    pull_result("hf-hub-result:mallory/no-sizes", ResultStore(tmp_path / "first"))  # within the default limits
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert_refused("mallory/no-sizes", ResultStore(tmp_path / "offline"), SharedResultTooLargeError,
                   r"rows.csv is 5.9 KiB .* max_file_bytes", PullLimits(max_file_bytes=5000))
    with pytest.raises(NotInCacheError):  # the refused snapshot is gone from the cache, refs and all
        pull_result("hf-hub-result:mallory/no-sizes", ResultStore(tmp_path / "offline"))


def npz_bomb(items: int, dtype: str = "<f8", name: str = "cka.npy") -> bytes:
    """A real zip bomb: one member whose .npy header declares ``items`` values, all zeros, deflated (~1000:1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open(name, "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": (items,)})
            left, zero = items * np.dtype(dtype).itemsize, bytes(1 << 24)
            while left > 0:
                f.write(zero[:min(left, len(zero))])
                left -= len(zero)
    return buf.getvalue()


def lying_npz() -> bytes:
    """A member whose header declares 2 float64s but holds 10 MB."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("cka.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (2,)})
            f.write(bytes(10 << 20))
    return buf.getvalue()


def many_members(n: int) -> bytes:
    return npz_bytes(**{f"a{i}": np.zeros(1) for i in range(n)})


def not_npy_member() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.pkl", b"\x80\x04.")
    return buf.getvalue()


HOSTILE_NPZ = {  # name -> (cka.npz bytes, expected message)
    "bomb-104mb": (lambda: npz_bomb(13_000_000), r"cka.npz:cka.npy \(declared uncompressed size\) is 99.2 MiB .*"
                                                 "max_file_bytes = 64.0 MiB"),
    "object-dtype": (lambda: npz_bytes(cka=np.array([{"a": 1}], dtype=object)), "dtype object"),
    "bytes-dtype": (lambda: npz_bytes(cka=np.array([b"x"])), r"dtype \|S1"),
    "record-dtype": (lambda: npz_bytes(cka=np.zeros(2, dtype=[("a", "<f8"), ("b", "<i4")])), "a result's arrays are numbers"),
    "datetime-dtype": (lambda: npz_bytes(cka=np.array(["2020-01-01"], dtype="datetime64[D]")), "dtype datetime64"),
    "header-lies": (lying_npz, "declares 16 bytes of data but holds"),
    "too-many-arrays": (lambda: many_members(65), "arrays is 65 arrays, over the pull limit max_npz_members = 64"),
    "not-an-array": (not_npy_member, r"cka.npz:payload.pkl is not an array"),
    "cka-too-many-layers": (lambda: npz_bytes(cka=np.zeros((700, 1))), r"cka.npz:cka \(shape \(700, 1\)\) is 700 layers"),
    "not-a-zip": (lambda: b"PK\x03\x04garbage", "cka.npz is refused"),
}


def test_npz_members_are_checked_from_their_headers_before_any_array_is_read(hub, tmp_path):
    """Item 5: 10 hostile .npz files, among them a 450 KB zip that would unpack to 104 MB, refused on what it declares
    (memory stays small: nothing is decompressed whole)."""
    stored = store_result(ResultStore(tmp_path / "mine"))
    theirs = ResultStore(tmp_path / "theirs")
    for name, (make, match) in HOSTILE_NPZ.items():
        hostile_upload(stored, f"mallory/npz-{name}", {"cka.npz": make()})
        if name != "bomb-104mb":
            assert_refused(f"mallory/npz-{name}", theirs, SharedResultError, match)
            continue
        tracemalloc.start()
        try:
            assert_refused(f"mallory/npz-{name}", theirs, SharedResultTooLargeError, match)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 24 << 20, peak  # unpacked, the bomb alone would take 104 MB
    assert len(HOSTILE_NPZ) == 10


@pytest.mark.slow
def test_the_issues_3mb_zip_bomb_of_3gb_is_refused_without_unpacking(hub, tmp_path):
    """Item 5 as the issue has it: a ~14 MB .npz declaring 3.2 GB of float64 (building it takes ~10 s)."""
    stored = store_result(ResultStore(tmp_path / "mine"))
    hostile_upload(stored, "mallory/npz-bomb-3gb", {"cka.npz": npz_bomb(400_000_000)})
    tracemalloc.start()
    try:
        assert_refused("mallory/npz-bomb-3gb", ResultStore(tmp_path / "theirs"), SharedResultTooLargeError,
                       r"is 3.0 GiB .*max_file_bytes")
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()


def test_the_limits_fit_what_hubcompare_itself_writes():
    """The defaults are derived from the largest results hubcompare computes (limits.py says how)."""
    from math import comb

    from hubcompare.comparisons.requests import MAX_MODELS
    from hubcompare.models.guard import MAX_CIFAR_DEPTH

    assert DEFAULT_LIMITS.max_files >= 3 * comb(MAX_MODELS, 2) + 1  # cross-cka of the most models one request names
    assert DEFAULT_LIMITS.max_layers >= 3 * (MAX_CIFAR_DEPTH - 2) // 6 + 1  # every block output of ResNet-1202
    n = DEFAULT_LIMITS.max_layers  # blocks.json: four n x n matrices as JSON fit in a file
    assert 4 * n * n * len("0.12345678901234567, ") < DEFAULT_LIMITS.max_file_bytes
    assert DEFAULT_LIMITS.max_total_bytes >= 4 * DEFAULT_LIMITS.max_file_bytes


# --- the shape of every kind's JSON (item 12) --------------------------------------------------------------------------
BLOCK = {"start": 0, "stop": 1, "layers": ["layer0", "layer1"], "mean_cka": 0.9, "outside_cka": 0.2, "contrast": 0.7,
         "mean_pc1": 0.6, "mean_cka_pc1_removed": None, "size": 2}
SEED_SIDE = {"label": "a", "spec": "m0+m1", "layers": ["stem", "out"], "stage_boundaries": [1], "models": ["m0", "m1"],
             "blocks": {"m0": [BLOCK], "m1": []}, "pc1_fraction": {"m0": [0.1, None], "m1": [0.2, 0.3]}}
VALID = {  # kind -> {file: a document of the shape that kind writes}
    "cross-cka": {"cka.json": cka_doc(), "cka-a-vs-b.json": cka_doc(3, 2)},
    "cka": {"cka.json": cka_doc(3, 3)},
    "blocks": {"blocks.json": {"ref": "r", "params": {}, "blocks": [BLOCK], "layers": ["layer0", "layer1"],
                               "pc1_fraction": [0.5, None], "pc1_summary": {}, "constant_layers": [],
                               "pc1_cosine": [[1.0, 0.1], [0.1, None]], "pc_examples": 64, "cka": cka_doc(), "cka_pc1_removed": cka_doc(),
                               "label": "r"}},
    "agreement": {"agreement.json": {"kind": "agreement", "side_a": "a", "side_b": "b", "summary": {"kappa": {}},
                                     "warnings": [], "provenance": {}}},
    "class-diff": {"class_diff.json": {"kind": "class-diff", "side_a": "a", "side_b": "b", "summary": {}, "warnings": [],
                                       "provenance": {}, "classes": [
                                           {"class": "cat", "index": 3, "mean_a": 0.5, "mean_b": 0.4, "difference": 0.1,
                                            "ci_lo": None, "ci_hi": None, "t": 1.0, "df": 3.0, "p": 0.2, "q": 0.3,
                                            "significant": False}]}},
    "across-seeds": {"across_seeds.json": {"summary": {}, "layers": [{"side": "a", "label": "a", "index": 0,
                                                                       "layer": "stem"}],
                                           "sides": {"a": SEED_SIDE, "b": SEED_SIDE}, "pair_sets": {}, "warnings": [],
                                           "provenance": {}}},
    "probes": {"probes.json": {"kind": "linear-probes", "ref": "r", "model": {}, "model_test_accuracy": 0.9,
                               "layers": [{"name": "stem", "test_accuracy": 0.5}], "stage_boundaries": [1],
                               "detected_blocks": None, "settings": {}}},
    "delete-blocks": {"deletion.json": {"kind": "block-deletion", "ref": "r", "model": {}, "full_accuracy": 0.9,
                                        "stages": [{"name": "layer1", "blocks": []}], "detected_blocks": [], "settings": {}}},
}


def _mutated(doc: dict, path: str, value):
    """A deep copy of ``doc`` with ``path`` ("a.b.0") set to ``value`` (or deleted when value is DELETE)."""
    doc = json.loads(json.dumps(doc))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = doc
    for p in parents:
        target = target[p]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


DELETE = object()
HOSTILE_DOCUMENTS = [  # (kind, file, document, expected message)
    ("cross-cka", "cka.json", [cka_doc()], "the document is list, not an object"),
    ("cross-cka", "cka.json", "a string", "the document is str, not an object"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "layers_a", [1, 2]), r"layers_a\[0\] is int, not a string"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "layers_b", [["x"], {"y": 1}]), r"layers_b\[0\] is list, not a string"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "layers_a", "ab"), "layers_a is str, not a list"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "cka", [[0.5, 0.5]]), "cka is not a 2 x 2 matrix"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "cka", [[0.5], [0.5, 0.5]]), "cka is not a 2 x 2 matrix"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "cka", [0.5, 0.5]), "cka is not a 2 x 2 matrix"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "cka.0.1", "0.5"), r"cka\[0\]\[1\] is str, not a number"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "cka.1.0", True), r"cka\[1\]\[0\] is bool, not a number"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "se", DELETE), "lacks se"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "se.1", [None]), "se is not a 2 x 2 matrix"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "label_a", {"html": "<b>"}), "label_a is dict, not a string"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "ref_b", None), "ref_b is null, not a string"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "stage_boundaries_a", [99]), "stage_boundaries_a has a boundary outside"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "stage_boundaries_b", [0.5]), r"stage_boundaries_b\[0\] is float"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "warnings", "w"), "warnings is str, not a list"),
    ("cross-cka", "cka.json", _mutated(cka_doc(), "provenance", []), "provenance is list, not an object"),
    ("cross-cka", "cka-a-vs-b.json", _mutated(cka_doc(), "layers_b", None), "layers_b is null, not a list"),
    ("cross-cka", "extra.json", cka_doc(), "extra.json is not a file a cross-cka result writes"),
    ("cka", "cka-a-vs-b.json", cka_doc(), "not a file a cka result writes"),
    ("cka", "cka.json", cka_doc(700, 1), "is 700 layers, over the pull limit max_layers = 640"),
    ("blocks", "blocks.json", _mutated(VALID["blocks"]["blocks.json"], "blocks.0.start", "0"), r"blocks\[0\].start is str"),
    ("blocks", "blocks.json", _mutated(VALID["blocks"]["blocks.json"], "blocks.0.stop", 5), r"blocks\[0\] spans 0..5"),
    ("blocks", "blocks.json", _mutated(VALID["blocks"]["blocks.json"], "blocks.0.layers", [0]), r"blocks\[0\].layers\[0\]"),
    ("blocks", "blocks.json", _mutated(VALID["blocks"]["blocks.json"], "blocks", {"0": BLOCK}), "blocks is dict, not a list"),
    ("blocks", "blocks.json", _mutated(VALID["blocks"]["blocks.json"], "cka.cka", [[1]]), "cka.cka is not a 2 x 2 matrix"),
    ("blocks", "blocks.json", _mutated(VALID["blocks"]["blocks.json"], "cka_pc1_removed", []), "cka_pc1_removed is list"),
    ("blocks", "blocks.json", _mutated(VALID["blocks"]["blocks.json"], "pc1_fraction", [0.5]), "one entry per layer"),
    ("blocks", "blocks.json", _mutated(VALID["blocks"]["blocks.json"], "pc1_cosine", [[1.0]]), "pc1_cosine is not a 2 x 2"),
    ("blocks", "blocks.json", _mutated(VALID["blocks"]["blocks.json"], "layers", [f"l{i}" for i in range(641)]),
     "641 layers, over the pull limit max_layers"),
    ("agreement", "agreement.json", _mutated(VALID["agreement"]["agreement.json"], "kind", "class-diff"),
     "kind is 'class-diff', not 'agreement'"),
    ("agreement", "agreement.json", _mutated(VALID["agreement"]["agreement.json"], "summary", [1]), "summary is list"),
    ("agreement", "agreement.json", _mutated(VALID["agreement"]["agreement.json"], "side_a", 1), "side_a is int"),
    ("class-diff", "class_diff.json", _mutated(VALID["class-diff"]["class_diff.json"], "classes.0.significant", "yes"),
     r"classes\[0\].significant is str, not true or false"),
    ("class-diff", "class_diff.json", _mutated(VALID["class-diff"]["class_diff.json"], "classes", {"cat": {}}),
     "classes is dict, not a list"),
    ("class-diff", "class_diff.json", _mutated(VALID["class-diff"]["class_diff.json"], "classes.0.mean_a", [0.5]),
     r"classes\[0\].mean_a is list"),
    ("across-seeds", "across_seeds.json", _mutated(VALID["across-seeds"]["across_seeds.json"], "sides.a.layers", [1]),
     r"sides.a.layers\[0\] is int"),
    ("across-seeds", "across_seeds.json", _mutated(VALID["across-seeds"]["across_seeds.json"], "sides.b", DELETE),
     "sides lacks b"),
    ("across-seeds", "across_seeds.json", _mutated(VALID["across-seeds"]["across_seeds.json"], "layers.0.index", "0"),
     r"layers\[0\].index is str"),
    ("across-seeds", "across_seeds.json", _mutated(VALID["across-seeds"]["across_seeds.json"], "sides.a.blocks.m0", [1]),
     r"sides.a.blocks.m0\[0\] is int, not an object"),
    ("probes", "probes.json", _mutated(VALID["probes"]["probes.json"], "layers", ["stem"]), r"layers\[0\] is str"),
    ("probes", "probes.json", _mutated(VALID["probes"]["probes.json"], "detected_blocks", "auto"),
     "detected_blocks is str, not a list or null"),
    ("delete-blocks", "deletion.json", _mutated(VALID["delete-blocks"]["deletion.json"], "stages", DELETE), "lacks stages"),
    ("delete-blocks", "deletion.json", _mutated(VALID["delete-blocks"]["deletion.json"], "full_accuracy", "90%"),
     "full_accuracy is str, not a number"),
    ("mystery-kind", "cka.json", cka_doc(), "kind 'mystery-kind' is not one this hubcompare knows"),
]


def test_every_kinds_documents_of_the_right_shape_pass():
    for kind, docs in VALID.items():
        for name, doc in docs.items():
            check_document(kind, name, doc, "test", DEFAULT_LIMITS)


@pytest.mark.parametrize("kind, name, doc, expect", HOSTILE_DOCUMENTS,
                         ids=[f"{i}-{k}" for i, (k, *_) in enumerate(HOSTILE_DOCUMENTS)])
def test_documents_of_the_wrong_shape_are_refused(kind, name, doc, expect):
    """Item 12: 46 documents of the wrong shape, every kind."""
    with pytest.raises(SharedResultError, match=expect):
        check_document(kind, name, doc, "mallory/x@sha", DEFAULT_LIMITS)


HOSTILE_SUMMARIES = [
    ("cross-cka", {"pairs": [{"a": 0, "b": 1, "stem": "../../x"}]}, ["cka.json"], "names no CKA file"),
    ("cross-cka", {"pairs": [{"a": 0, "b": 1, "stem": "cka-a-vs-b"}]}, ["cka.json"], "names no CKA file"),
    ("cross-cka", {"pairs": [{"a": 0, "b": 7, "stem": "cka"}], "models": [{}, {}]}, ["cka.json"], "outside the 2 models"),
    ("cross-cka", {"pairs": [{"a": "0", "b": 1, "stem": "cka"}]}, ["cka.json"], r"pairs\[0\].a is str"),
    ("cross-cka", {"pairs": {"a": 0}}, ["cka.json"], "pairs is dict, not a list"),
    ("cross-cka", {}, ["cka.png"], "a cross-cka result has cka.json or cka-A-vs-B.json"),
    ("blocks", {}, ["cka.png"], "a blocks result has blocks.json"),
    ("class-diff", {}, ["class_diff.csv"], "a class-diff result has class_diff.json"),
]


@pytest.mark.parametrize("kind, summary, files, expect", HOSTILE_SUMMARIES)
def test_record_summaries_that_readers_index_into_are_checked(kind, summary, files, expect):
    with pytest.raises(SharedResultError, match=expect):
        check_summary(kind, summary, files, "mallory/x@sha")


def test_wrong_shaped_documents_are_refused_on_pull_and_nothing_is_stored(hub, tmp_path):
    """Item 12 end to end: the issue's list-shaped cka.json, non-string layer names, a deeply nested document and a
    summary pointing outside the result never reach the store."""
    stored = store_result(ResultStore(tmp_path / "mine"))
    nested = b"[" * 100_000 + b"]" * 100_000
    cases = {"list-cka": ({"cka.json": json.dumps([cka_doc()]).encode()}, "the document is list, not an object"),
             "int-layers": ({"cka.json": json.dumps(cka_doc(layers_a=[0, 1])).encode()}, r"layers_a\[0\] is int"),
             "deep-nesting": ({"cka.json": nested}, "nests too deeply|max_json_depth"),
             "nested-100-deep": ({"cka.json": json.dumps(cka_doc(provenance={"a": json.loads("[" * 100 + "]" * 100)}))
                                  .encode()}, r"cka.json's nesting is 102 levels, over the pull limit max_json_depth = 64")}
    theirs = ResultStore(tmp_path / "theirs")
    for name, (files, expect) in cases.items():
        hostile_upload(stored, f"mallory/doc-{name}", files)
        assert_refused(f"mallory/doc-{name}", theirs, SharedResultError, expect)
    bad_summary = store_result(ResultStore(tmp_path / "mine2"), summary={"pairs": [{"a": 0, "b": 9, "stem": "cka"}],
                                                                           "models": [{}, {}]})
    push_result(bad_summary, "mallory/doc-bad-summary")
    assert_refused("mallory/doc-bad-summary", theirs, SharedResultError, "outside the 2 models")


# --- SVG figures (item 15) ---------------------------------------------------------------------------------------------
SVG = '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="10" height="10">{}</svg>'
HOSTILE_SVGS = [
    "<svg/onload=alert(1)>",  # the issue's: not even XML
    '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
    '<svg xmlns="http://www.w3.org/2000/svg" ONLOAD="alert(1)"/>',
    SVG.format('<set attributeName="onmouseover" to="alert(1)"/>'),  # the issue's
    SVG.format('<animate attributeName="href" values="javascript:alert(1)"/>'),
    SVG.format('<a href="javascript&#58;alert(1)"><rect width="5" height="5"/></a>'),  # the issue's
    SVG.format('<use href="javascript&#58;alert(1)"/>'),
    SVG.format('<use xlink:href="java&#9;script:alert(1)"/>'),
    SVG.format('<use xlink:href="http://evil.example/sprites.svg#x"/>'),
    SVG.format('<image href="data:image/svg+xml;base64,PHN2Zy8+" width="1" height="1"/>'),
    SVG.format('<image href="https://evil.example/track.png" width="1" height="1"/>'),
    SVG.format('<script>alert(1)</script>'),
    SVG.format('<x:script xmlns:x="http://www.w3.org/2000/svg">alert(1)</x:script>'),
    SVG.format('<h:script xmlns:h="http://www.w3.org/1999/xhtml">alert(1)</h:script>'),
    SVG.format('<foreignObject><div xmlns="http://www.w3.org/1999/xhtml">hi</div></foreignObject>'),
    SVG.format('<iframe src="https://evil.example"/>'),
    SVG.format('<handler type="application/ecmascript">alert(1)</handler>'),
    SVG.format('<rect style="fill: url(javascript:alert(1))"/>'),
    SVG.format('<rect style="background: url(&#x27;https://evil.example/x&#x27;)"/>'),
    SVG.format('<rect fill="url(https://evil.example/p.svg#g)"/>'),
    SVG.format('<rect style="x: \\6a avascript:alert(1)"/>'),
    SVG.format('<style>@import url(https://evil.example/x.css);</style>'),
    SVG.format('<style>rect { fill: url(&#106;avascript:alert(1)) }</style>'),
    SVG.format('<rect xmlns:e="urn:evil" e:onclick="alert(1)"/>'),
    SVG.format('<rect onclick="alert(1)"/>'),
    SVG.format('<rect attributeName="onclick"/>'),
    '<?xml version="1.0"?><?xml-stylesheet href="https://evil.example/x.css"?>' + SVG.format(""),
    '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    + SVG.format("<text>&b;</text>"),  # billion laughs, abridged
    '<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>',
    '<svg xmlns="urn:not-svg"/>',
]


def test_hostile_svgs_are_refused():
    """Item 15: 30 SVGs that would run script, load something or are not SVG: each refused, with the reason."""
    let_through = [s for s in HOSTILE_SVGS if svg_problem(s.encode()) is None]
    assert let_through == []
    assert len(HOSTILE_SVGS) == 30


def test_the_figures_hubcompare_draws_as_svg_pass(tmp_path):
    from hubcompare.comparisons.cka_kinds import cka_result_from_json
    from hubcompare.similarity.plots import plot_cka

    plot_cka(cka_result_from_json(cka_doc(4, 3, stage_boundaries_a=[2])), tmp_path / "cka.svg")
    data = (tmp_path / "cka.svg").read_bytes()
    assert b"<image" in data or b"<path" in data
    assert svg_problem(data) is None
    assert svg_problem(SVG.format('<rect style="fill: url(#grad)" clip-path="url(#c)"/><use xlink:href="#p"/>'
                                  '<image href="data:image/png;base64,iVBORw0KGgo=" width="1" height="1"/>').encode()) is None


def test_a_result_with_a_scripted_svg_is_refused_on_pull(hub, tmp_path):
    stored = store_result(ResultStore(tmp_path / "mine"))
    theirs = ResultStore(tmp_path / "theirs")
    for i in (0, 3, 5):  # the issue's three
        hostile_upload(stored, f"mallory/svg-{i}", {"cka.svg": HOSTILE_SVGS[i].encode()})
        assert_refused(f"mallory/svg-{i}", theirs, SharedResultError, "cka.svg is refused .*not a plain SVG image")


@pytest.mark.slow
def test_every_kind_hubcompare_computes_is_pushed_and_pulled_back_whole(hub, trained_run, tmp_path):
    """The schemas and limits accept what hubcompare itself writes: one real result of each kind (the session's digits
    model and copies of it), pushed and pulled into another store, file for file."""
    from typer.testing import CliRunner

    from hubcompare.cli.main import app
    from hubcompare.results.schemas import KIND_DOCUMENTS

    from hubcompare.models.checkpoint import CONFIG_FILE
    from hubcompare.models.predictions import Predictions

    m = [shutil.copytree(trained_run, tmp_path / "members" / f"m{i}") for i in range(4)]
    for i, folder in enumerate(m):  # members that differ: other predictions wrong (as test_population_store does)
        p = Predictions.load(folder / "predictions.safetensors")
        rows = np.flatnonzero(np.random.default_rng(100 + i).random(len(p.ids)) < 0.2)
        logits = p.logits.clone()
        logits[rows] = 0.0
        logits[rows, (p.labels[rows] + 1) % logits.shape[1]] = 1.0
        config = json.loads((folder / CONFIG_FILE).read_text())
        config["hubcompare"]["predictions"] = Predictions(logits, p.labels, p.ids, p.dataset).save(
            folder / "predictions.safetensors")
        (folder / CONFIG_FILE).write_text(json.dumps(config))
    run, pass_args = str(trained_run), ["--examples", "64", "--batch-size", "32"]
    commands = [["cka", run, *pass_args], ["cross-cka", run, str(m[0]), str(m[1]), *pass_args], ["blocks", run, *pass_args],
                ["compare", run, str(m[0]), str(m[1]), "--measure", "rsa", "--measure", "procrustes", *pass_args],
                ["agreement", f"{m[0]}+{m[1]}", f"{m[2]}+{m[3]}", "--splits", "20", "--permutations", "20"],
                ["class-diff", f"{m[0]}+{m[1]}", f"{m[2]}+{m[3]}", "--splits", "20"],
                ["across-seeds", f"{m[0]}+{m[1]}", str(m[2]), *pass_args],
                ["probes", run, "--layers", "pool", "--train-examples", "100", "--examples", "64", "--l2", "0.01",
                 "--blocks", "none"],
                ["delete-blocks", run, "--examples", "64", "--blocks", "none"],
                ["grounding", "+".join([run, *map(str, m)]), "--examples", "64", "--measure", "cka", "--measure", "rsa",
                 "--pc-steps", "2", "--pc-layers", "1"]]
    env = {"HUBCOMPARE_HOME": str(tmp_path / "home")}
    for command in commands:
        r = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "out" / command[0])], env=env)
        assert r.exit_code == 0, (command, r.output)
    mine = {s.kind: s for s in ResultStore(tmp_path / "home" / "results").list()}
    assert set(mine) == set(KIND_DOCUMENTS)
    theirs = ResultStore(tmp_path / "theirs")
    for kind, stored in mine.items():
        push_result(stored, f"alice/real-{kind}")
        pulled = pull_result(f"hf-hub-result:alice/real-{kind}", theirs)
        assert pulled.key == stored.key and pulled.files == stored.files, kind
        for name in stored.files:
            assert pulled.file(name).read_bytes() == stored.file(name).read_bytes(), (kind, name)
