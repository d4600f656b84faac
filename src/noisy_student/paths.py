"""Every file and MLflow run name of the pipeline, spelled once.

``dvc.yaml`` is YAML and spells its paths itself; ``tests/test_paths.py``
checks that every stage it unrolls reads and writes exactly these names.
Paths are relative to the project root (the DVC workspace).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PREPARED = Path("data/prepared")
LABELED = PREPARED / "labeled.wds"  # every prepared split: a folder of WebDataset tars
UNLABELED = PREPARED / "unlabeled.wds"
TEST = PREPARED / "test.wds"
CLASSES_FILE = "classes.json"  # inside the prepared folder
MANIFEST_FILE = "files.csv"  # inside each split folder (data.source: folders): id -> image file
ROBUSTNESS_DATA = Path("data/robustness")
MODELS = Path("models")
METRICS = Path("metrics")
REPORTS = Path("reports")
# folders that hold only plot data, each declared once as a top-level DVC plot (dvc.yaml `plots:`) with a list of
# y columns, which a stage-level plot cannot have: DVC makes one plot per file in them, so every trained model and
# every iteration gets its plot without dvc.yaml naming it, and `dvc plots diff` overlays revisions per file
CURVES = METRICS / "curves"
CONFIDENCE = METRICS / "confidence"
TEACHER = "teacher"  # the first teacher's model name; iterations are named in params.yaml
# an iteration's same-network baseline (params `supervised`): its student's network and noise, trained like the
# teacher on the labeled images alone, so that a gain splits into the larger network's share and Noisy Student's
SUPERVISED_PREFIX = "supervised-"
# written by `check-params` once every key of params.yaml is valid; its content never varies, so a change to
# one param reruns only the stages that read that param, while `prepare` (and so everything) waits for the check
PARAMS_CHECK = METRICS / "params-check.json"


def natural_key(name: str) -> tuple[int | str, ...]:
    """Sort key for model, file and frame names: ``it2`` before ``it10``, ``frame_2`` before ``Frame_10``.

    ``"It10"`` -> ``("it", 10, "")``: digit runs compare as numbers, the rest case-insensitively.
    """
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(name)))


def project_root() -> Path:
    """The project's real root, also from inside a DVC experiment's temporary workspace."""
    for var in ("NOISY_STUDENT_ROOT", "DVC_ROOT"):
        if os.environ.get(var):
            return Path(os.environ[var]).resolve()
    return Path.cwd().resolve()


def checkpoints_dir() -> Path:
    """Resumable training states, keyed by run, shared by every experiment of the project."""
    return project_root() / ".checkpoints"


def supervised_model(iteration: str) -> str:
    """Model name of iteration ``iteration``'s same-network supervised baseline: ``supervised-it1``."""
    return f"{SUPERVISED_PREFIX}{iteration}"


def supervised_of(model: str) -> str | None:
    """Inverse of :func:`supervised_model`: ``"supervised-it1"`` -> ``"it1"``; None for any other model name."""
    return model.removeprefix(SUPERVISED_PREFIX) if model.startswith(SUPERVISED_PREFIX) else None


def model_file(model: str) -> Path:
    """Checkpoint of a pipeline model (``teacher``, an iteration name, ``supervised-<iteration>``)."""
    return MODELS / f"{model}.pt"


def predictions_dir(iteration: str) -> Path:
    return Path("data/pseudo") / iteration / "predictions"


def selected_file(iteration: str) -> Path:
    return Path("data/pseudo") / iteration / "selected.parquet"


def training_name(model: str) -> str:
    """Name of a model's training run in curves files (``teacher``, ``student-it1``, ``supervised-it1``)."""
    return model if model == TEACHER or supervised_of(model) else f"student-{model}"


