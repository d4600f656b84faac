"""The report's tables as pure functions: DataFrames in, DataFrames out (no files, no MLflow).

:mod:`noisy_student.report.inputs` and :mod:`noisy_student.report.history` gather the inputs (metrics
JSON files, params, MLflow runs), :mod:`noisy_student.report.build` writes the Markdown and PNGs;
everything that decides what a number means lives here, testable on hand-made frames.

Accuracies come in as fractions (0..1, as the stages write them) and leave as percentages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from noisy_student.paths import TEACHER, model_run_names, natural_key, parse_run_name
from noisy_student.statistics import PairedComparison

NAN = float("nan")
BASELINE = "workspace"  # the dvc_exp tag of runs made by a plain `dvc repro` (no DVC experiment)
# run columns from the checkpoint tags (noisy_student.tracking.runs: same names); absent or None on older runs
CHECKPOINT, TEACHER_MD5, TEACHER_NAME = "checkpoint_md5", "teacher_md5", "teacher_name"
# eval-FGSM's PGD top-1 (its step count is part of the key), not its interval's _ci_low / _ci_high
_PGD_KEY = re.compile(r"fgsm\.pgd\d+_top1_eps[\d.]+")
PIPELINE_PARAMS = "pipeline_params"  # dict: the whole params file of the run's pipeline (its DVC parent run)


def _pct(value: Any) -> float:
    """Fraction -> percent; anything missing or non-numeric -> NaN (the table shows a gap, not a crash)."""
    try:
        out = 100.0 * float(value)
    except (TypeError, ValueError):
        return NAN
    return out


def _num(value: Any) -> float:
    """Anything numeric -> float; missing or non-numeric -> NaN (a gap in the table)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return NAN


def summary_table(models: pd.DataFrame, epsilons: Sequence[float], experiment: str = BASELINE) -> pd.DataFrame:
    """Paper-style robustness summary, one row per evaluated model.

    ``models``: index = model name, columns = flattened metrics keys ``<file>.<key>`` as read from
    ``eval-<m>.json`` (``eval.``), ``robustness/{a,c,p,fgsm}-<m>.json`` (``a.``, ``c.``, ``p.``, ``fgsm.``).
    mCE / mFR stay on their x100 scale (lower is better); every accuracy is in %.
    """
    rows = []
    for name, m in models.iterrows():
        row: dict[str, Any] = {
            "experiment": experiment,
            "model": name,
            "clean top-1 %": _pct(m.get("eval.top1")),
            "A top-1 %": _pct(m.get("a.top1")),
            "C mCE": _num(m.get("c.mce")),
            "C top-1 %": _pct(m.get("c.corrupted_top1")),
            "P mFR": _num(m.get("p.mfr")),
        }
        for eps in epsilons:
            row[f"FGSM eps={eps:g} %"] = _pct(m.get(f"fgsm.fgsm_top1_eps{eps:g}"))
        # PGD's step count is part of its key (pgd10_top1_eps8): show whatever was run, named as run
        for key in sorted(k for k in m.index if _PGD_KEY.fullmatch(str(k)) and not _isnan(m[k])):
            attack, eps = key.removeprefix("fgsm.").split("_top1_eps")
            label = f"{attack.upper().replace('PGD', 'PGD-')} eps={eps}"
            row[f"{label} %"] = _pct(m[key])
        rows.append(row)
    return pd.DataFrame(rows)


def _with_interval(m: pd.Series, key: str, scale: float) -> str:
    """``"81.2 [78.0, 84.5]"``: a metric and its ``<key>_ci_low`` / ``_ci_high`` interval, x ``scale``; the metric
    alone when no interval was recorded (older runs), '' when the metric is missing."""
    value = _num(m.get(key)) * scale
    if math.isnan(value):
        return ""
    low, high = _num(m.get(f"{key}_ci_low")) * scale, _num(m.get(f"{key}_ci_high")) * scale
    return f"{value:.1f}" if math.isnan(low) or math.isnan(high) else f"{value:.1f} [{low:.1f}, {high:.1f}]"


