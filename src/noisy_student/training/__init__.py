"""Training: the Noisy Student step (``task``), the loop (``loop``) on host tensors or streamed shards
(``streams``), the recipe of one run (``recipe``), FixRes."""

from noisy_student.training.fixres import fixres_finetune
from noisy_student.training.loop import EpochCallback, EvalFn, TrainData, epoch_steps, one_hot, train_classifier
from noisy_student.training.recipe import (
    PlanError,
    RunLockedError,
    RunPlan,
    TrainingInputs,
    TrainResult,
    claim_run,
    save_training_outputs,
    train_model,
)
from noisy_student.training.streams import StreamedTrainData
from noisy_student.training.task import NoisyStudentTask, joint_loss

__all__ = [
    "EpochCallback",
    "EvalFn",
    "NoisyStudentTask",
    "PlanError",
    "RunLockedError",
    "RunPlan",
    "StreamedTrainData",
    "TrainData",
    "TrainResult",
    "TrainingInputs",
    "claim_run",
    "epoch_steps",
    "fixres_finetune",
    "joint_loss",
    "one_hot",
    "save_training_outputs",
    "train_classifier",
    "train_model",
]
