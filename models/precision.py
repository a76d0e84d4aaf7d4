"""The arithmetic the denoiser samples with: ``fp32``, ``int8`` (CPU linear layers) or ``bf16`` (autocast).

``auto`` picks the fastest precision of the machine it runs on. On a CPU, int8 and bf16 run through OpenVINO where it
is installed (``models/openvino_denoiser.py``; ``MAS_DENOISER_RUNTIME=torch`` keeps PyTorch): there int8 comes
first at every pass size (``benchmarks/results/denoiser_runtime.md``), then bf16 where the CPU computes it natively;
on a CPU without int8 dot products (no VNNI/AMX) int8 runs PyTorch's kernels instead, which are faster there
(:func:`models.openvino_denoiser.denoiser_runtime`).
Through PyTorch (``benchmarks/results/precision_cpu.md``): bf16 where the hardware computes it natively (a GPU with
bf16 support; a CPU with AVX512-BF16 or AMX), except that such a CPU takes int8 for small denoiser passes
(:data:`INT8_TOKENS_PER_WIDTH`), int8 on other CPUs (nearly half the time of fp32 for a 1.4% change in the motions,
``benchmarks/results/int8_quality.md``), fp32 otherwise. Before sampling, the chosen precision must reproduce the
fp32 denoiser on a fixed batch within :data:`AUTO_TOLERANCE` (:func:`precision_error`); if it does not, ``auto``
tries the next candidate (bf16 after int8 on a native-bf16 CPU), then fp32, and says so. The choice, its reason and
its runtime are recorded with every sample set (:func:`explain_precision`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from models.checkpoint import TrainedModel
from models.hardware import cpu_native_bf16
from models.int8 import int8_available, quantize_denoiser
from models.openvino_denoiser import denoiser_runtime, openvino_denoiser

PRECISIONS = ("auto", "fp32", "int8", "bf16")
AUTO_TOLERANCE = 0.03  # relative error of the denoiser's output that auto accepts (bf16 ~0.5%, int8 ~1.4% measured)
# On a CPU with native bf16, int8 linear layers are faster than bf16 for denoiser passes of fewer tokens than this
# many times the model's width (the weights' traffic dominates), bf16 for bigger passes (precision_passes.md): the
# 512-d default model crosses between 80 and 160 motions of 121 tokens (int8 1.07x faster at 9 680 tokens, bf16 1.22x
# at 19 360), the 128-d benchmark model's size between 40 and 320 motions of 61 tokens (int8 1.10x faster at 2 440,
# within 3% either way from 4 880 to 19 520).
INT8_TOKENS_PER_WIDTH = 20


def _int8_runs(device: torch.device) -> bool:
    """Whether int8 can run on ``device`` (a CPU): through OpenVINO where it takes int8, else with this PyTorch
    build's quantised kernels."""
    return denoiser_runtime(device, "int8")[0] == "openvino" or int8_available()


def _candidates(
    device: torch.device, pass_tokens: int | None = None, width: int | None = None
) -> list[tuple[str, str]]:
    """The lower precisions ``auto`` tries on ``device``, fastest first, each with why (none: fp32, :func:`_auto`)."""
    if device.type == "cuda":
        return [("bf16", "bf16 autocast: this GPU computes bf16 natively")] if torch.cuda.is_bf16_supported() else []
    if device.type != "cpu":
        return []
    if cpu_native_bf16():
        bf16 = ("bf16", "bf16: this CPU computes bf16 natively (AVX512-BF16/AMX/FEAT_BF16)")
        if denoiser_runtime(device, "int8")[0] == "openvino":
            why = "int8: through OpenVINO, faster than bf16 at every pass size measured here (denoiser_runtime.md)"
            return [("int8", why), bf16]
        small = pass_tokens is not None and width is not None and pass_tokens < INT8_TOKENS_PER_WIDTH * width
        if small and int8_available():
            return [("int8", f"int8 linear layers: this CPU computes bf16 natively, but int8 is faster for passes "
                             f"of {pass_tokens} tokens (under {INT8_TOKENS_PER_WIDTH} x the model's width, {width})"),
                    bf16]  # fmt: skip
        return [bf16]
    if _int8_runs(device):
        return [("int8", "int8 linear layers: this CPU has no native bf16, and int8 is the fastest it has")]
    return []


def _auto(device: torch.device, pass_tokens: int | None = None, width: int | None = None) -> tuple[str, str]:
    """``auto``'s first choice on ``device`` and why (before the check against fp32)."""
    candidates = _candidates(device, pass_tokens, width)
    if candidates:
        return candidates[0]
    if device.type == "cuda":
        return "fp32", "fp32: this GPU has no bf16 support"
    if device.type == "cpu":
        return "fp32", "fp32: this CPU has neither native bf16 nor this PyTorch build's int8 kernels"
    return "fp32", f"fp32: no faster precision is known for {device.type}"


def explain_precision(
    precision: str, device: torch.device, pass_tokens: int | None = None, width: int | None = None
) -> str:
    """Why ``precision`` resolves as it does on ``device`` for passes of ``pass_tokens`` tokens through a model of
    ``width`` (for logs and records)."""
    if precision == "auto":
        return "auto → " + _auto(device, pass_tokens, width)[1]
    return f"{resolve_precision(precision, device)}: asked for"


