"""The user interface: commands, options, console and tables. Nothing in the package imports it."""

from .app import app, main

__all__ = ["app", "main"]
