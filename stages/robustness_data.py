"""Stage `robustness-data`: Fashion-MNIST-C / -P / -A test sets and the reference (baseline) model.

Built once from the test split, independent of every evaluated model:

- reference model: a linear softmax classifier (multinomial logistic regression on pixels, trained
  by scikit-learn's SGD on all 60,000 labeled training images). It plays AlexNet's role in
  ImageNet-C/-P: its errors normalise CE and its flip probabilities normalise FR.
- C: ``robustness.c_images`` test images x 15 corruptions x 5 severities.
- P: ``robustness.p_images`` test images x 10 perturbation sequences of ``p_frames`` frames.
- A ("natural adversarial"): the test images the reference model gets wrong, as ImageNet-A kept
  the images a fixed ResNet-50 got wrong. The evaluated models never take part in choosing them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer
from sklearn.linear_model import SGDClassifier
from tqdm.auto import tqdm

from noisy_student.data import load_imageset
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


def _features(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def _save(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def main(
    test: Path = typer.Option(Path("data/prepared/test.npz"), help="Test image set."),
    out: Path = typer.Option(Path("data/robustness"), help="Folder for c.npz, p.npz, a.npz."),
    metrics: Path = typer.Option(Path("metrics/robustness-baseline.json"), help="Reference model errors."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Generate the corrupted / perturbed / natural-adversarial test sets and the baseline errors."""
    params = params_or_exit(params_file)
    r = params.robustness
    with friendly_errors():
        data = load_imageset(test)
        raw = load_fashion_mnist(params.data.fashion_mnist_dir)
    timer = Timer()
    rng = np.random.default_rng(params.seed + 10)
    gen = torch.Generator().manual_seed(params.seed + 10)
    with stage_run("robustness-data", params, ("robustness",)):
        reference = SGDClassifier(loss="log_loss", alpha=1e-4, max_iter=30, tol=None, random_state=params.seed)
        train_x, train_y = raw["train_images"], raw["train_labels"]
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
                c_images[i, j] = corrupt(clean, name, severity, gen)[:, 0].numpy()
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
            p_images[i] = perturbation_sequence(seq_in, name, r.p_frames, gen)[:, :, 0].numpy()
            frames = _features(p_images[i].reshape(-1, *data.images.shape[1:]))
            scores = reference.decision_function(frames).reshape(len(p_idx), r.p_frames, -1)
            noise = name in NOISE_PERTURBATIONS
            p_fp[name] = flip_probability(scores.argmax(-1), noise)
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
