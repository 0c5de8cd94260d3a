"""The job journal: a restarted server keeps its jobs. Finished ones come back as they ended (their /jobs/ID links
keep working), unfinished ones (the server stopped, or was killed with them running) are queued again and run;
a corrupt journal is a typed error naming the file, a row that does not read back is skipped."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from hubcompare.errors import ServiceConfigError
from hubcompare.service.jobs import JobQueue, request_fingerprint
from hubcompare.service.journal import JOURNAL_FILE, JobJournal

KEY = "ab" * 32


def blocking_runner(request, settings, on_progress):
    """Runs until its worker is stopped (a long comparison)."""
    on_progress("computing", 0, 10)
    time.sleep(120)


def echo_runner(request, settings, on_progress):
    on_progress("computing", 1, 1)
    return {"result_key": KEY, "from_store": False, "notices": [f"ran {request['n']}"]}


def wait_state(queue: JobQueue, job_id: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = queue.get(job_id)
        if job.state in states:
            return job.to_json()
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {queue.get(job_id).state}")


@pytest.mark.slow  # three queues, three worker processes started (~6 s); the killed-server test below stays fast
def test_a_restarted_queue_keeps_finished_jobs_and_runs_the_unfinished_again(tmp_path):
    path = tmp_path / JOURNAL_FILE
    first = JobQueue({}, echo_runner, workers=1, journal=JobJournal(path)).start()
    try:
        done, _ = first.submit({"n": 1})
        ended = wait_state(first, done.id, ("done", "failed"))
    finally:
        first.stop()
    assert ended["state"] == "done" and ended["result_key"] == KEY

    second = JobQueue({}, blocking_runner, workers=1, journal=JobJournal(path)).start()
    try:
        assert second.get(done.id).to_json() == ended  # as it ended, not run again
        running, _ = second.submit({"n": 2})
        waiting, _ = second.submit({"n": 3})
        wait_state(second, running.id, ("running",))
        assert second.get(waiting.id).state == "queued"
    finally:
        second.stop()  # both unfinished: failed in this server's memory, still unfinished in the journal

    third = JobQueue({}, echo_runner, workers=1, journal=JobJournal(path)).start()
    try:
        assert [j.id for j in reversed(third.jobs())] == [done.id, running.id, waiting.id]  # the order they were asked
        for job in (running, waiting):
            again = wait_state(third, job.id, ("done", "failed"))
            assert again["state"] == "done" and again["request"] == job.request
            assert any("queued again" in n for n in again["notices"]) and f"ran {job.request['n']}" in again["notices"]
        same, new = third.submit({"n": 4})
        assert new
    finally:
        third.stop()


def test_a_job_left_running_by_a_killed_server_is_queued_again(tmp_path):
    """What kill -9 leaves: the row says running. The next start runs it, once, and an identical request joins it."""
    journal = JobJournal(tmp_path / JOURNAL_FILE)
    request = {"n": 7}
    journal.save({"id": "0123456789abcdef", "request": request, "fingerprint": request_fingerprint(request),
                  "state": "running", "stage": "computing", "done": 3, "total": 10, "result_key": None, "from_store": False,
                  "error": None, "error_type": None, "notices": [], "warnings": [], "created": "2026-11-30T10:00:00+00:00",
                  "started": "2026-11-30T10:00:01+00:00", "finished": None})
    queue = JobQueue({}, echo_runner, workers=1, journal=JobJournal(tmp_path / JOURNAL_FILE)).start()
    try:
        joined, new = queue.submit(request)
        assert not new and joined.id == "0123456789abcdef"
        job = wait_state(queue, joined.id, ("done", "failed"))
        assert job["state"] == "done" and job["done"] == 1 and job["total"] == 1
    finally:
        queue.stop()
    [record] = JobJournal(tmp_path / JOURNAL_FILE).load()
    assert record["state"] == "done" and record["result_key"] == KEY


def test_rows_that_do_not_read_back_are_skipped(tmp_path):
    path = tmp_path / JOURNAL_FILE
    journal = JobJournal(path)
    good = {"id": "aaaa", "request": {"n": 1}, "fingerprint": request_fingerprint({"n": 1}), "state": "done", "stage": "done",
            "created": "2026-11-30T10:00:00+00:00", "result_key": KEY}
    journal.save(good)
    for bad in ({"id": "bbbb", "state": "exploded", "request": {}, "fingerprint": "f", "stage": "s", "created": "c"},
                {"id": "cccc", "request": "not an object", "fingerprint": "f", "state": "done", "stage": "s", "created": "c"},
                {"id": "dddd", "unknown_only": 1},
                {"id": "eeee", "request": {}, "fingerprint": "f", "state": "done", "stage": "s", "created": "c", "notices": [1]}):
        journal.save(bad)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO jobs (id, seq, record) VALUES ('ffff', 99, '{not json')")
        db.execute("INSERT INTO jobs (id, seq, record) VALUES ('gggg', 100, ?)", (json.dumps({"id": "other"}),))
    queue = JobQueue({}, echo_runner, workers=0, journal=JobJournal(path))
    queue._restore()
    assert [j.id for j in queue.jobs()] == ["aaaa"] and queue.get("aaaa").result_key == KEY


def test_a_corrupt_journal_names_the_file_and_the_fix(tmp_path):
    from hubcompare.service.app import create_app
    from hubcompare.service.config import ServiceConfig

    results = tmp_path / "results"
    results.mkdir()
    (results / JOURNAL_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(ServiceConfigError, match=r"jobs\.sqlite.*remove it"):
        create_app(ServiceConfig(results_dir=results, registry_path=tmp_path / "registry.sqlite"))
    # and without the journal, the same server starts (memory only)
    create_app(ServiceConfig(results_dir=results, registry_path=tmp_path / "registry.sqlite", keep_jobs=False))


def test_the_job_page_says_a_job_was_queued_again(tmp_path):
    """What the user holding the /jobs/ID link sees after a restart: the job, and why it started over."""
    from fastapi.testclient import TestClient

    from hubcompare.service.app import create_app
    from hubcompare.service.config import ServiceConfig

    results = tmp_path / "results"
    request = {"kind": "cka", "refs": ["no-such-model"], "examples": 64}
    JobJournal(results / JOURNAL_FILE).save({
        "id": "fedcba9876543210", "request": request, "fingerprint": request_fingerprint(request), "state": "queued",
        "stage": "queued", "notices": [], "warnings": [], "created": "2026-11-30T10:00:00+00:00"})
    config = ServiceConfig(results_dir=results, registry_path=tmp_path / "registry.sqlite", workers=1)
    with TestClient(create_app(config, runner=blocking_runner), base_url="http://127.0.0.1") as client:
        page = client.get("/jobs/fedcba9876543210")
        assert page.status_code == 200
        assert "queued again: the server restarted before this job finished" in page.text and "no-such-model" in page.text
        journal = client.get("/api/health").json()["journal"]
        assert journal == {"path": str(results / JOURNAL_FILE), "problem": None}


def test_a_journal_that_stops_taking_writes_leaves_the_jobs_running_in_memory(tmp_path):
    """A full disk or a removed file must not stop the queue's loop: it goes on in memory and says why."""
    path = tmp_path / JOURNAL_FILE
    journal = JobJournal(path)
    queue = JobQueue({}, echo_runner, workers=0, journal=journal)
    queue._restore()
    journal._db.execute("DROP TABLE jobs")  # every later write fails, as on a broken file
    job, new = queue.submit({"n": 1})
    assert new and queue.get(job.id).state == "queued"
    assert "cannot be written" in queue.journal_problem and "memory only" in queue.journal_problem
    queue.submit({"n": 2})  # and no further attempt raises


