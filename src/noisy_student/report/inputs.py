"""The report's inputs from a pipeline's metrics files and params, as the frames :mod:`.tables` takes.

Kept apart from :mod:`.tables` so that the tables stay free of files (and of the MLflow / torch imports
:mod:`noisy_student.tracking` brings along).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noisy_student.config import Params
from noisy_student.paths import TEACHER, metrics_file, robustness_items, supervised_model, test_predictions
from noisy_student.seeds import seed_for
from noisy_student.statistics import PairedComparison, compare_paired, paired_mean_difference
from noisy_student.tracking import flatten

# column prefix in the per-model frame -> the stage whose metrics file (paths.metrics_file) fills it
MODEL_STAGES = {"eval": "eval", "a": "eval-A", "c": "eval-C", "p": "eval-P", "fgsm": "eval-FGSM"}


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics JSON, or {} when that stage has not run (the table shows a gap instead of failing)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def model_metrics(metrics: Path, models: list[str]) -> pd.DataFrame:
    """One row per model (index: model name, in the given order), columns ``<prefix>.<key>``.

    ``prefix`` is a key of :data:`MODEL_STAGES`; values as the stages wrote them (accuracies as fractions
    0..1, mCE / mFR x100); a model without a stage's file has NaN there.
    """
    rows = {}
    for m in models:
        row: dict[str, Any] = {}
        for prefix, stage in MODEL_STAGES.items():
            row.update(flatten(read_metrics(metrics_file(stage, m, metrics)), f"{prefix}."))
        rows[m] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _arch(params: Params, model: str) -> str:
    """Architecture of a pipeline model as configured (an iteration's with its overrides merged in)."""
    if model == TEACHER:
        return params.teacher.model.arch
    return params.for_iteration(model).student.model.arch


def iteration_inputs(metrics: Path, params: Params) -> pd.DataFrame:
    """The per-iteration facts :func:`.tables.iteration_table` needs, one row per iteration in params order.

    Columns ``iteration, teacher, teacher_arch, student_arch`` (str), ``teacher_top1, student_top1,
    pseudo_label_accuracy`` (fractions 0..1), ``selected_total, selected_unique`` (row counts); None where
    the stage that writes the number has not run.
    """
    rows = []
    for it, iteration in params.iterations.items():
        teacher = iteration.teacher
        predict = read_metrics(metrics_file("predict", it, metrics))
        selected = read_metrics(metrics_file("filter-balance", it, metrics))
        rows.append(
            {
                "iteration": it,
                "teacher": teacher,
                "teacher_arch": _arch(params, teacher),
                "student_arch": _arch(params, it),
                "teacher_top1": read_metrics(metrics_file("eval", teacher, metrics)).get("top1"),
                "student_top1": read_metrics(metrics_file("eval", it, metrics)).get("top1"),
                "pseudo_label_accuracy": predict.get("pseudo_label_accuracy"),
                "selected_total": selected.get("total"),
                "selected_unique": selected.get("unique"),
            }
        )
    return pd.DataFrame(rows)


def correct_by_id(predictions: pd.DataFrame, where: str) -> pd.Series:
    """Whether each test image was classified correctly (index: image id), from ``eval``'s per-image
    predictions (columns ``id, label, prediction``) read from ``where`` (named in the error)."""
    missing = {"id", "label", "prediction"} - set(predictions.columns)
    if missing:
        raise ValueError(f"{where}: missing columns {sorted(missing)}; expected id, label, prediction")
    return (predictions["prediction"] == predictions["label"]).set_axis(predictions["id"])


def paired_comparison(a: pd.Series, b: pd.Series, seed: int) -> PairedComparison | None:
    """B against A (:func:`correct_by_id` series) joined by image id; None unless both saw the same images."""
    if len(a) != len(b) or set(a.index) != set(b.index):
        return None
    return compare_paired(a.to_numpy(), b[a.index].to_numpy(), seed=seed)


def comparison_pairs(params: Params) -> list[tuple[str, str]]:
    """The (A, B) model pairs the report compares: each student against the model that labeled its pool, the
    last student against the first teacher, and an evaluated same-network baseline ``supervised-<it>``
    against the teacher (the larger network's share) and against every student with that network (Noisy
    Student's share)."""
    pairs = [(it.teacher, name) for name, it in params.iterations.items()]
    last = list(params.iterations)[-1] if params.iterations else None
    if last is not None and params.iterations[last].teacher != TEACHER:
        pairs.append((TEACHER, last))
    # each iteration's merged params only when a baseline needs its network
    networks = {n: params.for_iteration(n).student.model for n in params.iterations} if params.supervised else {}
    for it in params.supervised:
        if (baseline := supervised_model(it)) in params.evaluate:
            pairs.append((TEACHER, baseline))
            pairs += [(baseline, name) for name, network in networks.items() if network == networks[it]]
    return pairs


def paired_gains(metrics: Path, params: Params) -> list[tuple[str, PairedComparison | None]]:
    """:func:`comparison_pairs` on the same test images (joined by id): label ``"teacher -> it1"`` and its
    comparison, None where a model's per-image predictions are missing or the two saw different images."""
    pairs = comparison_pairs(params)
    correct = {}
    for model in {m for pair in pairs for m in pair}:
        path = test_predictions(model, metrics)
        correct[model] = correct_by_id(pd.read_csv(path), str(path)) if path.is_file() else None
    seed = seed_for(params.seed, "bootstrap")
    out = []
    for a, b in pairs:
        ca, cb = correct[a], correct[b]
        out.append((f"{a} -> {b}", paired_comparison(ca, cb, seed) if ca is not None and cb is not None else None))
    return out


# per-item file kind (metrics/predictions/<kind>-<model>.csv) -> its column, the report's label, the scale to points
ROBUSTNESS_ITEMS = {
    "a": ("correct", "A top-1", 100.0),
    "c": ("mce_share", "C mCE", 1.0),
    "p": ("mfr_share", "P mFR", 1.0),
}


def _item_values(path: Path, column: str) -> np.ndarray | None:
    """A per-item column in item order; None when the file, the column or its rows are missing."""
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    return table.sort_values("item")[column].to_numpy(float) if column in table and len(table) else None


def robustness_gains(metrics: Path, params: Params) -> list[tuple[str, dict[str, tuple[float, float, float]]]]:
    """Each :func:`comparison_pairs` pair on the same robustness images (sequences): per metric the mean
    difference B - A with its paired bootstrap 95 % interval, ``{label: (gain, low, high)}``. Accuracies in
    points, mCE / mFR in their own units (x100, lower is better); of the attacks, FGSM at its largest epsilon
    and PGD. A metric is left out where either model's per-item file is missing (a released benchmark writes
    none) or the two cover other items."""
    seed = seed_for(params.seed, "bootstrap")
    out = []
    for a, b in comparison_pairs(params):
        columns = list(ROBUSTNESS_ITEMS.items())
        if (attack := robustness_items("attack", a, metrics)).is_file():
            names = list(pd.read_csv(attack, nrows=0).columns)
            # FGSM at its largest epsilon (columns in epsilon order) and PGD, picked by name, not position
            shown = [c for c in names if c.startswith("fgsm_")][-1:] + [c for c in names if c.startswith("pgd")]
            columns += [("attack", (c, c.replace("_top1_", " top-1 "), 100.0)) for c in shown]
        gains: dict[str, tuple[float, float, float]] = {}
        for kind, (column, label, scale) in columns:
            va, vb = (_item_values(robustness_items(kind, m, metrics), column) for m in (a, b))
            if va is not None and vb is not None and va.shape == vb.shape:
                gain, low, high = paired_mean_difference(va, vb, seed=seed)
                gains[label] = (scale * gain, scale * low, scale * high)
        out.append((f"{a} -> {b}", gains))
    return out
