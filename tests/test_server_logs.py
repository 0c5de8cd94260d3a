"""Request logs of the two servers (`hubcompare hub serve`, `hubcompare serve`): one line per request on stderr only
in a terminal's foreground; a server started with '&' or with its output redirected is quiet unless --verbose or
--log-file says otherwise (#25 item 10)."""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port

from hubcompare.cli.serve import request_log, uvicorn_log_config
from hubcompare.errors import ServiceConfigError

CLI = str(Path(sys.executable).parent / "hubcompare")

PROBE = """
import os, sys
from hubcompare.cli.serve import in_terminal_foreground as f
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)  # what an interactive shell does for `cmd &`: a group of its own, not the terminal's foreground
    print("background", f(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print("foreground", f(), flush=True)
"""


def _run_in_a_terminal(code: str, timeout: float = 20.0) -> str:
    """Run ``python -c code`` with a pseudo-terminal as its controlling terminal, stdin and output; what it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: session leader of the pty, in its foreground group
        os.execv(sys.executable, [sys.executable, "-c", code])
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        os.close(fd)
        os.waitpid(pid, 0)
    return out.decode(errors="replace")


@pytest.mark.slow  # imports hubcompare (torch) in a fresh process: seconds on a busy machine
def test_only_a_terminals_foreground_logs_by_default():
    out = _run_in_a_terminal(PROBE)
    assert "background False" in out and "foreground True" in out, out


def test_the_default_follows_the_terminals_foreground_group(monkeypatch):
    # not a terminal (pytest's own stdin and output): quiet
    assert request_log(quiet=False, verbose=False, log_file=None) == (False, None)

    class Tty:
        def fileno(self):
            return 0

    monkeypatch.setattr(sys, "stdin", Tty())
    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.setattr(os, "isatty", lambda fd: True)
    monkeypatch.setattr(os, "getpgrp", lambda: 4242)
    monkeypatch.setattr(os, "tcgetpgrp", lambda fd: 4242)
    assert request_log(quiet=False, verbose=False, log_file=None) == (True, None)  # in the foreground: logs
    assert request_log(quiet=True, verbose=False, log_file=None) == (False, None)
    monkeypatch.setattr(os, "tcgetpgrp", lambda fd: 1)  # `cmd &`: another group is the terminal's foreground
    assert request_log(quiet=False, verbose=False, log_file=None) == (False, None)


def test_verbose_quiet_and_a_log_file(tmp_path):
    assert request_log(quiet=False, verbose=True, log_file=None) == (True, None)
    assert request_log(quiet=True, verbose=False, log_file=None) == (False, None)
    log = tmp_path / "requests.log"
    assert request_log(quiet=False, verbose=False, log_file=log) == (False, log) and log.is_file()
    with pytest.raises(ServiceConfigError, match="--quiet logs no requests"):
        request_log(quiet=True, verbose=True, log_file=None)
    with pytest.raises(ServiceConfigError, match="cannot append to the log file .*: give a writable file"):
        request_log(quiet=False, verbose=False, log_file=tmp_path / "no-such-dir" / "x.log")
    config = uvicorn_log_config(False, log)
    assert config["loggers"]["uvicorn.access"]["handlers"] == ["access_file"]
    assert config["handlers"]["access_file"]["filename"] == str(log)
    assert uvicorn_log_config(True, None)["loggers"]["uvicorn.access"]["handlers"] == ["access"]
    assert uvicorn_log_config(False, None)["loggers"]["uvicorn.access"]["handlers"] == []


def _wait_port(proc, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
            time.sleep(0.1)


def _hub_serve(tmp_path: Path, *args: str) -> tuple[str, str]:
    """`hubcompare hub serve` with its output piped (as after `&` with a redirect): three requests; its stdout, stderr."""
    port = free_port()
    proc = subprocess.Popen([CLI, "hub", "serve", "--data", str(tmp_path / "data"), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        _wait_port(proc, port)
        for _ in range(3):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/whoami-v2", timeout=5).close()
            except OSError:
                pass  # any answer is a logged request
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    return out, err


@pytest.mark.slow
def test_hub_serve_is_quiet_off_a_terminal_and_logs_with_verbose_or_a_file(tmp_path):
    out, err = _hub_serve(tmp_path)
    assert "HF_ENDPOINT" in out and "/api/whoami-v2" not in err + out  # backgrounded/piped: no request lines
    out, err = _hub_serve(tmp_path, "--verbose")
    assert err.count("GET /api/whoami-v2") == 3
    log = tmp_path / "hub.log"
    out, err = _hub_serve(tmp_path, "--log-file", str(log))
    assert "/api/whoami-v2" not in err and log.read_text().count("GET /api/whoami-v2") == 3


@pytest.mark.slow  # starts `hubcompare serve` (a torch import)
def test_serve_logs_requests_to_its_log_file_and_not_to_redirected_output(tmp_path):
    from service_harness import running_service

    log = tmp_path / "requests.log"
    with running_service(tmp_path / "home", args=("--log-file", str(log))) as service:
        for _ in range(3):
            service.get_json("/api/health")
        deadline = time.monotonic() + 10
        while log.read_text().count('"GET /api/health HTTP/1.1" 200') < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        output = service.log_tail(20_000)
    assert log.read_text().count('"GET /api/health HTTP/1.1" 200') >= 3, log.read_text()
    assert "GET /api/health" not in output and "hubcompare serve" in output, output  # redirected: start-up lines only
