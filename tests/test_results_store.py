"""The result store: content keys, the SQLite index + folders, and what concurrent and killed writers leave behind.

Concurrency is tested with real processes (fork): two writers at once, and a writer killed with SIGKILL."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from hubcompare.errors import (
    AmbiguousResultKeyError,
    InvalidResultKeyError,
    ResultFileError,
    ResultKeyInputError,
    ResultNotFoundError,
    ResultStoreError,
)
from hubcompare.results.keys import canonical_json, result_key
from hubcompare.results.store import STAGING_DIR, ResultStore, default_results_dir

FORK = multiprocessing.get_context("fork")


def inputs(i: int = 0, **extra) -> dict:
    return {"models": [{"ref": f"hf-hub:alice/m{i}@{'a' * 40}", "weights_sha256": "b" * 64}],
            "dataset": {"name": "digits", "split": "test", "fingerprint": "f" * 16}, "settings": {"seed": i, **extra}}


def put(store: ResultStore, ki: dict, kind: str = "cka", *, payload: str = "x", models=None, title: str = "t") -> object:
    key = result_key(kind, ki)
    with store.staging() as staging:
        (staging / "cka.json").write_text(json.dumps({"payload": payload}))
        (staging / "cka.png").write_bytes(b"\x89PNG")
        return store.put(key, kind, title=title, request={"kind": kind}, key_inputs=ki, summary={"mean": 0.5},
                         models=models or [m["ref"] for m in ki["models"]], dataset="digits", staging=staging, seconds=1.5)


# --- keys ------------------------------------------------------------------------------------------
def test_result_key_is_sha256_of_the_documented_canonical_json():
    ki = {"settings": {"b": 0.1, "a": [1, 2.5, None, True]}, "dataset": "digits"}
    expected = b'{"inputs":{"dataset":"digits","settings":{"a":[1,2.5,null,true],"b":0.1}},"kind":"cka","schema":1}'
    assert result_key("cka", ki) == hashlib.sha256(expected).hexdigest()
    assert canonical_json({"t": (1, 2), "u": "é"}) == '{"t":[1,2],"u":"é"}'.encode()


def test_keys_tell_apart_what_changes_numbers_and_not_key_order():
    base = inputs()
    assert result_key("cka", base) == result_key("cka", json.loads(json.dumps(base, sort_keys=True)))
    assert result_key("cka", base) != result_key("blocks", base)
    assert result_key("cka", inputs(extra=0.1 + 0.2)) != result_key("cka", inputs(extra=0.3))  # floats exact
    assert result_key("cka", inputs(extra=1)) != result_key("cka", inputs(extra="1"))


@pytest.mark.parametrize("bad, where", [({"alpha": float("nan")}, "key_inputs.alpha"), ({"x": [float("inf")]}, "key_inputs.x[0]"),
                                        ({1: "a"}, "key_inputs"), ({"p": Path("/tmp")}, "key_inputs.p")])
def test_key_inputs_json_cannot_say_exactly_are_refused_naming_the_field(bad, where):
    with pytest.raises(ResultKeyInputError, match=r"^" + where.replace("[", r"\[").replace(".", r"\.")):
        result_key("cka", bad)


# --- one process -----------------------------------------------------------------------------------
def test_put_then_get_resolve_list_and_remove(tmp_path):
    store = ResultStore(tmp_path)
    stored = put(store, inputs(), payload="hello")
    key = result_key("cka", inputs())
    assert stored.key == key and stored.path == tmp_path / key and stored.files == ["cka.json", "cka.png"]
    assert json.loads(stored.file("cka.json").read_text()) == {"payload": "hello"}
    again = ResultStore(tmp_path)  # a new process sees the same
    assert again.get(key).to_json() == stored.to_json()
    assert again.resolve(key[:6].upper()).key == key
    assert [s.key for s in again.list()] == [key]
    removed = again.remove(key)
    assert removed.key == key and again.get(key) is None and not (tmp_path / key).exists()
    with pytest.raises(ResultNotFoundError, match="hubcompare results list"):
        again.remove(key)


def test_default_folder_is_under_hubcompare_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HUBCOMPARE_HOME", str(tmp_path / "home"))
    assert default_results_dir() == tmp_path / "home" / "results"
    assert ResultStore().root == tmp_path / "home" / "results"


def test_list_newest_first_filtered_by_kind_and_model(tmp_path):
    store = ResultStore(tmp_path)
    first = put(store, inputs(1), "cka", models=["hf-hub:alice/m1@" + "a" * 40])
    second = put(store, inputs(2), "blocks", models=["hf-hub:alice/m2@" + "a" * 40, "hf-hub:alice/m1@" + "a" * 40])
    third = put(store, inputs(3), "cka", models=["hf-hub:alice/m3@" + "a" * 40])
    assert [s.key for s in store.list()] == [third.key, second.key, first.key]
    assert [s.key for s in store.list(kind="cka")] == [third.key, first.key]
    assert [s.key for s in store.list(model="hf-hub:alice/m1")] == [second.key, first.key]  # unpinned matches pinned
    assert [s.key for s in store.list(model="hf-hub:alice/m1@" + "a" * 40)] == [second.key, first.key]
    assert store.list(model="hf-hub:alice/m") == []  # a name prefix is not a match
    assert [s.key for s in store.list(limit=1)] == [third.key]


def test_resolve_refuses_bad_short_unknown_and_ambiguous_prefixes(tmp_path):
    store = ResultStore(tmp_path)
    by_prefix: dict[str, int] = {}
    for i in range(200_000):  # two inputs whose keys share 6 hex characters (birthday: ~4,000 tries)
        p = result_key("cka", inputs(i))[:6]
        if p in by_prefix:
            break
        by_prefix[p] = i
    a, b = put(store, inputs(by_prefix[p])), put(store, inputs(i))
    with pytest.raises(AmbiguousResultKeyError) as e:
        store.resolve(p)
    assert a.key[:16] in str(e.value) and b.key[:16] in str(e.value) and set(e.value.candidates) == {a.key, b.key}
    assert store.resolve(a.key).key == a.key
    with pytest.raises(InvalidResultKeyError, match="at least 6"):
        store.resolve(a.key[:5])
    for bad in ("../../etc", "zzzzzzzz", a.key + "0", "abc%de", ""):
        with pytest.raises(InvalidResultKeyError):
            store.resolve(bad)
    with pytest.raises(ResultNotFoundError, match="hubcompare results list"):
        store.resolve("0" * 6 if not a.key.startswith("000000") else "ffffff")


def test_file_refuses_paths_and_names_not_in_the_result(tmp_path):
    stored = put(ResultStore(tmp_path), inputs())
    (stored.path / "extra.txt").write_text("not indexed")
    for bad in ("../index.sqlite", "sub/cka.json", "..", ".", "", "extra.txt", "/etc/passwd", "cka.json\0"):
        with pytest.raises(ResultFileError):
            stored.file(bad)


def test_staging_is_removed_when_the_block_raises_or_put_is_not_called(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.staging() as staging:
            (staging / "cka.json").write_text("{}")
            raise RuntimeError("compute failed")
    with store.staging() as staging:
        (staging / "cka.json").write_text("{}")
    assert list((tmp_path / STAGING_DIR).iterdir()) == [] and store.list() == []


def test_put_refuses_a_key_that_is_not_its_inputs_and_folders_in_staging(tmp_path):
    store = ResultStore(tmp_path)
    with store.staging() as staging, pytest.raises(ResultStoreError, match="result_key"):
        store.put(result_key("cka", inputs(1)), "cka", title="t", request={}, key_inputs=inputs(2), summary={}, models=[],
                  dataset="d", staging=staging, seconds=0)
    with store.staging() as staging, pytest.raises(ResultStoreError, match="plain files"):
        (staging / "sub").mkdir()
        store.put(result_key("cka", inputs(1)), "cka", title="t", request={}, key_inputs=inputs(1), summary={}, models=[],
                  dataset="d", staging=staging, seconds=0)
    assert store.list() == [] and list(tmp_path.glob("[0-9a-f]" * 6 + "*")) == []


def test_a_result_whose_folder_was_deleted_is_dropped(tmp_path):
    store = ResultStore(tmp_path)
    stored = put(store, inputs())
    import shutil

    shutil.rmtree(stored.path)
    assert store.get(stored.key) is None and store.list() == []
    assert put(store, inputs()).path.is_dir()  # and it can be stored again


def test_a_folder_without_a_readable_record_is_left_alone_unlisted_and_does_not_block_a_put(tmp_path):
    """A folder of a key without a row or a record (from before records, or not a result) is never deleted by a read."""
    key = result_key("cka", inputs())
    ResultStore(tmp_path)
    (tmp_path / key).mkdir()
    (tmp_path / key / "cka.json").write_text("half")
    store = ResultStore(tmp_path)
    assert (tmp_path / key / "cka.json").read_text() == "half" and store.list() == []
    assert json.loads(put(store, inputs(), payload="full").file("cka.json").read_text()) == {"payload": "full"}


def test_a_writer_killed_between_rename_and_commit_leaves_a_whole_result_that_is_indexed(tmp_path):
    store = ResultStore(tmp_path / "a")
    stored = put(store, inputs(7))
    other = tmp_path / "b"
    ResultStore(other)
    os.rename(stored.path, other / stored.key)  # a folder whose row was never committed
    found = ResultStore(other).get(stored.key)
    assert found is not None and found.files == stored.files and found.title == stored.title


def test_losing_the_index_keeps_every_result_and_rebuilds_it_from_the_folders(monkeypatch, tmp_path):
    store = ResultStore(tmp_path / "results")
    a = put(store, inputs(1), "cross-cka", title="first")
    b = put(store, inputs(2), "blocks", title="second")
    pulled_key = result_key("cka", inputs(3))
    with store.staging() as staging:
        (staging / "cka.json").write_text("{}")
        c = store.put(pulled_key, "cka", title="theirs", request={}, key_inputs=inputs(3), summary={}, models=["m"],
                      dataset="digits", staging=staging, seconds=2.0, source="hf-hub-result:alice/x@" + "c" * 40)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / "results" / name).unlink(missing_ok=True)
    r = _cli(monkeypatch, tmp_path, "results", "list", "--json")  # a read-only command on a store without its index
    assert r.exit_code == 0, r.output
    assert {d["key"] for d in json.loads(r.stdout)} == {a.key, b.key, c.key}
    rebuilt = ResultStore(tmp_path / "results")
    assert all(s.path.is_dir() for s in (a, b, c))
    assert rebuilt.get(c.key).source == c.source and rebuilt.get(c.key).pulled  # the origin survives the rebuild
    assert rebuilt.get(a.key).to_json() == a.to_json() and rebuilt.list(model="hf-hub:alice/m2")[0].key == b.key


def test_an_index_replaced_by_an_empty_one_deletes_nothing(tmp_path):
    store = ResultStore(tmp_path)
    kept = put(store, inputs(8))
    (tmp_path / "index.sqlite").unlink()
    import sqlite3

    sqlite3.connect(tmp_path / "index.sqlite").close()  # an empty index: every folder looks unindexed
    assert [s.key for s in ResultStore(tmp_path).list()] == [kept.key] and kept.path.is_dir()


def test_a_record_whose_key_is_not_its_inputs_is_not_indexed_and_not_deleted(tmp_path):
    store = ResultStore(tmp_path)
    stored = put(store, inputs(9))
    record = json.loads((stored.path / ".record.json").read_text())
    record["key_inputs"]["settings"]["seed"] = 99  # edited inputs: the folder's name is no longer their key
    (stored.path / ".record.json").write_text(json.dumps(record))
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    assert ResultStore(tmp_path).list() == [] and (stored.path / "cka.json").is_file()


def test_a_folder_stored_before_records_gets_one_and_reads_as_computed_here(tmp_path):
    store = ResultStore(tmp_path)
    stored = put(store, inputs(10))
    (stored.path / ".record.json").unlink()  # as stored by an earlier version
    import sqlite3

    with sqlite3.connect(tmp_path / "index.sqlite") as con:
        con.execute("UPDATE results SET source = 'computed'")
    again = ResultStore(tmp_path)
    assert (stored.path / ".record.json").is_file() and again.get(stored.key).origin == "computed here"
    record = json.loads((stored.path / ".record.json").read_text())
    del record["source"]  # a record without an origin: computed here
    (stored.path / ".record.json").write_text(json.dumps(record))
    (tmp_path / "index.sqlite").unlink()
    assert not ResultStore(tmp_path).get(stored.key).pulled


def test_an_unreadable_index_is_a_typed_error_naming_the_fix(tmp_path):
    (tmp_path / "index.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ResultStoreError, match="move it aside.*rebuilds it from the result folders"):
        ResultStore(tmp_path).list()


# --- several processes -----------------------------------------------------------------------------
def _writer(root: str, first: int, count: int, start, kind: str = "cka") -> None:
    store = ResultStore(root)
    start.wait()
    for i in range(first, first + count):
        put(store, inputs(i), kind, payload=f"{os.getpid()}")
    os._exit(0)


def _write_at_once(root, firsts: tuple[int, ...], count: int) -> tuple[ResultStore, list[int]]:
    """One writer process per entry of ``firsts`` (keys first .. first+count-1), released together; the store after
    and the writers' pids."""
    ResultStore(root)
    start = FORK.Event()
    procs = [FORK.Process(target=_writer, args=(str(root), first, count, start)) for first in firsts]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    return ResultStore(root), [p.pid for p in procs]


