"""``noisy-student``: the tools that are not DVC stages, and, run from the repository root, every DVC stage.

The tools (``ui``, ``shard``, ``teacher-convergence``, ``seed-gains``, ``paired``) live here, in the library. The stage
commands are the ``main`` of the modules each ``dvc.yaml`` stage runs (``python -m stages.<module>``); that
package is no part of the installed library, so they are added, under their dvc.yaml names, only where the
working directory holds ``dvc.yaml`` and ``stages/`` (the repository root, where DVC runs them).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from enum import StrEnum
from pathlib import Path

import pandas as pd
import typer
import yaml

from noisy_student.console import PARAMS_OPTION, fail, friendly_errors, params_or_exit
from noisy_student.data.folders import FolderDataError
from noisy_student.data.shard_folders import scan_split, write_folder_split
from noisy_student.data.wds import DEFAULT_SHARD_SIZE, WDS_SUFFIX, WdsDataError
from noisy_student.report.convergence import converged_at, convergence_plot, doubling_summary, teacher_convergence
from noisy_student.report.history import mlflow_runs
from noisy_student.report.inputs import correct_by_id
from noisy_student.report.seeds import seed_gains, seed_gains_plot, seed_summary
from noisy_student.statistics import compare_paired
from noisy_student.tracking import tracking_uri, training_runs_url

PIPELINE = "Pipeline stages (dvc.yaml)"
TOOLS = "Tools (not DVC stages)"

app = typer.Typer(
    help="Noisy Student Training: the pipeline stages dvc.yaml runs (same names), and tools that are not DVC stages.",
    no_args_is_help=True,
)


# ---- ui ------------------------------------------------------------------------------------------------------


def ui_command(
    host: str = typer.Option("127.0.0.1", help="Address the UI listens on."),
    port: int = typer.Option(5000, help="Port the UI listens on."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Start `mlflow ui` on the project's store and print the address of the experiment's training runs."""
    params = params_or_exit(params_file)
    url = training_runs_url(f"http://{host}:{port}", params.tracking.experiment)
    typer.echo(f"open {url}")
    uri = tracking_uri()
    # one uvicorn worker, not mlflow's 4: a UI for one person needs no more, and each worker imports all of mlflow
    # (~10 s of CPU on a 2-core box), which delays both its start and a SIGTERM that arrives during the import
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    command += ["--workers", "1"]
    # Become mlflow rather than wait on it as a child: SIGTERM / SIGINT then reach mlflow ui itself, which
    # forwards them to uvicorn, and its job runner (huey consumers) exits once uvicorn is gone
    # (tests/test_ui.py). A child would outlive us with all its workers. Flush first: exec drops the buffer.
    sys.stdout.flush()
    os.execv(sys.executable, command)


# ---- shard ---------------------------------------------------------------------------------------------------
# Image folders -> a ``.wds`` split folder (:mod:`noisy_student.data.shard_folders`), once, outside the pipeline:
# the layout ``prepare`` writes, for data too large to decode again on every change, e.g.
#
#     noisy-student shard imagenet/train data/prepared/labeled.wds --split labeled --image-size 224
#     noisy-student shard imagenet/val data/prepared/test.wds --split test --image-size 224 \
#         --classes data/prepared/labeled.wds/classes.json
#     noisy-student shard unlabeled/ data/prepared/unlabeled.wds --split unlabeled --image-size 224


class Split(StrEnum):
    labeled = "labeled"
    unlabeled = "unlabeled"
    test = "test"