def _record(job_id: str, request: dict, state: str = "queued", **more) -> dict:
    return {"id": job_id, "request": request, "fingerprint": request_fingerprint(request), "state": state, "stage": state,
            "notices": [], "warnings": [], "created": "2026-11-30T10:00:00+00:00", **more}


def _restored(path, **queue_options) -> JobQueue:
    queue = JobQueue({}, echo_runner, workers=0, journal=JobJournal(path), **queue_options)
    queue._restore()
    return queue


def test_a_clean_stop_leaves_unfinished_jobs_unfinished_in_the_journal(tmp_path):
    path = tmp_path / JOURNAL_FILE
    queue = _restored(path)
    job, _ = queue.submit({"n": 1})
    queue.stop()
    assert queue.get(job.id).state == "failed"  # in the stopped server's memory
    again = _restored(path)
    assert again.get(job.id).state == "queued" and again._queue[0] == job.id
    with pytest.raises(RuntimeError, match="does not start again"):
        queue._restore()


def test_a_rows_fingerprint_is_derived_from_its_request_never_read(tmp_path):
    """A stale or edited row must not make another request join its job (and get its result)."""
    path = tmp_path / JOURNAL_FILE
    JobJournal(path).save(_record("aaaa", {"n": 2}) | {"fingerprint": request_fingerprint({"n": 1})})
    queue = _restored(path)
    job, new = queue.submit({"n": 1})
    assert new and job.id != "aaaa"
    joined, new = queue.submit({"n": 2})
    assert not new and joined.id == "aaaa"


def test_restored_jobs_pass_the_servers_check_again_and_duplicates_fail(tmp_path):
    from hubcompare.errors import ServiceRequestError

    def check(request):
        if request["n"] > 5:
            raise ServiceRequestError(f"n {request['n']} is over this server's limit of 5")

    path = tmp_path / JOURNAL_FILE
    journal = JobJournal(path)
    for job_id, n in (("aaaa", 1), ("bbbb", 9), ("cccc", 1)):
        journal.save(_record(job_id, {"n": n}))
    queue = _restored(path, check=check)
    assert queue.get("aaaa").state == "queued"
    refused = queue.get("bbbb")
    assert refused.state == "failed" and "not run again after the server restarted: n 9 is over" in refused.error
    assert queue.get("cccc").state == "failed" and queue.get("cccc").error_type == "Duplicate"
    assert list(queue._queue) == ["aaaa"]