def test_two_processes_writing_different_keys_at_once_lose_nothing(tmp_path):
    store, _ = _write_at_once(tmp_path, firsts=(0, 100), count=20)
    stored = store.list()
    assert sorted(s.key for s in stored) == sorted(result_key("cka", inputs(i)) for i in [*range(20), *range(100, 120)])
    assert all(s.file("cka.png").read_bytes() == b"\x89PNG" for s in stored)
    assert list((tmp_path / STAGING_DIR).iterdir()) == []


def test_two_processes_writing_the_same_keys_store_each_once(tmp_path):
    store, pids = _write_at_once(tmp_path, firsts=(0, 0), count=10)
    stored = store.list()
    assert sorted(s.key for s in stored) == sorted(result_key("cka", inputs(i)) for i in range(10))
    writers = {json.loads(s.file("cka.json").read_text())["payload"] for s in stored}
    assert writers <= {str(pid) for pid in pids}  # each folder whole, from one writer
    assert all(sorted(os.listdir(s.path)) == [".record.json", "cka.json", "cka.png"] for s in stored)
    assert list((tmp_path / STAGING_DIR).iterdir()) == []


def test_the_second_writer_of_a_key_gets_the_first_ones_result(tmp_path):
    store = ResultStore(tmp_path)
    first = put(store, inputs(), payload="first")
    second = put(store, inputs(), payload="second")
    assert second.to_json() == first.to_json()
    assert json.loads(second.file("cka.json").read_text()) == {"payload": "first"}
    assert list((tmp_path / STAGING_DIR).iterdir()) == []


