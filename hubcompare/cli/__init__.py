"""The `hubcompare` command (Typer + rich): the only code that talks to the terminal."""

from .main import app, main

__all__ = ["app", "main"]
