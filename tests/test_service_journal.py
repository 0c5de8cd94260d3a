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
