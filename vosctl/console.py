"""The CLI's console and its single error path: one sentence, exit code 1, traceback on --debug."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

from engine.errors import VosError

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)


@contextlib.contextmanager
def reported_errors(debug: bool) -> Iterator[None]:
    """Turn a :class:`VosError` (or Ctrl-C) into a one-line message and exit code 1."""
    try:
        yield
    except VosError as error:
        if debug:
            console.print_exception()
        console.print(f"[bold red]Error:[/] {error}")
        raise typer.Exit(1) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:  # a bug, not bad input: still one line unless --debug
        if debug:
            console.print_exception()
        console.print(f"[bold red]Error:[/] unexpected {type(error).__name__}: {error} (rerun with --debug).")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[bold red]Interrupted:[/] no partial output was kept.")
        raise typer.Exit(130) from None
