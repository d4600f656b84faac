"""Evaluating one model for robustness: the embedded -A/-C/-P sets, the released ImageNet-A/-C/-P, attacks.

Each benchmark is evaluated in two steps, so that a stage can report a missing input before it opens
its MLflow run: ``load_*`` reads the inputs (and raises ``FileNotFoundError`` / ``ParamsError`` for
what the user fixes), ``evaluate_*`` computes and returns the metrics dict the stage writes.

- embedded sets (``robustness-data``'s ``c.npz`` / ``p.npz`` / ``a.npz``): CE and FR normalised by
  the reference model's errors in ``baseline.json``;
- released benchmarks (``robustness.imagenet_{a,c,p}_dir``): CE normalised by AlexNet's published
  errors, FR by the ImageNet-P baseline file; images read at the model's size and channels.

Units: errors, accuracies and flip probabilities are fractions in 0..1; CE, mCE, FR, mFR and the
T5D ratios are percentages (x100), see ``metrics``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from noisy_student.config import Params, ParamsError, RobustnessParams
from noisy_student.data import ImageSet, load_imageset
from noisy_student.data.images import ImageTooSmallError
from noisy_student.devices import inference_dtype, resolve_device
from noisy_student.evaluation import images_tensor, predict_logits, topk_accuracy
from noisy_student.io import atomic_path
from noisy_student.models import ImageClassifier, ModelSpec, load_classifier
from noisy_student.paths import robustness_baseline_file, robustness_set_file
from noisy_student.robustness.attacks import correct_under_attack
from noisy_student.robustness.loaders import (
    VideoDecodingError,
    iter_imagenet_c,
    iter_imagenet_p,
    load_image_folder,
    load_imagenet_a,
    read_class_list,
)
from noisy_student.robustness.metrics import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_IMAGENET_C_ERRORS,
    TOP5_MIN_CLASSES,
    flip_probability,
    masked_topk,
    mce_shares,
    mce_summary,
    mfr_shares,
    mfr_summary,
    top5_distance,
)
from noisy_student.robustness.perturbations import EXTRA_PERTURBATIONS, NOISE_PERTURBATIONS, PERTURBATIONS
from noisy_student.seeds import seed_for
from noisy_student.statistics import bootstrap_interval

# the resolution ImageNet-C/-P are released at (and ImageNet-A is usually evaluated at)
RELEASE_IMAGE_SIZE = 224
Benchmark = Literal["A", "C", "P"]


@dataclass(frozen=True)
class ModelUnderTest:
    """The evaluated checkpoint on its device, the batch size and autocast dtype (None: float32) it runs with."""

    net: ImageClassifier
    device: torch.device
    batch_size: int
    amp_dtype: torch.dtype | None = None

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Float32 logits ``(N, K)`` of uint8 ``images`` ``(N, C, H, W)``, clean, in eval mode."""
        return predict_logits(self.net, images, self.batch_size, self.device, progress=False, amp_dtype=self.amp_dtype)


def load_model_under_test(path: Path, params: Params) -> ModelUnderTest:
    """The checkpoint at ``path`` on ``params.device``, run in batches of ``robustness.batch_size``."""
    net, _, _ = load_classifier(path)
    device = resolve_device(params.device)
    amp_dtype = inference_dtype(params.precision, device)
    return ModelUnderTest(net.to(device), device, params.robustness.batch_size, amp_dtype)


