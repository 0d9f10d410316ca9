"""The CLI's console and its single error path: one sentence, exit code 1, traceback on --debug."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from engine.errors import VosError

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def frame_progress() -> Progress:
    """The progress display of commands that stream frames: one bar per task (its description in
    bold), done / total, the task's ``fps`` field, elapsed and remaining time. Not yet started."""
    columns = [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fps]:.1f} fps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    return Progress(*columns, console=console, transient=False)


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
