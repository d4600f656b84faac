"""End to end on the user's own images: `data.source: folders`, RGB, 3 classes, a real `dvc repro`.

The Fashion-MNIST e2e test covers greyscale and 10 classes; this one covers what only user data has:
three channels kept through every stage (robustness sets included), a class count taken from the
folders, and an unlabeled pool whose labels are all unknown (-1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.linear_model import SGDClassifier

from noisy_student.evaluation import images_tensor
from noisy_student.models import load_classifier
from noisy_student.robustness.build import as_images, reference_scores
from tests.conftest import ROOT, make_project, micro_params, run

DVC = [sys.executable, "-m", "dvc"]
CLASSES = ("berry", "leaf", "sky")
# each class is a square of its colour on a random background at a random place: learnable, but the
# pixel-level reference model gets some test images wrong, so the -A set and the flip baselines are not empty
CLASS_RGB = {"berry": (220, 30, 60), "leaf": (30, 200, 60), "sky": (40, 80, 230)}
SIZE = 32


def _image(rng: np.random.Generator, rgb: tuple[int, int, int], width: int, height: int) -> Image.Image:
    """A square of colour ``rgb`` at a random place on a noisy background of a random colour."""
    background = rng.integers(40, 216, size=3).astype(np.float32)
    pixels = background + rng.normal(0, 20, size=(height, width, 3))
    side = max(4, min(width, height) // 2)
    y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    pixels[y : y + side, x : x + side] = np.array(rgb, dtype=np.float32) + rng.normal(0, 20, size=(side, side, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _write_images(folder: Path, count: int, rng: np.random.Generator, rgb: tuple[int, int, int] | None) -> None:
    """``count`` images of varied sizes, aspect ratios and formats (``rgb`` None: a random class colour)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour = rgb if rgb is not None else CLASS_RGB[CLASSES[int(rng.integers(len(CLASSES)))]]
        width, height = int(rng.integers(24, 90)), int(rng.integers(24, 90))
        ext = ("png", "jpg", "bmp")[i % 3]
        _image(rng, colour, width, height).save(folder / f"img{i:03d}.{ext}")


def make_dataset(root: Path) -> dict[str, Path]:
    """labeled/<class>/ (12 per class), unlabeled/ (60 in nested folders), test/<class>/ (6 per class)."""
    rng = np.random.default_rng(0)
    dirs = {name: root / name for name in ("labeled", "unlabeled", "test")}
    for name in CLASSES:
        _write_images(dirs["labeled"] / name, 12, rng, CLASS_RGB[name])
        _write_images(dirs["test"] / name, 6, rng, CLASS_RGB[name])
    for sub in ("a", "a/deeper", "b/c"):
        _write_images(dirs["unlabeled"] / sub, 20, rng, None)
    return dirs


def _folders_params(dirs: dict[str, Path]) -> dict[str, Any]:
    """The micro profile (tests/conftest.py) reading the folders at 32 px RGB."""
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["data"].update(
        source="folders",
        labeled_dir=str(dirs["labeled"]),
        unlabeled_dir=str(dirs["unlabeled"]),
        test_dir=str(dirs["test"]),
        image_size=SIZE,
        channels=3,
    )
    return p


@pytest.fixture
def folders_project(tmp_path: Path) -> Path:
    """A git + DVC repository of this project whose params read a tiny RGB image-folder dataset."""
    dirs = make_dataset(tmp_path / "images")
    return make_project(tmp_path, _folders_params(dirs))


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.mark.parametrize("shape", [(4, 6, 5), (4, 6, 5, 3)])
def test_robustness_images_keep_the_test_set_layout(shape: tuple[int, ...]) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    assert np.array_equal(as_images(images_tensor(images)), images)
    # a perturbation video (N, T, C, H, W) comes back as (N, T, H, W[, C])
    video = images_tensor(images).unsqueeze(1).expand(-1, 2, -1, -1, -1)
    assert as_images(video).shape == (shape[0], 2, *shape[1:])


@pytest.mark.parametrize(("seen", "num_classes"), [((0, 1), 2), ((0, 2), 3), ((0, 1, 2), 3)])
def test_reference_scores_have_one_column_per_class(seen: tuple[int, ...], num_classes: int) -> None:
    rng = np.random.default_rng(0)
    y = np.array(seen * 10)
    x = rng.normal(size=(len(y), 4)) + y[:, None]
    reference = SGDClassifier(loss="log_loss", max_iter=30, tol=None, random_state=0).fit(x, y)
    scores = reference_scores(reference, x, num_classes)
    # the top-1 column is the class the reference predicts, also for binary and class-incomplete fits
    assert scores.shape == (len(y), num_classes)
    assert np.array_equal(scores.argmax(1), reference.predict(x))


