"""Stage `eval-C`: corruption robustness (mCE, relative mCE, mean corrupted accuracy), Fashion-MNIST-C or ImageNet-C."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from tqdm.auto import tqdm

from noisy_student.config import Params
from noisy_student.data import load_imageset
from noisy_student.robustness import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_IMAGENET_C_ERRORS,
    iter_imagenet_c,
    load_image_folder,
    mce,
)
from stages._common import (
    METRICS_OPTION,
    MODEL_OPTION,
    NAME_OPTION,
    PARAMS_OPTION,
    friendly_errors,
    params_or_exit,
    stage_run,
    torch_threads,
    write_metrics,
)
from stages._robust import (
    load_baseline,
    load_npz,
    logits_of,
    model_on_device,
    release_errors,
    release_labels_check,
    release_logits,
    release_model,
)


def _release(model: Path, name: str, metrics: Path, params: Params) -> dict[str, float]:
    """ImageNet-C as released: errors per corruption and severity, CE against AlexNet's published errors.

    Baseline: ``ALEXNET_IMAGENET_C_ERRORS`` (AlexNet's mean error over severities 1..5 per corruption,
    hendrycks/robustness). Relative mCE needs the model's clean ImageNet error, so it is computed only
    when ``robustness.imagenet_val_dir`` is set (AlexNet's clean error: ``ALEXNET_CLEAN_ERROR``).
    """
    r = params.robustness
    root = str(r.imagenet_c_dir)
    with friendly_errors():
        # the class folders of the first benchmark corruption present, at severity 1
        first = next((c for c in ALEXNET_IMAGENET_C_ERRORS if (Path(root) / c).is_dir()), "")
        net, device, spec = release_model(model, params.device, r, class_folders=Path(root) / first / "1")
    with stage_run("eval-C", params, ("robustness",), name), release_errors():
        errors: dict[str, dict[int, float]] = {}
        images_read = 0
        sets = iter_imagenet_c(root, wnids=spec.wnids, **spec.loader_kwargs())
        for corruption, severity, images, labels in tqdm(sets, desc=f"eval-C {name}", mininterval=5.0):
            logits = release_logits(net, images, r.batch_size, device)
            truth = release_labels_check(labels, logits.shape[1], f"{root}/{corruption}/{severity}")
            errors.setdefault(corruption, {})[severity] = float((logits.argmax(1) != truth).mean())
            images_read += len(truth)
        # every released corruption has severities 1..5; `mce` refuses a partial set against the
        # published 5-severity means, which would bias CE
        summary = mce(errors, ALEXNET_IMAGENET_C_ERRORS)
        summary["mce_corruptions"] = len(errors)
        out: dict[str, object] = {}
        if r.imagenet_val_dir:
            val, val_labels, _ = load_image_folder(r.imagenet_val_dir, wnids=spec.wnids, **spec.loader_kwargs())
            val_logits = release_logits(net, val, r.batch_size, device)
            val_truth = release_labels_check(val_labels, val_logits.shape[1], r.imagenet_val_dir)
            clean_error = float((val_logits.argmax(1) != val_truth).mean())
            rel = mce(errors, ALEXNET_IMAGENET_C_ERRORS, clean_error, ALEXNET_CLEAN_ERROR)
            summary.update({k: v for k, v in rel.items() if k.startswith("relative_")})
            out["clean_error"] = clean_error
        summary["relative_mce_corruptions"] = len(errors) if r.imagenet_val_dir else 0
        out.update(summary)
        out.update(images=images_read, baseline="AlexNet (hendrycks/robustness)", **spec.describe(root))
        write_metrics(metrics, out)
    return summary


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    data: Path = typer.Option(Path("data/robustness"), help="Folder written by `robustness-data`."),
    test: Path = typer.Option(Path("data/prepared/test.npz"), help="Clean test set (for relative mCE)."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Errors per corruption and severity, CE normalised by the reference model, mCE (x100).

    With `robustness.imagenet_c_dir` set: the released ImageNet-C, CE normalised by AlexNet.
    """
    params = params_or_exit(params_file)
    torch_threads()
    if params.robustness.imagenet_c_dir:
        _echo(name, _release(model, name, metrics, params))
        return
    with friendly_errors():
        c = load_npz(data / "c.npz")
        baseline = load_baseline(data)
        net, device = model_on_device(model, params.device)
    bs = params.robustness.batch_size
    labels = c["labels"]
    with stage_run("eval-C", params, ("robustness",), name):
        errors: dict[str, dict[str, float]] = {}
        for i, corruption in enumerate(tqdm(c["corruptions"].tolist(), desc=f"eval-C {name}", mininterval=5.0)):
            errors[corruption] = {}
            for j in range(c["images"].shape[1]):
                pred = logits_of(net, c["images"][i, j], bs, device).argmax(1)
                errors[corruption][j + 1] = float((pred != labels).mean())
        # clean errors of model and reference are both on the full test split
        clean = load_imageset(test)
        clean_pred = logits_of(net, clean.images, bs, device).argmax(1)
        clean_error = float((clean_pred != clean.labels).mean())
        base = {c: {int(s): e for s, e in by_sev.items()} for c, by_sev in baseline["c_errors"].items()}
        # CE is undefined where the reference makes no error at all (possible on small sets): such
        # corruptions are left out of mCE and counted; corrupted_top1 still covers all of them
        scored = {c: e for c, e in errors.items() if np.mean(list(base[c].values())) > 0}
        summary = mce(scored, base) if scored else {}
        all_errors = [e for by_sev in errors.values() for e in by_sev.values()]
        summary["corrupted_top1"] = 1.0 - float(np.mean(all_errors))
        summary["mce_corruptions"] = len(scored)
        # relative CE is undefined where the reference is not hurt by a corruption (its corrupted
        # error <= its clean error): those corruptions are left out of relative mCE and counted
        hurt = {c: e for c, e in scored.items() if np.mean(list(base[c].values())) > baseline["clean_error"]}
        if hurt:
            rel = mce(hurt, base, clean_error, baseline["clean_error"])
            summary.update({k: v for k, v in rel.items() if k.startswith("relative_")})
        summary["relative_mce_corruptions"] = len(hurt)
        write_metrics(metrics, {"clean_error": clean_error, **summary})
    _echo(name, summary)


def _echo(name: str, summary: dict[str, float]) -> None:
    nan = float("nan")
    shown = {k: summary.get(k, nan) for k in ("mce", "relative_mce", "corrupted_top1")}
    typer.echo(
        f"eval-C {name}: mCE {shown['mce']:.1f}  relative mCE {shown['relative_mce']:.1f}  "
        f"corrupted top-1 {100 * shown['corrupted_top1']:.2f} %"
    )


if __name__ == "__main__":
    typer.run(main)
