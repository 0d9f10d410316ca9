"""``vosctl eval davis16``: run the model on a DAVIS split (or score a results folder) and report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from vosctl.console import console, out, reported_errors
from vosctl.options import (
    BatchOption,
    DebugOption,
    DeviceOption,
    FullPrecisionOption,
    KOption,
    MaxSizeOption,
    ModelOption,
    OnlineOption,
    PresetOption,
    RefineOption,
    ThreadsOption,
    session_overrides,
)
from vosctl.threads import compute_threads

eval_app = typer.Typer(help="Benchmarks, scored as the official evaluations.", no_args_is_help=True)


def _gpu_list(gpus: str | None) -> list[int] | None:
    if not gpus:
        return None
    import torch

    if gpus == "all":
        return list(range(torch.cuda.device_count()))
    return [int(g) for g in gpus.split(",") if g.strip()]


@eval_app.command("davis16")
def davis16(
    data: Annotated[Path, typer.Option("--data", help="DAVIS root (ImageSets/, JPEGImages/, Annotations/).")],
    split: Annotated[str, typer.Option("--split", help="Split list name, e.g. val or train.")] = "val",
    results: Annotated[
        Path | None, typer.Option("--results", help="Score this results folder instead of running a model.")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: runs/eval-<split>).")] = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    max_size: MaxSizeOption = None,
    online: OnlineOption = None,
    refine: RefineOption = None,
    k: KOption = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Worker processes sharing the sequences.")] = 1,
    gpus: Annotated[str | None, typer.Option("--gpus", help="GPUs for the workers, e.g. 0,1 or all.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip sequences finished by the same model.")] = False,
    threads: ThreadsOption = None,
    full_precision: FullPrecisionOption = False,
    preset: PresetOption = None,
    batch: BatchOption = None,
    debug: DebugOption = False,
) -> None:
    """Score on DAVIS 2016: J and F (mean, recall, decay), J&F, speed; results.json/csv/png."""
    from vosctl.eval_run import evaluate_model
    from vosctl.evaluate import score_results, summary_table, write_report

    with reported_errors(debug):
        torch.set_num_threads(compute_threads(threads))
        target = out_dir or (results if results is not None else Path("runs") / f"eval-{split}")
        if results is not None:
            summary = score_results(data=data, split=split, results=results, nproc=nproc)
        else:
            overrides = session_overrides(
                preset=preset, max_size=max_size, online=online, k=k, refine=refine, full_precision=full_precision
            )
            columns = [
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            ]
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("sequences", total=None)

                def on_sequence(seq: str, figures: dict) -> None:
                    progress.advance(task)
                    progress.console.print(f"  {seq}: J {figures['J_mean']:.3f}  F {figures['F_mean']:.3f}")

                summary = evaluate_model(
                    data=data,
                    split=split,
                    out=target,
                    model_spec=model,
                    overrides=overrides,
                    device=device,
                    nproc=nproc,
                    gpus=_gpu_list(gpus),
                    resume=resume,
                    on_sequence=on_sequence,
                    batch=batch,
                )
            if summary.get("rank", 0) != 0:
                return
        write_report(summary, target)
        out.print(summary_table(summary))
        line = f"J&F {summary['JF_mean']:.3f}  J {summary['J_mean']:.3f}  F {summary['F_mean']:.3f}"
        if summary.get("seconds_per_frame"):
            line += (
                f"  engine {summary['seconds_per_frame']:.3f} s/frame ({summary['fps']:.1f} fps), "
                f"end to end {summary['end_to_end_seconds_per_frame']:.3f} s/frame"
            )
        out.print(line)
        out.print(f"Wrote {target / 'results.json'}, results.csv and results.png")
