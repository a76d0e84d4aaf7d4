"""The arithmetic the denoiser samples with: ``fp32``, ``int8`` (CPU) or ``bf16`` (autocast, meant for GPUs).

``auto`` is int8 on a CPU, where it nearly halves the time of a MAS sample for a 1.4% change in the motions
(``benchmarks/results/int8_quality.md``), and fp32 elsewhere. The choice is recorded with every sample set.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from models.checkpoint import TrainedModel
from models.int8 import int8_available, quantize_denoiser

PRECISIONS = ("auto", "fp32", "int8", "bf16")


class PrecisionError(ValueError):
    """A precision that does not exist or cannot run on the chosen device."""


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` means int8 on CPU and fp32 elsewhere; ``int8`` is refused off the CPU."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "int8" if device.type == "cpu" and int8_available() else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError(f"int8 inference runs on the CPU only, not on {device}; use --precision fp32 or bf16")
    if precision == "int8" and not int8_available():
        raise PrecisionError(
            "this PyTorch build has no quantised CPU kernels (torch.ops.quantized.linear_dynamic); "
            "use --precision fp32 or install the pinned torch==2.14.1"
        )
    return precision


def with_precision(trained: TrainedModel, precision: str) -> TrainedModel:
    """``trained`` itself for fp32, else a copy whose denoiser runs in ``precision`` (``auto`` is resolved here)."""
    resolved = resolve_precision(precision, trained.device)
    if resolved == "fp32":
        return trained
    model = quantize_denoiser(trained.model) if resolved == "int8" else Bf16Denoiser(trained.model)
    return dataclasses.replace(trained, model=model)


class Bf16Denoiser(nn.Module):
    """Runs a denoiser under bf16 autocast (as it was trained on GPU) and hands back float32 predictions."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x, t, valid).float()
