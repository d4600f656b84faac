"""Stage `student`: a noised, equal-or-larger student trained from scratch on labeled + pseudo-labeled images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import typer

from noisy_student.data import load_imageset
from noisy_student.models import ImageClassifier, check_student_size, count_parameters, load_classifier
from noisy_student.pseudo_labels import selected_targets, targets_from_probs
from stages._common import (
    METRICS_OPTION,
    PARAMS_OPTION,
    fail,
    friendly_errors,
    images_tensor,
    log_model,
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
    params = params_or_exit(params_file, iteration)
    torch_threads()
    sp = params.student
    with friendly_errors():
        labeled, test = load_imageset(data / "labeled.npz"), load_imageset(data / "test.npz")
        pool = load_imageset(data / "unlabeled.npz")
        teacher_model, teacher_spec, _ = load_classifier(teacher)
        if not selected.is_file():
            raise FileNotFoundError(f"{selected}: selected pseudo labels not found (run `filter-balance` first)")
        table = pq.read_table(selected)
    if len(table) == 0:
        fail(
            f"{selected}: no pseudo-labeled image passed the filter (filter.confidence_threshold="
            f"{params.filter.confidence_threshold}); lower the threshold or train a better teacher"
        )
    # (N,) ids, (N,) copies, (N, K) probs: the full distribution or dense targets from top-k columns
    ids, copies, probs = selected_targets(table, teacher_spec.num_classes)
    pos = {int(i): n for n, i in enumerate(pool.ids)}
    missing = [int(i) for i in ids if int(i) not in pos]
    if missing:
        fail(f"{selected}: {len(missing)} ids not in {data / 'unlabeled.npz'} (e.g. {missing[:3]}); rerun `dvc repro`")
    rows = np.repeat(np.array([pos[int(i)] for i in ids], dtype=np.int64), copies)
    targets = targets_from_probs(np.repeat(probs, copies, axis=0), params.pseudo_labels.mode)
    with stage_run("student", params, ("student", "noise", "pseudo_labels", "filter"), iteration):
        teacher_params = count_parameters(teacher_model)

        def prepare_model(model: ImageClassifier) -> None:
            try:
                check_student_size(count_parameters(model), teacher_params, sp.allow_smaller)
            except ValueError as exc:
                fail(f"{params_file}: {exc}")
            if sp.init == "teacher":
                try:
                    model.load_state_dict(teacher_model.state_dict())
                except RuntimeError as exc:
                    fail(
                        f"{params_file}: student.init: teacher needs the teacher's architecture "
                        f"({teacher}): {str(exc).splitlines()[0]}"
                    )

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
            teacher_spec.num_classes,
            unlabeled_images=images_tensor(pool.images[rows]),
            unlabeled_targets=torch.from_numpy(targets),
            unlabeled_ratio=sp.unlabeled_ratio,
            extra_metrics={
                "pseudo_labeled_rows": int(len(rows)),
                "pseudo_labeled_unique": int(len(ids)),
                "teacher_parameters": int(teacher_params),
            },
            key_extra=(params.pseudo_labels.mode, int(copies.sum()), float(probs.sum()), sp.init, sp.allow_smaller),
            prepare_model=prepare_model,
            finetune_epochs=sp.finetune_epochs if sp.schedule == "pretrain_finetune" else 0,
            fixres=sp.fixres,
        )
        log_model(student, out, tuple(images_tensor(labeled.images[:1]).shape[1:]), params.tracking.registered_model)


if __name__ == "__main__":
    typer.run(main)
