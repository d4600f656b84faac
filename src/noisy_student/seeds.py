"""Every random stream of the pipeline, derived from the one ``seed`` param by purpose.

A stage asks for ``seed_for(params.seed, "<purpose>")`` instead of adding an
offset of its own, so two purposes never share a stream by accident and a
reader finds every stream here. The offsets are the ones the pipeline has
always used (changing one changes that stage's outputs); purposes with the
same offset run in different stages and never draw from one generator.
"""

from __future__ import annotations

# purpose -> offset added to params.seed
STREAMS: dict[str, int] = {
    # prepare
    "split": 0,  # labeled / unlabeled split of the training images
    "out_of_domain": 1,  # which out-of-domain images join the pool
    "test_subset": 2,  # data.test_size subsample
    "unlabeled_subsample": 0,  # data.max_unlabeled subsample of the user's folder
    # teacher / student
    "init": 0,  # initial weights
    "train": 0,  # batches, augmentation, dropout of the main phase
    "finetune": 1,  # Table 13's labeled-only finetune phase
    "fixres": 2,  # FixRes finetune phase
    # predict (draws only with pseudo_labels.noised_teacher)
    "predict": 30,
    # filter-balance: which rows are duplicated to fill a class
    "filter": 0,
    # robustness
    "robustness_sets": 10,  # corruptions, perturbation sequences
    "reference_model": 0,  # the logistic-regression reference model
    "attack_subset": 20,  # which test images are attacked
    "pgd": 0,  # PGD's random start
    # report
    "bootstrap": 40,  # test-image resamples of the paired gain intervals
}


def seed_for(seed: int, purpose: str) -> int:
    """The seed of one named stream; ``purpose`` must be a key of :data:`STREAMS`."""
    try:
        return seed + STREAMS[purpose]
    except KeyError:
        raise KeyError(f"unknown random stream '{purpose}' (known: {sorted(STREAMS)})") from None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (initial weights, dropout, augmentation)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
