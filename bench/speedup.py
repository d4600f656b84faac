"""Training speed of the pipeline's real loop, switch by switch, against the previous default, in one run.

Each row runs ``noisy_student.training.train_classifier`` (the function the
teacher and student stages call) on synthetic uint8 images of the data's size,
with one more speed switch on than the row before:

  before            fp32, NCHW, per-image RandAugment, eager (the default before issue 11)
  + batched RA      ``noise.randaugment_impl: batched`` (the same per-image draws)
  + channels_last   model and inputs channels-last
  + bf16 autocast   ``precision: bf16`` (only where ``precision: auto`` picks it, or with --force-bf16)
  + torch.compile   ``optim.compile: true``

Images/s are timed between the end of the first epoch and the last one (the
first epoch holds the warm-up and torch.compile's compilation, reported apart
as "first epoch s"). Rows alternate ``--repeats`` times; the best of each is
kept. ratio = images/s / the "before" row's.

    python bench/speedup.py --model student --steps 10 --epochs 3
    python bench/speedup.py --model teacher
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import _common  # noqa: F401  (puts src/ on the path)
import torch
from _common import device_of, machine, now, sync

from noisy_student.config import Params, load_params
from noisy_student.devices import cpu_has_bf16, resolve_precision
from noisy_student.models import create_classifier
from noisy_student.training.batches import TrainData
from noisy_student.training.loop import train_classifier

NUM_CLASSES = 10


@dataclass(frozen=True)
class Switches:
    name: str
    batched: bool
    channels_last: bool
    bf16: bool
    compile: bool


ROWS = (
    Switches("before", False, False, False, False),
    Switches("+ batched RA", True, False, False, False),
    Switches("+ channels_last", True, True, False, False),
    Switches("+ bf16 autocast", True, True, True, False),
    Switches("+ torch.compile", True, True, True, True),
)


def run(params: Params, which: str, s: Switches, device: torch.device, steps: int, epochs: int) -> tuple[float, float]:
    """(images/s over epochs 2..``epochs``, seconds of the first epoch) of one configuration."""
    section = params.teacher if which == "teacher" else params.student
    noise = params.teacher.noise if which == "teacher" else params.noise
    noise = noise.model_copy(update={"randaugment_impl": "batched" if s.batched else "per_image"})
    optim = section.optim.model_copy(update={"epochs": epochs, "warmup_epochs": 0, "compile": s.compile})
    ratio = params.student.unlabeled_ratio if which == "student" else 0
    ch = 1 if params.data.source == "fashion_mnist" else params.data.channels
    side, bs = params.data.image_size, optim.batch_size
    gen = torch.Generator().manual_seed(0)
    labeled = torch.randint(0, 256, (steps * bs, ch, side, side), dtype=torch.uint8, generator=gen)
    targets = torch.nn.functional.one_hot(torch.randint(0, NUM_CLASSES, (len(labeled),), generator=gen), NUM_CLASSES)
    pool = steps * bs * ratio * 2
    data = TrainData(
        labeled,
        targets.float(),
        torch.randint(0, 256, (pool, ch, side, side), dtype=torch.uint8, generator=gen) if ratio else None,
        torch.softmax(torch.randn(pool, NUM_CLASSES, generator=gen), 1) if ratio else None,
    )
    torch.manual_seed(0)
    model, _ = create_classifier(
        section.model, NUM_CLASSES, ch, (0.5,) * ch, (0.25,) * ch, drop_rate=noise.dropout,
        drop_path_rate=noise.stochastic_depth,
    )  # fmt: skip
    stamps: list[float] = []

    def on_epoch(_: dict[str, float]) -> None:
        sync(device)
        stamps.append(now())

    start = now()
    train_classifier(
        model,
        data,
        optim,
        noise,
        unlabeled_ratio=ratio,
        device=device,
        amp_dtype=torch.bfloat16 if s.bf16 else None,
        channels_last=s.channels_last,
        seed=0,
        on_epoch=on_epoch,
        desc="bench",
    )
    images = (epochs - 1) * steps * bs * (1 + ratio)
    return images / (stamps[-1] - stamps[0]), stamps[0] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["student", "teacher"], default="student")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per row; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the rows; best of each row")
    parser.add_argument("--force-bf16", action="store_true", help="run the bf16 rows even where auto says fp32")
    args = parser.parse_args()
    device = device_of(args.device)
    params = load_params(args.params)
    native = resolve_precision("auto", device) is not None
    rows = [r for r in ROWS if not r.bf16 or native or args.force_bf16]
    print(f"machine: {machine()}; device {device}; CPU bf16 instructions: {cpu_has_bf16()}")
    section = params.teacher if args.model == "teacher" else params.student
    channels = 1 if params.data.source == "fashion_mnist" else params.data.channels
    extra = f" + {section.optim.batch_size * params.student.unlabeled_ratio} pseudo-labeled"
    print(
        f"{args.model} {section.model.arch} {section.model.kwargs}, {params.data.image_size}px x {channels}, "
        f"labeled batch {section.optim.batch_size}{extra if args.model == 'student' else ''}"
    )
    if len(rows) < len(ROWS):
        print("(bf16 rows skipped: precision auto picks fp32 here; --force-bf16 runs them emulated)")
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeats):
        for row in rows:
            rate, first = run(params, args.model, row, device, args.steps, args.epochs)
            old = best.get(row.name, (0.0, first))
            best[row.name] = (max(old[0], rate), min(old[1], first))
    base = best["before"][0]
    print(f"{'configuration':18s} {'images/s':>9s} {'ms/step':>8s} {'first epoch s':>14s} {'ratio':>6s}")
    per_step = section.optim.batch_size * (1 + (params.student.unlabeled_ratio if args.model == "student" else 0))
    for row in rows:
        rate, first = best[row.name]
        print(f"{row.name:18s} {rate:9.1f} {per_step / rate * 1000:8.1f} {first:14.1f} {rate / base:6.2f}x")


if __name__ == "__main__":
    main()
