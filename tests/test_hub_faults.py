"""Network faults: a server killed mid-download and restarted, 5xx answers, an unreachable hub."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import free_port


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow  # fault injection: a server killed mid-download (~4 s)
def test_server_killed_mid_download_then_restarted_pull_resumes(trained_run, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    from hubcompare.hub.client import pull, push
    from hubcompare.hub.server import HubServer
    from hubcompare.models.checkpoint import WEIGHTS_FILE

    size = (trained_run / WEIGHTS_FILE).stat().st_size
    # The client writes to disk (and so can resume from) whole chunks of DOWNLOAD_CHUNK_SIZE (10 MB): shrink
    # the chunk so a 300 KB checkpoint behaves like a large one.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 8192)
    port, data, first_log, second_log = free_port(), tmp_path / "hub", [], []
    server = HubServer(data, port=port, max_bytes_per_second=size / 3, log=first_log.append).start()
    api = HfApi(endpoint=server.endpoint)
    sha = push(trained_run, "faulty/r8", api=api).commit_sha

    result, errors = [], []
    puller = threading.Thread(target=lambda: _run(lambda: pull("faulty/r8", api=api, cache_dir=tmp_path / "cache"), result, errors))
    puller.start()
    _wait_for(lambda: any(f"/resolve/{sha}/{WEIGHTS_FILE}" in line and '" 200 ' in line for line in first_log))
    time.sleep(0.6)  # a third of the weights or so are through
    server.kill()
    assert puller.is_alive()
    time.sleep(1.5)  # clients see refused connections meanwhile
    restarted = HubServer(data, port=port, log=second_log.append).start()
    try:
        puller.join(120)
    finally:
        restarted.stop()
    assert not errors, errors
    assert result[0].commit_sha == sha
    assert (result[0].path / WEIGHTS_FILE).read_bytes() == (trained_run / WEIGHTS_FILE).read_bytes()
    resumed = [line for line in second_log if f"/resolve/{sha}/{WEIGHTS_FILE}" in line and '" 206 ' in line]
    assert resumed, second_log  # the download continued with a Range request rather than starting over


def _run(fn, result, errors):
    try:
        result.append(fn())
    except Exception as e:  # reported by the test
        errors.append(e)


@pytest.mark.slow  # real retry back-off sleeps (~4 s)
def test_5xx_answers_are_retried_with_backoff(trained_run, tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.utils import close_session

    from hubcompare.hub.client import pull, push
    from hubcompare.hub.server import HubServer

    with HubServer(tmp_path / "hub") as server:
        api = HfApi(endpoint=server.endpoint)
        sha = push(trained_run, "flaky/r8", api=api).commit_sha
        base, failures = server.httpd.RequestHandlerClass, []

        class Flaky(base):
            def _dispatch(self, method):
                if len(failures) < 3:
                    failures.append(self.path)
                    return self._json({"error": "overloaded"}, 503)
                return super()._dispatch(method)

        server.httpd.RequestHandlerClass = Flaky
        close_session()  # a connection the push kept alive would still be served by the old handler
        pulled = pull("flaky/r8", api=api, cache_dir=tmp_path / "cache")
    assert pulled.commit_sha == sha and len(failures) == 3


def test_unreachable_hub_is_a_clear_error_after_retries(tmp_path):
    from huggingface_hub import HfApi

    from hubcompare.errors import HubUnavailableError
    from hubcompare.hub.client import pull

    api = HfApi(endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HubUnavailableError, match="nobody/r8.* did not answer after 2 attempts"):
        pull("nobody/r8", api=api, cache_dir=tmp_path / "cache", attempts=2)
