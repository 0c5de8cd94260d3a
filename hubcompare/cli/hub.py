"""Hub commands of the CLI: ``hub serve``, ``push``, ``push-population``, ``pull`` and ``registry ...``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .help import HubcompareCommand
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .options import MaxParams, RunDir, console, err_console, finite, progress_console, warn
from .options import fraction as fraction_option
from .output import Json, plural, print_json, table
from .serve import request_log

hub_app = typer.Typer(help="Run a local Hugging Face Hub-protocol server.", no_args_is_help=True)
registry_app = typer.Typer(help="Names for models, with the metadata to select populations.", no_args_is_help=True)

Register = Annotated[bool, typer.Option("--register/--no-register", help="Record the pushed model in the registry.")]


@hub_app.command("serve", cls=HubcompareCommand)
def serve(
    data: Annotated[Path, typer.Option("--data", help="Folder holding the repos (created if missing).")],
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port).")] = 8080,
    host: Annotated[str, typer.Option("--host", help="Interface. Anything but loopback (127.0.0.1) needs tokens.")] = "127.0.0.1",
    token_file: Annotated[Optional[Path], typer.Option(
        "--token-file", help="Write tokens, one a line (also $HUBCOMPARE_HUB_TOKENS, comma separated). With tokens every "
        "write, and every read of a private repo, needs 'Authorization: Bearer TOKEN' (HF_TOKEN); without any, only "
        "loopback is served and any token (e.g. HF_TOKEN=hf_local) is accepted.")] = None,
    user: Annotated[str, typer.Option("--user", help="The user name whoami answers (the default namespace).")] = "local",
    max_bytes_per_second: Annotated[Optional[float], typer.Option("--max-bytes-per-second", help="Throttle downloads (simulate a slow link).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds a connection may sit idle.")] = 30.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="Log no requests, not even on a terminal.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help=(
        "Log one line per request on stderr, also when not in a terminal's foreground (by default only there).")
    )] = False,
    log_file: Annotated[Optional[Path], typer.Option("--log-file", help="Append one line per request to this file.")] = None,
) -> None:
    """Serve the Hugging Face Hub protocol from DATA (push, pull, list_models, collections) until Ctrl-C.

    Requests are logged on stderr only when the server runs in a terminal's foreground (a server started with '&',
    or with its output redirected, is quiet); --verbose logs them anyway, --log-file to a file, --quiet never."""
    from ..hub.server import load_tokens
    from ..hub.server import serve as run_server

    tokens = load_tokens(token_file)

    def ready(server) -> None:
        for note in server.store.recovered:
            err_console.print(f"[yellow]start-up:[/] {escape(note)}", soft_wrap=True, highlight=False)
        console.print(f"[bold green]Hub-protocol server[/] on {server.endpoint}, data in {data}")
        console.print(f"Point clients at it: [bold]export HF_ENDPOINT={server.endpoint}[/] (before Python starts)")
        console.print(f"writes need one of its {len(tokens)} token(s) as HF_TOKEN" if tokens
                      else "no tokens configured: any caller may write (so it serves loopback only)")

    to_terminal, log_path = request_log(quiet=quiet, verbose=verbose, log_file=log_file)
    log_handle = open(log_path, "a", encoding="utf-8", buffering=1) if log_path is not None else None

    def log(line: str) -> None:
        if to_terminal:
            err_console.print(escape(line), highlight=False, soft_wrap=True)
        if log_handle is not None:
            log_handle.write(f"{datetime.now().astimezone().isoformat(timespec='seconds')} {line}\n")

    try:
        run_server(data, host, port, user, max_bytes_per_second, log=log if to_terminal or log_handle else None,
                   on_ready=ready, tokens=tokens, timeout=timeout)
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        if log_handle is not None:
            log_handle.close()


def quiet_hub_bars() -> None:
    """Turn off huggingface_hub's own progress bars ("Upload 2 LFS files", "Fetching 4 files") for this process:
    a command shows one progress display, its own. (Pulls pass a silent bar class themselves; uploads offer no
    per-call switch.)"""
    import warnings

    from huggingface_hub.utils import disable_progress_bars

    with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=0 in the environment wins, and says so
        warnings.simplefilter("ignore")
        disable_progress_bars()


def _register(result, name: Optional[str], populations=()) -> tuple[str, Exception | None]:
    """Record a push in the registry: the name, and the typed error when recording failed (None when it worked).

    The commit has landed by then, so a registry failure must not read as a failed push (and make the user push
    again): the caller warns (:func:`_not_registered`) and the command still succeeds.
    """
    from ..errors import HubcompareError
    from ..hub.registry import Registry, entry_from_meta

    name = name or result.repo_id.replace("/", "--")
    try:
        entry = entry_from_meta(name, f"hf-hub:{result.repo_id}@{result.commit_sha}", result.meta, result.commit_sha, populations)
        Registry().add(entry, replace=True)
    except HubcompareError as e:
        return name, e
    return name, None


def _not_registered(error: Exception, fix: str) -> None:
    warn([f"the push succeeded, but recording it in the registry failed: {str(error).rstrip('.')}. Once that is "
          f"fixed, record it with {fix} (no need to push again)."])


def push(
    run_dir: RunDir,
    repo: Annotated[str, typer.Option("--repo", help="OWNER/NAME of the model repo (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    message: Annotated[Optional[str], typer.Option("--message", help="Commit message.")] = None,
    register: Register = True,
    name: Annotated[Optional[str], typer.Option("--name", help="Registry name (default OWNER--NAME).")] = None,
    as_json: Json = False,
) -> None:
    """Upload a checkpoint folder to the Hub as one commit; prints and records the commit sha (and registers
    it as OWNER--NAME, pinned to that sha)."""
    from ..hub.client import push as do_push
    from ..hub.names import check_registry_name

    if register and name is not None:
        check_registry_name(name)  # before the commit, not after it
    quiet_hub_bars()
    out = progress_console(as_json)
    with out.status(f"pushing {run_dir} to {repo}"):
        result = do_push(run_dir, repo, private=private, commit_message=message)
    what = "already up to date at" if result.skipped else "committed"
    out.print(f"[bold green]{repo}[/] {what} [bold]{result.commit_sha}[/]  (recorded in {run_dir}/.hub/pushes.json)")
    registered = None
    if register:
        registered, error = _register(result, name)
        if error is None:
            out.print(f"registry: {registered} -> hf-hub:{repo}@{result.commit_sha}")
        else:
            _not_registered(error, f"`hubcompare registry add {registered} hf-hub:{repo}@{result.commit_sha}`")
            registered = None
    if as_json:
        print_json({"repo_id": repo, "commit_sha": result.commit_sha, "skipped": result.skipped,
                    "reference": f"hf-hub:{repo}@{result.commit_sha}", "registry_name": registered})


def push_population(
    run_dirs: Annotated[list[Path], typer.Argument(help="Checkpoint folders (one per seed/member).")],
    population: Annotated[str, typer.Option("--population", help="Population name: a card tag and a collection title.")],
    owner: Annotated[str, typer.Option("--owner", help="User or organisation that owns the repos.")],
    workers: Annotated[int, typer.Option("--workers", min=1, help="Concurrent pushes.")] = 4,
    private: Annotated[bool, typer.Option("--private")] = False,
    register: Register = True,
) -> None:
    """Push many checkpoint folders concurrently (one repo each), tagged and collected as a population.

    Members already on the Hub with the same content are skipped, so rerunning after a failure
    finishes the rest without duplicate commits.
    """
    push_members(run_dirs, population, owner, private=private, workers=workers, register=register)


def push_members(run_dirs: list[Path], population: str, owner: str, *, private: bool = False, workers: int = 4,
                 register: bool = True, out=console) -> None:
    """What ``push-population`` (and ``grid --push``) does: push, register, report; PushError when any push failed."""
    from ..errors import PushError
    from ..hub.client import push_population as do_push

    quiet_hub_bars()
    unregistered: list[Exception] = []

    progress = Progress(TextColumn("[bold blue]pushing {task.fields[population]}"), BarColumn(bar_width=None), MofNCompleteColumn(),
                        TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=out)
    with progress:
        task = progress.add_task("push", total=len(run_dirs), population=population, last="")

        def done(d, result, error) -> None:
            if error is not None:
                progress.console.print(f"[red]failed[/] {d}: {escape(str(error))}")
            else:
                if register:
                    _, error = _register(result, None, [population])
                    if error is not None:
                        unregistered.append(error)
                state = "unchanged" if result.skipped else "pushed"
                progress.console.print(f"{state:>9} {d} -> {result.repo_id}@{result.commit_sha[:12]}")
            progress.update(task, advance=1, last=str(d.name))

        result = do_push(run_dirs, population, owner, private=private, workers=workers, on_done=done)
    skipped = sum(r.skipped for r in result.pushed)
    out.print(f"collection [bold]{result.collection_slug}[/]: {len(result.pushed)} members "
                  f"({len(result.pushed) - skipped} pushed, {skipped} unchanged), tag population-{population}")
    if unregistered:
        _not_registered(unregistered[0], f"`hubcompare registry sync --author {owner} --population {population}` "
                                         f"({len(unregistered)} member(s) unrecorded)")
    if result.failures:
        raise PushError(f"{len(result.failures)} of {len(run_dirs)} pushes failed (listed above); rerun the same "
                        "command to finish them", {str(k): v for k, v in result.failures.items()})


def pull(
    reference: Annotated[str, typer.Argument(help="hf-hub:OWNER/NAME[@REV], timm:NAME, a registry name, or a folder.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Also record it in the registry under this name.")] = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    as_json: Json = False,
) -> None:
    """Download a model (safetensors only) into the Hugging Face cache, pinned to a commit, and load it.

    Offline (HF_HUB_OFFLINE=1), an unpinned hf-hub:OWNER/NAME that was only pulled pinned to a commit resolves to
    the newest cached commit, and says which."""
    from ..hub.names import check_registry_name
    from ..hub.references import resolve_reference
    from ..hub.registry import Registry, entry_from_meta

    if name:
        check_registry_name(name)  # before the pull, not after it
    registry = Registry()
    with progress_console(as_json).status(f"pulling {escape(reference)}"):
        resolved = resolve_reference(reference, registry, max_params=max_params)
        parameters = sum(p.numel() for p in resolved.model.parameters())
    warn(resolved.notices)
    if name:
        registry.add(entry_from_meta(name, str(resolved.pinned), resolved.meta, resolved.commit_sha), replace=True)
    if as_json:
        print_json({"reference": reference, "pinned": str(resolved.pinned), "commit_sha": resolved.commit_sha,
                    "path": str(resolved.path), "registry_name": name, **resolved.meta.summary(), "parameters": parameters,
                    "notices": resolved.notices})
        return
    t = table(title=reference, show_header=False)
    t.add_row("reference (pinned)", str(resolved.pinned))
    t.add_row("commit", resolved.commit_sha or "(local folder)")
    t.add_row("files", str(resolved.path))
    for key, value in resolved.meta.summary().items():
        t.add_row(key, str(value))
    t.add_row("parameters", f"{parameters:,}")
    console.print(t)
    if name:
        console.print(f"registry: {name} -> {resolved.pinned}")


# --- registry ---------------------------------------------------------------------------------
@registry_app.command("add", cls=HubcompareCommand)
def registry_add(
    name: Annotated[str, typer.Argument(help="Short name (letters, digits, '-', '_', '.').")],
    reference: Annotated[str, typer.Argument(help="hf-hub:OWNER/NAME[@REV], timm:NAME, local-dir:PATH or a folder.")],
    population: Annotated[Optional[list[str]], typer.Option("--population", help="Population(s) it belongs to.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an entry of the same name.")] = False,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
) -> None:
    """Resolve (pull and load) a reference, then record it under NAME, pinned to the commit it resolved to."""
    from ..hub.references import register_reference
    from ..hub.registry import Registry

    with console.status(f"resolving {escape(reference)}"):
        entry, resolved = register_reference(Registry(), name, reference, populations=population or (), replace=replace,
                                             max_params=max_params)
    warn(resolved.notices)
    console.print(f"registry: [bold]{entry.name}[/] -> {entry.reference}")


@registry_app.command("list", cls=HubcompareCommand)
def registry_list(
    population: Annotated[Optional[str], typer.Option("--population")] = None,
    architecture: Annotated[Optional[str], typer.Option("--architecture")] = None,
    depth: Annotated[Optional[int], typer.Option("--depth")] = None,
    width: Annotated[Optional[float], typer.Option("--width", callback=finite)] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset")] = None,
    fraction: Annotated[Optional[str], typer.Option("--fraction", callback=fraction_option, help="e.g. 1, 1/4, 0.0625")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    lines: Annotated[bool, typer.Option("--lines", help="Print entries in the curated-file format (registry/*.txt).")] = False,
    as_json: Json = False,
) -> None:
    """List entries (user and curated), filtered: a population is such a query."""
    from dataclasses import asdict
    from fractions import Fraction

    from ..hub.registry import Registry

    frac = float(Fraction(fraction)) if fraction else None
    entries = Registry().query(population=population, architecture=architecture, depth=depth, width=width,
                               dataset=dataset, data_fraction=frac, seed=seed)
    if as_json:
        print_json([asdict(e) for e in entries])
        return
    if lines:
        for e in entries:
            console.print(escape(e.to_line()), highlight=False, soft_wrap=True)
        return
    # names and references are what a user copies: they fold onto more lines, never end in dots; a rule between
    # entries keeps folded rows apart
    curated = any(e.source != "user" for e in entries)
    t = table("name", "reference", "model", "acc", "populations", *(["source"] if curated else []), show_lines=True)
    for e in entries:
        model = " ".join(filter(None, (
            e.architecture, None if e.depth is None else f"d{e.depth}", None if e.width is None else f"w{e.width:g}",
            e.dataset, None if e.data_fraction in (None, 1) else f"f{e.data_fraction:g}", None if e.seed is None else f"s{e.seed}")))
        t.add_row(e.name, e.reference, model, "" if e.accuracy is None else f"{e.accuracy:.4f}", ",".join(e.populations),
                  *([Path(e.source).name] if curated else []))  # a curated file's name:line (the folder is in `show`)
    console.print(t)
    console.print(plural(len(entries), "entry", "entries"))


@registry_app.command("show", cls=HubcompareCommand)
def registry_show(name: Annotated[str, typer.Argument()], as_json: Json = False) -> None:
    """Show one entry."""
    from dataclasses import asdict

    from ..hub.registry import Registry

    entry = asdict(Registry().get(name))
    if as_json:
        print_json(entry)
        return
    t = table(title=name, show_header=False)
    for key, value in entry.items():
        t.add_row(key, "" if value is None else str(value))
    console.print(t)


@registry_app.command("remove", cls=HubcompareCommand)
def registry_remove(name: Annotated[str, typer.Argument()]) -> None:
    """Remove a user entry (curated entries live in registry/*.txt: edit the file)."""
    from ..hub.registry import Registry

    e = Registry().remove(name)
    console.print(f"removed {e.name} ({e.reference})")


@registry_app.command("sync", cls=HubcompareCommand)
def registry_sync(
    author: Annotated[str, typer.Option("--author", help="Hub user or organisation.")],
    population: Annotated[Optional[str], typer.Option("--population", help="Only models tagged population-NAME.")] = None,
    as_json: Json = False,
) -> None:
    """Fill the registry from list_models (tags hubcompare [+ population-P]), each pinned to its current sha."""
    from dataclasses import asdict

    from ..hub.endpoint import hub_api
    from ..hub.registry import Registry, sync

    api = hub_api()  # HF_ENDPOINT checked: not a URL is one typed error, before anything else
    doing = f"listing models of {escape(author)} on {escape(api.endpoint)}"
    with progress_console(as_json).status(doing) as status:
        def waiting(attempt: int, error: BaseException) -> None:  # say what it is waiting for, and why
            status.update(f"{doing}: attempt {attempt} failed ({escape(type(error).__name__)}), waiting to retry")

        entries = sync(Registry(), author, population, api=api, on_retry=waiting)
    if as_json:
        print_json([asdict(e) for e in entries])
        return
    for e in entries:
        console.print(f"{e.name} -> {e.reference}", highlight=False, soft_wrap=True)
    console.print(f"{plural(len(entries), 'entry', 'entries')} synced")
