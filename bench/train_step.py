"""Student training step: the pipeline's real loop vs the bare model step, in images per second.

Real: ``noisy_student.training.train_classifier`` itself (the function the
``student`` stage calls) on uint8 host images - every step takes a labeled
batch of ``student.optim.batch_size`` plus ``unlabeled_ratio`` x that many
pseudo-labeled images, applies BatchAugment (crop, flip, RandAugment) per
image, moves the batch to the device, and runs forward (dropout + stochastic
depth), soft-target loss, backward, optimizer and scheduler. The first epoch
is warm-up; images/s is measured between the end of the first and the last
epoch (``on_epoch`` timestamps), so setup is excluded.

Bare: the same model (same noise rates, train mode, same timm optimizer,
autocast/channels_last on CUDA) on a float batch of the same size already on
the device: forward + loss + backward + optimizer step only.

ratio = real / bare. The gap is the input pipeline (mostly per-image
RandAugment on the host) plus the loop's bookkeeping. Both are run
``--repeats`` times alternately and the best of each is kept (a shared
machine's load changes between runs).

    python bench/train_step.py --device cpu --steps 6 --epochs 2
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import _common  # noqa: F401  (puts src/ on the path)
import torch
from _common import device_of, machine, now, sync
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2

from noisy_student.config import load_params
from noisy_student.models import create_classifier
from noisy_student.noise import BatchAugment
from noisy_student.training.batches import TrainData
from noisy_student.training.loop import train_classifier

NUM_CLASSES = 10


def build_model(params, device: torch.device):  # noqa: ANN001, ANN201 - Params / ImageClassifier
    """The student exactly as ``stages/_fit.py`` builds it (Fashion-MNIST-like mean/std)."""
    torch.manual_seed(0)
    model, _ = create_classifier(
        params.student.model,
        NUM_CLASSES,
        1,
        (0.286,),
        (0.353,),
        drop_rate=params.noise.dropout,
        drop_path_rate=params.noise.stochastic_depth,
    )
    return model.to(device)


def real_loop(params, device: torch.device, steps: int, epochs: int, pool: int) -> float:  # noqa: ANN001
    """Images/s of ``train_classifier`` over epochs 2..``epochs`` (``steps`` steps each)."""
    optim = params.student.optim.model_copy(update={"epochs": epochs, "warmup_epochs": 0})
    ratio = params.student.unlabeled_ratio
    bs = optim.batch_size
    gen = torch.Generator().manual_seed(0)
    labeled = torch.randint(0, 256, (steps * bs, 1, 28, 28), dtype=torch.uint8, generator=gen)
    unlabeled = torch.randint(0, 256, (pool, 1, 28, 28), dtype=torch.uint8, generator=gen)
    soft = torch.softmax(torch.randn(pool, NUM_CLASSES, generator=gen), 1)
    data = TrainData(
        labeled,
        torch.nn.functional.one_hot(torch.randint(0, NUM_CLASSES, (len(labeled),)), NUM_CLASSES).float(),
        unlabeled,
        soft,
    )
    stamps: list[float] = []

    def on_epoch(_: dict[str, float]) -> None:
        sync(device)
        stamps.append(now())

    train_classifier(
        build_model(params, device),
        data,
        optim,
        params.noise,
        unlabeled_ratio=ratio,
        device=device,
        seed=0,
        on_epoch=on_epoch,
        desc="bench-real",
    )
    images = (epochs - 1) * steps * bs * (1 + ratio)
    return images / (stamps[-1] - stamps[0])


def bare_step(params, device: torch.device, steps: int, warmup: int) -> float:  # noqa: ANN001
    """Images/s of forward + loss + backward + optimizer step on a device-resident batch."""
    optim = params.student.optim
    batch = optim.batch_size * (1 + params.student.unlabeled_ratio)
    model = build_model(params, device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(
        model, opt=optim.optimizer, lr=optim.lr, weight_decay=optim.weight_decay, momentum=optim.momentum
    )
    criterion = SoftTargetCrossEntropy()
    x = torch.rand(batch, 1, 28, 28, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.softmax(torch.randn(batch, NUM_CLASSES, device=device), 1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = now()
        with autocast:
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return steps * batch / (now() - start)


def augment_only(params, steps: int) -> float:  # noqa: ANN001
    """Images/s of BatchAugment alone on host uint8 batches (the loop's main host-side cost)."""
    augment = BatchAugment(params.noise)
    batch = params.student.optim.batch_size * (1 + params.student.unlabeled_ratio)
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    augment(images)
    start = now()
    for _ in range(steps):
        augment(images)
    return steps * batch / (now() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=6, help="steps per epoch (labeled set = steps x batch_size)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the real loop; the first is warm-up")
    parser.add_argument("--pool", type=int, default=20000, help="pseudo-labeled pool size (uint8 28x28)")
    parser.add_argument("--repeats", type=int, default=2, help="alternate bare/real this many times; best of each")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--randaugment-impl", choices=["per_image", "batched"], default=None, help="override noise.randaugment_impl"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_of(args.device)
    params = load_params(args.params)
    if args.randaugment_impl:
        noise = params.noise.model_copy(update={"randaugment_impl": args.randaugment_impl})
        params = params.model_copy(update={"noise": noise})
    sp = params.student
    batch = sp.optim.batch_size * (1 + sp.unlabeled_ratio)
    print(f"machine: {machine()}; device {device}")
    print(
        f"student {sp.model.arch} {sp.model.kwargs}, batch {sp.optim.batch_size} labeled + "
        f"{sp.optim.batch_size * sp.unlabeled_ratio} pseudo-labeled = {batch} images/step, "
        f"RandAugment N={params.noise.randaugment_num_ops} M={params.noise.randaugment_magnitude} "
        f"({params.noise.randaugment_impl}), "
        f"dropout {params.noise.dropout}, stochastic depth {params.noise.stochastic_depth}"
    )
    timed = (args.epochs - 1) * args.steps
    # alternate the two and keep the best of each: on a shared machine the load changes between runs
    bare = real = aug = 0.0
    for _ in range(args.repeats):
        bare = max(bare, bare_step(params, device, timed, warmup=min(args.steps, 3)))
        real = max(real, real_loop(params, device, args.steps, args.epochs, args.pool))
        aug = max(aug, augment_only(params, max(2, timed // 2)))
    print(f"bare step (device tensors):  {bare:9.1f} images/s  ({batch / bare * 1000:7.1f} ms/step)")
    print(f"real training loop:          {real:9.1f} images/s  ({batch / real * 1000:7.1f} ms/step)")
    print(f"BatchAugment alone (host):   {aug:9.1f} images/s  ({batch / aug * 1000:7.1f} ms/step)")
    print(f"ratio real / bare = {real / bare:.3f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
