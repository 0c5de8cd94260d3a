"""Tables a user copies from: identifiers never fold (piped, at 80 columns); other columns fold, or drop saying so."""

from __future__ import annotations

import re

import typer.main
from rich.console import Console
from typer.testing import CliRunner

from hubcompare.cli.main import app
from hubcompare.cli.output import table
from hubcompare.hub.registry import Registry


def _render(t, width: int) -> str:
    con = Console(width=width, record=True, force_terminal=False, color_system=None)
    con.print(t)
    return con.export_text()


def test_registry_list_piped_at_80_columns_keeps_every_name_and_reference_on_one_line():
    result = CliRunner().invoke(app, ["registry", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    entries = Registry().query()
    assert entries
    for e in entries:
        assert re.search(rf"\b{re.escape(e.name)}\b", result.output), e.name
        assert str(e.reference) in result.output, e.reference
    lines = result.output.splitlines()
    widest_row = max(len(line) for line in lines if any(e.name in line and str(e.reference) in line for e in entries))
    assert max(len(line) for line in lines) <= max(80, widest_row)  # past 80 only as far as a whole name + reference needs
    assert "not shown at 80 columns:" in result.output and "populations" in result.output


def test_other_columns_fold_before_they_drop():
    t = table("name", "description")
    t.add_row("a-very-long-model-name-that-must-stay-whole", "many words " * 6)
    wide, narrow, tiny = _render(t, 120), _render(t, 70), _render(t, 50)
    assert "many words many words" in wide and "not shown" not in wide
    assert narrow.count("many") == 6 and "not shown" not in narrow and len(narrow.splitlines()) > 5  # folded
    assert "a-very-long-model-name-that-must-stay-whole" in tiny and "not shown at 50 columns: description" in tiny


def _commands(group, prefix=()):
    click_group = typer.main.get_command(group) if not hasattr(group, "commands") else group
    for name, cmd in click_group.commands.items():
        yield (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))


def test_help_is_never_cut_at_80_columns():
    """Every command's --help wraps at word boundaries: no "…", no 19-digit seed bound, no markup escapes shown."""
    commands = list(_commands(app))
    assert len(commands) > 20
    for command in commands:
        result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (command, result.output)
        assert "…" not in result.output and "9223372036854775807" not in result.output, command
        assert "\\[" not in result.output, command
        assert max(len(line) for line in result.output.splitlines()) <= 80, command
