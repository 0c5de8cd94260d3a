"""The `hubcompare` command (Typer + rich): the only code that talks to the terminal.

One module per command group -- ``train`` (train, eval, info), ``compare`` (layers, cross-cka, cka,
blocks), ``hub`` (hub serve, push, push-population, pull, registry ...), ``population``
(agreement, class-diff) -- plus ``options`` (consoles, shared options, printing) and ``main``
(the app, its one error boundary, the registration of every group).

The commands only parse options, call the library and render its results. These modules stay
cheap to import: the heavy library sub-packages (similarity, populations, hub, training; with
them matplotlib, scipy and the Hub client) are imported inside the command bodies
(function-local imports, on purpose), so ``hubcompare --help`` and usage errors load no more
than ``import hubcompare`` itself does.
"""

from .main import app, main

__all__ = ["app", "main"]
