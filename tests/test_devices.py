"""Device and precision resolution: bf16 only where the CPU has the instructions, float32 inference on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from noisy_student.devices import autocast, cpu_flags, inference_dtype, resolve_precision

CPU = torch.device("cpu")


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    return path


def test_cpu_flags_reads_the_first_processor(tmp_path: Path) -> None:
    assert cpu_flags(_cpuinfo(tmp_path, "fpu avx2 avx512f avx512_bf16")) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_picks_bf16_only_on_a_bf16_cpu(native: bool, expected: torch.dtype | None) -> None:
    assert resolve_precision("auto", CPU, cpu_bf16=native) is expected


def test_explicit_precisions_are_honoured() -> None:
    assert resolve_precision("fp32", CPU, cpu_bf16=True) is None
    assert resolve_precision("bf16", CPU, cpu_bf16=False) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", CPU)


def test_inference_stays_float32_on_cpu() -> None:
    assert inference_dtype("bf16", CPU) is None


def test_autocast_runs_matmuls_in_the_dtype() -> None:
    a = torch.rand(4, 4)
    with autocast(CPU, torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(CPU, None):
        assert (a @ a).dtype == torch.float32