def _top1_error(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 error (0..1) of logits ``(N, K)`` against labels ``(N,)``."""
    return float((logits.argmax(1) != labels).mean())


def _stability(
    logits: np.ndarray, perturbation: str, fps: dict[str, float], t5ds: dict[str, float], top5: bool
) -> None:
    """Flip probability (and, with ``top5``, top-5 distance) of logits ``(N, T, K)`` into ``fps`` / ``t5ds``.

    Pairs as in ``metrics.flip_probability``: noise sequences vs their first frame, the others frame to frame.
    """
    noise = perturbation in NOISE_PERTURBATIONS
    fps[perturbation] = flip_probability(logits.argmax(-1), noise)
    if top5:
        t5ds[perturbation] = top5_distance(logits, noise)


# --- the embedded sets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedSet:
    """One set written by ``robustness-data`` (its npz arrays), the reference's errors and the model.

    ``baseline`` is ``baseline.json`` (``{}`` for the A set, which needs none).
    """

    arrays: dict[str, np.ndarray]
    baseline: dict[str, Any]
    model: ModelUnderTest
    seed: int = 0  # of the bootstrap resamples of the metric's 95 % interval


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: robustness test set not found (run the `robustness-data` stage first)")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_reference_errors(folder: Path) -> dict[str, Any]:
    """``baseline.json`` of the embedded sets: the reference model's clean error, C errors, P FP and T5D."""
    path = robustness_baseline_file(folder)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: baseline errors not found (run the `robustness-data` stage first)")
    return json.loads(path.read_text())


def load_embedded_set(folder: Path, kind: Literal["a", "c", "p"], model: Path, params: Params) -> EmbeddedSet:
    """The ``kind`` set of ``folder`` (``c.npz`` ...), with ``baseline.json`` for C and P, and the model."""
    arrays = _load_npz(robustness_set_file(kind, folder))
    baseline = load_reference_errors(folder) if kind != "a" else {}
    return EmbeddedSet(arrays, baseline, load_model_under_test(model, params), seed_for(params.seed, "bootstrap"))


def _items(column: str, values: np.ndarray) -> pd.DataFrame:
    """Per-item values of an embedded set (``item``: the position in the set, the same for every model)."""
    return pd.DataFrame({"item": np.arange(len(values)), column: values})


def evaluate_embedded_c(s: EmbeddedSet, test: Path, desc: str = "eval-C") -> tuple[dict[str, float], pd.DataFrame]:
    """Errors per corruption and severity, CE normalised by the reference model, mCE, relative mCE.

    ``s.arrays["images"]``: ``(corruptions, severities, N, H, W[, C])`` uint8. ``test``: the clean
    test split, for the model's clean error (the reference's is on the full split too). Returns
    ``clean_error`` and the keys of ``metrics.mce_summary``, and each image's ``mce_share``.
    """
    images, labels, m = s.arrays["images"], s.arrays["labels"], s.model
    corruptions = s.arrays["corruptions"].tolist()
    wrong = np.zeros(images.shape[:3], bool)  # (corruption, severity, image)
    for i, _ in enumerate(tqdm(corruptions, desc=desc, mininterval=5.0)):
        for j in range(images.shape[1]):
            wrong[i, j] = m.logits(images_tensor(images[i, j])).argmax(1) != labels
    clean = load_imageset(test)
    clean_logits = m.logits(images_tensor(clean.images))
    clean_error = _top1_error(clean_logits, clean.labels)
    base = {c: {int(sev): e for sev, e in by_sev.items()} for c, by_sev in s.baseline["c_errors"].items()}
    errors = {c: {j + 1: float(wrong[i, j].mean()) for j in range(wrong.shape[1])} for i, c in enumerate(corruptions)}
    summary = mce_summary(errors, base, clean_error, s.baseline["clean_error"])
    shares = mce_shares(wrong, corruptions, base)
    low, high = bootstrap_interval(lambda w: float(shares @ w) / len(shares), len(shares), seed=s.seed)
    metrics = {"clean_error": clean_error, **summary, "mce_ci_low": low, "mce_ci_high": high}
    return metrics, _items("mce_share", shares)


def evaluate_embedded_p(s: EmbeddedSet, desc: str = "eval-P") -> tuple[dict[str, float], pd.DataFrame]:
    """Flip probability ``fp_<p>`` per perturbation, FR / mFR and T5D / mT5D normalised by the reference.

    ``s.arrays["images"]``: ``(perturbations, N, T, H, W[, C])`` uint8. Returns the keys of
    ``metrics.mfr_summary`` and ``fp_<p>`` (top-5 distances only for models with >= 5 classes), and
    each sequence's ``mfr_share``.
    """
    seqs, m = s.arrays["images"], s.model
    n, t = seqs.shape[1], seqs.shape[2]
    fps: dict[str, float] = {}
    t5ds: dict[str, float] = {}
    flips: dict[str, np.ndarray] = {}  # per sequence: the share of its compared frame pairs that flip
    for i, pert in enumerate(tqdm(s.arrays["perturbations"].tolist(), desc=desc, mininterval=5.0)):
        frames = images_tensor(seqs[i].reshape(n * t, *seqs.shape[3:]))
        logits = m.logits(frames).reshape(n, t, -1)
        _stability(logits, pert, fps, t5ds, top5=logits.shape[-1] >= TOP5_MIN_CLASSES)
        flips[pert] = np.array([flip_probability(p[None], pert in NOISE_PERTURBATIONS) for p in logits.argmax(-1)])
    summary = mfr_summary(fps, t5ds, s.baseline["p_flip_probability"], s.baseline["p_top5_distance"])
    shares = mfr_shares(flips, s.baseline["p_flip_probability"])
    low, high = bootstrap_interval(lambda w: float(shares @ w) / n, n, seed=s.seed)  # over sequences
    metrics = {**summary, **{f"fp_{k}": v for k, v in fps.items()}, "mfr_ci_low": low, "mfr_ci_high": high}
    return metrics, _items("mfr_share", shares)


def evaluate_embedded_a(s: EmbeddedSet) -> tuple[dict[str, float], pd.DataFrame]:
    """Top-1 / top-5 (0..1) on the test images the reference model misclassifies, their count, and
    whether each is ``correct`` (top-1)."""
    m, labels = s.model, s.arrays["labels"]
    logits = m.logits(images_tensor(s.arrays["images"]))
    acc = topk_accuracy(logits, labels)
    correct = (logits.argmax(1) == labels).astype(float)
    low, high = bootstrap_interval(lambda w: float(correct @ w) / len(correct), len(correct), seed=s.seed)
    metrics = {"top1": acc["top1"], "top5": acc["top5"], "images": int(len(labels))}
    return metrics | {"top1_ci_low": low, "top1_ci_high": high}, _items("correct", correct.astype(int))


# --- the released benchmarks ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseInput:
    """How release images are read for one model: its class list, input size and channels."""

    wnids: list[str]  # the model's class ids, in logit order
    size: int
    channels: int  # the checkpoint's in_chans: 1 -> images converted to L, 3 -> to RGB
    crop_fraction: float | None
    max_per_class: int | None

    def loader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by the release loaders."""
        return {
            "size": self.size,
            "channels": self.channels,
            "crop_fraction": self.crop_fraction,
            "max_per_class": self.max_per_class,
        }

    def describe(self, root: str) -> dict[str, Any]:
        """Fields written next to the metrics so a number can be traced to its input."""
        return {"source": str(root), "image_size": self.size, "channels": self.channels}


@dataclass(frozen=True)
class Release:
    """A released benchmark at ``root`` and the model read against it.

    ``p_flip_probability`` / ``p_top5_distance``: the ImageNet-P baseline (``{}`` without one).
    """

    root: str
    model: ModelUnderTest
    input: ReleaseInput
    p_flip_probability: dict[str, float] = field(default_factory=dict)
    p_top5_distance: dict[str, float] = field(default_factory=dict)


def load_p_baseline(path: str | Path) -> tuple[dict[str, float], dict[str, float]]:
    """Baseline flip probabilities and top-5 distances of the released ImageNet-P, from a JSON file.

    Same keys as the embedded ``baseline.json``: ``{"p_flip_probability": {p: FP}, "p_top5_distance":
    {p: T5D}}``; a missing ``p_top5_distance`` means mT5D is not computed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ImageNet-P baseline file (robustness.p_baseline_file) not found")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("p_flip_probability"), dict):
        raise ValueError(f'{path}: expected {{"p_flip_probability": {{perturbation: FP}}, "p_top5_distance": ...}}')
    fp = {str(k): float(v) for k, v in data["p_flip_probability"].items()}
    t5 = {str(k): float(v) for k, v in (data.get("p_top5_distance") or {}).items()}
    return fp, t5


def _class_folders(benchmark: Benchmark, root: Path) -> Path | None:
    """A folder of ``<wnid>`` folders of the release whose sorted names may serve as the class list.

    C: the first benchmark corruption present, at severity 1; P: the first perturbation present;
    A: none (its 200 folders are a subset, never the model's list).
    """
    if benchmark == "C":
        first = next((c for c in ALEXNET_IMAGENET_C_ERRORS if (root / c).is_dir()), "")
        return root / first / "1"
    if benchmark == "P":
        return root / next((q for q in PERTURBATIONS + EXTRA_PERTURBATIONS if (root / q).is_dir()), "")
    return None


def _folder_classes(folder: Path, num_classes: int) -> list[str]:
    """Sorted ``<wnid>`` folder names of one release set, checked to cover every logit."""
    names = []
    if folder.is_dir():
        names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) != num_classes:
        raise ParamsError(
            f"robustness.class_index_file is not set and {folder} has {len(names)} class folders, not one per "
            f"model output ({num_classes}): set class_index_file to the model's class ids in logit order"
        )
    return names


