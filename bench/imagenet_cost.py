"""Cost projection of the ImageNet profile (profiles/imagenet.yaml) from per-image costs measured here.

Measures, on this machine's device, the training step (forward + backward + optimizer, autocast as
the profile's ``precision`` resolves here, channels-last) and the inference cost per image of each
model the profile trains (teacher, each iteration's student, at ``data.image_size``), then projects
each stage's wall time on ``--devices`` devices of this kind, assuming linear scaling over devices
and that data loading keeps up. A projection, not a measurement: run it on the GPU you will use.

    python bench/imagenet_cost.py --devices 8 --unlabeled 1300000
"""

from __future__ import annotations

import argparse

import _common  # noqa: F401  (puts src/ on the path)
import torch
from _common import device_of, machine, now, sync

from noisy_student.config import ModelParams, load_params
from noisy_student.devices import autocast, resolve_precision
from noisy_student.models import create_classifier


def per_image_seconds(
    model_params: ModelParams, side: int, batch: int, steps: int, device: torch.device, amp: torch.dtype | None
) -> tuple[float, float]:
    """(training seconds per image, inference seconds per image) of one architecture at ``side`` px."""
    torch.manual_seed(0)
    model, _ = create_classifier(model_params, 1000, 3, (0.5,) * 3, (0.25,) * 3, 0.5, 0.2)
    model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def train_step() -> None:
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    train_step()  # warm-up
    sync(device)
    start = now()
    for _ in range(steps):
        train_step()
    sync(device)
    train = (now() - start) / (steps * batch)
    model.eval()
    with torch.no_grad(), autocast(device, amp):
        model(x)
        sync(device)
        start = now()
        for _ in range(steps):
            model(x)
        sync(device)
    return train, (now() - start) / (steps * batch)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:10.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="profiles/imagenet.yaml")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--devices", type=int, default=8, help="devices the projection spreads each stage over")
    parser.add_argument("--labeled", type=int, default=1_281_167, help="labeled images (ImageNet train)")
    parser.add_argument("--unlabeled", type=int, default=1_300_000, help="unlabeled pool images predict labels")
    parser.add_argument("--batch", type=int, default=0, help="per-device batch measured (0: 32 on CPU, 128 on CUDA)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model")
    args = parser.parse_args()
    params = load_params(args.params)
    device = device_of(args.device)
    amp = resolve_precision(params.precision, device)
    batch = args.batch or (128 if device.type == "cuda" else 32)
    side = params.data.image_size
    print(machine())
    print(f"device {device}, autocast {amp}, batch {batch}, {side} px; projection for {args.devices} such devices")
    rows = []
    teacher_train, teacher_infer = per_image_seconds(params.teacher.model, side, batch, args.steps, device, amp)
    epochs = params.teacher.optim.epochs
    rows.append(("teacher", params.teacher.model.arch, teacher_train, epochs * args.labeled * teacher_train))
    labeler_infer = teacher_infer
    for name in params.iterations:
        it = params.for_iteration(name)
        s = it.student
        train, infer = per_image_seconds(s.model, side, batch, args.steps, device, amp)
        rows.append((f"predict@{name}", "(its teacher)", labeler_infer, args.unlabeled * labeler_infer))
        images = s.optim.epochs * args.labeled * (1 + s.unlabeled_ratio)
        rows.append((f"student@{name}", s.model.arch, train, images * train))
        labeler_infer = infer  # this student labels for the next iteration
    print(f"\n{'stage':16s} {'model':16s} {'ms/image':>9s} {'1 device':>12s} {f'{args.devices} devices':>12s}")
    total = 0.0
    for stage, arch, per_image, seconds in rows:
        total += seconds
        print(f"{stage:16s} {arch:16s} {1000 * per_image:9.2f} {hours(seconds)} {hours(seconds / args.devices)}")
    print(f"{'total':16s} {'':16s} {'':9s} {hours(total)} {hours(total / args.devices)}")


if __name__ == "__main__":
    main()
