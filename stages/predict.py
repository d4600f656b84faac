"""Stage `predict`: the teacher labels every unlabeled image (Parquet shards, :mod:`noisy_student.pseudo_labels`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from noisy_student.console import PARAMS_OPTION, friendly_errors, params_or_exit
from noisy_student.data.wds import WdsDataError
from noisy_student.devices import inference_dtype, resolve_device
from noisy_student.distributed import process_group, rank_device
from noisy_student.paths import UNLABELED
from noisy_student.pseudo_labels.predict import ShardJob, load_predict_inputs, parse_shard, predict_pseudo_labels
from noisy_student.seeds import seed_for
from noisy_student.tracking import log_datasets, stage_run, tag_checkpoints, write_metrics
from stages._common import METRICS_OPTION
from stages._processes import start_processes, stops_in_one_line

SHARD_HELP = "i/N: label only input shards j with j % N == i (job i of N); the run without it, after them, merges."


def main(
    iteration: str = typer.Option(..., help="Iteration name (a key of `iterations` in params)."),
    teacher: Path = typer.Option(..., help="Teacher checkpoint."),
    unlabeled: Path = typer.Option(UNLABELED, help="Unlabeled pool: a .wds folder of tars."),
    out: Path = typer.Option(..., help="Folder of Parquet shards to write."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
    shard: Annotated[str | None, typer.Option(help=SHARD_HELP, metavar="i/N")] = None,
) -> None:
    """Soft pseudo labels (eval mode, ``pseudo_labels`` temperature / top_k): tar j of the pool -> ``part-<j>.parquet``,
    skipped when already written with this teacher and params. ``--shard i/N`` jobs or torchrun ranks split the
    tars; the run without ``--shard`` (rank 0) completes the folder and writes the metrics from its files."""
    with friendly_errors(ValueError):
        part = parse_shard(shard) if shard is not None else None
    params = params_or_exit(params_file, iteration)
    start_processes(params, any_world=True)  # distributed.processes > 1: reruns under torchrun (ranks split shards)
    pl = params.pseudo_labels
    with friendly_errors(ValueError):  # every input is read and checked before an MLflow run is opened
        inputs = load_predict_inputs(teacher, unlabeled, pl)
    device = resolve_device(params.device)
    # a tar found damaged while labelling (truncated copy, bad member): one line naming it; the tars labelled
    # before it stay written, the MLflow run ends failed
    with friendly_errors(WdsDataError), process_group(device) as world, stops_in_one_line("predict"):
        job, device = ShardJob(part, world.rank, world.size), rank_device(device)
        amp_dtype = inference_dtype(params.precision, device)
        seed = seed_for(params.seed, "predict")
        if not job.merges:  # a --shard job or a torchrun rank > 0: its shards only, no MLflow run or metrics
            done = predict_pseudo_labels(inputs, out, pl, device, seed, job, amp_dtype)
        else:
            with stage_run("predict", params, ("pseudo_labels",), iteration):
                log_datasets(inference=(unlabeled,))
                tag_checkpoints(teacher=teacher, teacher_name=params.iterations[iteration].teacher)
                done = predict_pseudo_labels(inputs, out, pl, device, seed, job, amp_dtype)
                write_metrics(metrics, done.metrics or {})
    if job.rank == 0:
        typer.echo(f"predict: labelled {done.written} shards ({done.images} images), {done.skipped} already written")


if __name__ == "__main__":
    typer.run(main)
