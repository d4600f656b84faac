"""Stage `filter-balance`: confidence threshold, per-class cap K, duplication up to K."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import typer

from noisy_student.io import atomic_path
from noisy_student.plots import confidence_histogram
from noisy_student.pseudo_labels import filter_balance_shards, shard_files
from stages._common import PARAMS_OPTION, friendly_errors, params_or_exit, stage_run, write_metrics


def main(
    iteration: str = typer.Option(..., help="Iteration name."),
    predictions: Path = typer.Option(..., help="Folder of Parquet shards from `predict`."),
    out: Path = typer.Option(..., help="Selected rows (Parquet): the prediction columns (probs or top-k) + copies."),
    metrics: Path = typer.Option(..., help="Stats JSON (DVC metric)."),
    plot: Path = typer.Option(..., help="Confidence histogram PNG."),
    classes_csv: Path = typer.Option(..., help="Per-class kept/dropped counts (CSV, DVC plot)."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Select pseudo-labeled images the paper's way and record what was kept and dropped."""
    params = params_or_exit(params_file, iteration)
    f = params.filter
    with friendly_errors():
        shard_files(predictions)  # a missing input stops here, before an MLflow run is opened
    with stage_run("filter-balance", params, ("filter",), iteration):
        with friendly_errors():
            # out of core: only pred/confidence/label are loaded; selected rows are streamed shard by shard
            sel = filter_balance_shards(
                predictions, out, None, f.confidence_threshold, f.images_per_class, f.balance, params.seed
            )
        rows, stats, pred, conf, label = sel.rows, sel.stats, sel.pred, sel.confidence, sel.label
        is_ood = label < 0
        kept_ood = int(is_ood[rows].sum())
        in_dom_rows = rows[~is_ood[rows]]
        # label -1 marks an out-of-domain image only next to in-domain ones (Fashion-MNIST + digits/photos);
        # with data.source folders every label is -1 (class unknown), so there is no in/out split to count
        nan = float("nan")
        split = bool((~is_ood).any())
        stats.update(
            {
                "out_of_domain_in": int(is_ood.sum()) if split else nan,
                "out_of_domain_kept": kept_ood if split else nan,
                "out_of_domain_dropped": int(is_ood.sum()) - kept_ood if split else nan,
                "selected_pseudo_label_accuracy": float((pred[in_dom_rows] == label[in_dom_rows]).mean())
                if len(in_dom_rows)
                else float("nan"),
            }
        )
        per_class = pd.DataFrame(stats.pop("per_class"))
        with atomic_path(classes_csv) as tmp:
            per_class.to_csv(tmp, index=False)
        mlflow.log_artifact(str(classes_csv), "tables")
        confidence_histogram(conf, is_ood, f.confidence_threshold, f"teacher confidence ({iteration})", plot)
        mlflow.log_artifact(str(plot), "plots")
        write_metrics(metrics, stats)
    typer.echo(
        f"filter-balance: {stats['unique']} unique / {stats['total']} total rows kept of {stats['rows_in']}; "
        f"out-of-domain dropped {stats['out_of_domain_dropped']}/{stats['out_of_domain_in']}"
    )


if __name__ == "__main__":
    typer.run(main)
