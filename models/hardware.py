"""What the hardware computes natively; the precision policy (:mod:`models.precision`) and training ask here."""

from __future__ import annotations

import platform
import subprocess

import torch

_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX512-BF16 / AMX; "bf16" is ARM's FEAT_BF16 in cpuinfo


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively, as the OS reports it (Linux /proc/cpuinfo flags, macOS sysctl)."""
    try:
        if platform.system() == "Linux":
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith(("flags", "Features")):
                        return bool(set(line.split(":", 1)[1].split()) & _CPU_BF16_FLAGS)
        if platform.system() == "Darwin":
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
            return out.stdout.strip() == "1"
    except OSError:
        pass
    return False


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (a GPU with bf16 support, or a CPU as :func:`cpu_native_bf16`)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_native_bf16()
