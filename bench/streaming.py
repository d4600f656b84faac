"""Streamed tars (``data.residency: stream``) vs images held in memory (``memory``): peak memory and throughput.

Writes synthetic pools (random uint8 images at ``--side`` px, ``--pools`` sizes) as ``.wds`` tar
folders (``pool<N>/unlabeled.wds``), plus a labeled set of ``--labeled`` images (``labeled.wds``),
then measures each case in a fresh process (peak RSS is the process's high-water mark, VmHWM). Both
residencies read the same tar folders:

- ``predict``: the real ``predict_pseudo_labels`` over the whole pool (labelled one tar at a time,
  one batch decoded at a time, whatever the residency);
- ``student``: the real ``train_classifier`` for ``--epochs`` labeled epochs with every pool image
  selected (soft targets, a ``SelectedImages``): ``student-stream`` reads the labeled and
  pseudo-labeled tars while training (``StreamedTrainData``); ``student-memory`` first decodes the
  labeled split and the pool with ``load_imageset`` and builds ``TrainData`` from the selected rows
  (``SelectedImages.rows``), as the student stage does with ``data.residency: memory``;
- the streamed student under bf16 autocast vs float32 (CPUs with bf16 instructions, and CUDA).

Printed: peak RSS per pool size and the largest-over-smallest ratio (the target: streamed within
+15 %), training images/s of streamed vs in-memory on the same data (the in-memory side's one-off
decoding of the tars is printed apart, as ``setup``), and bf16 vs fp32.

    python bench/streaming.py --pools 10000 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts src/ on the path)
import numpy as np
from _common import machine, now, peak_rss_mib

NUM_CLASSES = 10
POOL_FIRST_ID = 2_000_000
BENCH = Path(__file__).resolve()


# --- data -----------------------------------------------------------------------------------------


def pool_folder(work: Path, n: int) -> Path:
    """The pool of ``n`` images: a split folder named as the prepared pool is (split ``unlabeled``)."""
    return work / f"pool{n}" / "unlabeled.wds"


def write_data(work: Path, pools: list[int], labeled: int, side: int, shard_size: int) -> None:
    """The labeled / test sets and each pool as ``.wds`` tar folders (seeded noise images)."""
    from noisy_student.data import ImageSet, save_classes, save_imageset

    rng = np.random.default_rng(0)

    def imageset(n: int, first_id: int, labels: np.ndarray) -> ImageSet:
        images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        return ImageSet(images, labels, first_id + np.arange(n, dtype=np.int64), np.full(n, "synthetic"))

    lab = imageset(labeled, 0, np.arange(labeled) % NUM_CLASSES)
    test = imageset(256, 1_000_000, np.arange(256) % NUM_CLASSES)
    for name, data in (("labeled", lab), ("test", test)):
        save_imageset(work / f"{name}.wds", data, shard_size)
    for n in pools:
        pool = imageset(n, POOL_FIRST_ID, np.full(n, -1))
        save_imageset(pool_folder(work, n), pool, shard_size)
        del pool
    save_classes(work, [f"c{i}" for i in range(NUM_CLASSES)])


def selected_images(pool: Path) -> Any:
    """Every image of the pool selected once, with a seeded soft target (what filter-balance keeps)."""
    from noisy_student.data.wds import read_info
    from noisy_student.pseudo_labels.targets import SelectedImages

    info = read_info(pool)
    n = info.num_samples
    ids = POOL_FIRST_ID + np.arange(n, dtype=np.int64)  # the ids write_data gave the pool, in tar order
    shards = np.repeat(np.array(info.filenames), info.shard_lengths)
    probs = np.random.default_rng(1).dirichlet(np.ones(NUM_CLASSES), n).astype(np.float32)
    return SelectedImages(ids, shards, probs, np.ones(n, dtype=np.int64))


# --- one measurement per process ------------------------------------------------------------------


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from noisy_student.config import load_params
    from noisy_student.data import load_imageset
    from noisy_student.evaluation import images_tensor
    from noisy_student.models import create_classifier, save_checkpoint
    from noisy_student.training.batches import TrainData, one_hot
    from noisy_student.training.loop import train_classifier
    from noisy_student.training.streams import StreamedTrainData

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    pool = pool_folder(work, args.pool)
    params = load_params(args.params)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model, spec = create_classifier(
        params.student.model, NUM_CLASSES, 3, (0.5,) * 3, (0.25,) * 3, params.noise.dropout,
        params.noise.stochastic_depth,
    )  # fmt: skip
    setup = 0.0
    if args.case == "predict":
        from noisy_student.pseudo_labels.predict import load_predict_inputs, predict_pseudo_labels

        checkpoint = work / "teacher.pt"
        save_checkpoint(checkpoint, model, spec, {"name": "bench"})
        inputs = load_predict_inputs(checkpoint, pool, params.pseudo_labels)
        out = Path(tempfile.mkdtemp(dir=work))
        start = now()
        done = predict_pseudo_labels(inputs, out, params.pseudo_labels, device, 0)
        images = done.images
    else:
        optim = params.student.optim.model_copy(update={"epochs": args.epochs, "warmup_epochs": 0, "eval_every": 10**6})
        ratio = params.student.unlabeled_ratio
        start = now()
        selected = selected_images(pool)
        if args.case == "student-stream":  # data.residency: stream: both streams read from the tars while training
            data: Any = StreamedTrainData(
                work / "labeled.wds", args.labeled, 3, NUM_CLASSES, unlabeled=pool, pseudo=selected
            )
        else:  # data.residency: memory, as the student stage builds it: the splits decoded, the selected rows kept
            lab, unl = load_imageset(work / "labeled.wds"), load_imageset(pool)
            rows, targets = selected.rows(unl.ids, pool)
            data = TrainData(
                images_tensor(lab.images),
                one_hot(lab.labels, NUM_CLASSES),
                images_tensor(unl.images[rows]),
                torch.from_numpy(targets),
            )
            del lab, unl, rows
        setup = now() - start
        amp = torch.bfloat16 if args.bf16 else None
        start = now()
        train_classifier(
            model, data, optim, params.noise, unlabeled_ratio=ratio, device=device, amp_dtype=amp, seed=0, desc="bench"
        )
        steps = args.epochs * (args.labeled // optim.batch_size)
        images = steps * optim.batch_size * (1 + ratio)
    seconds = now() - start
    return {
        "images": images,
        "seconds": seconds,
        "setup_s": setup,
        "img_s": images / seconds,
        "peak_rss_mib": peak_rss_mib(),
    }


def measure(args: argparse.Namespace, case: str, pool: int, bf16: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH), "--child", "--case", case, "--pool", str(pool), "--work", str(args.work)]
    cmd += ["--params", args.params, "--epochs", str(args.epochs), "--labeled", str(args.labeled)]
    cmd += ["--threads", str(args.threads)] + (["--bf16"] if bf16 else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    setup = f", setup {result['setup_s']:.1f} s" if case == "student-memory" else ""
    print(
        f"  {case:14s} pool {pool:>9,} {'bf16' if bf16 else 'fp32'}: {result['img_s']:8.0f} img/s, "
        f"peak RSS {result['peak_rss_mib']:7.0f} MiB ({result['images']} images, {result['seconds']:.1f} s{setup})",
        flush=True,
    )
    return result


CASES = ("predict", "student-stream", "student-memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, nargs="+", default=[10_000, 100_000], help="pool sizes (images)")
    parser.add_argument("--labeled", type=int, default=1024, help="labeled images (steps per epoch = this / batch)")
    parser.add_argument("--side", type=int, default=32, help="image side in px")
    parser.add_argument("--shard-size", type=int, default=10_000, help="images per tar (data.wds_shard_size)")
    parser.add_argument("--epochs", type=int, default=2, help="student epochs on the labeled set")
    parser.add_argument("--params", default="params.yaml", help="student model / optim / noise / predict params")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", help="folder for the data (default: a temp folder, removed after)")
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    from noisy_student.config import load_params

    batch = load_params(args.params).student.optim.batch_size
    if args.labeled < batch:
        parser.error(f"--labeled {args.labeled}: at least student.optim.batch_size ({batch}) for one step per epoch")
    with tempfile.TemporaryDirectory() as tmp:
        args.work = Path(args.work or tmp)
        args.work.mkdir(parents=True, exist_ok=True)
        print(machine())
        start = now()
        write_data(args.work, args.pools, args.labeled, args.side, args.shard_size)
        print(f"wrote pools {args.pools} ({args.side} px RGB, {args.shard_size} per tar) in {now() - start:.0f} s")
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for n in args.pools:
            for case in CASES:
                rows[case, n] = measure(args, case, n)
        small, large = min(args.pools), max(args.pools)
        print(f"\npeak RSS, pool of {large:,} over pool of {small:,} images (streamed target: <= 1.15):")
        for case in CASES:
            a, b = rows[case, small]["peak_rss_mib"], rows[case, large]["peak_rss_mib"]
            print(f"  {case:14s} {a:7.0f} -> {b:7.0f} MiB  ratio {b / a:.3f}")
        print(f"\nthroughput, same data (pool of {small:,}):")
        stream, memory = rows["student-stream", small]["img_s"], rows["student-memory", small]["img_s"]
        setup = rows["student-memory", small]["setup_s"]
        print(
            f"  student streamed {stream:.0f} img/s vs in memory {memory:.0f} img/s: ratio {stream / memory:.2f} "
            f"(in memory first decodes the tars: {setup:.1f} s)"
        )
        bf16 = measure(args, "student-stream", small, bf16=True)
        fast = bf16["img_s"]
        print(f"  student streamed bf16 {fast:.0f} img/s vs fp32 {stream:.0f} img/s: ratio {fast / stream:.2f}")


if __name__ == "__main__":
    main()
