"""The ``vosctl`` command line: commands only parse and report; the work is in engine/ and trainer/."""

from __future__ import annotations

import typer

from vosctl.commands.eval import eval_app
from vosctl.commands.segment import segment
from vosctl.commands.train import train

app = typer.Typer(
    name="vosctl",
    help="Fast semi-supervised video object segmentation by pixel-wise metric learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("segment")(segment)
app.add_typer(eval_app, name="eval")
app.command("train")(train)


@app.callback()
def main() -> None:
    """Segment videos (`segment`), score on DAVIS (`eval`), train the embedding (`train`)."""
