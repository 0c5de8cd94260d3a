"""The ``hubcompare`` app: its one error boundary, and where every command group is registered."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ..errors import HubcompareError
from ..hub.names import check_endpoint_parses
from ..install import torch_pair_problem
from . import compare as _compare
from . import grid as _grid
from . import grounding as _grounding
from . import hub as _hub
from . import measures as _measures
from . import population as _population
from . import probes as _probes
from . import report as _report
from . import results as _results
from . import seeds as _seeds
from . import serve as _serve
from . import train as _train
from .help import HubcompareCommand
from .options import console, err_console, error_line

__all__ = ["ERROR_EXIT_CODE", "INTERRUPT_EXIT_CODE", "HubcompareGroup", "app", "main"]

ERROR_EXIT_CODE = 2  # a typed error the user can fix (click's usage errors exit 2 as well)
INTERRUPT_EXIT_CODE = 130  # Ctrl-C, as a shell reports SIGINT


class HubcompareGroup(TyperGroup):
    """The root command. Every command runs inside its :meth:`invoke`, so this is the one place errors
    become terminal output, for the console script (``main``) and ``CliRunner().invoke(app, ...)`` alike:

    - a :class:`~hubcompare.errors.HubcompareError`: one red line on stderr (with the command-line
      options for the arguments it names), exit code 2, no traceback;
    - Ctrl-C: "Interrupted." and exit code 130;
    - torch and torchvision from different releases (torchvision fails to load, untyped): one line naming
      both versions and the fix, exit code 2 (:func:`~hubcompare.install.torch_pair_problem`);
    - Typer/click usage errors are raised before or outside this and keep their own output;
      anything else is a bug and keeps its traceback.
    """

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            check_endpoint_parses(os.environ.get("HF_ENDPOINT"))  # else huggingface_hub's own import fails, untyped
            return super().invoke(ctx)
        except HubcompareError as e:
            err_console.print(error_line(e), soft_wrap=True, highlight=False)
            raise typer.Exit(code=ERROR_EXIT_CODE) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]Interrupted.[/]", highlight=False)
            raise typer.Exit(code=INTERRUPT_EXIT_CODE) from None
        except (RuntimeError, ImportError, AttributeError, OSError) as e:
            problem = torch_pair_problem(e)
            if problem is None:
                raise
            err_console.print(error_line(problem), soft_wrap=True, highlight=False)
            raise typer.Exit(code=ERROR_EXIT_CODE) from None


app = typer.Typer(
    name="hubcompare",
    cls=HubcompareGroup,
    help="Do these two neural networks learn the same things? Train, publish and compare models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: wraps at words, never cuts with '…' (rich's help does at 80 columns)
)

def _version(value: bool) -> None:
    """``--version``: the installed package's version, then exit."""
    if value:
        try:
            installed = version("hubcompare")
        except PackageNotFoundError:  # run from a source tree that was never installed
            installed = "(not installed)"
        console.print(f"hubcompare {installed}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print hubcompare's version and exit.")] = False,
) -> None:
    """Do these two neural networks learn the same things? Train, publish and compare models."""


app.command("train", cls=HubcompareCommand)(_train.train)
app.command("eval", cls=HubcompareCommand)(_train.eval_)
app.command("info", cls=HubcompareCommand)(_train.info)
app.command("grid", cls=HubcompareCommand)(_grid.grid)

app.add_typer(_hub.hub_app, name="hub")
app.add_typer(_hub.registry_app, name="registry")
app.command("push", cls=HubcompareCommand)(_hub.push)
app.command("push-population", cls=HubcompareCommand)(_hub.push_population)
app.command("pull", cls=HubcompareCommand)(_hub.pull)

app.command("layers", cls=HubcompareCommand)(_compare.layers)
app.command("cross-cka", cls=HubcompareCommand)(_compare.cross_cka)
app.command("compare", cls=HubcompareCommand)(_measures.compare)
app.command("measures", cls=HubcompareCommand)(_measures.measures)
app.command("grounding", cls=HubcompareCommand)(_grounding.grounding)
app.command("cka", cls=HubcompareCommand)(_compare.cka)
app.command("blocks", cls=HubcompareCommand)(_compare.blocks)
app.command("probes", cls=HubcompareCommand)(_probes.probes)
app.command("delete-blocks", cls=HubcompareCommand)(_probes.delete_blocks)

app.command("agreement", cls=HubcompareCommand)(_population.agreement)
app.command("class-diff", cls=HubcompareCommand)(_population.class_diff)
app.command("across-seeds", cls=HubcompareCommand)(_seeds.across_seeds)
app.command("report", cls=HubcompareCommand)(_report.report)

app.add_typer(_results.results_app, name="results")
app.command("push-result", cls=HubcompareCommand)(_results.push_result)
app.command("serve", cls=HubcompareCommand)(_serve.serve)


def main() -> None:
    """The console script: runs the app (errors are mapped in :class:`HubcompareGroup`)."""
    app(prog_name="hubcompare")