def interval_table(models: pd.DataFrame, epsilons: Sequence[float], experiment: str = BASELINE) -> pd.DataFrame:
    """The robustness metrics with their 95 % bootstrap intervals over the images each was measured on
    (strings ``value [low, high]``; accuracies in %, mCE / mFR x100). ``models`` as for :func:`summary_table`."""
    rows = []
    for name, m in models.iterrows():
        row = {
            "experiment": experiment,
            "model": name,
            "A top-1 %": _with_interval(m, "a.top1", 100),
            "C mCE": _with_interval(m, "c.mce", 1),
            "P mFR": _with_interval(m, "p.mfr", 1),
        }
        for eps in epsilons:
            row[f"FGSM eps={eps:g} %"] = _with_interval(m, f"fgsm.fgsm_top1_eps{eps:g}", 100)
        for key in sorted(k for k in m.index if _PGD_KEY.fullmatch(str(k))):
            attack, eps = key.removeprefix("fgsm.").split("_top1_eps")
            row[f"{attack.upper().replace('PGD', 'PGD-')} eps={eps} %"] = _with_interval(m, key, 100)
        rows.append(row)
    return pd.DataFrame(rows)


def _isnan(value: Any) -> bool:
    """True only for a float NaN (strings, None and numbers are not)."""
    return isinstance(value, float) and math.isnan(value)


def iteration_table(iterations: pd.DataFrame, experiment: str = BASELINE) -> pd.DataFrame:
    """Table 7 style: one row per self-training iteration, in the given order.

    ``iterations`` columns: ``iteration``, ``teacher`` (model that labelled), ``teacher_arch``,
    ``student_arch``, ``teacher_top1``, ``student_top1`` (clean test top-1, fractions; NaN when that model
    was not evaluated), ``pseudo_label_accuracy`` (teacher on the in-domain pool, from predict-<it>.json),
    ``selected_total`` and ``selected_unique`` (rows the student trains on after filter/balance, and
    distinct images among them, from filter-<it>.json).
    """
    out = pd.DataFrame(
        {
            "experiment": experiment,
            "iteration": iterations["iteration"],
            "teacher -> student": iterations["teacher"].astype(str) + " -> " + iterations["iteration"].astype(str),
            "arch": iterations["teacher_arch"].astype(str) + " -> " + iterations["student_arch"].astype(str),
            "teacher top-1 %": iterations["teacher_top1"].map(_pct),
            "student top-1 %": iterations["student_top1"].map(_pct),
            "pseudo-label acc %": iterations["pseudo_label_accuracy"].map(_pct),
            # counts stay integers in the Markdown (nullable: an iteration may not have run yet)
            "selected rows": iterations["selected_total"].map(_num).astype("Int64"),
            "unique images": iterations["selected_unique"].map(_num).astype("Int64"),
        }
    )
    out.insert(6, "gain (points)", out["student top-1 %"] - out["teacher top-1 %"])
    return out.reset_index(drop=True)


def paired_table(
    comparisons: Sequence[tuple[str, PairedComparison | None]], experiment: str = BASELINE
) -> pd.DataFrame:
    """One row per comparison of two models on the same test images: both top-1, the gain with its paired
    bootstrap 95 % interval (points), the images only one of them gets right, and McNemar's exact p."""
    rows = []
    for label, c in comparisons:
        row: dict[str, Any] = {"experiment": experiment, "models (A -> B)": label}
        if c is not None:
            row |= {
                "images": c.images,
                "A top-1 %": 100 * c.accuracy_a,
                "B top-1 %": 100 * c.accuracy_b,
                "gain (points)": 100 * c.gain,
                "95 % CI (points)": f"[{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]",
                "B only": c.b_only,
                "A only": c.a_only,
                "McNemar p": c.p_mcnemar,
            }
        rows.append(row)
    out = pd.DataFrame(rows)
    counts = [c for c in ("images", "B only", "A only") if c in out]
    out[counts] = out[counts].astype("Int64")  # integers even beside a row without a comparison
    return out


def robustness_gain_table(
    gains: Sequence[tuple[str, dict[str, tuple[float, float, float]]]], experiment: str = BASELINE
) -> pd.DataFrame:
    """One row per compared pair: each robustness metric's paired difference B - A as ``+gain [low, high]``."""
    rows = [
        {"experiment": experiment, "models (A -> B)": label}
        | {metric: f"{g:+.2f} [{low:+.2f}, {high:+.2f}]" for metric, (g, low, high) in metrics.items()}
        for label, metrics in gains
    ]
    return pd.DataFrame(rows)


