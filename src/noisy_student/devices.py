"""Which device a stage computes on (CPU, CUDA, or an XLA/TPU device), from the ``device`` param."""

from __future__ import annotations

import torch


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
