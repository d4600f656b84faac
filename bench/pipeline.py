"""End-to-end pipeline wall time: a forced full ``dvc repro`` and a no-op ``dvc repro``.

Runs the commands and times them; nothing else. The full run retrains every
model: about 25 minutes on the 2-core reference machine (target <= 30 min).
The no-op repro (everything up to date: DVC hashes deps and params, runs
nothing) has a target of <= 5 s. Run it in a clone or workspace you may
modify: a full run rewrites outputs and dvc.lock.

    python bench/pipeline.py --noop-only          # seconds: times `dvc repro` on an up-to-date workspace
    python bench/pipeline.py                      # ~25 min: `dvc repro --force`, then the no-op repro
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path, quiet: bool) -> float:
    """Wall seconds of one command; its output is shown unless ``quiet``; a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=quiet, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout or ''}{proc.stderr or ''}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("."), help="DVC workspace to run in")
    parser.add_argument("--noop-only", action="store_true", help="skip the full run; time only the no-op repro")
    parser.add_argument("--repeats", type=int, default=3, help="no-op repro repetitions (best and mean shown)")
    args = parser.parse_args()
    dvc = [sys.executable, "-m", "dvc"]
    if not args.noop_only:
        full = timed([*dvc, "repro", "--force"], args.repo, quiet=False)
        print(f"full dvc repro --force: {full / 60:.1f} min   (target <= 30 min)")
    status = timed([*dvc, "status"], args.repo, quiet=True)
    noop = [timed([*dvc, "repro"], args.repo, quiet=True) for _ in range(args.repeats)]
    print(f"dvc status: {status:.2f} s")
    print(
        f"no-op dvc repro: best {min(noop):.2f} s, mean {sum(noop) / len(noop):.2f} s "
        f"over {len(noop)} runs   (target <= 5 s)"
    )


if __name__ == "__main__":
    main()