def _checked_classes(path: Path, spec: ModelSpec, wnids: list[str] | None) -> list[str]:
    """The class list, refused when missing or not one id per model output."""
    if wnids is None:
        raise ParamsError(
            "robustness.class_index_file is not set: ImageNet-A needs the model's class ids (wnids) in logit "
            "order to pick its 200 classes out of the logits"
        )
    if len(wnids) != spec.num_classes:
        raise ParamsError(
            f"robustness.class_index_file lists {len(wnids)} classes but {path} has {spec.num_classes} outputs: "
            "the file must list the model's class ids in logit order"
        )
    return wnids


def load_release(path: Path, params: Params, benchmark: Benchmark) -> Release:
    """The model at ``path`` and how to read the released ``benchmark`` (``robustness.imagenet_<a|c|p>_dir``) for it.

    The class list comes from ``robustness.class_index_file`` and must have one id per logit. Without
    the file, C and P take the sorted wnid folder names of the release (the standard ImageNet index),
    accepted only when there is one folder per logit: fewer folders would silently shift every label.
    Raises ParamsError for a missing or mismatched class list, FileNotFoundError for missing files.
    """
    r = params.robustness
    root = str({"A": r.imagenet_a_dir, "C": r.imagenet_c_dir, "P": r.imagenet_p_dir}[benchmark])
    class_folders = _class_folders(benchmark, Path(root))
    net, spec, _ = load_classifier(path)
    try:
        wnids = read_class_list(r.class_index_file) if r.class_index_file else None
    except ValueError as err:
        raise ParamsError(f"robustness.class_index_file: {err}") from None
    if wnids is None and class_folders is not None:
        wnids = _folder_classes(class_folders, spec.num_classes)
    wnids = _checked_classes(path, spec, wnids)
    device = resolve_device(params.device)
    size = r.image_size or RELEASE_IMAGE_SIZE
    release_input = ReleaseInput(wnids, size, spec.in_chans, r.crop_fraction, r.release_max_per_class)
    model = ModelUnderTest(net.to(device), device, r.batch_size, inference_dtype(params.precision, device))
    release = Release(root, model, release_input)
    if benchmark == "P" and r.p_baseline_file:
        fp, t5 = load_p_baseline(r.p_baseline_file)
        release = Release(release.root, release.model, release.input, fp, t5)
    return release


