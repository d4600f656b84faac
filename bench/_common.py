"""Helpers shared by the benchmark scripts (not part of the package: run from the repository root)."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: the filter-balance child must not pay its ~0.7 GiB RSS
    import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of the real code paths would bury the figures
sys.path.insert(0, str(ROOT / "src"))  # the scripts run as `python bench/x.py` without installing anything


def device_of(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` / ``cuda`` as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings include it (no-op on CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now() -> float:
    return time.perf_counter()


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident set size in MiB of this process (``children``: of its waited-for children).

    For this process, Linux's VmHWM is used: ``ru_maxrss`` also counts the
    parent's memory copied at fork, before exec, which inflates a child's figure.
    """
    if not children:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
        except OSError:
            pass
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def machine() -> str:
    """One line describing where the figures were taken."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def cpu_model() -> str:
    """The CPU as ``lscpu`` names it (model name, family and model number): float results differ between models."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    return f"{name} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})"