def _killed_mid_compute(root: str, ready) -> None:
    store = ResultStore(root)
    with store.staging() as staging:
        (staging / "cka.json").write_text("{half")
        ready.set()
        time.sleep(60)


def test_a_process_killed_mid_computation_leaves_no_entry_and_no_folder(tmp_path):
    ResultStore(tmp_path)
    ready = FORK.Event()
    child = FORK.Process(target=_killed_mid_compute, args=(str(tmp_path), ready))
    child.start()
    assert ready.wait(60)
    assert len(list((tmp_path / STAGING_DIR).iterdir())) == 1  # its staging, invisible to readers
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    store = ResultStore(tmp_path)  # opening sweeps the dead pid's staging
    assert store.list() == [] and list((tmp_path / STAGING_DIR).iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(("index.sqlite", STAGING_DIR))] == []


# --- the command line: results list / show / rm ------------------------------------------------------
def _cli(monkeypatch, tmp_path, *args, input=None):
    from typer.testing import CliRunner

    from hubcompare.cli.main import app

    monkeypatch.setenv("HUBCOMPARE_HOME", str(tmp_path))
    return CliRunner().invoke(app, list(args), input=input, env={"COLUMNS": "80"})


def test_cli_list_folds_at_80_columns_and_filters(monkeypatch, tmp_path):
    store = ResultStore(tmp_path / "results")
    long_title = "cross-cka: ResNet-110 (4x, seed 17) vs ResNet-110 (4x, seed 18) on cifar10-jpeg"
    a = put(store, inputs(1), "cross-cka", title=long_title)
    b = put(store, inputs(2), "blocks", title="blocks: ResNet-56 (2x)")
    r = _cli(monkeypatch, tmp_path, "results", "list")
    assert r.exit_code == 0, r.output
    assert max(map(len, r.output.splitlines())) <= 80
    assert a.key[:12] in r.output and b.key[:12] in r.output and "2 results" in r.output
    assert r.output.index(b.key[:12]) < r.output.index(a.key[:12])  # newest first
    assert all(word in r.output for word in long_title.split())  # folded, not cut
    r = _cli(monkeypatch, tmp_path, "results", "list", "--kind", "blocks", "--json")
    assert [d["key"] for d in json.loads(r.stdout)] == [b.key]
    r = _cli(monkeypatch, tmp_path, "results", "list", "--model", "hf-hub:alice/m1", "--json")
    assert [d["key"] for d in json.loads(r.stdout)] == [a.key]


