"""Stage `robustness-data`: the -C / -P / -A test sets and the reference (baseline) model.

Built once from the test split, independent of every evaluated model:

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
``stages._robust.logits_of`` reads them. The reference's top-5 distance (mT5D's baseline) needs at
least 5 classes; with fewer, ``p_top5_distance`` is left empty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer
from sklearn.linear_model import SGDClassifier
from tqdm.auto import tqdm

from noisy_student.config import Params
from noisy_student.data import load_classes, load_imageset
from noisy_student.data.fashion_mnist import load_fashion_mnist
from noisy_student.io import atomic_path, write_json
from noisy_student.robustness import (
    CORRUPTIONS,
    NOISE_PERTURBATIONS,
    PERTURBATIONS,
    SEVERITIES,
    corrupt,
    flip_probability,
    perturbation_sequence,
    top5_distance,
)
from stages._common import (
    PARAMS_OPTION,
    Timer,
    friendly_errors,
    images_tensor,
    params_or_exit,
    stage_run,
    write_metrics,
)

# top5_distance ranks the top 5 classes of a frame: it is undefined with fewer classes
TOP5_MIN_CLASSES = 5


def _features(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def _as_images(batch: torch.Tensor) -> np.ndarray:
    """``(..., C, H, W)`` uint8 tensor back to the image-set layout: ``(..., H, W)`` (C = 1) or ``(..., H, W, C)``.

    The inverse of ``images_tensor``, so eval-C/-P feed the model the same layout as the clean test set.
    """
    if batch.shape[-3] == 1:
        return batch.squeeze(-3).numpy()
    return batch.movedim(-3, -1).contiguous().numpy()


def _save(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _reference_train_set(params: Params, labeled: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels the reference model learns from (see the module docstring)."""
    if params.data.source == "folders":
        lab = load_imageset(labeled)
        return lab.images, lab.labels
    raw = load_fashion_mnist(params.data.fashion_mnist_dir)
    return raw["train_images"], raw["train_labels"]


def _num_classes(folder: Path, *labels: np.ndarray) -> int:
    """Class count: ``classes.json`` of the prepared folder, else the largest label seen + 1."""
    names = load_classes(folder)
    if names is not None:
        return len(names)
    return int(max(int(y.max()) for y in labels if len(y)) + 1)


def _scores(reference: SGDClassifier, features: np.ndarray, num_classes: int) -> np.ndarray:
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


def main(
    test: Path = typer.Option(Path("data/prepared/test.npz"), help="Test image set."),
    out: Path = typer.Option(Path("data/robustness"), help="Folder for c.npz, p.npz, a.npz."),
    metrics: Path = typer.Option(Path("metrics/robustness-baseline.json"), help="Reference model errors."),
    labeled: Path | None = typer.Option(
        None, help="Labeled image set, the reference's training set with data.source folders (default: next to --test)."
    ),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Generate the corrupted / perturbed / natural-adversarial test sets and the baseline errors."""
    params = params_or_exit(params_file)
    r = params.robustness
    labeled = labeled if labeled is not None else test.with_name("labeled.npz")
    with friendly_errors():
        data = load_imageset(test)
        train_x, train_y = _reference_train_set(params, labeled)
        num_classes = _num_classes(test.parent, train_y, data.labels)
    timer = Timer()
    rng = np.random.default_rng(params.seed + 10)
    gen = torch.Generator().manual_seed(params.seed + 10)
    with stage_run("robustness-data", params, ("robustness",)):
        reference = SGDClassifier(loss="log_loss", alpha=1e-4, max_iter=30, tol=None, random_state=params.seed)
        if r.reference_train_images is not None and r.reference_train_images < len(train_x):
            keep = rng.choice(len(train_x), size=r.reference_train_images, replace=False)
            train_x, train_y = train_x[keep], train_y[keep]
        reference.fit(_features(train_x), train_y)
        clean_pred = reference.predict(_features(data.images))
        baseline: dict[str, object] = {"clean_error": float((clean_pred != data.labels).mean())}

        c_idx = np.sort(rng.choice(len(data), size=min(r.c_images, len(data)), replace=False))
        clean = images_tensor(data.images[c_idx])
        c_images = np.empty((len(CORRUPTIONS), len(SEVERITIES), *data.images[c_idx].shape), np.uint8)
        c_errors: dict[str, dict[str, float]] = {}
        for i, name in enumerate(tqdm(CORRUPTIONS, desc="corruptions", mininterval=5.0)):
            c_errors[name] = {}
            for j, severity in enumerate(SEVERITIES):
                c_images[i, j] = _as_images(corrupt(clean, name, severity, gen))
                pred = reference.predict(_features(c_images[i, j]))
                c_errors[name][str(severity)] = float((pred != data.labels[c_idx]).mean())
        baseline["c_errors"] = c_errors
        _save(out / "c.npz", images=c_images, labels=data.labels[c_idx], corruptions=np.array(CORRUPTIONS))

        p_idx = np.sort(rng.choice(len(data), size=min(r.p_images, len(data)), replace=False))
        seq_in = images_tensor(data.images[p_idx])
        p_images = np.empty((len(PERTURBATIONS), len(p_idx), r.p_frames, *data.images.shape[1:]), np.uint8)
        p_fp: dict[str, float] = {}
        p_t5d: dict[str, float] = {}
        for i, name in enumerate(tqdm(PERTURBATIONS, desc="perturbations", mininterval=5.0)):
            p_images[i] = _as_images(perturbation_sequence(seq_in, name, r.p_frames, gen))
            frames = _features(p_images[i].reshape(-1, *data.images.shape[1:]))
            scores = _scores(reference, frames, num_classes).reshape(len(p_idx), r.p_frames, -1)
            noise = name in NOISE_PERTURBATIONS
            p_fp[name] = flip_probability(scores.argmax(-1), noise)
            if num_classes >= TOP5_MIN_CLASSES:
                p_t5d[name] = top5_distance(scores, noise)
        baseline["p_flip_probability"] = p_fp
        baseline["p_top5_distance"] = p_t5d
        _save(out / "p.npz", images=p_images, labels=data.labels[p_idx], perturbations=np.array(PERTURBATIONS))

        wrong = np.flatnonzero(clean_pred != data.labels)
        _save(out / "a.npz", images=data.images[wrong], labels=data.labels[wrong], ids=data.ids[wrong])
        write_json(out / "baseline.json", baseline)
        write_metrics(
            metrics,
            {
                "reference_model": "logistic regression on pixels (sklearn SGDClassifier, log loss)",
                "reference_clean_top1": 1.0 - baseline["clean_error"],
                "a_images": int(len(wrong)),
                "c_images": int(len(c_idx)),
                "p_images": int(len(p_idx)),
                "seconds": timer.seconds,
            },
        )
    typer.echo(
        f"robustness-data: {len(wrong)} natural-adversarial images; reference clean top-1 "
        f"{100 * (1 - baseline['clean_error']):.2f} %"
    )


if __name__ == "__main__":
    typer.run(main)
