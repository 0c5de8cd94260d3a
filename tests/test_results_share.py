"""Sharing stored results through a Hub dataset repo (the project's own Hub-protocol server): push, card, pull,
pinning, offline, and repos that must be refused before anything enters the store."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, constants

from hubcompare.errors import (
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    InvalidResultReferenceError,
    NotInCacheError,
    SharedResultError,
)
from hubcompare.results.keys import result_key
from hubcompare.results.share import RECORD_FILE, parse_result_reference, pull_result, push_result
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


def store_result(store: ResultStore, key_inputs: dict = KEY_INPUTS, kind: str = "cross-cka", files: dict | None = None):
    files = files if files is not None else {
        "cka.json": json.dumps({"cka": [[1.0, 0.5], [0.5, 1.0]], "mean": 0.75}).encode(),
        "cka.npz": npz_bytes(cka=np.array([[1.0, 0.5], [0.5, 1.0]]), se=np.zeros((2, 2))),
        "cka.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 32}
    with store.staging() as staging:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        return store.put(result_key(kind, key_inputs), kind, title="cross-cka: ResNet-20 (1x) vs ResNet-20 (2x)",
                         request={"kind": kind, "refs": ["a", "b"]}, key_inputs=key_inputs, summary={"mean_cka": 0.75},
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
                          files={"cka.json": b'{"mean": 0.1}', "cka.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>'})
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
                       "cka.npz is refused"),
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