def _checked_labels(labels: torch.Tensor, num_logits: int, where: str) -> np.ndarray:
    """Labels as numpy, checked to index the logits (a class folder outside the model's classes is a layout bug)."""
    out = labels.numpy()
    if len(out) and out.max() >= num_logits:
        raise ValueError(f"{where}: label {int(out.max())} is beyond the model's {num_logits} classes")
    return out


def evaluate_imagenet_c(release: Release, r: RobustnessParams, desc: str = "eval-C") -> dict[str, Any]:
    """ImageNet-C as released: errors per corruption and severity, CE against AlexNet's published errors.

    Baseline: ``ALEXNET_IMAGENET_C_ERRORS`` (AlexNet's mean error over severities 1..5 per corruption,
    hendrycks/robustness). Relative mCE needs the model's clean ImageNet error, so it is computed only
    when ``robustness.imagenet_val_dir`` is set (AlexNet's clean error: ``ALEXNET_CLEAN_ERROR``).
    Returns the keys of ``metrics.mce_summary``, ``clean_error`` (with the val dir), the image count
    and where the images came from.
    """
    root, m, spec = release.root, release.model, release.input
    errors: dict[str, dict[int, float]] = {}
    images_read = 0
    sets = iter_imagenet_c(root, wnids=spec.wnids, **spec.loader_kwargs())
    for corruption, severity, images, labels in tqdm(sets, desc=desc, mininterval=5.0):
        logits = m.logits(images)
        truth = _checked_labels(labels, logits.shape[1], f"{root}/{corruption}/{severity}")
        errors.setdefault(corruption, {})[severity] = _top1_error(logits, truth)
        images_read += len(truth)
    out: dict[str, Any] = {}
    clean_error = None
    if r.imagenet_val_dir:
        val, val_labels, _ = load_image_folder(r.imagenet_val_dir, wnids=spec.wnids, **spec.loader_kwargs())
        val_logits = m.logits(val)
        clean_error = _top1_error(val_logits, _checked_labels(val_labels, val_logits.shape[1], r.imagenet_val_dir))
        out["clean_error"] = clean_error
    # every released corruption has severities 1..5; `mce` refuses a partial set against the
    # published 5-severity means, which would bias CE
    out.update(mce_summary(errors, ALEXNET_IMAGENET_C_ERRORS, clean_error, ALEXNET_CLEAN_ERROR))
    out.update(images=images_read, baseline="AlexNet (hendrycks/robustness)", **spec.describe(root))
    return out


