"""The ``hubcompare`` app: its one error boundary, and where every command group is registered."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from ..errors import HubcompareError
from . import compare as _compare
from . import grid as _grid
from . import hub as _hub
from . import population as _population
from . import probes as _probes
from . import report as _report
from . import results as _results
from . import seeds as _seeds
from . import serve as _serve
from . import train as _train
from .options import err_console, error_line

__all__ = ["ERROR_EXIT_CODE", "INTERRUPT_EXIT_CODE", "HubcompareGroup", "app", "main"]

ERROR_EXIT_CODE = 2  # a typed error the user can fix (click's usage errors exit 2 as well)
INTERRUPT_EXIT_CODE = 130  # Ctrl-C, as a shell reports SIGINT


class HubcompareGroup(TyperGroup):
    """The root command. Every command runs inside its :meth:`invoke`, so this is the one place errors
    become terminal output, for the console script (``main``) and ``CliRunner().invoke(app, ...)`` alike:

    - a :class:`~hubcompare.errors.HubcompareError`: one red line on stderr (with the command-line
      options for the arguments it names), exit code 2, no traceback;
    - Ctrl-C: "Interrupted." and exit code 130;
    - Typer/click usage errors are raised before or outside this and keep their own output;
      anything else is a bug and keeps its traceback.
    """

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HubcompareError as e:
            err_console.print(error_line(e), soft_wrap=True, highlight=False)
            raise typer.Exit(code=ERROR_EXIT_CODE) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]Interrupted.[/]", highlight=False)
            raise typer.Exit(code=INTERRUPT_EXIT_CODE) from None


app = typer.Typer(
    name="hubcompare",
    cls=HubcompareGroup,
    help="Do these two neural networks learn the same things? Train, publish and compare models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("train")(_train.train)
app.command("eval")(_train.eval_)
app.command("info")(_train.info)
app.command("grid")(_grid.grid)

app.add_typer(_hub.hub_app, name="hub")
app.add_typer(_hub.registry_app, name="registry")
app.command("push")(_hub.push)
app.command("push-population")(_hub.push_population)
app.command("pull")(_hub.pull)

app.command("layers")(_compare.layers)
app.command("cross-cka")(_compare.cross_cka)
app.command("cka")(_compare.cka)
app.command("blocks")(_compare.blocks)
app.command("probes")(_probes.probes)
app.command("delete-blocks")(_probes.delete_blocks)

app.command("agreement")(_population.agreement)
app.command("class-diff")(_population.class_diff)
app.command("across-seeds")(_seeds.across_seeds)
app.command("report")(_report.report)

app.add_typer(_results.results_app, name="results")
app.command("push-result")(_results.push_result)
app.command("serve")(_serve.serve)


def main() -> None:
    """The console script: runs the app (errors are mapped in :class:`HubcompareGroup`)."""
    app(prog_name="hubcompare")
