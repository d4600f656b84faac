"""Stage `filter-balance`: confidence threshold, per-class cap K, duplication up to K (:mod:`.pseudo_labels.select`)."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student import paths
from noisy_student.console import PARAMS_OPTION, friendly_errors, params_or_exit
from noisy_student.pseudo_labels.select import confidence_bins, filter_balance, write_table
from noisy_student.pseudo_labels.shards import shard_files
from noisy_student.report.charts import confidence_histogram
from noisy_student.seeds import seed_for
from noisy_student.tracking import log_artifacts, stage_run, write_metrics


def main(
    iteration: str = typer.Option(..., help="Iteration name."),
    predictions: Path = typer.Option(..., help="Folder of Parquet shards from `predict`."),
    out: Path = typer.Option(..., help="Selected rows (Parquet): the prediction columns (probs or top-k) + copies."),
    metrics: Path = typer.Option(..., help="Stats JSON (DVC metric)."),
    plot: Path = typer.Option(..., help="Confidence histogram PNG."),
    classes_csv: Path = typer.Option(..., help="Per-class kept/dropped counts (CSV, DVC plot)."),
    bins_csv: Path | None = typer.Option(
        None, help="The confidence histogram as data (CSV, DVC plot); default: paths.confidence_bins beside --metrics."
    ),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Select pseudo-labeled images the paper's way and record what was kept and dropped."""
    params = params_or_exit(params_file, iteration)
    f = params.filter
    with friendly_errors(ValueError):  # a missing or unreadable shard stops here, before an MLflow run is opened
        shard_files(predictions)
    with stage_run("filter-balance", params, ("filter",), iteration):
        with friendly_errors(ValueError):  # a shard damaged past its footer: ParquetReadError
            result = filter_balance(predictions, out, f, seed_for(params.seed, "filter"))
        write_table(classes_csv, result.per_class)
        bins = confidence_bins(result.confidence, result.out_of_domain)
        bins_csv = bins_csv or paths.confidence_bins(iteration, metrics.parent)
        write_table(bins_csv, bins)
        log_artifacts("tables", classes_csv)
        log_artifacts("confidence", bins_csv)  # as in metrics/: confidence/<iteration>.csv
        confidence_histogram(bins, f.confidence_threshold, f"teacher confidence ({iteration})", plot)
        log_artifacts("plots", plot)
        write_metrics(metrics, result.stats)
    typer.echo(result.summary)


if __name__ == "__main__":
    typer.run(main)