def evaluate_imagenet_p(release: Release, r: RobustnessParams, desc: str = "eval-P") -> dict[str, Any]:
    """ImageNet-P as released: flip probability and top-5 distance per perturbation, one video per image.

    mFR / mT5D need the baseline's values on the same release (``robustness.p_baseline_file``, read
    by :func:`load_release`); without it only the raw ``fp_<p>`` and ``t5d_raw_<p>`` are returned
    (see metrics.py on why no AlexNet constants are shipped).
    """
    root, m, spec = release.root, release.model, release.input
    fps: dict[str, float] = {}
    t5ds: dict[str, float] = {}
    sequences = 0
    clips = iter_imagenet_p(root, wnids=spec.wnids, **spec.loader_kwargs())
    for pert, videos, _labels in tqdm(clips, desc=desc, mininterval=5.0):
        n, t = videos.shape[:2]
        frames = videos.reshape(n * t, *videos.shape[2:])
        logits = m.logits(frames).reshape(n, t, -1)
        _stability(logits, pert, fps, t5ds, top5=True)
        sequences += n
    out: dict[str, Any] = mfr_summary(fps, t5ds, release.p_flip_probability, release.p_top5_distance)
    out.update({f"fp_{k}": v for k, v in fps.items()})
    out.update({f"t5d_raw_{k}": v for k, v in t5ds.items()})
    out.update(sequences=sequences, **spec.describe(root))
    if r.p_baseline_file:
        out["baseline"] = str(r.p_baseline_file)
    return out


def evaluate_imagenet_a(release: Release) -> dict[str, Any]:
    """ImageNet-A: top-1 / top-5 (0..1) over the 200-class subset of the logits (method.md, Robustness metrics)."""
    m, spec = release.model, release.input
    images, labels, class_indices = load_imagenet_a(release.root, spec.wnids, **spec.loader_kwargs())
    logits = m.logits(images)
    acc = topk_accuracy(masked_topk(logits, class_indices), labels.numpy())
    return {
        "top1": acc["top1"],
        "top5": acc["top5"],
        "images": int(len(labels)),
        "classes": len(class_indices),
        **spec.describe(release.root),
    }