def _latest_per_name(runs: pd.DataFrame) -> pd.DataFrame:
    """The newest run of every run name (a group may hold reruns; the last one is the current result)."""
    return runs.sort_values("start_time").groupby("run_name", sort=False).tail(1)


def _merged_params(runs: pd.DataFrame) -> dict[str, str]:
    """Union of the params logged by a group's (latest) runs; each stage logs only its own sections."""
    merged: dict[str, str] = {}
    for params in _latest_per_name(runs).sort_values("start_time")["params"]:
        merged.update({str(k): str(v) for k, v in (params or {}).items()})
    return merged


def _experiment_params(runs: pd.DataFrame) -> dict[str, str]:
    """A group's whole params file: its newest run's pipeline params, else the union its runs logged.

    The union misses every section that only DVC-cached stages read (a changed ``data.*`` key when the
    group reran from the student on), so it only stands in for runs without a pipeline parent (stages
    run by hand, or logged before parents existed).
    """
    if PIPELINE_PARAMS in runs:
        for params in runs.sort_values("start_time", ascending=False)[PIPELINE_PARAMS]:
            if isinstance(params, dict) and params:
                return {str(k): str(v) for k, v in params.items()}
    return _merged_params(runs)


def _eval_top1(runs: pd.DataFrame, model: str) -> float:
    """The model's clean top-1 from its ``eval@`` run, else from its training run's final test accuracy.

    The fallback keeps experiments whose run stopped after training (or that targeted only the student)
    in the table: the training stages evaluate the same test set at their last epoch.
    """
    for name in model_run_names(model):
        hit = _latest_per_name(runs[runs["run_name"] == name])
        if len(hit) and not _isnan(_num(hit["top1"].iloc[-1])):
            return _num(hit["top1"].iloc[-1])
    return NAN


def _last_student(runs: pd.DataFrame) -> str | None:
    """The latest iteration evaluated in the group (it2 over it1): the one an ablation is about."""
    parsed = [parse_run_name(str(n)) for n in runs["run_name"]]
    names = [target for stage, target in parsed if stage in ("eval", "student") and target is not None]
    students = sorted({n for n in names if n != TEACHER}, key=natural_key)
    return students[-1] if students else None


def _present(value: Any) -> bool:
    """A tag that was logged: a non-empty string (None / NaN where the run has no such tag)."""
    return isinstance(value, str) and bool(value)


def _model_of(run_name: str) -> str | None:
    """The model whose checkpoint a run trained or evaluated (``teacher``, ``it1``); None for other stages."""
    stage, target = parse_run_name(run_name)
    if run_name == model_run_names(TEACHER)[1]:
        return TEACHER
    return target if stage in ("eval", "student") else None


