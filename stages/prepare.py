"""Stage `prepare`: the source images -> labeled / unlabeled / test split folders.

Fashion-MNIST: :mod:`noisy_student.data.prepare`; the user's folders: :mod:`noisy_student.data.shard_folders`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.console import PARAMS_OPTION, friendly_errors, params_or_exit
from noisy_student.data.folders import FolderDataError
from noisy_student.data.prepare import prepare_fashion_mnist, write_prepared
from noisy_student.data.shard_folders import prepare_folders
from noisy_student.data.wds import WdsDataError
from noisy_student.paths import PREPARED, metrics_file
from noisy_student.tracking import stage_run, write_metrics


def main(
    params_file: Path = PARAMS_OPTION,
    out: Path = typer.Option(
        PREPARED, help="Folder for the labeled/unlabeled/test splits (.wds folders of WebDataset tars)."
    ),
    metrics: Path = typer.Option(metrics_file("prepare"), help="Split statistics (DVC metric)."),
) -> None:
    """Build the labeled set, the unlabeled pool and the test set from Fashion-MNIST or the user's folders."""
    params = params_or_exit(params_file)
    # Every input is read and checked before an MLflow run is opened: a bad folder or image stops the stage
    # with one line and leaves no half-made run. Folders are decoded a chunk at a time straight into the tars
    # (bounded memory, folders of any size), so they are written here too; out changes only once all is done.
    if params.data.source == "folders":
        with friendly_errors(FolderDataError, WdsDataError):
            stats, summary = prepare_folders(params, out)
        with stage_run("prepare", params, ("data",)):
            write_metrics(metrics, stats)
    else:
        with friendly_errors(ValueError):  # e.g. data.labeled_per_class above what a class holds
            prepared = prepare_fashion_mnist(params)
        with friendly_errors(WdsDataError), stage_run("prepare", params, ("data",)):
            write_prepared(out, prepared, params.data.wds_shard_size)
            write_metrics(metrics, prepared.metrics)
        summary = prepared.summary
    typer.echo(summary)


if __name__ == "__main__":
    typer.run(main)