# --- white-box attacks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackResult:
    """Top-1 (0..1) under FGSM per epsilon and under PGD at one epsilon (0..255 pixel units)."""

    fgsm: dict[float, float]
    pgd_steps: int
    pgd_epsilon: float
    pgd_top1: float
    images: int
    # 95 % bootstrap interval over the attacked images, per metric key of :meth:`metrics`
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    # whether each attacked image stays correctly classified, per metric key of :meth:`metrics`
    correct: dict[str, np.ndarray] = field(default_factory=dict)

    def items(self) -> pd.DataFrame:
        """Per attacked image (``item``: its position in the seeded subset): 1 where it stays correct, per key."""
        n = len(next(iter(self.correct.values()))) if self.correct else 0
        return pd.DataFrame({"item": np.arange(n), **{k: c.astype(int) for k, c in self.correct.items()}})

    def metrics(self) -> dict[str, float]:
        """``fgsm_top1_eps<e>``, ``pgd<steps>_top1_eps<e>`` (with ``_ci_low`` / ``_ci_high`` where an interval
        was computed) and the attacked image count."""
        top1 = {f"fgsm_top1_eps{eps:g}": acc for eps, acc in self.fgsm.items()}
        top1[f"pgd{self.pgd_steps}_top1_eps{self.pgd_epsilon:g}"] = self.pgd_top1
        ci = {
            f"{k}_ci_{side}": v
            for k, (low, high) in self.intervals.items()
            for side, v in (("low", low), ("high", high))
        }
        return {**top1, **ci, "images": self.images}

    def curve(self) -> pd.DataFrame:
        """The FGSM curve: columns ``epsilon`` (0..255) and ``top1`` (0..1)."""
        return pd.DataFrame({"epsilon": list(self.fgsm), "top1": list(self.fgsm.values())})

    def pgd_curve(self) -> pd.DataFrame:
        """PGD top-1 vs epsilon: columns ``epsilon`` (0..255), ``steps``, ``top1`` (0..1).

        PGD is run at one epsilon. At epsilon 0 it perturbs nothing, so when the FGSM curve has epsilon 0 (the
        clean top-1 of the same images) that point starts the curve: two points, a line from clean to attacked,
        where one point alone would be hard to see in a plot; otherwise the one measured row.
        """
        points = {0.0: self.fgsm[0.0]} if 0.0 in self.fgsm and self.pgd_epsilon != 0 else {}
        points[self.pgd_epsilon] = self.pgd_top1
        return pd.DataFrame({"epsilon": list(points), "steps": self.pgd_steps, "top1": list(points.values())})


def evaluate_attacks(model: ModelUnderTest, data: ImageSet, params: Params) -> AttackResult:
    """White-box FGSM and PGD through the model's own normalisation, on a seeded subset of ``data``.

    ``robustness.attack_images`` test images (stream ``attack_subset``); PGD's random start from
    stream ``pgd``.
    """
    r = params.robustness
    rng = np.random.default_rng(seed_for(params.seed, "attack_subset"))
    idx = np.sort(rng.choice(len(data), size=min(r.attack_images, len(data)), replace=False))
    images, labels = images_tensor(data.images[idx]), torch.from_numpy(data.labels[idx])
    net, bs, device = model.net, r.batch_size, model.device
    fgsm = correct_under_attack(net, images, labels, list(r.fgsm_epsilons), bs, device, "fgsm")
    pgd_start = seed_for(params.seed, "pgd")  # PGD's random start
    pgd = correct_under_attack(net, images, labels, [r.pgd_epsilon], bs, device, "pgd", r.pgd_steps, pgd_start)
    correct = {f"fgsm_top1_eps{eps:g}": c for eps, c in fgsm.items()}
    correct[f"pgd{r.pgd_steps}_top1_eps{r.pgd_epsilon:g}"] = pgd[r.pgd_epsilon]
    seed, n = seed_for(params.seed, "bootstrap"), len(idx)
    intervals = {k: bootstrap_interval(lambda w, c=c: float(c @ w) / n, n, seed=seed) for k, c in correct.items()}
    fgsm_top1 = {eps: float(c.mean()) for eps, c in fgsm.items()}
    pgd_top1 = float(pgd[r.pgd_epsilon].mean())
    return AttackResult(fgsm_top1, r.pgd_steps, r.pgd_epsilon, pgd_top1, n, intervals, correct)