def _lineage(runs: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Student checkpoint hash -> (teacher name, teacher checkpoint hash), from every run that trained one."""
    out: dict[str, tuple[str, str]] = {}
    for run in runs.itertuples(index=False):
        checkpoint, teacher, name = getattr(run, CHECKPOINT), getattr(run, TEACHER_MD5), getattr(run, TEACHER_NAME)
        if parse_run_name(str(run.run_name))[0] == "student" and all(map(_present, (checkpoint, teacher, name))):
            out[checkpoint] = (name, teacher)
    return out


def teacher_checkpoint(group: pd.DataFrame, lineage: dict[str, tuple[str, str]]) -> str | None:
    """Content hash of the ``teacher`` model an experiment group used; None when its runs carry no such hash.

    DVC skips the stages an experiment did not change, so the group may hold no run of its teacher at
    all. In order: the group's newest run that trained, evaluated, labelled with or learned from the
    teacher; else the teacher at the root of a checkpoint the group has (``eval@it2`` -> the run, in any
    group, that trained that ``it2`` -> its teacher ``it1`` -> ... -> ``teacher``), via ``lineage``
    (:func:`_lineage` of every run).
    """
    known: list[tuple[str, str]] = []  # (model name, checkpoint hash), the group's newest runs first
    for run in group.sort_values("start_time", ascending=False).itertuples(index=False):
        model, checkpoint = _model_of(str(run.run_name)), getattr(run, CHECKPOINT)
        if model is not None and _present(checkpoint):
            known.append((model, checkpoint))
        if _present(getattr(run, TEACHER_MD5)) and _present(getattr(run, TEACHER_NAME)):
            known.append((getattr(run, TEACHER_NAME), getattr(run, TEACHER_MD5)))
    direct = [checkpoint for model, checkpoint in known if model == TEACHER]
    if direct:
        return direct[0]
    for _, checkpoint in known:
        for _ in range(len(lineage)):  # a bounded walk: a corrupt history with a cycle ends here
            if checkpoint not in lineage:
                break
            model, checkpoint = lineage[checkpoint]
            if model == TEACHER:
                return checkpoint
    return None


def checkpoint_top1(runs: pd.DataFrame, checkpoint: str, prefer: Sequence[str] = ()) -> tuple[float, str]:
    """Clean top-1 (fraction 0..1) of the checkpoint with content hash ``checkpoint``, and the group that measured it.

    Any run in any group counts (same bytes, same weights); an ``eval@`` run before a training run's last
    test accuracy, then the groups in ``prefer`` in that order, then the newest run. (NaN, "") when no
    run of that checkpoint logged a top-1.
    """
    rank = {name: i for i, name in enumerate(prefer)}
    best: tuple[tuple[bool, int, float], float, str] | None = None
    for run in runs[runs[CHECKPOINT] == checkpoint].itertuples(index=False):
        top1 = _num(run.top1)
        if _isnan(top1):
            continue
        key = (parse_run_name(str(run.run_name))[0] != "eval", rank.get(run.dvc_exp, len(rank)), -_num(run.start_time))
        if best is None or key < best[0]:
            best = (key, top1, str(run.dvc_exp))
    return (best[1], best[2]) if best else (NAN, "")


def param_diff(params: dict[str, str], baseline: dict[str, str], defaults: dict[str, str] | None = None) -> str:
    """``key=value`` for every param that differs from the baseline's.

    A key the baseline never logged is compared with ``defaults`` (the current params) when given, so
    a param added after the baseline ran does not show up as a change at its default value.
    """
    defaults = defaults or {}
    changed = [f"{k}={v}" for k, v in sorted(params.items()) if baseline.get(k, defaults.get(k)) != v]
    return ", ".join(changed)


def ablation_table(
    runs: pd.DataFrame,
    baseline: str = BASELINE,
    defaults: dict[str, str] | None = None,
    baseline_top1: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Table 6 style: every experiment group in the run history against the baseline.

    ``runs``: one row per MLflow run with columns ``dvc_exp`` (group), ``run_name`` (``eval@it1``,
    ``student@it1``, ...), ``start_time`` (sortable), ``params_hash``, ``top1`` (the eval runs' metric; NaN
    elsewhere), ``params`` (dict of the params the stage logged) and, optional (runs logged before them
    lack them), ``checkpoint_md5``, ``teacher_md5``, ``teacher_name`` (checkpoint hashes, str or None)
    and ``pipeline_params`` (dict: the whole params file of the run's pipeline, or None).

    A DVC experiment reruns only the stages its change reaches, so its group often has no ``eval@teacher``
    run. The teacher is found by content instead (:func:`teacher_checkpoint`): the evaluation of that
    checkpoint in whichever group ran it (:func:`checkpoint_top1`), named in ``teacher from``; a hash
    no run evaluated leaves the teacher NaN and ``teacher from`` empty. Groups whose runs carry no
    hashes (logged before the tags) fall back to their own ``eval@teacher``, else to the baseline's
    teacher, shown as ``<baseline> (assumed)``. ``changed params`` compares the whole params files
    (:func:`_experiment_params`). The baseline group comes first; the others follow in the order they
    were first run.

    ``defaults`` (flattened current params, as strings) and ``baseline_top1`` (model -> top-1 in 0..1 from
    the workspace's metrics files) make the baseline *this workspace*: its params are the current ones
    and its numbers the committed results, whatever older runs the store holds under the same name.
    """
    columns = [
        "experiment",
        "changed params",
        "student",
        "student top-1 %",
        "teacher top-1 %",
        "teacher from",
        "gain (points)",
        "params_hash",
        "runs",
    ]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    # hand-made frames and older stores may lack the checkpoint columns: then every hash is unknown
    runs = runs.assign(**{c: runs[c] if c in runs else None for c in (CHECKPOINT, TEACHER_MD5, TEACHER_NAME)})
    lineage = _lineage(runs)
    groups = {name: g for name, g in runs.groupby("dvc_exp", sort=False)}
    base_runs = groups.get(baseline, runs.iloc[0:0])
    base_params = dict(defaults) if defaults else (_experiment_params(base_runs) if len(base_runs) else {})
    base_md5 = teacher_checkpoint(base_runs, lineage)
    if baseline_top1 and TEACHER in baseline_top1:
        base_teacher, base_from = baseline_top1[TEACHER], baseline
    elif base_md5 is not None:
        base_teacher, base_from = checkpoint_top1(runs, base_md5, (baseline,))
    else:
        base_teacher, base_from = _eval_top1(base_runs, TEACHER) if len(base_runs) else NAN, baseline
    if baseline_top1 and baseline not in groups:
        groups[baseline] = runs.iloc[0:0]
    first_seen = {name: g["start_time"].min() if len(g) else 0 for name, g in groups.items()}
    order = sorted(groups, key=lambda n: (n != baseline, first_seen[n]))
    rows = []
    for name in order:
        group = groups[name]
        student = _last_student(group)
        md5 = teacher_checkpoint(group, lineage)
        if name == baseline or (md5 is not None and md5 == base_md5):
            # the baseline's teacher: its number as the baseline row shows it (committed metrics, if given)
            teacher, teacher_from = base_teacher, base_from if not _isnan(base_teacher) else ""
        elif md5 is not None:
            teacher, teacher_from = checkpoint_top1(runs, md5, (name, baseline))
        else:  # no hashes on this group's runs (logged before the tags): the old, name-based guess, labelled
            teacher, teacher_from = _eval_top1(group, TEACHER), name
            if _isnan(teacher):
                teacher, teacher_from = base_teacher, f"{baseline} (assumed)" if not _isnan(base_teacher) else ""
        student_top1 = _pct(_eval_top1(group, student)) if student else NAN
        if name == baseline and baseline_top1:
            student = max((m for m in baseline_top1 if m != TEACHER), key=natural_key, default=student)
            student_top1 = _pct(baseline_top1.get(student, NAN)) if student else NAN
        hashes = _latest_per_name(group).sort_values("start_time")["params_hash"].dropna()
        rows.append(
            {
                "experiment": name,
                "changed params": "(baseline)"
                if name == baseline
                else param_diff(_experiment_params(group), base_params, defaults),
                "student": student or "",
                "student top-1 %": student_top1,
                "teacher top-1 %": _pct(teacher),
                "teacher from": teacher_from,
                "gain (points)": student_top1 - _pct(teacher),
                "params_hash": str(hashes.iloc[-1]) if len(hashes) else "",
                "runs": len(group),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def ordered_models(names: Iterable[str]) -> list[str]:
    """Model names, deduplicated: teacher first, then iterations in natural order (it2 before it10)."""
    return sorted(set(names), key=lambda n: (n != TEACHER, natural_key(n)))


def latest_training_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The latest ``teacher`` / ``student@<it>`` run of every experiment (rows of ``runs``, by start time).

    A run that ended well (or still runs) wins over a later killed or failed one, whose curve stops
    part-way; without a ``status`` column every run counts.
    """
    if runs.empty or "run_name" not in runs:
        return runs.iloc[0:0]
    training = runs[runs["run_name"].astype(str).map(_is_training_run)]
    whole = ~training["status"].isin(["KILLED", "FAILED"]) if "status" in training else True
    training = training.assign(_finished=whole)
    latest = training.sort_values(["_finished", "start_time"]).groupby(["dvc_exp", "run_name"], sort=False).tail(1)
    return latest.drop(columns="_finished")


def _is_training_run(name: str) -> bool:
    """``teacher``, ``student@<it>`` or ``supervised@<it>``: the runs that log a test top-1 per epoch (eval runs
    log one value)."""
    stage, target = parse_run_name(name)
    return name == model_run_names(TEACHER)[1] or (stage in ("student", "supervised") and target is not None)
