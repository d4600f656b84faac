"""The CUDA code paths (marker ``cuda``): bf16 autocast, channels-last, device-resident images, DataLoader
workers with pinned memory, resume, a real ``dvc repro`` and two nccl ranks. ``bench/gpu_check.sh`` runs them
on a GPU machine; where torch sees no GPU they skip.

``GPU_CHECK_DEVICE=cpu pytest -m cuda tests/test_cuda.py`` runs the same bodies on CPU (gloo instead of nccl,
bf16 emulated where the CPU lacks it): a check of the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from noisy_student.config import OptimParams
from noisy_student.training import streams
from noisy_student.training.loop import train_classifier
from tests.conftest import FASHION_MNIST, ROOT, make_project, micro_params, run
from tests.test_training import NOISE, _data, _model
from tests.test_training_streams import Shards
from tests.test_training_streams import _train as _train_streamed

DEVICE = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))
# cuBLAS reads this when it starts: deterministic algorithms (the resume test) need it set before any CUDA work
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.type == "cuda" and GPUS == 0, reason="no CUDA GPU visible to torch"),
]
DVC = [sys.executable, "-m", "dvc"]


def _optim(epochs: int) -> OptimParams:
    return OptimParams(epochs=epochs, batch_size=16, lr=0.05, warmup_epochs=0, eval_every=2, checkpoint_steps=3)


def test_bf16_channels_last_training_on_device_resident_images() -> None:
    data = _data().resident(DEVICE)
    if DEVICE.type == "cuda":  # 64 tiny images: far under a quarter of any GPU's memory
        assert data.labeled_images.device.type == "cuda" and data.labeled_images.dtype == torch.uint8
    model, history = train_classifier(
        _model(),
        data,
        _optim(6),
        NOISE,
        unlabeled_ratio=2,
        device=DEVICE,
        amp_dtype=torch.bfloat16,
        channels_last=True,
        seed=0,
    )
    assert all(np.isfinite(h["train_loss"]) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {p.device.type for p in model.parameters()} == {DEVICE.type}
    # the weights trained on the device classify the same on it and on the CPU (float32 both)
    images = _data().labeled_images
    model.eval()
    with torch.no_grad():
        on_device = model(images.to(DEVICE).float()).argmax(1).cpu()
        on_cpu = model.cpu()(images.float()).argmax(1)
    assert (on_device == on_cpu).float().mean() >= 0.98


@pytest.fixture
def deterministic_algorithms(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CUDA's default kernels (cuDNN's weight gradients, atomics) may add in another order on every run; under
    deterministic algorithms two runs agree bit for bit, as on CPU."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def test_streamed_training_pins_memory_in_workers_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deterministic_algorithms: None
) -> None:
    shards = Shards(tmp_path / "shards")
    data = shards.data(workers=2)
    pinned: list[bool] = []
    loader = streams.labeled_loader

    def recorded(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        pinned.append(kwargs.get("pin_memory", args[6] if len(args) > 6 else False))
        return loader(*args, **kwargs)

    monkeypatch.setattr(streams, "labeled_loader", recorded)
    ckpt = tmp_path / "state.pt"
    full, _ = _train_streamed(data, ckpt, device=DEVICE)
    assert pinned and all(p == (DEVICE.type == "cuda") for p in pinned), pinned

    class Killed(RuntimeError):
        pass

    def die_after_two(record: dict) -> None:
        if record["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        _train_streamed(data, ckpt, on_epoch=die_after_two, device=DEVICE)
    assert ckpt.is_file()
    resumed, _ = _train_streamed(data, ckpt, device=DEVICE)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{k}: max |difference| {(a.double() - b.double()).abs().max().item():.3g}"


def _device_project(tmp_path: Path, distributed: dict[str, object] | None = None) -> Path:
    if not FASHION_MNIST.is_dir():
        pytest.fail(f"{FASHION_MNIST} missing: the test setup installs dataset-fashion-mnist (make test)")
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p.update(device=DEVICE.type, precision="bf16")
    p["data"].update(residency="stream", workers=2)  # DataLoader workers, pinned memory on CUDA
    p["distributed"].update(distributed or {})
    return make_project(tmp_path, p)


@pytest.mark.slow
def test_micro_pipeline_on_the_device(tmp_path: Path) -> None:
    repo = _device_project(tmp_path)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    run(DVC + ["repro", "eval@teacher", "eval@it1", "eval-C@it1", "eval-FGSM@it1"], repo, env=env)
    for model in ("teacher", "it1"):
        acc = json.loads((repo / "metrics" / f"eval-{model}.json").read_text())
        assert acc["images"] == 200 and 0.0 <= acc["top1"] <= acc["top5"] <= 1.0
    assert json.loads((repo / "metrics" / "robustness" / "fgsm-it1.json").read_text())["fgsm_top1_eps0"] >= 0
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("noisy-student")
    assert exp is not None
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], max_results=100)}
    for stage in ("teacher", "predict@it1", "student@it1", "eval@it1"):
        assert runs[stage].data.tags["env.device"].startswith(DEVICE.type), (stage, runs[stage].data.tags)


@pytest.mark.slow
@pytest.mark.skipif(DEVICE.type != "cuda" or GPUS < 2, reason="two nccl ranks need two CUDA GPUs")
def test_two_nccl_ranks_with_synchronized_batchnorm(tmp_path: Path) -> None:
    repo = _device_project(tmp_path, {"processes": 2, "sync_batchnorm": True})
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    proc = run(DVC + ["repro", "eval@it1"], repo, env=env)
    for module in ("stages.teacher", "stages.predict", "stages.student"):
        assert f"--nproc_per_node=2 -m {module}" in proc.stderr, proc.stderr
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("noisy-student")
    assert exp is not None
    names = [r.info.run_name for r in client.search_runs([exp.experiment_id], max_results=100)]
    for stage in ("teacher", "predict@it1", "student@it1"):
        assert names.count(stage) == 1, names  # rank 0 alone tracks