class PrecisionError(ValueError):
    """A precision that does not exist or cannot run on the chosen device."""


def resolve_precision(
    precision: str, device: torch.device, pass_tokens: int | None = None, width: int | None = None
) -> str:
    """``auto`` means the fastest native precision of ``device`` for denoiser passes of ``pass_tokens`` tokens through
    a model of ``width`` (see the module; unknown passes count as big); ``int8`` is refused off the CPU."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return _auto(device, pass_tokens, width)[0]
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError(f"int8 inference runs on the CPU only, not on {device}; use --precision fp32 or bf16")
    if precision == "int8" and not _int8_runs(device):
        raise PrecisionError(
            "int8 cannot run here: OpenVINO does not compute it (not installed, or MAS_DENOISER_RUNTIME=torch) and "
            "this PyTorch build has no quantised CPU kernels (torch.ops.quantized.linear_dynamic); use --precision "
            "fp32, or install the project's dependencies (`pip install -e .`: openvino, nncf, the pinned torch==2.14.1)"
        )
    return precision


def with_precision(trained: TrainedModel, precision: str, pass_tokens: int | None = None) -> TrainedModel:
    """``trained`` itself for fp32, else a copy whose denoiser runs in ``precision`` (``auto`` is resolved here for
    passes of ``pass_tokens`` tokens, without the quality check: :func:`checked_precision` does that)."""
    resolved = resolve_precision(precision, trained.device, pass_tokens, trained.model.config.latent_dim)
    if resolved == "fp32":
        return trained
    if denoiser_runtime(trained.device, resolved)[0] == "openvino":
        model = openvino_denoiser(trained.model, resolved)
    else:
        model = quantize_denoiser(trained.model) if resolved == "int8" else Bf16Denoiser(trained.model)
    return dataclasses.replace(trained, model=model)


def cache_params(device: torch.device, precision: str) -> dict:
    """What identifies the arithmetic of ``precision`` on ``device`` in a stage's cache key: the precision, and the
    runtime where it is not PyTorch (so keys made before the OpenVINO runtime existed still hold for PyTorch)."""
    runtime = denoiser_runtime(device, precision)[0]
    return {"precision": precision} | ({} if runtime == "torch" else {"runtime": runtime})


def runtime_note(trained: TrainedModel, precision: str) -> str:
    """Which runtime computes ``precision`` on ``trained``'s device, for reasons recorded with samples."""
    return "" if precision == "fp32" else f"; run by {denoiser_runtime(trained.device, precision)[1]}"


def precision_error(trained: TrainedModel, fast: TrainedModel, batch: int = 4, length: int | None = None) -> float:
    """Relative error of ``fast``'s denoiser against ``trained``'s (fp32) on a fixed noisy batch at several steps."""
    config = trained.model.config
    length = min(length or config.max_len, config.max_len)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, config.num_joints, 2, generator=generator).to(trained.device)
    t = torch.linspace(0, trained.diffusion.num_steps - 1, batch).round().long().to(trained.device)
    with torch.no_grad():
        reference, out = trained.model(x, t), fast.model(x, t)
    return float((out.float() - reference).norm() / reference.norm().clamp_min(1e-12))


def checked_precision(
    trained: TrainedModel, precision: str, pass_tokens: int | None = None
) -> tuple[TrainedModel, str, str]:
    """The model in ``precision`` (``auto``: for denoiser passes of ``pass_tokens`` tokens, see
    :func:`models.mas.pass_tokens`) with the precision it runs in and why. For ``auto``, a lower precision must
    reproduce fp32 within :data:`AUTO_TOLERANCE` on this machine and model; one that does not gives way to the next
    candidate (bf16 after int8 on a native-bf16 CPU), then to fp32, and the reason says so."""
    if precision != "auto":
        resolved = resolve_precision(precision, trained.device)
        reason = explain_precision(precision, trained.device) + runtime_note(trained, resolved)
        return with_precision(trained, resolved), resolved, reason
    width = trained.model.config.latent_dim
    candidates = _candidates(trained.device, pass_tokens, width)
    if not candidates:
        return trained, "fp32", explain_precision(precision, trained.device)
    rejected = []  # candidates that failed the check, in the order tried
    for candidate, why in candidates:
        fast = with_precision(trained, candidate)
        error = precision_error(trained, fast)
        if error <= AUTO_TOLERANCE:  # NaN fails too
            chosen = f"auto → {why}; denoiser within {error:.2%} of fp32{runtime_note(trained, candidate)}"
            return fast, candidate, "; ".join([chosen, *rejected])
        rejected.append(f"{candidate} changed this model's denoiser output by {error:.1%} (more than "
                        f"{AUTO_TOLERANCE:.0%})")  # fmt: skip
    return trained, "fp32", "auto → fp32: " + "; ".join(rejected)


class Bf16Denoiser(nn.Module):
    """Runs a denoiser under bf16 autocast (as it was trained on GPU) and hands back float32 predictions."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x, t, valid).float()
