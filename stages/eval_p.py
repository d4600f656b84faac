"""Stage `eval-P`: perturbation stability (flip probability, mFR, top-5 distance, mT5D)."""

from __future__ import annotations

from pathlib import Path

import typer
from tqdm.auto import tqdm

from noisy_student.robustness import NOISE_PERTURBATIONS, flip_probability, mfr, mt5d, top5_distance
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
from stages._robust import load_baseline, load_npz, logits_of, model_on_device


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    data: Path = typer.Option(Path("data/robustness"), help="Folder written by `robustness-data`."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Flip probability per perturbation (noise sequences vs the first frame), FR and mFR (x100)."""
    params = params_or_exit(params_file)
    torch_threads()
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
            t5ds[pert] = top5_distance(logits, noise)
        # FR/T5D are undefined where the reference never flips on a perturbation: those are left
        # out of mFR/mT5D and counted (more p_images makes it rarer)
        base_fp = {k: v for k, v in baseline["p_flip_probability"].items() if v > 0}
        base_t5 = {k: v for k, v in baseline["p_top5_distance"].items() if v > 0}
        fr = mfr({k: fps[k] for k in base_fp}, base_fp)
        t5 = mt5d({k: t5ds[k] for k in base_t5}, base_t5)
        fr["mfr_perturbations"] = len(base_fp)
        t5["mt5d_perturbations"] = len(base_t5)
        write_metrics(metrics, {**fr, **t5, **{f"fp_{k}": v for k, v in fps.items()}})
    typer.echo(f"eval-P {name}: mFR {fr['mfr']:.1f}  mT5D {t5['mt5d']:.1f}")


if __name__ == "__main__":
    typer.run(main)
