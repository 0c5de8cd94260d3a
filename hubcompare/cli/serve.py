"""``hubcompare serve``: the web pages and JSON API over the registry and the result store (uvicorn)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .options import console, err_console, one_of

DEFAULT_PORT = 8765  # as hubcompare.service.config.DEFAULT_PORT (not imported here: --help stays fast)


def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to bind. Anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = DEFAULT_PORT,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="HUBCOMPARE_TOKEN", show_envvar=True,
        help="Writes (queueing a job) need 'Authorization: Bearer TOKEN' (or the form's token field). Required off "
             "loopback; at least 16 characters.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes running comparison jobs.")] = 1,
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", help="Where the datasets are (the server's own; a request never names a path).")] = None,
    max_examples: Annotated[int, typer.Option("--max-examples", min=4, help="Most examples one comparison may use.")] = 2000,
    max_models: Annotated[int, typer.Option("--max-models", min=2, max=32, help="Most models in one comparison.")] = 8,
    backend: Annotated[str, typer.Option("--backend", callback=one_of("local", "ray"), help=(
        "Where jobs run. local: --workers processes on this machine; ray: one Ray task per job "
        "(pip install 'hubcompare[ray]')."))] = "local",
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="Ray cluster address (e.g. auto, ray://HOST:10001); default: start a local Ray.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, max=256, help="torch threads per job (Ray: the CPUs each job's task asks for; default 1 there).")] = None,
    memory_jobs: Annotated[bool, typer.Option(
        "--memory-jobs", help="Keep the job table in memory only (default: journalled beside the result store, so a "
                              "restarted server keeps its finished jobs and runs the unfinished ones again).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Log no requests, not even on a terminal.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help=(
        "Log one line per request on stderr, also when not in a terminal's foreground (by default only there).")
    )] = False,
    log_file: Annotated[Optional[Path], typer.Option("--log-file", help="Append one line per request to this file.")] = None,
) -> None:
    """Serve the registry, stored results and comparison jobs as web pages and a JSON API until Ctrl-C.

    Requests are logged on stderr only when the server runs in a terminal's foreground (a server started with '&',
    or with its output redirected, is quiet); --verbose logs them anyway, --log-file to a file, --quiet never."""
    from ..errors import ServiceDependencyError

    try:
        import uvicorn

        from ..service.app import create_app
        from ..service.config import ServiceConfig
    except ImportError as e:
        raise ServiceDependencyError(f"the service needs fastapi, uvicorn and python-multipart ({e}): "
                                     "pip install 'hubcompare[serve]'") from None

    to_terminal, log_path = request_log(quiet=quiet, verbose=verbose, log_file=log_file)
    config = ServiceConfig(host=host, port=port, token=token or None, workers=workers, data_dir=data_dir,
                           max_examples=max_examples, max_models=max_models, backend=backend, ray_address=ray_address,
                           threads=threads, keep_jobs=not memory_jobs).check()
    _check_port_free(config.host, config.port)
    if backend == "ray":
        from ..service.ray_jobs import check_ray

        check_ray(ray_address)
    app = create_app(config)
    jobs = (f"jobs on Ray{' at ' + ray_address if ray_address else ''}, {threads or 1} CPU{'s' if (threads or 1) != 1 else ''} each"
            if backend == "ray" else f"{workers} job worker{'s' if workers != 1 else ''}")
    console.print(f"[bold green]hubcompare serve[/] on [bold]{escape(config.url)}[/] "
                  f"({escape(jobs)}; API: {escape(config.url)}/docs)", soft_wrap=True)
    console.print("writes need the token (Authorization: Bearer TOKEN)" if config.writes_need_token
                  else "loopback only, no token: anyone on this machine may queue jobs", highlight=False)
    journal = app.state.service.jobs.journal
    console.print(f"jobs journalled in {escape(str(journal.path))} (a restart keeps them)" if journal is not None
                  else "jobs kept in memory only (--memory-jobs)", soft_wrap=True, highlight=False)
    try:
        # start-up and shutdown lines stay (a few, once); the request lines only where request_log says
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning" if quiet else "info",
                    access_log=to_terminal or log_path is not None,
                    log_config=uvicorn_log_config(to_terminal, log_path), timeout_graceful_shutdown=2, server_header=False)
    except KeyboardInterrupt:
        err_console.print("stopped")


def in_terminal_foreground() -> bool:
    """Whether this process runs in the foreground of a terminal: stdin and stderr are the terminal, and its process
    group is the terminal's foreground group. A command started with '&' is not (an interactive shell puts it in a
    background group; a script's shell gives it /dev/null for stdin), nor one whose output is redirected."""
    try:
        fd = sys.stderr.fileno()
        return (os.isatty(fd) and sys.stdin is not None and os.isatty(sys.stdin.fileno())
                and os.tcgetpgrp(fd) == os.getpgrp())
    except (OSError, ValueError, AttributeError):
        return False


def request_log(*, quiet: bool, verbose: bool, log_file: Optional[Path]) -> tuple[bool, Optional[Path]]:
    """Where a server logs its requests, one line each: (on stderr?, a file to append to). The rule of both servers
    (``serve`` and ``hub serve``): --quiet none; --log-file that file; --verbose stderr; by default stderr only in a
    terminal's foreground."""
    from ..errors import ServiceConfigError

    if quiet and (verbose or log_file is not None):
        raise ServiceConfigError("--quiet logs no requests: drop it, or drop --verbose / --log-file", params=("quiet",))
    if log_file is not None:
        try:
            with open(log_file, "a", encoding="utf-8"):
                pass
        except OSError as e:
            raise ServiceConfigError(f"cannot append to the log file {log_file} ({e.strerror or e}): give a writable file",
                                     params=("log_file",)) from None
    return (not quiet and (verbose or (log_file is None and in_terminal_foreground()))), log_file


def uvicorn_log_config(to_terminal: bool, log_file: Optional[Path]) -> dict:
    """uvicorn's logging with the request lines on stderr and/or appended to a file (plain text there)."""
    handlers: dict = {"default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}}
    access = []
    if to_terminal:
        handlers["access"] = {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
        access.append("access")
    if log_file is not None:
        handlers["access_file"] = {"formatter": "access_file", "class": "logging.FileHandler", "filename": str(log_file),
                                   "encoding": "utf-8"}
        access.append("access_file")
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {
            "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s", "use_colors": None},
            "access": {"()": "uvicorn.logging.AccessFormatter",
                       "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'},
            "access_file": {"()": "uvicorn.logging.AccessFormatter", "use_colors": False,
                            "fmt": '%(asctime)s %(client_addr)s - "%(request_line)s" %(status_code)s'},
        },
        "handlers": handlers,
        "loggers": {"uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
                    "uvicorn.error": {"level": "INFO"},
                    "uvicorn.access": {"handlers": access, "level": "INFO", "propagate": False}},
    }


def _check_port_free(host: str, port: int) -> None:
    """Bind once before starting, so a busy port is a typed error rather than uvicorn's exit."""
    import socket

    from ..errors import ServiceConfigError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ServiceConfigError(f"cannot resolve the host {host!r} ({e}): give an address such as 127.0.0.1",
                                 params=("host",)) from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise ServiceConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another port",
                                     params=("port",)) from None