def test_the_journal_keeps_the_newest_finished_jobs(tmp_path, monkeypatch):
    import hubcompare.service.jobs as jobs

    monkeypatch.setattr(jobs, "KEEP_FINISHED", 2)
    path = tmp_path / JOURNAL_FILE
    journal = JobJournal(path)
    for i in range(4):
        journal.save(_record(f"job{i}", {"n": i}, state="done", result_key=KEY))
    journal.save(_record("open", {"n": 9}))
    queue = _restored(path)
    assert [j.id for j in reversed(queue.jobs())] == ["job2", "job3", "open"]
    assert [r["id"] for r in JobJournal(path).load()] == ["job2", "job3", "open"]


@pytest.mark.parametrize("change", [
    {"done": "x"}, {"done": -1}, {"done": True}, {"total": "10"}, {"total": 1.5}, {"from_store": "yes"},
    {"result_key": "../../etc"}, {"result_key": "AB" * 32}, {"result_key": 12}, {"stage": 3}, {"created": None},
    {"error": ["x"]}, {"error_type": 1}, {"started": 5}, {"finished": {}}, {"warnings": "w"}, {"notices": [None]},
    {"id": "../x"}, {"id": ""}, {"id": "a" * 65}, {"state": "done", "result_key": None}, {"state": "failed", "error": None},
    {"stage": "s" * 10_001},
])
def test_every_field_of_a_row_is_type_checked(tmp_path, change):
    """Issue #23 item 16: a row whose field has the wrong type (or a result key that is a path) is skipped, not loaded
    as it is (a page would link it, a count would break)."""
    path = tmp_path / JOURNAL_FILE
    journal = JobJournal(path)
    good = _record("good", {"n": 1}, state="done", done=1, total=1, result_key=KEY, from_store=False, error=None,
                   error_type=None, started="2026-11-30T10:00:01+00:00", finished="2026-11-30T10:00:02+00:00")
    journal.save(good)
    journal.save(_record("bad", {"n": 2}, state="done", done=1, total=1, result_key=KEY) | {"id": "bad"} | change)
    queue = _restored(path)
    assert [j.id for j in queue.jobs()] == ["good"]
    assert queue.get("good").to_json() == {k: v for k, v in good.items() if k != "fingerprint"}


# --- stopping is quiet (issue #23, item 18) ---------------------------------------------------------------
STARTED_FILE_ENV = "HUBCOMPARE_TEST_STARTED_FILE"


def chatty_runner(request, settings, on_progress):
    """A long job that reports progress all the time (and says, in a file, that it has started)."""
    import os
    from pathlib import Path

    Path(os.environ[STARTED_FILE_ENV]).write_text(str(os.getpid()))
    for i in range(100_000):
        on_progress(f"step {i}", i, None)
        time.sleep(0.01)


SERVER_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from hubcompare.service.jobs import JobQueue
from test_service_journal import chatty_runner
if __name__ == "__main__":
    queue = JobQueue({{}}, chatty_runner, workers=1).start()
    queue.submit({{"n": 1}})
    time.sleep(600)
"""


def _server_with_a_running_job(tmp_path):
    """A process holding a JobQueue whose one worker is running a chatty job: (process, worker pid, log path)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    started, log = tmp_path / "started", tmp_path / "server.log"
    script = tmp_path / "server.py"
    script.write_text(SERVER_SCRIPT.format(tests=str(Path(__file__).parent)))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **{STARTED_FILE_ENV: str(started)}))
    deadline = time.monotonic() + 120
    while not started.exists() or not started.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    time.sleep(0.3)  # a few progress reports
    return proc, int(started.read_text()), log


def _gone(pid: int, timeout: float) -> bool:
    import os

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow  # a worker process started (~5 s on a loaded machine)
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_server_stopped_or_killed_mid_job_ends_its_worker_quietly(tmp_path, how):
    """Issue #23 item 18: the worker saw its pipe break and printed a BrokenPipeError traceback; killed with -9, the
    server left it computing as an orphan. Now it ends at once, printing nothing."""
    import os
    import signal as signals

    proc, worker, log = _server_with_a_running_job(tmp_path)
    try:
        os.kill(proc.pid, getattr(signals, how))
        proc.wait(timeout=30)
        assert _gone(worker, 5.0), f"the worker {worker} outlived its server ({how})"
        time.sleep(0.3)
        text = log.read_text()
        assert "Traceback" not in text and "BrokenPipeError" not in text, text
    finally:
        for pid in (proc.pid, worker):
            try:
                os.kill(pid, signals.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow  # a worker process started (~5 s)
def test_stopping_the_queue_mid_job_prints_nothing(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(STARTED_FILE_ENV, str(tmp_path / "started"))
    queue = JobQueue({}, chatty_runner, workers=1, journal=JobJournal(tmp_path / JOURNAL_FILE)).start()
    try:
        job, _ = queue.submit({"n": 1})
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        started = time.monotonic()
        queue.stop()
        took = time.monotonic() - started
    worker = int((tmp_path / "started").read_text())
    assert _gone(worker, 5.0) and took < 2.0
    time.sleep(0.3)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert [r["state"] for r in JobJournal(tmp_path / JOURNAL_FILE).load()] == ["running"]  # run again by the next server
