"""How a command's help names the values it takes: words (TEXT, INTEGER, PATH, REF...), not Python types.

Typer derives a value's name from its annotation (``<str>``, ``<int range>``, ``<list[str]>``) and shows a
required argument as ``{refs}...``. Every hubcompare command is a :class:`HubcompareCommand`, which gives each
option and argument without a ``metavar`` of its own a readable one when it is built, and prints arguments as
click does: ``REF...`` in the usage line, ``REF`` in the argument list (no type after it).
"""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperCommand

__all__ = ["HubcompareCommand", "readable_metavar"]

# an argument's parameter name -> how help names its value (default: the name in capitals, a plural's "s" dropped)
ARGUMENT_WORDS = {
    "refs": "REF", "reference": "REF", "ref": "REF", "run_dir": "RUN_DIR", "run_dirs": "RUN_DIR", "a": "A", "b": "B",
}
# each command's examples, printed as written (never re-wrapped) at the end of its help
EXAMPLES = {
    "train": ["hubcompare train digits --depth 14 --seed 1", "hubcompare train cifar10 --depth 56 --width 2 --out runs/w2",
              "hubcompare train my-recipe.yaml --epochs 5"],
    "eval": ["hubcompare eval runs/digits-d14-w1-s1", "hubcompare eval hf-hub:OWNER/NAME@main --device cuda"],
    "info": ["hubcompare info runs/digits-d14-w1-s1", "hubcompare info timm-resnet18-a1 --json"],
    "grid": ["hubcompare grid digits-zoo", "hubcompare grid my-grid.yaml --workers 2 --out runs/zoo"],
    "push": ["hubcompare push runs/digits-d14-w1-s1 --repo OWNER/digits-d14"],
    "push-population": ["hubcompare push-population runs/zoo/* --population zoo --owner OWNER"],
    "pull": ["hubcompare pull hf-hub:OWNER/digits-d14@main", "hubcompare pull timm:resnet18.a1_in1k"],
    "layers": ["hubcompare layers runs/digits-d14-w1-s1", "hubcompare layers timm-resnet18-a1 --layers 'layer*'"],
    "cross-cka": ["hubcompare cross-cka runs/a runs/b", "hubcompare cross-cka runs/a runs/b runs/c --layers '*.out' --passes 2"],
    "compare": ["hubcompare compare runs/a runs/b --batch-size 500 --measure rsa --measure mknn",
                "hubcompare compare A B --measure all --param rbf-cka.frac=0.5 --json"],
    "measures": ["hubcompare measures", "hubcompare measures --json"],
    "grounding": ["hubcompare grounding @seeds.txt @shuffled.txt",
                  "hubcompare grounding 'runs/s0+runs/s1+runs/s2+runs/s3+runs/s4' --measure rsa"],
    "cka": ["hubcompare cka runs/digits-d14-w1-s1", "hubcompare cka timm-resnet18-a1 --dataset cifar10 --examples 1000"],
    "blocks": ["hubcompare blocks runs/digits-d56-w1-s0"],
    "probes": ["hubcompare probes runs/digits-d56-w1-s0 --layers '*.out'"],
    "delete-blocks": ["hubcompare delete-blocks runs/digits-d56-w1-s0"],
    "agreement": ["hubcompare agreement runs/a runs/b", "hubcompare agreement population:wide population:deep"],
    "class-diff": ["hubcompare class-diff population:wide population:deep --top 5"],
    "across-seeds": ["hubcompare across-seeds runs/s0+runs/s1+runs/s2 runs/t0+runs/t1+runs/t2",
                     "hubcompare across-seeds population:deep population:wide --measure rsa"],
    "report": ["hubcompare report runs/digits-d14-w1-s1 --out report.html"],
    "push-result": ["hubcompare push-result latest --repo OWNER/my-result"],
    "serve": ["hubcompare serve", "hubcompare serve --host 0.0.0.0 --token \"$HUBCOMPARE_TOKEN\" --workers 2"],
    "registry add": ["hubcompare registry add digits-d14 runs/digits-d14-w1-s1", "hubcompare registry add r18 timm:resnet18.a1_in1k"],
    "registry list": ["hubcompare registry list", "hubcompare registry list --depth 56 --json"],
    "registry sync": ["hubcompare registry sync --author OWNER --population zoo"],
    "results list": ["hubcompare results list"],
    "results verify": ["hubcompare results verify latest"],
    "hub serve": ["hubcompare hub serve --data hub-data --port 8000", "HF_ENDPOINT=http://127.0.0.1:8000 hubcompare pull hf-hub:local/x"],
}
WORDS = ((bool, None), (int, "INTEGER"), (float, "NUMBER"), (Path, "PATH"), (str, "TEXT"))


def _value_type(annotation) -> type | None:
    """The element type of ``annotation``: ``list[X]`` -> X, ``Optional[X]`` -> X."""
    args = getattr(annotation, "__args__", None)
    if args:
        inner = [a for a in args if a is not type(None)]
        return _value_type(inner[0]) if inner else None
    return annotation if isinstance(annotation, type) else None


def readable_metavar(param) -> str | None:
    """The word help shows for ``param``'s value: ARGUMENT_WORDS or the name for an argument, a type's word for an
    option (None for a flag, whose value is its presence)."""
    if param.param_type_name == "argument":
        return ARGUMENT_WORDS.get(param.name, param.name.upper())
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    kind = _value_type(annotation)
    for typ, word in WORDS:
        if kind is not None and issubclass(kind, typ):
            return word
    return "VALUE"


class HubcompareCommand(TyperCommand):
    """A Typer command whose help names values in words (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None and (word := readable_metavar(param)) is not None:
                param.metavar = word

    def format_epilog(self, ctx: typer.Context, formatter) -> None:
        super().format_epilog(ctx, formatter)
        path = ctx.command_path.split(" ", 1)[1] if " " in ctx.command_path else ctx.command_path
        examples = EXAMPLES.get(path)
        if examples:
            formatter.write_paragraph()
            formatter.write_text("\b\nExamples:\n" + "\n".join(f"  {line}" for line in examples))

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            word = param.metavar or param.name.upper()
            word = word if param.required else f"[{word}]"
            pieces.append(word + ("..." if param.nargs != 1 else ""))
        return pieces

    def format_options(self, ctx: typer.Context, formatter) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":  # "REF <list[str]>" -> "REF..."
                record = ((param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else ""), record[1])
                args.append(record)
            elif param.param_type_name == "option":
                opts.append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)
