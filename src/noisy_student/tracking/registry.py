"""Students as MLflow models in the registry: one version per trained student, ``champion`` on the best.

A version is tagged with its iteration, DVC experiment and checkpoint md5; the ``eval`` stage finds the
versions of the checkpoint it evaluated by that md5 (checkpoints are byte-deterministic, so identical
weights share it), records their clean top-1 and moves the ``champion`` alias to the best version::

    mlflow.pytorch.load_model("models:/noisy-student@champion")
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch

from noisy_student.tracking.dvclock import file_md5
from noisy_student.tracking.runs import CHECKPOINT_TAG, active_stage
from noisy_student.tracking.store import experiment_name, store_lock

CHAMPION = "champion"
TOP1_TAG = "top1"


def log_model(
    model: torch.nn.Module, checkpoint: Path, input_shape: tuple[int, int, int], registered_name: str | None = None
) -> None:
    """Log the trained network as an MLflow PyTorch model (and register it when a name is given).

    The DVC-tracked checkpoint (weights + construction spec) goes along as an
    artifact, so the MLflow run alone is enough to rebuild the model. A registered version is tagged
    with ``iteration``, ``dvc_exp``, ``params_hash`` and ``checkpoint_md5`` (:func:`rate_model` finds it by that).
    """
    import mlflow.pytorch  # slow to import; only the student stage needs it
    import timm

    import noisy_student

    mlflow.log_artifact(str(checkpoint), "checkpoint")
    model = model.cpu().eval()
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        # pickle + this package as code: MLflow's default 'pt2' export fixes the batch size
        # to the example's; the pickled module serves any batch
        serialization_format="pickle",
        code_paths=[str(Path(noisy_student.__file__).parent)],
        input_example=np.zeros((2, *input_shape), np.float32),  # (B, C, H, W) floats in 0..1
        # explicit requirements: inferring them imports the whole environment (slow, noisy)
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"],
        registered_model_name=registered_name,
    )
    if registered_name and info.registered_model_version is not None:
        stage = active_stage()
        tags = {
            "iteration": (stage.target if stage else None) or "",
            "dvc_exp": experiment_name(),
            "params_hash": stage.params_hash if stage else "",
            CHECKPOINT_TAG: file_md5(checkpoint),
        }
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(registered_name, str(info.registered_model_version), key, value)


def rate_model(registered_name: str | None, checkpoint: Path, top1: float) -> str | None:
    """Record ``top1`` on the registered versions of ``checkpoint``; point ``champion`` at the best version.

    Returns the champion's version, None when ``checkpoint`` has no registered version (a teacher, or
    registration off). The best is the highest clean top-1 recorded on any version; on a tie the
    current champion stays, else the earliest version wins. Read, compare and move happen under the
    store lock, so two experiments evaluating at once cannot leave the alias on the worse one.
    """
    if not registered_name:
        return None
    client = mlflow.MlflowClient()
    md5 = file_md5(checkpoint)
    with store_lock():
        versions = client.search_model_versions(f"name = '{registered_name}'")
        matched = [v for v in versions if v.tags.get(CHECKPOINT_TAG) == md5]
        if not matched:
            return None
        scores = {str(v.version): float(v.tags[TOP1_TAG]) for v in versions if TOP1_TAG in v.tags}
        for version in matched:
            client.set_model_version_tag(registered_name, version.version, TOP1_TAG, repr(float(top1)))
            scores[str(version.version)] = float(top1)
        current = str(client.get_registered_model(registered_name).aliases.get(CHAMPION))
        best = max(scores, key=lambda v: (scores[v], v == current, -int(v)))
        if best != current:
            client.set_registered_model_alias(registered_name, CHAMPION, best)
        return best
