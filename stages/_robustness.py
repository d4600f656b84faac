"""What eval-A / eval-C / eval-P share: read the benchmark (embedded or released), run it in the stage's MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from noisy_student.console import friendly_errors, params_or_exit
from noisy_student.io import write_csv
from noisy_student.robustness.evaluate import READ_ERRORS, Benchmark, load_robustness_eval
from noisy_student.tracking import log_datasets, stage_run, write_metrics
from stages._common import torch_threads


def run_benchmark(
    stage: str,
    benchmark: Benchmark,
    model: Path,
    name: str,
    data: Path,
    test: Path | None,
    metrics: Path,
    params: Path,
    items: Path | None = None,
) -> dict[str, Any]:
    """Every input read and checked before the run opens; metrics JSON and per-item CSV written; metrics returned."""
    p = params_or_exit(params)
    torch_threads()
    with friendly_errors():
        bench = load_robustness_eval(benchmark, model, p, data, test)
    with stage_run(stage, p, ("robustness",), name), friendly_errors(*READ_ERRORS):
        log_datasets(evaluation=bench.datasets)
        summary, per_item = bench.run(f"{stage} {name}")
        write_metrics(metrics, summary)
        if items is not None:
            write_csv(items, per_item)
    return summary
