"""Where a stage computes and in which precision, from the ``device`` and ``precision`` params.

``precision: auto`` autocasts to bfloat16 on CUDA and on CPUs whose flags list bf16 instructions
(``avx512_bf16`` / ``amx_bf16``, read from ``/proc/cpuinfo``); elsewhere it stays float32: an x86 CPU
without them emulates bf16 and runs slower than float32. The machines this project runs on differ
here (AMD Zen 3 has no ``avx512_bf16``, Zen 4 has), so it is detected, never assumed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache
from pathlib import Path

import torch

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then an XLA (TPU) device when torch_xla is installed, then CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if name in ("xla", "auto"):
        try:
            import torch_xla.core.xla_model as xm  # type: ignore[import-not-found]

            return xm.xla_device()
        except ImportError:
            if name == "xla":
                raise RuntimeError("device: xla requested but torch_xla is not installed") from None
    return torch.device("cpu")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's ``flags`` in ``cpuinfo`` (empty where there is no such file, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix instructions."""
    return bool(cpu_flags() & BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device, cpu_bf16: bool | None = None) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: plain float32).

    ``cpu_bf16`` overrides the CPU detection (tests). ``bf16`` is honoured on any device, even where it
    is emulated; ``auto`` picks it only where it is native (CUDA with bf16 support, a bf16 CPU).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16) else None
    return None


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of inference (pseudo labels, evaluation): ``precision``'s on CUDA, float32 elsewhere.

    On CPU inference is a small share of a run (seconds against training's minutes), so it stays in
    float32 and every reported accuracy is the float32 model's.
    """
    return resolve_precision(precision, device) if device.type == "cuda" else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """Autocast to ``dtype`` on ``device``; a no-op for None (float32)."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