def test_cli_show_by_prefix_prints_key_inputs_and_file_paths(monkeypatch, tmp_path):
    stored = put(ResultStore(tmp_path / "results"), inputs(3))
    r = _cli(monkeypatch, tmp_path, "results", "show", stored.key[:7])
    assert r.exit_code == 0, r.output
    flat = "".join(r.output.split()).replace("│", "")
    assert stored.key in flat and "dataset.fingerprint" in flat and "f" * 16 in flat and "settings.seed" in flat
    lines = r.output.splitlines()
    assert all(f"  {stored.path / name}" in lines for name in stored.files)  # one whole path a line, to copy
    r = _cli(monkeypatch, tmp_path, "results", "show", stored.key, "--json")
    shown = json.loads(r.stdout)
    assert shown["key"] == stored.key and shown["file_paths"]["cka.json"] == str(stored.path / "cka.json")


def test_cli_rm_asks_refuses_without_a_terminal_and_removes_with_yes(monkeypatch, tmp_path):
    from hubcompare.cli import results as cli_results

    stored = put(ResultStore(tmp_path / "results"), inputs(4))
    r = _cli(monkeypatch, tmp_path, "results", "rm", stored.key[:8])  # CliRunner's stdin is not a terminal
    assert r.exit_code == 2 and "ConfirmationRequiredError" in r.output and "--yes" in r.output
    assert stored.path.is_dir()
    monkeypatch.setattr(cli_results, "_interactive", lambda: True)
    r = _cli(monkeypatch, tmp_path, "results", "rm", stored.key[:8], input="n\n")
    assert r.exit_code == 1 and stored.path.is_dir() and ResultStore(tmp_path / "results").get(stored.key) is not None
    r = _cli(monkeypatch, tmp_path, "results", "rm", stored.key[:8], input="y\n")
    assert r.exit_code == 0 and f"removed result {stored.key[:12]}" in r.output and not stored.path.exists()
    again = put(ResultStore(tmp_path / "results"), inputs(4))
    monkeypatch.setattr(cli_results, "_interactive", lambda: False)
    r = _cli(monkeypatch, tmp_path, "results", "rm", again.key, "--yes", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["key"] == again.key
    assert ResultStore(tmp_path / "results").list() == []


def test_cli_latest_names_the_newest_result_and_says_so_when_the_store_is_empty(monkeypatch, tmp_path):
    r = _cli(monkeypatch, tmp_path, "results", "show", "latest")
    assert r.exit_code == 2 and "ResultNotFoundError" in r.output and "no stored result yet" in r.output
    store = ResultStore(tmp_path / "results")
    put(store, inputs(5))
    newest = put(store, inputs(6))
    r = _cli(monkeypatch, tmp_path, "results", "show", "latest", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["key"] == newest.key
    r = _cli(monkeypatch, tmp_path, "results", "show", "latest")
    assert f"key {newest.key}" in r.output.splitlines()  # whole on one line at 80 columns, to copy
    r = _cli(monkeypatch, tmp_path, "results", "list", "--kind", "blocks")
    assert r.exit_code == 0 and "No stored result of kind blocks yet" in r.output
    r = _cli(monkeypatch, tmp_path, "results", "rm", "latest", "--yes")
    assert r.exit_code == 0 and store.get(newest.key) is None and len(store.list()) == 1


# --- where a stored answer came from: the service's pages and JSON (issue #23, item 7) -----------------
def _no_runner(request: dict, settings: dict, on_progress) -> dict:
    raise AssertionError("no job runs in this test")


def test_the_service_says_whether_a_result_was_computed_here_or_pulled(tmp_path):
    pytest.importorskip("fastapi", reason="the service needs fastapi")
    from fastapi.testclient import TestClient

    from hubcompare.service.app import create_app
    from hubcompare.service.config import ServiceConfig
    from hubcompare.service.jobs import JobQueue

    root = tmp_path / "results"
    store = ResultStore(root)

    def stored(i: int, source: str):
        with store.staging() as staging:
            (staging / "table.csv").write_text("a,b\n1,2\n")
            return store.put(result_key("cka", inputs(i)), "cka", title=f"t{i}", request={"kind": "cka"},
                             key_inputs=inputs(i), summary={}, models=["m"], dataset="digits", staging=staging,
                             seconds=1.0, source=source)

    mine, theirs = stored(11, "computed"), stored(12, "hf-hub-result:mallory/x@" + "d" * 40)
    app = create_app(ServiceConfig(results_dir=root, registry_path=tmp_path / "registry.sqlite"),
                     jobs=JobQueue({}, _no_runner))
    client = TestClient(app, base_url="http://127.0.0.1:8765")
    page = client.get(f"/results/{theirs.key}").text
    assert "Pulled from" in page and theirs.source in page and f"results verify {theirs.key[:12]}" in page
    assert "Computed here." in client.get(f"/results/{mine.key}").text
    listing = client.get("/results").text
    assert listing.count(">pulled</span>") == 1
    assert client.get(f"/api/results/{theirs.key}").json()["pulled"] is True
    shown = client.get(f"/api/results/{mine.key}").json()
    assert shown["pulled"] is False and shown["origin"] == "computed here" and shown["source"] == "computed"
