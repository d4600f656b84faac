"""FixRes-style finetune: a short pass at a higher test resolution (the paper's L2 step).

After the student's training, the paper finetunes it for 1.5 epochs on
unaugmented labeled images at a higher resolution with its shallow layers
frozen (FixRes, Touvron et al. 2019: the classifier and deep batch-norm
statistics adapt to the apparent object size at test resolution). The model's
``input_size`` is set, so every later caller (evaluation, robustness, the next
iteration's predictions) feeds it images at the data's resolution and the
model resizes them itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.utils import freeze, unfreeze

from noisy_student.config import FixResParams, NoiseParams, OptimParams
from noisy_student.models import ImageClassifier, model_noise_off, shallow_modules
from noisy_student.training.batches import TrainSource
from noisy_student.training.loop import EvalFn, train_classifier

# no crop, flip or RandAugment: the paper finetunes on unaugmented images
NO_AUGMENT = NoiseParams(randaugment_num_ops=0, crop_padding=0, hflip=False, dropout=0.0, stochastic_depth=0.0)


def fixres_optim(optim: OptimParams, fixres: FixResParams) -> OptimParams:
    """The finetune's schedule: the student's optimizer at ``fixres.lr``, cosine, no warmup, no EMA."""
    return optim.model_copy(
        update={"epochs": fixres.epochs, "lr": fixres.lr, "sched": "cosine", "warmup_epochs": 0, "ema_decay": 0.0}
    )


def fixres_finetune(
    model: ImageClassifier,
    labeled: TrainSource,
    optim: OptimParams,
    fixres: FixResParams,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    seed: int,
    checkpoint_path: Path | None = None,
    checkpoint_key: str = "",
    eval_fn: EvalFn | None = None,
    desc: str = "fixres",
) -> tuple[ImageClassifier, list[dict[str, float]]]:
    """Finetune ``model`` in place at ``fixres.image_size``; return it with its per-epoch history.

    ``labeled``: the labeled images at the data's resolution with their one-hot (or smoothed)
    targets, held in memory or streamed (any training source without pseudo labels).
    The stem and the first ``fixres.freeze_stages`` feature stages are frozen
    with :func:`timm.utils.freeze` (weights, and batch norm as frozen batch
    norm) and unfrozen again afterwards, so the returned module has its
    original layer types; dropout and stochastic depth are off.
    """
    shallow = shallow_modules(model.net, fixres.freeze_stages)
    model.input_size = fixres.image_size
    if shallow:  # timm reads an empty list as "the whole module"
        freeze(model.net, shallow)
    try:
        with model_noise_off(model):
            final, history = train_classifier(
                model,
                labeled,
                fixres_optim(optim, fixres),
                NO_AUGMENT,
                device=device,
                amp_dtype=amp_dtype,
                seed=seed,
                checkpoint_path=checkpoint_path,
                checkpoint_key=checkpoint_key,
                eval_fn=eval_fn,
                desc=desc,
            )
    finally:
        if shallow:
            unfreeze(model.net, shallow)
    return final, history
