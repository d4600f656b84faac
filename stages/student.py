"""Stage `student`: a noised, equal-or-larger student trained from scratch on labeled + pseudo-labeled images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import typer

from noisy_student.data import load_imageset
from noisy_student.models import load_classifier
from noisy_student.pseudo_labels import targets_from_probs
from stages._common import (
    METRICS_OPTION,
    PARAMS_OPTION,
    fail,
    friendly_errors,
    images_tensor,
    params_or_exit,
    stage_run,
    torch_threads,
)
from stages._fit import fit


def main(
    iteration: str = typer.Option(..., help="Iteration name."),
    teacher: Path = typer.Option(..., help="This iteration's teacher checkpoint (size check)."),
    selected: Path = typer.Option(..., help="Selected pseudo labels from `filter-balance`."),
    data: Path = typer.Option(Path("data/prepared"), help="Folder written by `prepare`."),
    out: Path = typer.Option(..., help="Student checkpoint to write."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Train the student jointly on labeled and pseudo-labeled images with full noise."""
    params = params_or_exit(params_file)
    torch_threads()
    sp = params.student
    with friendly_errors():
        labeled, test = load_imageset(data / "labeled.npz"), load_imageset(data / "test.npz")
        pool = load_imageset(data / "unlabeled.npz")
        teacher_model, _, _ = load_classifier(teacher)
        if not selected.is_file():
            raise FileNotFoundError(f"{selected}: selected pseudo labels not found (run `filter-balance` first)")
        table = pq.read_table(selected)
    if len(table) == 0:
        fail(
            f"{selected}: no pseudo-labeled image passed the filter (filter.confidence_threshold="
            f"{params.filter.confidence_threshold}); lower the threshold or train a better teacher"
        )
    ids = table["id"].to_numpy()
    copies = table["copies"].to_numpy()
    probs = np.asarray(table["probs"].combine_chunks().flatten()).reshape(len(table), -1)
    pos = {int(i): n for n, i in enumerate(pool.ids)}
    missing = [int(i) for i in ids if int(i) not in pos]
    if missing:
        fail(f"{selected}: {len(missing)} ids not in {data / 'unlabeled.npz'} (e.g. {missing[:3]}); rerun `dvc repro`")
    rows = np.repeat(np.array([pos[int(i)] for i in ids], dtype=np.int64), copies)
    targets = targets_from_probs(np.repeat(probs, copies, axis=0), params.pseudo_labels.mode)
    with stage_run("student", params, ("student", "noise", "pseudo_labels", "filter"), iteration):
        teacher_params = sum(p.numel() for p in teacher_model.parameters())
        student = fit(
            f"student-{iteration}",
            params,
            sp.model,
            sp.optim,
            params.noise,
            labeled,
            test,
            out,
            metrics,
            unlabeled_images=images_tensor(pool.images[rows]),
            unlabeled_targets=torch.from_numpy(targets),
            unlabeled_ratio=sp.unlabeled_ratio,
            extra_metrics={
                "pseudo_labeled_rows": int(len(rows)),
                "pseudo_labeled_unique": int(len(ids)),
                "teacher_parameters": int(teacher_params),
            },
            key_extra=(params.pseudo_labels.mode, int(copies.sum()), float(probs.sum())),
        )
        student_params = sum(p.numel() for p in student.parameters())
        if student_params < teacher_params:
            typer.secho(
                f"warning: student has {student_params} parameters, fewer than the teacher's {teacher_params}; "
                "the paper uses an equal-or-larger student",
                fg=typer.colors.YELLOW,
                err=True,
            )


if __name__ == "__main__":
    typer.run(main)
