"""`report`: the paper-style summary table (clean / A / C / P / FGSM per model) from metrics files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer

from noisy_student.io import atomic_path
from stages._common import PARAMS_OPTION, params_or_exit


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def summary_table(metrics: Path, models: list[str], epsilons: tuple[float, ...]) -> pd.DataFrame:
    """One row per model; accuracies in %, mCE / mFR x100 (lower is better)."""
    rows = []
    for name in models:
        rob = metrics / "robustness"
        clean, a = _read(metrics / f"eval-{name}.json"), _read(rob / f"a-{name}.json")
        c, p, f = _read(rob / f"c-{name}.json"), _read(rob / f"p-{name}.json"), _read(rob / f"fgsm-{name}.json")
        row = {
            "model": name,
            "clean top-1 %": 100 * clean.get("top1", float("nan")),
            "A top-1 %": 100 * a.get("top1", float("nan")),
            "C mCE": c.get("mce", float("nan")),
            "C top-1 %": 100 * c.get("corrupted_top1", float("nan")),
            "P mFR": p.get("mfr", float("nan")),
        }
        for eps in epsilons:
            row[f"FGSM eps={eps:g} %"] = 100 * f.get(f"fgsm_top1_eps{eps:g}", float("nan"))
        pgd = [k for k in f if k.startswith("pgd")]
        if pgd:
            row[pgd[0].replace("_top1_eps", " eps=") + " %"] = 100 * f[pgd[0]]
        rows.append(row)
    return pd.DataFrame(rows)


def main(
    metrics: Path = typer.Option(Path("metrics"), help="Metrics folder of a finished pipeline."),
    out: Path = typer.Option(Path("reports/report.md"), help="Markdown file to write."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Write the summary table as Markdown (and print it)."""
    params = params_or_exit(params_file)
    # the paper's small, medium and large budgets where they were evaluated
    eps = tuple(e for e in (2.0, 8.0, 16.0) if e in params.robustness.fgsm_epsilons) or params.robustness.fgsm_epsilons
    table = summary_table(metrics, list(params.evaluate), eps)
    text = "# Noisy Student: summary\n\n" + table.to_markdown(index=False, floatfmt=".2f") + "\n"
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    typer.echo(text)


if __name__ == "__main__":
    typer.run(main)
