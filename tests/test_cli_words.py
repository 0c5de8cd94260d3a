"""Words from the code (#25 item 7): what the command line says is in its own words, never Python's.

Errors name options and files, not ``overwrite=True`` or ``HfApi()``; a layer pattern one model lacks names that
model; a misspelt recipe or registry name gets "did you mean"; help names values in words (TEXT, PATH, REF...),
ends with examples that parse, and ``--version`` answers.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hubcompare.cli.help import EXAMPLES
from hubcompare.cli.main import app

runner = CliRunner()
PACKAGE = Path(__file__).resolve().parents[1] / "hubcompare"
CODE_WORDS = re.compile(r"\b[a-z_]+=(True|False|None)\b|\b[A-Za-z_][\w.]*\(\)|\.available\(|\bHfApi\b|list_models\(")


def _commands():
    """(path, click command) of every command the app has."""
    root = typer.main.get_command(app)

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    return list(walk(root, []))


def _text(node: ast.AST) -> str:
    """The literal text of a message expression (f-string parts and concatenations), placeholders dropped."""
    return "".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def test_error_messages_speak_in_parameter_names_not_python():
    """Every message a module raises (outside the CLI, whose words are its own) is free of Python calls and keyword
    arguments: ``overwrite=True``, ``HfApi().list_repo_refs``, ``LayerCapture.available(model)``, ``timm.list_models()``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            calls = [node.exc] if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) else []
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "RunState":
                calls.append(node)  # a grid's reason a run is stale, shown to the user
            for call in calls:
                for arg in call.args:
                    if m := CODE_WORDS.search(_text(arg)):
                        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {m.group()!r}")
    assert not found, "\n".join(found)


def test_a_finished_checkpoint_names_the_option_to_retrain(trained_run):
    r = runner.invoke(app, ["train", "digits", "--depth", "8", "--epochs", "3", "--out", str(trained_run)])
    out = " ".join(r.output.split())
    assert r.exit_code == 2, out
    assert "retrain it (overwrite)" in out and "--overwrite" in out and "=True" not in out


def test_a_layer_pattern_one_model_lacks_names_that_model(trained_run):
    r = runner.invoke(app, ["layers", str(trained_run), "--layers", "nope*"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2, out
    assert f"match no layer of {trained_run}" in out and "LayerCapture" not in out, out


def test_layer_capture_names_the_model_it_is_given():
    import timm

    from hubcompare.errors import LayerSelectionError
    from hubcompare.models import resnet  # noqa: F401  (registers cifar_resnet)
    from hubcompare.similarity.capture import LayerCapture

    model = timm.create_model("cifar_resnet", depth=8, width=1, num_classes=10)
    with pytest.raises(LayerSelectionError, match="match no layer of hf-hub:someone/r8;") as e:
        LayerCapture(model, ["stem", "nope*"], name="hf-hub:someone/r8")
    assert "available(" not in str(e.value)


def test_a_missing_recipe_file_is_said_as_one():
    r = runner.invoke(app, ["train", "my-recipe.yaml"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "recipe file my-recipe.yaml not found:" in out and "does not exist" in out, out
    assert "give a YAML path" not in out


def test_a_misspelt_recipe_gets_did_you_mean():
    r = runner.invoke(app, ["train", "digts"])
    assert r.exit_code == 2 and "did you mean digits?" in r.output, r.output


@pytest.mark.parametrize("epochs", ["-3", "0"])
def test_a_bad_epochs_is_an_option_error_not_the_recipe_files(epochs):
    r = runner.invoke(app, ["train", "digits", "--epochs", epochs])
    assert r.exit_code == 2 and "'--epochs'" in r.output and "digits.yaml" not in r.output, r.output


def test_an_epochs_override_below_one_blames_the_override():
    from hubcompare.errors import RecipeError
    from hubcompare.training.recipes import load_recipe

    with pytest.raises(RecipeError, match=r"^epochs = -3") as e:
        load_recipe("digits", {"train.epochs": -3})
    assert e.value.params == ("epochs",) and "digits.yaml" not in str(e.value)


def test_epochs_shorter_than_the_warmup_shorten_it_and_say_so(tmp_path, monkeypatch):
    """digits warms up for 2 epochs: --epochs 2 trains (warm-up 1), says so on stderr and records it in the recipe."""
    from hubcompare.training import loop
    from hubcompare.training.recipes import load_recipe

    recipe = load_recipe("digits", {"train.epochs": 2})
    assert recipe["train"]["warmup_epochs"] == 1 and recipe.to_dict()["train"]["warmup_epochs"] == 1
    assert "warm-up shortened to 1 epoch" in recipe.notes[0]
    assert load_recipe("digits", {"train.epochs": 3})["train"]["warmup_epochs"] == 2  # long enough: kept
    seen = {}

    def fake_train(r, out, **kwargs):
        seen["recipe"] = r
        raise KeyboardInterrupt  # stop before any work; the app says "Interrupted."

    monkeypatch.setattr(loop, "train", fake_train)
    r = runner.invoke(app, ["train", "digits", "--epochs", "2", "--out", str(tmp_path / "run")])
    assert r.exit_code == 130 and "warm-up shortened to 1 epoch" in " ".join(r.stderr.split()), r.output
    assert seen["recipe"]["train"]["warmup_epochs"] == 1 and seen["recipe"]["train"]["epochs"] == 2


def test_help_names_values_in_words_and_ends_with_examples():
    bad = []
    for path, cmd in _commands():  # each command's help as --help prints it (formatted directly: fast)
        out = cmd.get_help(cmd.context_class(cmd, info_name=" ".join(["hubcompare", *path])))
        for m in re.finditer(r"<(str|int|float|bool|path|list\[\w+\]|int range|float range)>|\{[a-z_]+\}", out):
            bad.append(f"{' '.join(path)}: {m.group()}")
        if re.search(r"^\s+--[\w-]+ (?:TEXT|INTEGER)\s+(?:Print the result as JSON|Show this message)", out, re.M):
            bad.append(f"{' '.join(path)}: a flag shows a value")
        if len(path) == 1 or path[-1] in ("add", "list", "serve"):
            if "Examples:\n  hubcompare " not in out:
                bad.append(f"{' '.join(path)}: no examples")
    assert not bad, "\n".join(bad)
    out = runner.invoke(app, ["cross-cka", "--help"]).output
    assert "Usage: hubcompare cross-cka [OPTIONS] REF..." in out and "\n  REF...  " in out
    assert re.search(r"--layers TEXT\s", out) and re.search(r"--data-dir PATH\s", out) and "--json  " in out


def test_every_example_parses():
    """Each example names a command and options it has (parsed by the command itself, nothing run)."""
    root = typer.main.get_command(app)
    for path, lines in EXAMPLES.items():
        for line in lines:
            words = shlex.split(line)
            words = words[words.index("hubcompare") + 1:]
            cmd, rest = root, words
            while hasattr(cmd, "commands"):
                cmd, rest = cmd.commands[rest[0]], rest[1:]
            cmd.make_context(" ".join(words[: len(words) - len(rest)]), list(rest))


def test_version():
    from importlib.metadata import version

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"hubcompare {version('hubcompare')}"


def test_a_misspelt_registry_name_gets_did_you_mean():
    r = runner.invoke(app, ["info", "timm-resnt18-a1"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "no registry entry 'timm-resnt18-a1': did you mean timm-resnet18-a1?" in out, out