def save_attack_curve(result: AttackResult, path: Path, pgd_path: Path | None = None) -> None:
    """The FGSM curve as CSV ``epsilon,top1`` and, at ``pgd_path``, the PGD curve as CSV ``epsilon,steps,top1``
    (DVC plots: same x and y, so they read as one attack-vs-epsilon picture), written atomically."""
    with atomic_path(path) as tmp:
        result.curve().to_csv(tmp, index=False)
    if pgd_path is not None:
        with atomic_path(pgd_path) as tmp:
            result.pgd_curve().to_csv(tmp, index=False)


# what reading a released benchmark's files can meet that the user fixes (each message names the file)
READ_ERRORS = (ImageTooSmallError, VideoDecodingError)


@dataclass
class RobustnessEval:
    """One -A / -C / -P benchmark of one model, its inputs read: the embedded set or the released one.

    ``datasets``: what the stage logs as its evaluation inputs; ``run(desc)`` computes the metrics
    dict and the per-item values the report pairs models on (``desc`` labels the progress bar); the
    released benchmarks have no per-item values yet (a frame with the ``item`` column only).
    """

    datasets: tuple[Path, ...]
    run: Callable[[str], tuple[dict[str, Any], pd.DataFrame]]


def load_robustness_eval(
    benchmark: Benchmark, model: Path, params: Params, data: Path, test: Path | None = None
) -> RobustnessEval:
    """Read the inputs of ``benchmark`` for the checkpoint ``model``: the released benchmark when its
    ``robustness.imagenet_{a,c,p}_dir`` is set, else ``robustness-data``'s embedded set in ``data``
    (``test``: the clean test set, which embedded -C needs for its relative mCE).

    Raises ``FileNotFoundError`` / ``ParamsError`` for missing or wrong inputs, before any evaluation.
    """
    r = params.robustness
    release_dir = {"A": r.imagenet_a_dir, "C": r.imagenet_c_dir, "P": r.imagenet_p_dir}[benchmark]
    if release_dir:
        release = load_release(model, params, benchmark)
        no_items = pd.DataFrame(columns=["item"])
        released: dict[str, Callable[[str], tuple[dict[str, Any], pd.DataFrame]]] = {
            "A": lambda desc: (evaluate_imagenet_a(release), no_items),
            "C": lambda desc: (evaluate_imagenet_c(release, r, desc), no_items),
            "P": lambda desc: (evaluate_imagenet_p(release, r, desc), no_items),
        }
        return RobustnessEval((Path(release_dir),), released[benchmark])
    kind: Literal["a", "c", "p"] = benchmark.lower()  # type: ignore[assignment]
    embedded = load_embedded_set(data, kind, model, params)
    if benchmark == "C":
        if test is None:
            raise ValueError("the embedded -C set needs the clean test set (test) for its relative mCE")
        clean = test
        return RobustnessEval(
            (robustness_set_file(kind, data), clean), lambda desc: evaluate_embedded_c(embedded, clean, desc)
        )
    runs: dict[str, Callable[[str], tuple[dict[str, Any], pd.DataFrame]]] = {
        "A": lambda desc: evaluate_embedded_a(embedded),
        "P": lambda desc: evaluate_embedded_p(embedded, desc),
    }
    return RobustnessEval((robustness_set_file(kind, data),), runs[benchmark])
