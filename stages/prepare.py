"""Stage `prepare`: the source images -> labeled / unlabeled / test image sets (:mod:`noisy_student.data.prepare`)."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.data.folders import FolderDataError
from noisy_student.data.prepare import prepare_data, write_prepared
from noisy_student.data.shard_folders import prepare_folders_wds
from noisy_student.paths import PREPARED, metrics_file
from noisy_student.tracking import stage_run, write_metrics
from stages._common import PARAMS_OPTION, friendly_errors, params_or_exit


def main(
    params_file: Path = PARAMS_OPTION,
    out: Path = typer.Option(
        PREPARED, help="Folder for the labeled/unlabeled/test splits (.npz files; .wds folders with data.format: wds)."
    ),
    metrics: Path = typer.Option(metrics_file("prepare"), help="Split statistics (DVC metric)."),
) -> None:
    """Build the labeled set, the unlabeled pool and the test set from Fashion-MNIST or the user's folders."""
    params = params_or_exit(params_file)
    d = params.data
    if d.source == "folders" and d.format == "wds":  # streamed: folders of any size, bounded memory
        with friendly_errors(FolderDataError), stage_run("prepare", params, ("data",)):
            stats, summary = prepare_folders_wds(params, out)
            write_metrics(metrics, stats)
        typer.echo(summary)
        return
    # every input is read and checked before an MLflow run is opened: a bad folder leaves no half-made run
    with friendly_errors(FolderDataError):
        prepared = prepare_data(params)
    with stage_run("prepare", params, ("data",)):
        write_prepared(out, prepared, d.format, d.wds_shard_size)
        write_metrics(metrics, prepared.metrics)
    typer.echo(prepared.summary)


if __name__ == "__main__":
    typer.run(main)