def shard_command(
    src: Path = typer.Argument(
        ..., help="Image folder: <SRC>/<class>/<image> (labeled, test) or any tree of images (unlabeled)."
    ),
    out: Path = typer.Argument(..., help=f"Split folder to write, its name ending in {WDS_SUFFIX} (replaced)."),
    split: Split = typer.Option(..., help="Which split SRC holds: the tar names, ids and labels follow from it."),
    image_size: int = typer.Option(32, min=8, max=1024, help="Square side: shorter side resized, centre-cropped."),
    channels: int = typer.Option(3, help="1 (greyscale) or 3 (RGB)."),
    shard_size: int = typer.Option(DEFAULT_SHARD_SIZE, min=1, help="Images per tar file (data.wds_shard_size)."),
    max_images: int | None = typer.Option(None, min=1, help="A seeded uniform subsample of this many images."),
    classes: Path | None = typer.Option(
        None, help="classes.json giving the label order; required for test (the labeled split's classes.json)."
    ),
    exclude: list[Path] = typer.Option(
        [], metavar="DIR", help="A folder whose images are left out (repeatable), e.g. the labeled and test folders."
    ),
    id_offset: int | None = typer.Option(
        None, min=0, help="First image id (default: labeled 0, test 1,000,000, unlabeled 2,000,000, as prepare)."
    ),
    seed: int = typer.Option(0, help="Seed of the --max-images subsample (params.yaml's seed)."),
    workers: int | None = typer.Option(
        None, min=1, help="Decoding processes (default: NOISY_STUDENT_WORKERS, else the CPUs)."
    ),
) -> None:
    """Decode an image folder (resize + centre crop, as data.source: folders) into WebDataset tar shards."""
    if channels not in (1, 3):
        fail(f"--channels: {channels}; expected 1 (greyscale) or 3 (RGB)")
    if not out.name.endswith(WDS_SUFFIX):
        # the folder is replaced as a whole: the suffix guards against naming, say, data/prepared itself
        fail(f"OUT: {out}; expected a split folder whose name ends in {WDS_SUFFIX}, e.g. data/prepared/labeled.wds")
    with friendly_errors(FolderDataError, WdsDataError):
        found = scan_split(src, split.value, classes, max_images, seed, exclude, id_offset)
        info = write_folder_split(found, out, shard_size, image_size, channels, workers)
    typer.echo(
        f"shard: {info.num_samples} {split.value} images of {found.found} found in {src} -> {out} "
        f"({len(info.filenames)} tars, {image_size}x{image_size}x{channels})"
    )


# ---- teacher-convergence -------------------------------------------------------------------------------------
# Teacher top-1 against epochs from the MLflow store, as a table and a PNG. It reads the experiments that
# `dvc exp run -S teacher.optim.epochs=...` logged, e.g.
# ``noisy-student teacher-convergence t400-s0 t400-s1 t800-s0 t800-s1``.


