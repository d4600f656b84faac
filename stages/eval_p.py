"""Stage `eval-P`: stability under perturbation (FP, mFR, T5D, mT5D): Fashion-MNIST-P or ImageNet-P."""

from __future__ import annotations

from pathlib import Path

import typer
from tqdm.auto import tqdm

from noisy_student.config import Params
from noisy_student.robustness import (
    EXTRA_PERTURBATIONS,
    NOISE_PERTURBATIONS,
    PERTURBATIONS,
    flip_probability,
    iter_imagenet_p,
    mfr,
    mt5d,
    top5_distance,
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
    load_p_baseline,
    logits_of,
    model_on_device,
    release_errors,
    release_logits,
    release_model,
)


def _release(model: Path, name: str, metrics: Path, params: Params) -> dict[str, float]:
    """ImageNet-P as released: flip probability and top-5 distance per perturbation, one video per image.

    Pairs as in ``metrics.flip_probability`` (noise sequences vs their first frame, the others frame to
    frame). mFR / mT5D need the baseline's values on the same release (``robustness.p_baseline_file``);
    without it only the raw ``fp_<p>`` and ``t5d_raw_<p>`` are written (see metrics.py on why no AlexNet
    constants are shipped).
    """
    r = params.robustness
    root = str(r.imagenet_p_dir)
    with friendly_errors():
        # the class folders of the first perturbation present
        first = next((q for q in PERTURBATIONS + EXTRA_PERTURBATIONS if (Path(root) / q).is_dir()), "")
        net, device, spec = release_model(model, params.device, r, class_folders=Path(root) / first)
        base_fp, base_t5 = load_p_baseline(r.p_baseline_file) if r.p_baseline_file else ({}, {})
    with stage_run("eval-P", params, ("robustness",), name), release_errors():
        fps: dict[str, float] = {}
        t5ds: dict[str, float] = {}
        sequences = 0
        clips = iter_imagenet_p(root, wnids=spec.wnids, **spec.loader_kwargs())
        for pert, videos, _labels in tqdm(clips, desc=f"eval-P {name}", mininterval=5.0):
            n, t = videos.shape[:2]
            logits = release_logits(net, videos.reshape(n * t, *videos.shape[2:]), r.batch_size, device)
            logits = logits.reshape(n, t, -1)
            noise = pert in NOISE_PERTURBATIONS
            fps[pert] = flip_probability(logits.argmax(-1), noise)
            t5ds[pert] = top5_distance(logits, noise)
            sequences += n
        # normalised only where the baseline has a positive value for a perturbation that was read
        fp_scored = {k: v for k, v in fps.items() if base_fp.get(k, 0.0) > 0}
        t5_scored = {k: v for k, v in t5ds.items() if base_t5.get(k, 0.0) > 0}
        summary: dict[str, float] = {}
        if fp_scored:
            summary.update(mfr(fp_scored, base_fp))
        summary["mfr_perturbations"] = len(fp_scored)
        if t5_scored:
            summary.update(mt5d(t5_scored, base_t5))
        summary["mt5d_perturbations"] = len(t5_scored)
        out: dict[str, object] = {**summary, **{f"fp_{k}": v for k, v in fps.items()}}
        out.update({f"t5d_raw_{k}": v for k, v in t5ds.items()})
        out.update(sequences=sequences, **spec.describe(root))
        if r.p_baseline_file:
            out["baseline"] = str(r.p_baseline_file)
        write_metrics(metrics, out)
    return summary


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    data: Path = typer.Option(Path("data/robustness"), help="Folder written by `robustness-data`."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Flip probability per perturbation (noise sequences vs the first frame), FR and mFR (x100).

    With `robustness.imagenet_p_dir` set: the released ImageNet-P (mFR needs `robustness.p_baseline_file`).
    """
    params = params_or_exit(params_file)
    torch_threads()
    if params.robustness.imagenet_p_dir:
        summary = _release(model, name, metrics, params)
        nan = float("nan")
        typer.echo(f"eval-P {name}: mFR {summary.get('mfr', nan):.1f}  mT5D {summary.get('mt5d', nan):.1f}")
        return
    with friendly_errors():
        p = load_npz(data / "p.npz")
        baseline = load_baseline(data)
        net, device = model_on_device(model, params.device)
    seqs = p["images"]  # (perturbations, N, T, H, W)
    n, t = seqs.shape[1], seqs.shape[2]
    with stage_run("eval-P", params, ("robustness",), name):
        fps: dict[str, float] = {}
        t5ds: dict[str, float] = {}
        for i, pert in enumerate(tqdm(p["perturbations"].tolist(), desc=f"eval-P {name}", mininterval=5.0)):
            frames = seqs[i].reshape(n * t, *seqs.shape[3:])
            logits = logits_of(net, frames, params.robustness.batch_size, device).reshape(n, t, -1)
            noise = pert in NOISE_PERTURBATIONS
            fps[pert] = flip_probability(logits.argmax(-1), noise)
            if logits.shape[-1] >= 5:  # top-5 distance ranks 5 classes: undefined for fewer
                t5ds[pert] = top5_distance(logits, noise)
        # FR/T5D are undefined where the reference never flips on a perturbation: those are left
        # out of mFR/mT5D and counted (more p_images makes it rarer)
        base_fp = {k: v for k, v in baseline["p_flip_probability"].items() if v > 0}
        base_t5 = {k: v for k, v in baseline["p_top5_distance"].items() if v > 0 and k in t5ds}
        fr = mfr({k: fps[k] for k in base_fp}, base_fp) if base_fp else {}
        t5 = mt5d({k: t5ds[k] for k in base_t5}, base_t5) if base_t5 else {}
        fr["mfr_perturbations"] = len(base_fp)
        t5["mt5d_perturbations"] = len(base_t5)
        write_metrics(metrics, {**fr, **t5, **{f"fp_{k}": v for k, v in fps.items()}})
    nan = float("nan")
    typer.echo(f"eval-P {name}: mFR {fr.get('mfr', nan):.1f}  mT5D {t5.get('mt5d', nan):.1f}")


if __name__ == "__main__":
    typer.run(main)
