"""FixRes finetune probe: test top-1 of a trained checkpoint before and after the finetune, per input size.

For each ``--sizes`` side it prints the checkpoint's test top-1 when its inputs
are simply resized to that side, and after ``fixres_finetune`` at that side
(the ``student.fixres`` step: unaugmented labeled images, noise off, stem and
first ``--freeze-stages`` stages frozen). It answers "would
``student.fixres.epochs > 0`` pay off on this data?" in a minute or two,
without retraining the student through DVC.

    python bench/fixres.py --checkpoint models/it1.pt --sizes 28 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _common  # noqa: F401  (puts src/ on the path)
import torch
from _common import device_of, machine

from noisy_student.config import FixResParams, load_params
from noisy_student.data import load_imageset
from noisy_student.data.wds import split_path
from noisy_student.evaluation import images_tensor, predict_logits, topk_accuracy
from noisy_student.models import load_classifier
from noisy_student.training.batches import TrainData, one_hot
from noisy_student.training.fixres import fixres_finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("models/it1.pt"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 32])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--freeze-stages", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = device_of(args.device)
    params = load_params(args.params)
    labeled, test = load_imageset(split_path(args.data, "labeled")), load_imageset(split_path(args.data, "test"))
    x_lab, x_test = images_tensor(labeled.images), images_tensor(test.images)
    print(machine())

    def top1(model: torch.nn.Module) -> float:
        logits = predict_logits(model, x_test, params.eval.batch_size, device, progress=False)
        return 100.0 * topk_accuracy(logits, test.labels)["top1"]

    base, spec, _ = load_classifier(args.checkpoint)
    native = test.images.shape[1]
    print(f"{args.checkpoint} ({spec.arch}) at the data's {native} px: top-1 {top1(base):.2f} %")
    targets = one_hot(labeled.labels, spec.num_classes)
    for size in args.sizes:
        model, _, _ = load_classifier(args.checkpoint)
        model.input_size = size
        resized = top1(model)
        fixres = FixResParams(epochs=args.epochs, image_size=size, lr=args.lr, freeze_stages=args.freeze_stages)
        tuned, _ = fixres_finetune(
            model, TrainData(x_lab, targets), params.student.optim, fixres, device=device, seed=params.seed
        )
        after = top1(tuned.eval())
        print(f"{size:>4} px: resized only {resized:.2f} %, after {args.epochs}-epoch FixRes finetune {after:.2f} %")


if __name__ == "__main__":
    main()
