"""The eval-A/-C/-P stages on tiny fake releases in the real ImageNet-A/-C/-P on-disk layouts.

The model is a real checkpoint (timm ``test_resnet`` saved with ``save_checkpoint``) whose classifier
is set to ignore its input: zero weights and a fixed bias, so every prediction, and with it every
metric, is known exactly. Images are real JPEG/PNG files and (with PyAV) a real .mp4.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from noisy_student.cli import app
from noisy_student.config import ModelParams
from noisy_student.models import create_classifier, save_checkpoint
from noisy_student.paths import fgsm_curve
from noisy_student.report.charts import fgsm_comparison
from noisy_student.robustness.loaders import read_class_list
from noisy_student.robustness.metrics import ALEXNET_IMAGENET_C_ERRORS

pytestmark = pytest.mark.usefixtures("one_thread")

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331"]
# logits of every input; class 0 wins overall, class 1 wins among ImageNet-A's subset below
BIAS = [10.0, 5.0, 4.0, 3.0, 2.0, 1.0]
SIZE = 16  # robustness.image_size: small so the tests stay fast


def constant_model(path: Path, in_chans: int) -> Path:
    """A checkpoint whose logits are BIAS whatever the image (so metrics are known in advance)."""
    mean, std = (0.5,) * in_chans, (0.25,) * in_chans
    model, spec = create_classifier(ModelParams(arch="test_resnet", small_image=True), len(WNIDS), in_chans, mean, std)
    head = model.net.get_classifier()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(BIAS))
    save_checkpoint(path, model, spec, {"name": "constant"})
    return path


def write_image(path: Path, value: int, mode: str = "RGB", size: tuple[int, int] = (30, 22)) -> None:
    """A real image file (JPEG or PNG by suffix) with some structure and colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    array = np.full((h, w, 3), value, dtype=np.uint8)
    array[:, : w // 3, 0] = 255 - value
    Image.fromarray(array).convert(mode).save(path)


def params_file(tmp_path: Path, **robustness: Any) -> Path:
    """A params file with defaults everywhere except the robustness keys given."""
    raw = {"device": "cpu", "robustness": {"image_size": SIZE, "batch_size": 64, **robustness}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow runs of the stage go to a throw-away store, not the project's mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("NOISY_STUDENT_ROOT", str(tmp_path))


def invoke(command: str, model: Path, params: Path, metrics: Path, expect_ok: bool = True) -> Any:
    args = [command, "--model", str(model), "--name", "m", "--metrics", str(metrics), "--params", str(params)]
    result = CliRunner().invoke(app, args)
    if expect_ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.mark.usefixtures("tracking")
def test_eval_c_reads_imagenet_c_release(tmp_path: Path) -> None:
    root = tmp_path / "ImageNet-C"
    for corruption in ("fog", "gaussian_noise"):
        for severity in range(1, 6):
            for wnid in WNIDS[:2]:  # class 0 (always predicted: right) and class 1 (wrong)
                write_image(root / corruption / str(severity) / wnid / "ILSVRC2012_val_00000001.JPEG", 40 * severity)
    (root / "README.txt").write_text("ignored")
    classes = tmp_path / "LOC_synset_mapping.txt"
    classes.write_text("".join(f"{w} class {i}\n" for i, w in enumerate(WNIDS)))
    val = tmp_path / "val"
    for wnid in WNIDS[:4]:  # 1 of 4 right: clean error 0.75
        write_image(val / wnid / "x.png", 90)
    model = constant_model(tmp_path / "gray.pt", in_chans=1)  # RGB JPEGs are converted to L
    params = params_file(tmp_path, imagenet_c_dir=str(root), class_index_file=str(classes), imagenet_val_dir=str(val))
    metrics = tmp_path / "c.json"
    out = invoke("eval-C", model, params, metrics)
    assert "eval-C m: mCE" in out.output
    m = json.loads(metrics.read_text())
    for corruption in ("fog", "gaussian_noise"):
        assert m[f"ce_{corruption}"] == pytest.approx(100 * 0.5 / ALEXNET_IMAGENET_C_ERRORS[corruption])
    assert m["mce"] == pytest.approx((m["ce_fog"] + m["ce_gaussian_noise"]) / 2)
    assert m["corrupted_top1"] == pytest.approx(0.5)
    assert m["mce_corruptions"] == 2 and m["images"] == 20
    assert m["clean_error"] == pytest.approx(0.75) and m["relative_mce_corruptions"] == 2
    # the model degrades by -0.25 under corruption: a negative relative CE, still well defined
    assert m["relative_mce"] < 0
    assert m["source"] == str(root) and m["channels"] == 1 and m["image_size"] == SIZE
    # the keys report.py reads are there
    assert {"mce", "corrupted_top1"} <= set(m)


@pytest.mark.usefixtures("tracking")
def test_eval_c_release_layout_error_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "ImageNet-C"
    for wnid in WNIDS:  # all the model's classes: the sorted folders serve as the class list
        write_image(root / "fog" / "1" / wnid / "a.JPEG", 10)  # but severities 2..5 are missing
    model = constant_model(tmp_path / "m.pt", in_chans=1)
    result = invoke("eval-C", model, params_file(tmp_path, imagenet_c_dir=str(root)), tmp_path / "c.json", False)
    assert result.exit_code == 2
    assert "fog/2" in result.output and "<severity 1..5>" in result.output


@pytest.mark.usefixtures("tracking")
def test_eval_a_masks_logits_to_the_release_classes(tmp_path: Path) -> None:
    root = tmp_path / "imagenet-a"
    write_image(root / WNIDS[1] / "0.000116_a.jpg", 30, mode="L")  # grayscale files into an RGB model
    write_image(root / WNIDS[1] / "0.000117_b.jpg", 60, mode="L")
    write_image(root / WNIDS[3] / "0.000118_c.jpg", 90)
    write_image(root / WNIDS[4] / "0.000119_d.png", 120)
    (root / "README.txt").write_text("n01443537 goldfish")
    classes = tmp_path / "imagenet_class_index.json"
    classes.write_text(json.dumps({str(i): [w, f"class {i}"] for i, w in enumerate(WNIDS)}))
    model = constant_model(tmp_path / "rgb.pt", in_chans=3)
    metrics = tmp_path / "a.json"
    params = params_file(tmp_path, imagenet_a_dir=str(root), class_index_file=str(classes), crop_fraction=0.875)
    invoke("eval-A", model, params, metrics)
    m = json.loads(metrics.read_text())
    # unmasked, class 0 would win every image (top-1 0); over the subset, class 1 wins: 2 of 4 right
    assert m["top1"] == pytest.approx(0.5) and m["top5"] == pytest.approx(1.0)
    assert m["images"] == 4 and m["classes"] == 3 and m["channels"] == 3 and m["source"] == str(root)
    # without the class index file the stage refuses, naming the key
    result = invoke("eval-A", model, params_file(tmp_path, imagenet_a_dir=str(root)), metrics, expect_ok=False)
    assert result.exit_code == 2 and "class_index_file" in result.output


def write_mp4(path: Path, frames: int) -> None:
    """A real H.263-family (mpeg4) video of ``frames`` frames getting brighter, written with PyAV."""
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for t in range(frames):
            image = np.full((32, 32, 3), 20 + 25 * t, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.usefixtures("tracking")
def test_eval_p_reads_videos_and_frame_folders(tmp_path: Path) -> None:
    root = tmp_path / "ImageNet-P"
    write_mp4(root / "gaussian_noise" / WNIDS[0] / "ILSVRC2012_val_00000001.mp4", 5)
    write_mp4(root / "gaussian_noise" / WNIDS[2] / "ILSVRC2012_val_00000002.mp4", 5)
    for t in range(4):
        write_image(root / "rotate" / WNIDS[1] / "ILSVRC2012_val_00000003" / f"{t + 1}.png", 30 * t)
    baseline = tmp_path / "p_baseline.json"
    baseline.write_text(json.dumps({"p_flip_probability": {"gaussian_noise": 0.2, "rotate": 0.1}}))
    model = constant_model(tmp_path / "gray.pt", in_chans=1)
    metrics = tmp_path / "p.json"
    # without a class index file the wnid folders must cover the model's 6 classes: here they do not
    result = invoke("eval-P", model, params_file(tmp_path, imagenet_p_dir=str(root)), metrics, expect_ok=False)
    assert result.exit_code == 2 and "class_index_file" in result.output and "2 class folders" in result.output
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(WNIDS))
    params = params_file(
        tmp_path, imagenet_p_dir=str(root), p_baseline_file=str(baseline), class_index_file=str(classes)
    )
    invoke("eval-P", model, params, metrics)
    m = json.loads(metrics.read_text())
    # a model that ignores its input never flips: FP, FR and mFR are exactly 0
    assert m["fp_gaussian_noise"] == 0.0 and m["fp_rotate"] == 0.0 and m["t5d_raw_rotate"] == 0.0
    assert m["mfr"] == 0.0 and m["mfr_perturbations"] == 2 and m["mt5d_perturbations"] == 0
    assert m["sequences"] == 3 and m["source"] == str(root)
    # without a baseline file: raw numbers only, no mFR (report.py shows it as missing)
    invoke("eval-P", model, params_file(tmp_path, imagenet_p_dir=str(root), class_index_file=str(classes)), metrics)
    m = json.loads(metrics.read_text())
    assert "mfr" not in m and m["mfr_perturbations"] == 0 and "fp_rotate" in m


def test_mp4_read_back_through_the_loader(tmp_path: Path) -> None:
    from noisy_student.robustness.loaders import iter_imagenet_p

    write_mp4(tmp_path / "p" / "scale" / WNIDS[3] / "v.mp4", 6)
    ((name, videos, labels),) = list(iter_imagenet_p(tmp_path / "p", size=8, channels=3, wnids=WNIDS))
    assert name == "scale" and videos.shape == (1, 6, 3, 8, 8) and labels.tolist() == [3]
    brightness = videos[0].float().mean((1, 2, 3))
    assert (brightness[1:] > brightness[:-1]).all()  # frames decoded in order


def test_class_index_file_formats(tmp_path: Path) -> None:
    listed = tmp_path / "classes.json"
    listed.write_text(json.dumps(WNIDS))
    indexed = tmp_path / "index.json"
    indexed.write_text(json.dumps({str(i): [w, "x"] for i, w in reversed(list(enumerate(WNIDS)))}))
    text = tmp_path / "synsets.txt"
    text.write_text("# comment\n" + "".join(f"{w} some name, other\n\n" for w in WNIDS))
    assert read_class_list(listed) == read_class_list(indexed) == read_class_list(text) == WNIDS
    text.write_text(f"{WNIDS[0]}\n{WNIDS[0]}\n")
    with pytest.raises(ValueError, match="duplicates"):
        read_class_list(text)
    indexed.write_text(json.dumps({"0": "a", "2": "b"}))
    with pytest.raises(ValueError, match="without gaps"):
        read_class_list(indexed)


def test_fgsm_comparison_draws_every_model(tmp_path: Path) -> None:
    for name, top1 in (("teacher", [0.9, 0.5]), ("it1", [0.9, 0.6]), ("it2", [0.92, 0.7])):
        curve = fgsm_curve(name, metrics=tmp_path)
        curve.parent.mkdir(parents=True, exist_ok=True)
        curve.write_text(f"epsilon,top1\n0,{top1[0]}\n8,{top1[1]}\n")
    png = tmp_path / "fgsm.png"
    assert fgsm_comparison(tmp_path, png) == ["it1", "it2", "teacher"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fgsm_comparison(tmp_path, png, ["teacher", "it1", "it3"]) == ["teacher", "it1"]
    with pytest.raises(FileNotFoundError, match="fgsm-<model>.csv"):
        fgsm_comparison(tmp_path / "empty", png)
