"""Where a run ran, as tags: float results differ between CPU generations, math libraries and devices.

The same seed gives bit-identical weights only on the same kind of machine (oneDNN picks kernels by
CPU instruction set; CUDA by GPU and library version), so every stage run names its machine.
"""

from __future__ import annotations

import os
import platform
import re
from functools import lru_cache
from pathlib import Path

import torch

from noisy_student.devices import resolve_device


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_generation(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``family F model M`` of the first processor (x86 ``/proc/cpuinfo``), ``unknown`` elsewhere.

    The marketing name does not tell CPU generations apart (Zen 3 and Zen 4 are both "AMD EPYC" on some
    clouds), and they give different floats from the first step; family and model do (25/1 vs 25/17).
    """
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            if not line.strip():
                break  # the first processor's block ends at the first blank line
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    if fields.get("cpu family") and fields.get("model"):
        return f"family {fields['cpu family']} model {fields['model']}"
    return "unknown"


def onednn_version() -> str:
    """oneDNN (formerly MKL-DNN) as built into torch, ``unavailable`` without it."""
    if not torch.backends.mkldnn.is_available():
        return "unavailable"
    found = re.search(r"(?:oneDNN|MKL-DNN) v([\d.]+)", torch.__config__.show())
    return found[1] if found else "available"


@lru_cache(maxsize=1)
def _machine_tags() -> dict[str, str]:
    cuda = torch.cuda.is_available()
    tags = {
        "env.cpu": cpu_model(),
        "env.cpu_generation": cpu_generation(),
        "env.cpu_count": str(os.cpu_count()),
        "env.cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the instruction set torch's kernels use
        "env.torch": torch.__version__,
        "env.cuda_build": torch.version.cuda or "none",  # the CUDA torch was built for (also on CPU machines)
        "env.cudnn": str(torch.backends.cudnn.version()) if cuda and torch.backends.cudnn.is_available() else "none",
        "env.onednn": onednn_version(),
        "env.python": platform.python_version(),
        "env.os": platform.platform(),
    }
    if cuda:
        tags["env.gpu"] = torch.cuda.get_device_name(0)
    return tags


def environment_tags(device: str) -> dict[str, str]:
    """Tags naming the machine, the torch build, the device ``device`` (a params value) resolves to, and the
    torch thread count (CPU results are bit-reproducible at one thread count only)."""
    try:
        resolved = str(resolve_device(device))
    except RuntimeError:  # e.g. xla without torch_xla: the stage itself reports that; the tag says what was asked
        resolved = device
    return {**_machine_tags(), "env.device": resolved, "env.torch_threads": str(torch.get_num_threads())}
