"""Robustness evaluation in the style of the Noisy Student paper (Xie et al., CVPR 2020, Sec. 4).

- ``corruptions``: the 15 ImageNet-C corruptions x 5 severities as batched torch ops;
- ``perturbations``: ImageNet-P style perturbation sequences;
- ``attacks``: FGSM and PGD in 0..1 pixel space, accuracy under attack;
- ``metrics``: mCE / relative mCE, flip probability / mFR, top-5 distance / mT5D, ImageNet-A masking;
- ``loaders``: readers for the released ImageNet-A/-C/-P folder layouts;
- ``build``: the embedded -C/-P/-A test sets and their reference model (stage ``robustness-data``);
- ``evaluate``: one model on the embedded sets, the released benchmarks and the attacks (stages ``eval-*``).

``build`` and ``evaluate`` are imported as modules, not re-exported here: they pull in scikit-learn,
the model code and pandas, which the pure functions above do not need.
"""

from noisy_student.robustness.attacks import ATTACKS, accuracy_under_attack, fgsm, pgd
from noisy_student.robustness.corruptions import CORRUPTIONS, RANDOM_CORRUPTIONS, SEVERITIES, corrupt
from noisy_student.robustness.loaders import (
    LayoutError,
    VideoDecodingError,
    class_index,
    iter_imagenet_c,
    iter_imagenet_p,
    load_image_folder,
    load_imagenet_a,
    read_class_list,
)
from noisy_student.robustness.metrics import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_IMAGENET_C_ERRORS,
    corruption_errors,
    flip_probability,
    flip_rate,
    masked_topk,
    mce,
    mfr,
    mt5d,
    relative_corruption_errors,
    top5_distance,
    top5_rank_distance,
)
from noisy_student.robustness.perturbations import (
    EXTRA_PERTURBATIONS,
    NOISE_PERTURBATIONS,
    PERTURBATIONS,
    perturbation_sequence,
)

__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_IMAGENET_C_ERRORS",
    "ATTACKS",
    "CORRUPTIONS",
    "EXTRA_PERTURBATIONS",
    "NOISE_PERTURBATIONS",
    "PERTURBATIONS",
    "RANDOM_CORRUPTIONS",
    "SEVERITIES",
    "LayoutError",
    "VideoDecodingError",
    "accuracy_under_attack",
    "class_index",
    "corrupt",
    "corruption_errors",
    "fgsm",
    "flip_probability",
    "flip_rate",
    "iter_imagenet_c",
    "iter_imagenet_p",
    "load_image_folder",
    "load_imagenet_a",
    "masked_topk",
    "mce",
    "mfr",
    "mt5d",
    "perturbation_sequence",
    "pgd",
    "read_class_list",
    "relative_corruption_errors",
    "top5_distance",
    "top5_rank_distance",
]