def metrics_file(stage: str, target: str | None = None, metrics: Path = METRICS) -> Path:
    """The DVC metrics JSON a stage writes (``target``: the model or iteration it ran for)."""
    name = {
        "prepare": "prepare.json",
        "teacher": "teacher.json",
        "supervised": f"{supervised_model(str(target))}.json",
        "predict": f"predict-{target}.json",
        "filter-balance": f"filter-{target}.json",
        "student": f"student-{target}.json",
        "eval": f"eval-{target}.json",
        "robustness-data": "robustness-baseline.json",
        "eval-A": f"robustness/a-{target}.json",
        "eval-C": f"robustness/c-{target}.json",
        "eval-P": f"robustness/p-{target}.json",
        "eval-FGSM": f"robustness/fgsm-{target}.json",
    }[stage]
    return metrics / name


def robustness_set_file(kind: str, folder: Path = ROBUSTNESS_DATA) -> Path:
    """An embedded robustness test set written by ``robustness-data``: ``kind`` ``c``, ``p`` or ``a`` -> ``c.npz``."""
    return folder / f"{kind}.npz"


def robustness_baseline_file(folder: Path = ROBUSTNESS_DATA) -> Path:
    """The reference model's errors on the embedded robustness sets (CE / FR normalisers), beside the sets."""
    return folder / "baseline.json"


def curves_file(model: str, suffix: str = "csv", metrics: Path = METRICS) -> Path:
    """Per-epoch training history of a model (``csv``) and its plot (``png``)."""
    return metrics / CURVES.name / f"{training_name(model)}.{suffix}"


def fgsm_curve(model: str, suffix: str = "csv", metrics: Path = METRICS) -> Path:
    return metrics / "robustness" / f"fgsm-{model}.{suffix}"


def pgd_curve(model: str, metrics: Path = METRICS) -> Path:
    """PGD top-1 of a model vs epsilon (CSV ``epsilon,steps,top1``), beside its FGSM curve."""
    return metrics / "robustness" / f"pgd-{model}.csv"


def test_predictions(model: str, metrics: Path = METRICS) -> Path:
    """Per-image top-1 predictions of a model on the test set (CSV ``id,label,prediction``), written by ``eval``."""
    return metrics / "predictions" / f"eval-{model}.csv"


def robustness_items(kind: str, model: str, metrics: Path = METRICS) -> Path:
    """Per-item values of a robustness evaluation that the report pairs models on: ``kind`` ``a`` (correct per
    image), ``c`` (mCE share per image), ``p`` (mFR share per sequence), ``attack`` (correct per image and attack)."""
    return metrics / "predictions" / f"{kind}-{model}.csv"


def confidence_plot(iteration: str, metrics: Path = METRICS) -> Path:
    return metrics / "plots" / f"confidence-{iteration}.png"


def confidence_bins(iteration: str, metrics: Path = METRICS) -> Path:
    """The teacher-confidence histogram of an iteration as data (CSV of bins), the DVC plot of the PNG above."""
    return metrics / CONFIDENCE.name / f"{iteration}.csv"


def filter_classes_csv(iteration: str, metrics: Path = METRICS) -> Path:
    return metrics / "plots" / f"filter-classes-{iteration}.csv"


def run_name(stage: str, target: str | None = None) -> str:
    """MLflow run name of one stage execution: ``teacher``, ``student@it1``, ``eval-C@teacher``."""
    return f"{stage}@{target}" if target else stage


def parse_run_name(name: str) -> tuple[str, str | None]:
    """Inverse of :func:`run_name`: ``"eval@it1"`` -> ``("eval", "it1")``, ``"teacher"`` -> ``("teacher", None)``."""
    stage, sep, target = name.partition("@")
    return stage, (target if sep else None)


def model_run_names(model: str) -> tuple[str, str]:
    """The eval run and the training run of a model, in the order the report prefers their top-1."""
    if model == TEACHER:
        return run_name("eval", model), TEACHER
    iteration = supervised_of(model)
    return run_name("eval", model), run_name("supervised", iteration) if iteration else run_name("student", model)