def teacher_convergence_command(
    experiments: list[str] = typer.Argument(None, help="dvc_exp names to include (default: every experiment)."),
    out: Path = typer.Option(Path("reports/teacher-convergence.png"), help="PNG to write."),
    threshold: float = typer.Option(0.3, help="Points a doubling of the epochs may add for 'converged'."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Print each teacher run's seed, precision, epochs, top-1 and gain over half its epochs; plot them."""
    experiment = params_or_exit(params_file).tracking.experiment  # the MLflow experiment, not a DVC one
    table = teacher_convergence(mlflow_runs(tracking_uri(), experiment), experiments or None)
    if table.empty:
        typer.secho(f"no finished teacher runs for {experiments or 'any experiment'} in {tracking_uri()}", err=True)
        raise typer.Exit(1)
    typer.echo(table.to_markdown(index=False))
    typer.echo("")
    typer.echo(doubling_summary(table).to_markdown(index=False))
    for precision, epochs in converged_at(table, threshold).items():
        verdict = f"converged at {epochs} epochs" if epochs else "not shown converged"
        typer.echo(f"precision {precision}: {verdict} (doubling adds < {threshold} points on every seed)")
    convergence_plot(table, out, threshold)
    typer.echo(f"wrote {out}")


# ---- seed-gains ----------------------------------------------------------------------------------------------
# Each model's top-1 and each student's gain per seed, with mean and spread, from MLflow. It reads the
# experiments that `dvc exp run -S seed=...` logged, e.g.
# ``noisy-student seed-gains default-s1 default-s2 --store sqlite:///elsewhere/mlflow.db --target "it2 - it1=0.5"``.


def _targets(specs: list[str]) -> dict[str, float]:
    targets = {}
    for spec in specs:
        column, sep, value = spec.rpartition("=")
        try:
            targets[column.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not column.strip():
            fail(f"--target {spec!r}: expected '<gain column>=<points>', e.g. 'it2 - it1=0.5'")
    return targets


def seed_gains_command(
    experiments: list[str] = typer.Argument(None, help="dvc_exp names to include (default: every experiment)."),
    store: list[str] = typer.Option(
        None,
        help="MLflow tracking URI to read (repeatable; default: this project's store). A plain `dvc repro` "
        "is the experiment 'workspace' of its store.",
    ),  # fmt: skip
    target: list[str] = typer.Option(None, help="A gain's target drawn on the plot, e.g. 'it1 - teacher=1.0'."),
    out: Path = typer.Option(Path("reports/seed-gains.png"), help="PNG to write."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Print one row per experiment (seed, machine, top-1 per model, gain per student), then mean / std /
    min / max over the rows, and plot the gains."""
    experiment = params_or_exit(params_file).tracking.experiment  # the MLflow experiment, not a DVC one
    targets = _targets(target or [])
    uris = store or [tracking_uri()]
    runs = pd.concat([mlflow_runs(uri, experiment).assign(store=uri) for uri in uris], ignore_index=True)
    table = seed_gains(runs, experiments or None)
    if table.empty:
        fail(f"no finished eval@teacher runs for {experiments or 'any experiment'} in {', '.join(uris)}")
    shown = table.drop(columns=[] if len(uris) > 1 else ["store"])
    typer.echo(shown.to_markdown(index=False))
    typer.echo("")
    typer.echo(seed_summary(table).to_markdown())
    seed_gains_plot(table, out, targets)
    typer.echo(f"wrote {out}")


# ---- paired --------------------------------------------------------------------------------------------------


def _read_predictions(spec: str) -> tuple[pd.DataFrame, str]:
    """``PATH`` or ``REV:PATH`` (a git revision or DVC experiment name, read through DVC) -> the CSV's frame."""
    rev, sep, path = spec.rpartition(":")
    if not sep or Path(spec).exists():
        rev, path = "", spec
    try:
        if not rev:
            return pd.read_csv(path), path
        import dvc.api

        with dvc.api.open(path, rev=rev) as f:
            return pd.read_csv(f), spec
    except Exception as exc:  # missing file, unknown revision, not a CSV: one line naming the input
        fail(f"{spec}: cannot read per-image predictions ({type(exc).__name__}: {exc})")


def paired_command(
    a: str = typer.Argument(..., help="Model A's per-image predictions: PATH or REV:PATH (git rev or experiment)."),
    b: str = typer.Argument(..., help="Model B's, e.g. mag15:metrics/predictions/eval-it1.csv."),
    resamples: int = typer.Option(2000, min=1, help="Bootstrap resamples of the test images."),
    seed: int = typer.Option(0, help="Seed of the resamples."),
) -> None:
    """B's top-1 gain over A on the same test images: paired bootstrap 95 % CI and McNemar's exact p."""
    with friendly_errors():
        (frame_a, where_a), (frame_b, where_b) = _read_predictions(a), _read_predictions(b)
        ca, cb = correct_by_id(frame_a, where_a), correct_by_id(frame_b, where_b)
    if len(ca) != len(cb) or set(ca.index) != set(cb.index):
        fail(f"{a} and {b} hold different test images ({len(ca)} and {len(cb)} ids): no paired comparison")
    c = compare_paired(ca.to_numpy(), cb[ca.index].to_numpy(), resamples=resamples, seed=seed)
    typer.echo(
        f"{c.images} images: A {100 * c.accuracy_a:.2f} %, B {100 * c.accuracy_b:.2f} %, gain {100 * c.gain:+.2f} "
        f"points, 95 % CI [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]; B only {c.b_only}, A only {c.a_only}, "
        f"McNemar p = {c.p_mcnemar:.3g}"
    )


# ---- the commands --------------------------------------------------------------------------------------------


def add_pipeline_stages(cli: typer.Typer, root: Path) -> bool:
    """Add every stage of ``root/dvc.yaml`` to ``cli``, under its stage name: the ``main`` of the module its
    ``cmd`` runs (``python -m stages.<module>``), imported from ``root/stages`` (``root`` goes first on
    ``sys.path``, as for that command run there). False, and nothing added, when ``root`` holds no
    ``dvc.yaml`` and ``stages`` package, or a ``stages`` package from elsewhere is already imported.
    """
    package = root / "stages" / "__init__.py"
    if not ((root / "dvc.yaml").is_file() and package.is_file()):
        return False
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if Path(importlib.import_module("stages").__file__ or "").resolve() != package.resolve():
        return False
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    # one spelling per command: a stage's command is its dvc.yaml stage name, case included
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        module = re.search(r"python -m stages\.(\w+)", cmd)
        if module:
            cli.command(name, rich_help_panel=PIPELINE)(importlib.import_module(f"stages.{module[1]}").main)
    return True


add_pipeline_stages(app, Path.cwd())
for _name, _command in [
    ("ui", ui_command),
    ("shard", shard_command),
    ("teacher-convergence", teacher_convergence_command),
    ("seed-gains", seed_gains_command),
    ("paired", paired_command),
]:
    app.command(_name, rich_help_panel=TOOLS)(_command)

if __name__ == "__main__":
    app()
