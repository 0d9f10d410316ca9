"""The ``vosctl`` command line: commands only parse and report; the work is in engine/ and trainer/."""

from __future__ import annotations

import gc

from vosctl.threads import configure_threads

configure_threads()  # before torch loads, which the commands import
# The libraries load with the cyclic garbage collector off, and what they made is then frozen out
# of its reach: every full collection walked their ~220,000 objects again (0.07-0.12 s each; four
# of them in a 40-frame run, one inside the segmentation, which its fps counts, one at exit).
gc.disable()

import typer  # noqa: E402

from vosctl.commands.batch import batch  # noqa: E402
from vosctl.commands.eval import eval_app  # noqa: E402
from vosctl.commands.segment import segment  # noqa: E402
from vosctl.commands.train import train  # noqa: E402
from vosctl.commands.train_refiner import train_refiner  # noqa: E402

gc.freeze()
gc.enable()

app = typer.Typer(
    name="vosctl",
    help="Fast semi-supervised video object segmentation by pixel-wise metric learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("segment")(segment)
app.command("batch")(batch)
app.add_typer(eval_app, name="eval")
app.command("train")(train)
app.command("train-refiner")(train_refiner)


@app.callback()
def main() -> None:
    """Segment videos (`segment`, `batch` for whole folders), score on DAVIS (`eval`), train (`train`,
    `train-refiner`)."""
