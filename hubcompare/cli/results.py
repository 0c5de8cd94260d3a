"""The result store on the command line: ``results list|show|rm|pull|verify`` and ``push-result`` (Typer + rich)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich import box
from rich.markup import escape

from .help import HubcompareCommand
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .options import DataDir, Device, MaxParams, Threads, console, err_console, pick_device, progress_console, set_threads
from .output import Json, add_column, plural, print_json, table

results_app = typer.Typer(help="Stored comparison results: list, show, remove, pull shared ones, verify one.",
                          no_args_is_help=True)

KeyArg = Annotated[str, typer.Argument(help="A result key, its first 6+ characters (see `hubcompare results list`), or "
                                             "'latest' (the newest stored result).")]
LATEST = "latest"  # not hex, so never a key prefix
SharedRef = Annotated[str, typer.Argument(help="hf-hub-result:OWNER/NAME[@REVISION]: a result shared with push-result.")]


def _store():
    from ..results.store import ResultStore

    return ResultStore()


def _resolve(store, key: str):
    """A key, a unique prefix of one, or ``latest``: the stored result it names (typed errors otherwise)."""
    from ..errors import ResultNotFoundError
    from ..results.store import check_key_prefix

    if key != LATEST:
        return store.resolve(check_key_prefix(key))
    newest = store.list(limit=1)
    if not newest:
        raise ResultNotFoundError("no stored result yet: the store fills as you compare (cross-cka, cka, blocks, ...)")
    return newest[0]


def _origin(stored) -> str:
    """Where a result came from, for people: computed here, or pulled (unchecked until verified) and from where."""
    if stored.pulled:
        return f"pulled from {stored.source} (computed elsewhere; `hubcompare results verify {stored.key[:12]}` checks it)"
    return "computed here"


def _when(created: str) -> str:
    """``2026-01-31T12:00:00+00:00`` -> ``2026-01-31 12:00`` (UTC, as stored)."""
    return created.replace("T", " ")[:16]


def _interactive() -> bool:
    """Whether someone can answer a question (stdin is a terminal)."""
    return sys.stdin.isatty()


def _flat(prefix: str, value, rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Nested JSON as ``a.b[0].c = value`` rows: what a key hashes, readable in a two-column table."""
    import json

    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        for i, v in enumerate(value):
            _flat(f"{prefix}[{i}]", v, rows)
    else:
        rows.append((prefix, value if isinstance(value, str) else json.dumps(value)))
    return rows


