"""The embedded -C / -P / -A test sets and the reference (baseline) model, built from the test split.

Built once, independent of every evaluated model:

- reference model: a linear softmax classifier (multinomial logistic regression on pixels, trained
  by scikit-learn's SGD). It plays AlexNet's role in ImageNet-C/-P: its errors normalise CE and its
  flip probabilities normalise FR. What it is trained on depends on ``data.source``:

  - ``fashion_mnist``: all 60,000 training images of the IDX release (labels known for all of them,
    although the pipeline itself uses only ``labeled_per_class`` of them);
  - ``folders``: the labeled set (``labeled.npz`` next to the test set), the only labeled training
    images there are. It is as weak as that set is small; that is fine for its two uses, which need
    a fixed model, not a good one: CE / FR are ratios to it, and -A is what it gets wrong.

  ``robustness.reference_train_images`` caps either set (a seeded sample).
- C: ``robustness.c_images`` test images x 15 corruptions x 5 severities.
- P: ``robustness.p_images`` test images x 10 perturbation sequences of ``p_frames`` frames.
- A ("natural adversarial"): the test images the reference model gets wrong, as ImageNet-A kept
  the images a fixed ResNet-50 got wrong. The evaluated models never take part in choosing them.

Images keep the test set's layout: ``(..., H, W)`` for greyscale, ``(..., H, W, 3)`` for RGB, as
``evaluation.images_tensor`` reads them. The reference's top-5 distance (mT5D's baseline) needs at
least 5 classes; with fewer, ``p_top5_distance`` is left empty. Files (``paths``): ``c.npz``,
``p.npz``, ``a.npz`` and ``baseline.json`` in the output folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import SGDClassifier
from tqdm.auto import tqdm

from noisy_student.config import Params
from noisy_student.data import ImageSet, load_imageset
from noisy_student.data.fashion_mnist import load_fashion_mnist
from noisy_student.data.imageset import class_count
from noisy_student.evaluation import images_tensor
from noisy_student.io import atomic_path, write_json
from noisy_student.paths import robustness_baseline_file, robustness_set_file
from noisy_student.robustness.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from noisy_student.robustness.metrics import TOP5_MIN_CLASSES, flip_probability, top5_distance
from noisy_student.robustness.perturbations import NOISE_PERTURBATIONS, PERTURBATIONS, perturbation_sequence
from noisy_student.seeds import seed_for

REFERENCE_MODEL = "logistic regression on pixels (sklearn SGDClassifier, log loss)"


@dataclass(frozen=True)
class BuildInputs:
    """What the sets are built from: the test split and the reference model's training set.

    ``train_images`` ``(N, H, W[, C])`` uint8 with ``train_labels`` ``(N,)`` int class indices;
    ``num_classes``: the class count of the prepared data (the reference's score columns).
    """

    test: ImageSet
    train_images: np.ndarray
    train_labels: np.ndarray
    num_classes: int


def load_build_inputs(params: Params, test: Path, labeled: Path) -> BuildInputs:
    """Read the test split and the reference's training set (see the module docstring).

    Raises FileNotFoundError / DatasetMissingError when an input is missing.
    """
    data = load_imageset(test)
    if params.data.source == "folders":
        lab = load_imageset(labeled)
        train_x, train_y = lab.images, lab.labels
    else:
        raw = load_fashion_mnist(params.data.fashion_mnist_dir)
        train_x, train_y = raw["train_images"], raw["train_labels"]
    return BuildInputs(data, train_x, train_y, class_count(test.parent, train_y, data.labels))


def pixel_features(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(N, ...)`` -> float32 ``(N, D)`` pixel vectors in 0..1, the reference's input."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def as_images(batch: torch.Tensor) -> np.ndarray:
    """``(..., C, H, W)`` uint8 tensor back to the image-set layout: ``(..., H, W)`` (C = 1) or ``(..., H, W, C)``.

    The inverse of ``images_tensor``, so eval-C/-P feed the model the same layout as the clean test set.
    """
    if batch.shape[-3] == 1:
        return batch.squeeze(-3).numpy()
    return batch.movedim(-3, -1).contiguous().numpy()


def reference_scores(reference: SGDClassifier, features: np.ndarray, num_classes: int) -> np.ndarray:
    """Decision scores ``(N, num_classes)``, column = class index, whatever classes the reference saw.

    scikit-learn returns one column per class it was trained on, and a single column for two classes;
    the metrics index scores by class, so both are put back on the full class axis.
    """
    scores = reference.decision_function(features)
    if scores.ndim == 1:  # binary: the score of classes_[1]; its negation orders classes_[0] the same way
        scores = np.stack([-scores, scores], axis=1)
    seen = reference.classes_.astype(np.int64)
    if len(seen) == num_classes and np.array_equal(seen, np.arange(num_classes)):
        return scores
    # classes missing from a capped training sample: below every seen class, never the top-1
    full = np.full((len(scores), num_classes), scores.min() - 1.0, dtype=scores.dtype)
    full[:, seen] = scores
    return full


def fit_reference(
    images: np.ndarray, labels: np.ndarray, cap: int | None, rng: np.random.Generator, seed: int
) -> SGDClassifier:
    """The reference model trained on ``images`` ``(N, ...)`` uint8, at most ``cap`` of them drawn from ``rng``."""
    reference = SGDClassifier(loss="log_loss", alpha=1e-4, max_iter=30, tol=None, random_state=seed)
    if cap is not None and cap < len(images):
        keep = rng.choice(len(images), size=cap, replace=False)
        images, labels = images[keep], labels[keep]
    return reference.fit(pixel_features(images), labels)


def _save(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _corrupted_set(
    data: ImageSet, idx: np.ndarray, reference: SGDClassifier, gen: torch.Generator, out: Path
) -> dict[str, dict[str, float]]:
    """Write ``c.npz`` (images ``(corruptions, severities, N, H, W[, C])``); the reference's error per set."""
    clean = images_tensor(data.images[idx])
    c_images = np.empty((len(CORRUPTIONS), len(SEVERITIES), *data.images[idx].shape), np.uint8)
    c_errors: dict[str, dict[str, float]] = {}
    for i, name in enumerate(tqdm(CORRUPTIONS, desc="corruptions", mininterval=5.0)):
        c_errors[name] = {}
        for j, severity in enumerate(SEVERITIES):
            c_images[i, j] = as_images(corrupt(clean, name, severity, gen))
            pred = reference.predict(pixel_features(c_images[i, j]))
            c_errors[name][str(severity)] = float((pred != data.labels[idx]).mean())
    _save(robustness_set_file("c", out), images=c_images, labels=data.labels[idx], corruptions=np.array(CORRUPTIONS))
    return c_errors


def _perturbed_set(
    data: ImageSet,
    idx: np.ndarray,
    frames: int,
    reference: SGDClassifier,
    num_classes: int,
    gen: torch.Generator,
    out: Path,
) -> tuple[dict[str, float], dict[str, float]]:
    """Write ``p.npz`` (images ``(perturbations, N, frames, H, W[, C])``); the reference's FP and T5D."""
    seq_in = images_tensor(data.images[idx])
    p_images = np.empty((len(PERTURBATIONS), len(idx), frames, *data.images.shape[1:]), np.uint8)
    p_fp: dict[str, float] = {}
    p_t5d: dict[str, float] = {}
    for i, name in enumerate(tqdm(PERTURBATIONS, desc="perturbations", mininterval=5.0)):
        p_images[i] = as_images(perturbation_sequence(seq_in, name, frames, gen))
        features = pixel_features(p_images[i].reshape(-1, *data.images.shape[1:]))
        scores = reference_scores(reference, features, num_classes).reshape(len(idx), frames, -1)
        noise = name in NOISE_PERTURBATIONS
        p_fp[name] = flip_probability(scores.argmax(-1), noise)
        if num_classes >= TOP5_MIN_CLASSES:
            p_t5d[name] = top5_distance(scores, noise)
    p_file = robustness_set_file("p", out)
    _save(p_file, images=p_images, labels=data.labels[idx], perturbations=np.array(PERTURBATIONS))
    return p_fp, p_t5d


def build_robustness_sets(inputs: BuildInputs, params: Params, out: Path) -> dict[str, Any]:
    """Train the reference, write the C / P / A sets and ``baseline.json`` into ``out``; return the metrics.

    Metrics: ``reference_clean_top1`` (fraction 0..1), the image counts of the three sets and the
    wall time in ``seconds``. Draws, in this order: the reference's training sample, the C images,
    the P images (``rng``), then the corruptions and the perturbation sequences (``gen``).
    """
    start = time.perf_counter()
    r = params.robustness
    data = inputs.test
    seed = seed_for(params.seed, "robustness_sets")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    reference = fit_reference(
        inputs.train_images,
        inputs.train_labels,
        r.reference_train_images,
        rng,
        seed_for(params.seed, "reference_model"),
    )
    clean_pred = reference.predict(pixel_features(data.images))
    baseline: dict[str, Any] = {"clean_error": float((clean_pred != data.labels).mean())}
    c_idx = np.sort(rng.choice(len(data), size=min(r.c_images, len(data)), replace=False))
    baseline["c_errors"] = _corrupted_set(data, c_idx, reference, gen, out)
    p_idx = np.sort(rng.choice(len(data), size=min(r.p_images, len(data)), replace=False))
    fp, t5d = _perturbed_set(data, p_idx, r.p_frames, reference, inputs.num_classes, gen, out)
    baseline["p_flip_probability"] = fp
    baseline["p_top5_distance"] = t5d
    wrong = np.flatnonzero(clean_pred != data.labels)
    _save(robustness_set_file("a", out), images=data.images[wrong], labels=data.labels[wrong], ids=data.ids[wrong])
    write_json(robustness_baseline_file(out), baseline)
    return {
        "reference_model": REFERENCE_MODEL,
        "reference_clean_top1": 1.0 - baseline["clean_error"],
        "a_images": int(len(wrong)),
        "c_images": int(len(c_idx)),
        "p_images": int(len(p_idx)),
        "seconds": round(time.perf_counter() - start, 2),
    }
