"""Stage `eval-FGSM`: accuracy vs FGSM epsilon (0..255 pixel units) and PGD-10 at one epsilon."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
import typer

from noisy_student.data import load_imageset
from noisy_student.io import atomic_path
from noisy_student.plots import attack_curve
from noisy_student.robustness import accuracy_under_attack
from stages._common import (
    METRICS_OPTION,
    MODEL_OPTION,
    NAME_OPTION,
    PARAMS_OPTION,
    friendly_errors,
    images_tensor,
    params_or_exit,
    stage_run,
    torch_threads,
    write_metrics,
)
from stages._robust import model_on_device


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    test: Path = typer.Option(Path("data/prepared/test.npz"), help="Clean test set."),
    metrics: Path = METRICS_OPTION,
    curve: Path = typer.Option(..., help="CSV epsilon,top1 (DVC plot)."),
    plot: Path = typer.Option(..., help="PNG of the curve."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """White-box attacks through the model's own normalisation, on a seeded subset of the test set."""
    params = params_or_exit(params_file)
    r = params.robustness
    torch_threads()
    with friendly_errors():
        data = load_imageset(test)
        net, device = model_on_device(model, params.device)
    rng = np.random.default_rng(params.seed + 20)
    idx = np.sort(rng.choice(len(data), size=min(r.attack_images, len(data)), replace=False))
    images, labels = images_tensor(data.images[idx]), torch.from_numpy(data.labels[idx])
    with stage_run("eval-FGSM", params, ("robustness",), name):
        fgsm = accuracy_under_attack(net, images, labels, list(r.fgsm_epsilons), r.batch_size, device, "fgsm")
        pgd = accuracy_under_attack(
            net,
            images,
            labels,
            [r.pgd_epsilon],
            r.batch_size,
            device,
            "pgd",
            steps=r.pgd_steps,
            generator=params.seed,
        )
        frame = pd.DataFrame({"epsilon": list(fgsm), "top1": list(fgsm.values())})
        with atomic_path(curve) as tmp:
            frame.to_csv(tmp, index=False)
        attack_curve({name: frame}, f"FGSM ({name})", plot)
        mlflow.log_artifact(str(plot), "plots")
        write_metrics(
            metrics,
            {
                **{f"fgsm_top1_eps{eps:g}": acc for eps, acc in fgsm.items()},
                f"pgd{r.pgd_steps}_top1_eps{r.pgd_epsilon:g}": pgd[r.pgd_epsilon],
                "images": int(len(idx)),
            },
        )
    typer.echo(
        f"eval-FGSM {name}: "
        + ", ".join(f"eps {e:g}: {100 * a:.1f} %" for e, a in fgsm.items())
        + f"; PGD-{r.pgd_steps} eps {r.pgd_epsilon:g}: {100 * pgd[r.pgd_epsilon]:.1f} %"
    )


if __name__ == "__main__":
    typer.run(main)
