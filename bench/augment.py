"""BatchAugment alone: per-image RandAugment vs the batched implementation, best of N interleaved runs.

Both draw ops per image (the paper's rule); ``batched`` applies the draws with one
torchvision call per (op, sign) group. Interleaving and keeping the best of each
side makes the comparison usable on a shared machine, where whole-step ratios
(train_step.py) swing with the load.

    python bench/augment.py --batch 192 --repeats 15 --threads 1
"""

from __future__ import annotations

import argparse

import _common  # noqa: F401  (puts src/ on the path)
import torch
from _common import machine, now

from noisy_student.config import load_params
from noisy_student.noise import BatchAugment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batch", type=int, default=0, help="images per call (0: one student step)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    batch = args.batch or params.student.optim.batch_size * (1 + params.student.unlabeled_ratio)
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sides = {
        impl: BatchAugment(params.noise.model_copy(update={"randaugment_impl": impl}))
        for impl in ("per_image", "batched")
    }
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(args.repeats):
        for impl, augment in sides.items():
            start = now()
            augment(images)
            best[impl] = min(best[impl], now() - start)
    print(f"machine: {machine()}; {args.threads} thread(s); {batch} images per call, best of {args.repeats}")
    for impl, seconds in best.items():
        print(f"{impl:>10}: {seconds * 1000:7.1f} ms per call  ({batch / seconds:8.0f} images/s)")
    print(f"speed-up batched / per_image = {best['per_image'] / best['batched']:.1f}x")


if __name__ == "__main__":
    main()