@results_app.command("list", cls=HubcompareCommand)
def results_list(
    kind: Annotated[Optional[str], typer.Option("--kind", help="Only results of this kind (cross-cka, cka, blocks...).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Only results comparing this model: a reference (hf-hub:OWNER/NAME matches every commit) or a "
                        "registry name.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many (newest first).")] = None,
    as_json: Json = False,
) -> None:
    """List stored results, newest first."""
    store = _store()
    found = store.list(kind=kind, model=model, limit=limit)
    if model is not None and ":" not in model:  # a registry name: also what it points at
        from ..hub.registry import Registry

        entry = Registry().entries().get(model)
        if entry is not None:
            keys = {s.key for s in found}
            found += [s for s in store.list(kind=kind, model=entry.reference, limit=limit) if s.key not in keys]
            found = sorted(found, key=lambda s: s.created, reverse=True)[:limit]
    if as_json:
        print_json([s.to_json() for s in found])
        return
    if not found:
        what = " ".join(x for x in (f"of kind {kind}" if kind else "", f"comparing {model}" if model else "") if x)
        console.print(f"No stored result{' ' + escape(what) if what else ''} yet: the store fills as you compare "
                      "(cross-cka, cka, blocks, agreement, ...).", soft_wrap=True, highlight=False)
        return
    # the key (what a user copies) and the date never fold; the title and source fold onto more lines, never cut
    t = table(show_lines=True, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    add_column(t, "key", no_wrap=True, min_width=12)
    add_column(t, "kind", no_wrap=True)
    add_column(t, "title", ratio=3)
    add_column(t, "dataset", ratio=1)
    add_column(t, "created", min_width=10)
    add_column(t, "s", no_wrap=True, justify="right")
    add_column(t, "source", ratio=2)
    for s in found:
        t.add_row(s.key[:12], s.kind, escape(s.title), escape(s.dataset), _when(s.created), f"{s.seconds:.1f}",
                  escape(s.source))
    console.print(t)
    console.print(plural(len(found), "result"), highlight=False)


@results_app.command("show", cls=HubcompareCommand)
def results_show(
    key: Annotated[str, typer.Argument(help="A result key or 6+ character prefix, 'latest', or "
                                            "hf-hub-result:OWNER/NAME[@REV] (pulled into the store first).")],
    as_json: Json = False,
) -> None:
    """Show one stored result: its summary, what its key hashes (models, dataset, settings), and its files."""
    from ..results.share import REFERENCE_PREFIX, parse_result_reference
    from ..results.store import check_key_prefix

    if key.startswith(REFERENCE_PREFIX):
        parse_result_reference(key)  # refused before the store is opened
        stored = _pull(key, _store(), as_json)
    else:
        if key != LATEST:
            check_key_prefix(key)  # refused before the store is opened
        stored = _resolve(_store(), key)
    if as_json:
        print_json({**stored.to_json(), "file_paths": {name: str(stored.file(name)) for name in stored.files}})
        return
    # the key on a line of its own, whole (a table cell would fold it at 80 columns, and a folded key does not paste)
    console.print(f"[bold]{escape(stored.title)}[/]\nkey {stored.key}", soft_wrap=True, highlight=False)
    t = table("field", "value", show_header=False)
    for label, value in (("kind", stored.kind), ("created (UTC)", _when(stored.created)),
                         ("seconds", f"{stored.seconds:.1f}"), ("source", _origin(stored)), ("dataset", stored.dataset),
                         ("models", "\n".join(stored.models))):
        t.add_row(label, escape(value))
    for label, value in _flat("", stored.summary, []):
        t.add_row(f"summary: {escape(label)}", escape(value))
    console.print(t)
    k = table("key input", "value", title="what the key hashes")
    for label, value in _flat("", stored.key_inputs, []):
        k.add_row(escape(label), escape(value))
    console.print(k)
    console.print(f"[bold]{plural(len(stored.files), 'file')}[/] in {escape(str(stored.path))}:", highlight=False)
    for name in stored.files:
        console.print(f"  {escape(str(stored.file(name)))}", soft_wrap=True, highlight=False)


@results_app.command("rm", cls=HubcompareCommand)
def results_rm(
    key: KeyArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
    as_json: Json = False,
) -> None:
    """Remove a stored result (its index entry and its files). Asks first unless --yes."""
    from ..results.store import check_key_prefix

    if key != LATEST:
        check_key_prefix(key)  # refused before the store is opened
    store = _store()
    stored = _resolve(store, key)
    if not yes:
        if not _interactive():
            from ..errors import ConfirmationRequiredError

            raise ConfirmationRequiredError(f"not removing result {stored.key[:12]} ({stored.title}): there is no terminal "
                                            "to confirm on; add --yes to remove it")
        if not typer.confirm(f"Remove result {stored.key[:12]} ({stored.title}, {plural(len(stored.files), 'file')})?"):
            err_console.print("kept", highlight=False)
            raise typer.Exit(1)
    removed = store.remove(stored.key)
    if as_json:
        print_json(removed.to_json())
        return
    console.print(f"removed result [bold]{removed.key[:12]}[/] ({escape(removed.title)})", highlight=False)


def _pull(reference: str, store, as_json: bool):
    from ..results.share import pull_result
    from .hub import quiet_hub_bars

    quiet_hub_bars()
    out = progress_console(as_json)
    with out.status(f"pulling {escape(reference)}"):
        stored = pull_result(reference, store)
    out.print(f"[bold green]{escape(reference)}[/] -> result [bold]{stored.key[:12]}[/] ({escape(stored.source)})",
              highlight=False, soft_wrap=True)
    return stored


@results_app.command("pull", cls=HubcompareCommand)
def results_pull(reference: SharedRef, as_json: Json = False) -> None:
    """Download a shared result at one commit, check every file (no pickles; the key must match its inputs) and store it."""
    from ..results.share import parse_result_reference

    parse_result_reference(reference)
    stored = _pull(reference, _store(), as_json)
    if as_json:
        print_json(stored.to_json())
        return
    console.print(f"stored in {escape(str(stored.path))}: {escape(', '.join(stored.files))}", highlight=False, soft_wrap=True)


def push_result(
    key: KeyArg,
    repo: Annotated[str, typer.Option("--repo", help="OWNER/NAME of the dataset repo (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    as_json: Json = False,
) -> None:
    """Publish a stored result as a Hub dataset repo (files, a card, the record); others pull it as hf-hub-result:.

    The Hub is HF_ENDPOINT (default huggingface.co) with HF_TOKEN, as for `hubcompare push`."""
    from ..hub.names import check_repo_id
    from ..results.share import REFERENCE_PREFIX
    from ..results.share import push_result as do_push
    from ..results.store import check_key_prefix
    from .hub import quiet_hub_bars

    check_repo_id(repo)  # before anything else
    if key != LATEST:
        check_key_prefix(key)
    stored = _resolve(_store(), key)
    quiet_hub_bars()
    out = progress_console(as_json)
    with out.status(f"pushing result {stored.key[:12]} to {escape(repo)}"):
        url, sha = do_push(stored, repo, private=private)
    reference = f"{REFERENCE_PREFIX}{repo}@{sha}"
    if as_json:
        print_json({"key": stored.key, "repo_id": repo, "url": url, "commit_sha": sha, "reference": reference})
        return
    out.print(f"[bold green]{escape(repo)}[/] at [bold]{sha}[/]: {escape(url)}", highlight=False, soft_wrap=True)
    out.print(f"pull it with: hubcompare results pull {escape(reference)}", highlight=False, soft_wrap=True)


@results_app.command("verify", cls=HubcompareCommand)
def results_verify(
    key: KeyArg,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0, help="The largest absolute difference accepted per array (float32 passes on another "
                                     "device or thread count agree far closer than the default).")] = 1e-4,
    data_dir: DataDir = None,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    as_json: Json = False,
) -> None:
    """Compute a stored result again here from its record's inputs and compare it array by array (it stays stored).

    Exit code 0 when every array (each NPZ array; each numeric JSON field, list items folded) is within --tolerance,
    1 when one is not. A result whose inputs are not on this machine (other models, data or version) is an error."""
    from ..comparisons.verify import verify_result
    from ..results.store import check_key_prefix
    from .stored import Live

    if key != LATEST:
        check_key_prefix(key)  # refused before the store is opened
    store = _store()
    stored = _resolve(store, key)
    set_threads(threads)
    dev = pick_device(device)
    con = progress_console(as_json)
    with Live(con) as live:
        report = verify_result(stored, store=store, tolerance=tolerance, data_dir=data_dir, max_params=max_params,
                               device=dev, on_progress=live)
    if as_json:
        print_json(report.to_json())
    else:
        console.print(f"result {stored.key[:12]} ({escape(stored.title)}), {escape(_origin(stored))}", highlight=False,
                      soft_wrap=True)
        t = table("file", "array", "size", "max |stored - here|", title=f"recomputed here in {report.seconds:.1f} s")
        for c in report.checks:
            bad = not c.max_abs_diff <= tolerance
            diff = "shape or presence differs" if c.max_abs_diff == float("inf") else f"{c.max_abs_diff:.3g}"
            t.add_row(escape(c.file), escape(c.name), str(c.size), f"[red]{diff}[/]" if bad else diff)
        console.print(t)
        verdict = (f"[bold green]verified[/]: {plural(len(report.checks), 'array')} within {tolerance:g}" if report.ok
                   else f"[bold red]MISMATCH[/]: {plural(len(report.mismatches), 'array')} of {len(report.checks)} differ "
                        f"by more than {tolerance:g}" if report.checks else "[bold red]nothing to compare[/]")
        console.print(verdict, highlight=False)
    if not report.ok:
        raise typer.Exit(1)
