"""Predict path vs bare inference, in images per second.

Real: what the ``predict`` stage does per image once it is decoded - ``predict_logits``
on uint8 host images (batching, host->device copy, float conversion, eval-mode
forward), ``softmax`` at the configured temperature, and one Parquet shard per
tar of the pool (``--shard-size`` images, default ``data.wds_shard_size``) built
by ``prediction_table`` and written to a temp folder. Bare: the same model in
eval mode under ``no_grad`` on float batches already on the device (autocast
bf16 on CUDA, as ``predict_logits``). The stage labels the pool one tar at a
time, decoding each batch's PNGs first (not timed here: ``bench/streaming.py``'s
``predict`` case runs the whole stage on tars); here the images are labelled in
one pass, which costs the same per image.

Both are run ``--repeats`` times alternately and the best of each is kept
(a shared machine's load changes between runs).

    python bench/predict.py --device cpu --images 8192
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import nullcontext
from pathlib import Path

import _common  # noqa: F401  (puts src/ on the path)
import numpy as np
import pyarrow.parquet as pq
import torch
from _common import device_of, machine, now, sync

from noisy_student.config import load_params
from noisy_student.data.wds import tar_name
from noisy_student.evaluation import predict_logits
from noisy_student.models import create_classifier
from noisy_student.pseudo_labels.shards import prediction_table
from noisy_student.pseudo_labels.targets import softmax

NUM_CLASSES = 10


@torch.no_grad()
def bare(model: torch.nn.Module, n: int, batch: int, device: torch.device) -> float:
    """Images/s of eval-mode forward passes on a device-resident float batch."""
    model.eval()
    x = torch.rand(batch, 1, 28, 28, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        model(x)  # warm-up
        sync(device)
        start = now()
        for _ in range(n // batch):
            model(x)
        sync(device)
    return (n // batch) * batch / (now() - start)


def real(model: torch.nn.Module, n: int, params, device: torch.device, shard_size: int) -> dict[str, float]:  # noqa: ANN001
    """Seconds of each part of the predict path for ``n`` uint8 host images, ``shard_size`` per tar."""
    pl = params.pseudo_labels
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)
    ids = np.arange(n, dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    source = np.full(n, "fashion_mnist")
    predict_logits(model, images[: pl.batch_size], pl.batch_size, device, progress=False)  # warm-up
    t0 = now()
    logits = predict_logits(model, images, pl.batch_size, device, progress=False)
    t1 = now()
    probs = softmax(logits, pl.temperature)
    t2 = now()
    with tempfile.TemporaryDirectory() as tmp:
        for shard, start in enumerate(range(0, n, shard_size)):  # one output file per tar of the pool
            sl = slice(start, start + shard_size)
            tar = tar_name("unlabeled", shard)
            table = prediction_table(ids[sl], source[sl], labels[sl], probs[sl], tar, pl.top_k)
            pq.write_table(table, Path(tmp) / f"part-{shard:05d}.parquet")
    t3 = now()
    return {"predict_logits": t1 - t0, "softmax": t2 - t1, "parquet": t3 - t2, "total": t3 - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--shard-size", type=int, help="images per tar / Parquet shard (default: data.wds_shard_size)")
    parser.add_argument("--model", choices=["teacher", "student"], default="teacher", help="which arch labels")
    parser.add_argument("--repeats", type=int, default=3, help="alternate bare/real this many times; best of each")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_of(args.device)
    params = load_params(args.params)
    model_params = params.teacher.model if args.model == "teacher" else params.student.model
    torch.manual_seed(0)
    model, _ = create_classifier(model_params, NUM_CLASSES, 1, (0.286,), (0.353,))
    model = model.to(device)
    batch = params.pseudo_labels.batch_size
    if args.images < batch:
        parser.error(f"--images {args.images}: at least pseudo_labels.batch_size ({batch}) for one bare batch")
    shard_size = args.shard_size or params.data.wds_shard_size
    print(f"machine: {machine()}; device {device}")
    print(
        f"{args.model} {model_params.arch} {model_params.kwargs}, {args.images} images, batch {batch}, "
        f"{shard_size} per tar"
    )
    # alternate the two and keep the best of each: on a shared machine the load changes between runs
    bare_ips, parts = 0.0, {"total": float("inf")}
    for _ in range(args.repeats):
        bare_ips = max(bare_ips, bare(model, args.images, batch, device))
        parts = min(parts, real(model, args.images, params, device, shard_size), key=lambda p: p["total"])
    real_ips = args.images / parts["total"]
    print(f"bare inference (device tensors): {bare_ips:9.1f} images/s")
    print(f"real predict path:               {real_ips:9.1f} images/s")
    for name, seconds in parts.items():
        print(f"  {name:15s} {seconds:7.2f} s  ({seconds / parts['total'] * 100:5.1f} %)")
    print(f"ratio real / bare = {real_ips / bare_ips:.3f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