@pytest.mark.slow
def test_repro_on_rgb_image_folders(folders_project: Path) -> None:
    repo = folders_project
    # every stage on RGB, the robustness evaluations for one model (the teacher's run the same code)
    targets = ["eval@teacher", "eval@it1", *(f"eval-{kind}@it1" for kind in ("A", "C", "P", "FGSM"))]
    proc = run(DVC + ["repro", *targets], repo)
    log = proc.stdout + proc.stderr
    # user data has no known unlabeled label: the metrics say null instead of numpy warning about it
    for warning in ("Mean of empty slice", "invalid value encountered"):
        assert warning not in log, f"'{warning}' in the dvc repro output:\n{log}"

    metrics = repo / "metrics"
    prep = _json(metrics / "prepare.json")
    assert (prep["classes"], prep["labeled"], prep["unlabeled"], prep["test"]) == (3, 36, 60, 18)
    assert (prep["image_size"], prep["channels"]) == (SIZE, 3)

    for name in ("teacher", "it1"):
        net, spec, _ = load_classifier(repo / "models" / f"{name}.pt")
        assert (spec.num_classes, spec.in_chans) == (3, 3), name
        with torch.no_grad():
            assert net(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 3)
        acc = _json(metrics / f"eval-{name}.json")
        assert 0.0 <= acc["top1"] <= acc["top5"] <= 1.0 and acc["images"] == 18, acc

    pred = _json(metrics / "predict-it1.json")
    assert pred["images"] == 60
    assert pred["pseudo_label_accuracy"] is None and pred["mean_confidence_in_domain"] is None
    assert 1 / 3 <= pred["mean_confidence_out_of_domain"] <= 1.0
    filt = _json(metrics / "filter-it1.json")
    assert filt["rows_in"] == 60 and 0 < filt["unique"] <= filt["total"]
    # every label is -1 because it is unknown, not because the image is out of domain: nothing to count
    assert filt.get("out_of_domain_in") is None and filt["selected_pseudo_label_accuracy"] is None
    assert (repo / "data" / "pseudo" / "it1" / "selected.parquet").is_file()
    assert (metrics / "plots" / "confidence-it1.png").stat().st_size > 1000

    # the robustness sets keep all three channels, in the test set's (N, H, W, C) layout
    rob = repo / "data" / "robustness"
    with np.load(rob / "c.npz") as c, np.load(rob / "p.npz") as p, np.load(rob / "a.npz") as a:
        assert c["images"].shape == (15, 5, 18, SIZE, SIZE, 3)
        assert p["images"].shape == (10, 10, 4, SIZE, SIZE, 3)
        assert a["images"].shape[1:] == (SIZE, SIZE, 3) and set(a["labels"].tolist()) <= {0, 1, 2}
        a_images = len(a["labels"])
        # colour survives: channels differ (a greyscale copy in three channels would not)
        assert np.abs(c["images"][..., 0].astype(int) - c["images"][..., 2]).mean() > 10
    baseline = _json(metrics / "robustness-baseline.json")
    assert 0.0 < baseline["reference_clean_top1"] < 1.0 and baseline["a_images"] == a_images > 0
    c_m = _json(metrics / "robustness" / "c-it1.json")
    assert 0.0 <= c_m["corrupted_top1"] <= 1.0 and "mce_corruptions" in c_m
    p_m = _json(metrics / "robustness" / "p-it1.json")
    # fewer than 5 classes: no top-5 distance, flip rates still
    assert p_m["mfr_perturbations"] > 0 and p_m["mfr"] >= 0 and p_m["mt5d_perturbations"] == 0
    assert all(0.0 <= p_m[f"fp_{k}"] <= 1.0 for k in ("gaussian_noise", "rotate"))
    a_m = _json(metrics / "robustness" / "a-it1.json")
    assert a_m["images"] == a_images and 0.0 <= a_m["top1"] <= 1.0
    fgsm = _json(metrics / "robustness" / "fgsm-it1.json")
    assert 0.0 <= fgsm["fgsm_top1_eps16"] <= 1.0
