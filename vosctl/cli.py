"""The ``vosctl`` command line: commands only parse and report; the work is in engine/ and trainer/."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading

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


def run() -> None:
    """``vosctl`` as a program (the console script, ``python -m vosctl``): the app, then, after a
    command that succeeded, an exit that skips tearing the interpreter down. Freeing what torch,
    OpenVINO and the other libraries made took 0.16-0.25 s at the end of every run (2-core EPYC),
    after the outputs were written. By then every output is closed and in place; Python's exit
    handlers still run and the standard streams are flushed. A failure, or a thread still running,
    exits the usual way."""
    try:
        app(prog_name="vosctl")
    except SystemExit as done:
        if done.code not in (None, 0):
            raise
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(0)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
