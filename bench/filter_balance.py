"""Filter-balance out of core at scale: synthetic top-k predictions, wall time and peak memory.

Writes ``--rows`` synthetic prediction rows over ``--classes`` classes with
top-``--k`` soft labels as Parquet shards of ``--shard-rows`` (the layout
``predict`` writes with ``pseudo_labels.top_k``, one shard per tar of the pool,
each row naming its tar in ``shard``), then runs
``filter_balance_shards`` (threshold 0.3, ``--per-class`` K, balance, seed 0)
in a fresh child process and reports its wall time and peak RSS
(``getrusage`` ru_maxrss of the child; psutil is not needed). Class sizes are
skewed (weights ~ 1/sqrt(rank)) so some classes are capped and some are
duplicated, as in real pseudo labels. A second run on the first
quarter of the shards (K scaled alike) gives the per-row slope for a linear
projection to ``--project`` rows (the sort is O(n log n), close to linear).

``--reference`` also runs the old in-memory path (whole table, the
``filter_and_balance`` of ``tests/reference_filter.py``, take, one write) in another child for comparison;
only sensible for a few million rows.

    python bench/filter_balance.py --rows 10000000            # ~1 min on 2 cores, ~1 GB of temp files
    python bench/filter_balance.py --rows 1000000 --reference
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts src/ on the path)
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import now, peak_rss_mib

from noisy_student.data.wds import tar_name
from noisy_student.pseudo_labels.select import filter_balance_shards, select_rows
from noisy_student.pseudo_labels.shards import shard_files
from noisy_student.pseudo_labels.targets import TOPK_CLASSES, TOPK_PROBS

sys.path.insert(0, str(_common.ROOT))  # the in-memory reference filter lives beside the tests that use it
from tests.reference_filter import filter_and_balance  # noqa: E402

THRESHOLD = 0.3
SEED = 0


def write_shards(folder: Path, rows: int, classes: int, k: int, shard_rows: int) -> None:
    """Synthetic ``predict`` output with top-k columns; confidence ~ Beta(2, 1.2), skewed classes."""
    rng = np.random.default_rng(0)
    weights = 1 / np.sqrt(np.arange(1, classes + 1))
    weights /= weights.sum()
    step = max(1, classes // k - 1)  # distinct class indices per row
    for shard, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        pred = rng.choice(classes, size=n, p=weights).astype(np.int32)
        conf = rng.beta(2.0, 1.2, size=n).astype(np.float32)
        rest = (1 - conf)[:, None] * 0.5 ** np.arange(1, k, dtype=np.float32)  # decreasing tail
        values = np.concatenate([conf[:, None], rest], axis=1).astype(np.float32)
        top = ((pred[:, None] + np.arange(k, dtype=np.int32) * step) % classes).astype(np.int32)
        label = np.where(rng.random(n) < 0.05, -1, pred).astype(np.int64)
        table = pa.table(
            {
                "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "source": pa.array(np.where(label < 0, "digits", "fashion_mnist")),
                "label": pa.array(label),
                "pred": pa.array(pred),
                "confidence": pa.array(conf),
                TOPK_PROBS: pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), k),
                TOPK_CLASSES: pa.FixedSizeListArray.from_arrays(pa.array(top.reshape(-1)), k),
                "shard": pa.array([tar_name("unlabeled", shard)] * n, pa.string()),
            }
        )
        pq.write_table(table, folder / f"part-{shard:05d}.parquet")


def child(mode: str, folder: Path, out: Path, classes: int, per_class: int) -> None:
    """Run one filter-balance path in this (fresh) process and print a JSON line of figures."""
    start = now()
    if mode == "out-of-core":
        sel = filter_balance_shards(folder, out, classes, THRESHOLD, per_class, True, SEED)
        stats = sel.stats
    else:  # the in-memory path the stage used before: every column of every row in memory
        table = pq.read_table(folder)
        frame, stats = filter_and_balance(
            table["pred"].to_numpy(), table["confidence"].to_numpy(), classes, THRESHOLD, per_class, True, SEED
        )
        out_table = table.take(frame["row"].to_numpy()).append_column("copies", [frame["copies"].to_numpy()])
        pq.write_table(out_table, out)
    seconds = now() - start
    figures = {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "unique": stats["unique"], "total": stats["total"]}
    if mode == "out-of-core":  # where the time goes: redo the two in-memory phases alone (after the peak is taken)
        t0 = now()
        small = pq.read_table(shard_files(folder), columns=["pred", "confidence", "label"])
        pred, conf = small["pred"].to_numpy(), small["confidence"].to_numpy()
        t1 = now()
        select_rows(pred, conf, classes, THRESHOLD, per_class, True, SEED)
        t2 = now()
        figures.update(read_columns=t1 - t0, select=t2 - t1, write_rows=seconds - (t2 - t0))
    print(json.dumps(figures))


def run_child(mode: str, folder: Path, out: Path, classes: int, per_class: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", mode, "--folder", str(folder), "--out", str(out)]
    cmd += ["--classes", str(classes), "--per-class", str(per_class)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_rss() -> float:
    """Peak RSS of a child that only imports the modules (the interpreter + numpy/pyarrow/pandas floor)."""
    code = "import _common, resource; import noisy_student.pseudo_labels; print(_common.peak_rss_mib())"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    )
    return float(proc.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10, help="top-k soft labels stored per row")
    parser.add_argument("--shard-rows", type=int, default=500_000)
    parser.add_argument("--per-class", type=int, default=0, help="K (0: rows / classes, the paper's 130M / 1000)")
    parser.add_argument("--project", type=int, default=130_000_000, help="rows to project the figures to")
    parser.add_argument("--reference", action="store_true", help="also time the old in-memory path")
    parser.add_argument("--tmp", default=None, help="folder for the temporary shards (default: system temp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    per_class = args.per_class or max(1, args.rows // args.classes)
    if args.child:
        child(args.child, Path(args.folder), Path(args.out), args.classes, per_class)
        return
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp) / "predictions"
        folder.mkdir()
        start = now()
        write_shards(folder, args.rows, args.classes, args.k, args.shard_rows)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        print(
            f"wrote {args.rows:,} rows x {args.classes} classes, top-{args.k}, {len(list(folder.iterdir()))} shards, "
            f"{size:,.0f} MiB in {now() - start:.1f} s"
        )
        floor = baseline_rss()
        # a second, smaller run on the first quarter of the shards gives the slope for the projection
        quarter = Path(tmp) / "quarter"
        quarter.mkdir()
        shards = sorted(folder.iterdir())
        for shard in shards[: max(1, len(shards) // 4)]:
            (quarter / shard.name).hardlink_to(shard)
        quarter_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in quarter.iterdir())
        # K scales with the pool (the paper: 130M images, K = 130K), so the output scales too
        quarter_k = max(1, per_class * quarter_rows // args.rows)
        small = run_child("out-of-core", quarter, Path(tmp) / "quarter.parquet", args.classes, quarter_k)
        selected = Path(tmp) / "selected.parquet"
        runs = {"out-of-core": run_child("out-of-core", folder, selected, args.classes, per_class)}
        if args.reference:
            runs["in-memory"] = run_child("in-memory", folder, Path(tmp) / "reference.parquet", args.classes, per_class)
            same = (Path(tmp) / "selected.parquet").read_bytes() == (Path(tmp) / "reference.parquet").read_bytes()
            print(f"selected.parquet byte-identical to the in-memory path: {same}")
        out_mib = (Path(tmp) / "selected.parquet").stat().st_size / 2**20
    print(f"K = {per_class:,} per class; import-only child peak RSS {floor:.0f} MiB")
    for mode, r in runs.items():
        print(
            f"{mode:12s} {r['seconds']:7.1f} s, peak RSS {r['peak_rss_mib'] / 1024:5.2f} GiB, "
            f"{r['unique']:,} unique / {r['total']:,} rows written ({out_mib:,.0f} MiB)"
        )
    r = runs["out-of-core"]
    print(
        f"  out-of-core phases: read pred/confidence/label {r['read_columns']:.1f} s, "
        f"select {r['select']:.1f} s, read+take+write selected rows {r['write_rows']:.1f} s"
    )
    ok = r["seconds"] < 60 and r["peak_rss_mib"] < 4096
    print(f"target at 10M x 1000: < 60 s and < 4 GiB -> {'met' if ok else 'NOT met'} at {args.rows:,} rows")
    # linear in rows through the two measured points (K proportional to rows): the fixed part (imports, one shard,
    # one row group of output) does not grow, the per-row arrays of the selection do
    extra = args.project - args.rows
    per_row_s = (r["seconds"] - small["seconds"]) / max(args.rows - quarter_rows, 1)
    per_row_mib = (r["peak_rss_mib"] - small["peak_rss_mib"]) / max(args.rows - quarter_rows, 1)
    print(
        f"  {quarter_rows:,} rows (K = {quarter_k:,}): {small['seconds']:.1f} s, "
        f"{small['peak_rss_mib'] / 1024:.2f} GiB -> "
        f"{per_row_s * 1e6:.2f} s per extra million rows, {per_row_mib * 2**20:.0f} bytes per extra row"
    )
    print(
        f"linear projection to {args.project:,} rows: ~{(r['seconds'] + per_row_s * extra) / 60:.1f} min, "
        f"~{(r['peak_rss_mib'] + per_row_mib * extra) / 1024:.1f} GiB peak"
    )


if __name__ == "__main__":
    main()
