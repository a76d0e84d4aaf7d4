"""What the hardware computes natively; the precision policy (:mod:`models.precision`) and training ask here."""

from __future__ import annotations

import math
import os
import platform
import subprocess

_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX512-BF16 / AMX; "bf16" is ARM's FEAT_BF16 in cpuinfo
# int8 dot-product instructions: x86 AVX512-VNNI, AVX-VNNI, AMX-INT8; ARM's dot product (FEAT_DotProd, "asimddp")
_CPU_INT8_DOT_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}


def _cpu_has(flags: set[str], darwin_feature: str) -> bool:
    """Whether the CPU reports any of ``flags`` (Linux /proc/cpuinfo) or ``darwin_feature`` (macOS sysctl)."""
    try:
        if platform.system() == "Linux":
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith(("flags", "Features")):
                        return bool(set(line.split(":", 1)[1].split()) & flags)
        if platform.system() == "Darwin":
            out = subprocess.run(["sysctl", "-n", f"hw.optional.arm.{darwin_feature}"], capture_output=True,
                                 text=True)  # fmt: skip
            return out.stdout.strip() == "1"
    except OSError:
        pass
    return False


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively, as the OS reports it (Linux /proc/cpuinfo flags, macOS sysctl)."""
    return _cpu_has(_CPU_BF16_FLAGS, "FEAT_BF16")


def cpu_int8_dot_product() -> bool:
    """Whether this CPU has int8 dot-product instructions (VNNI/AMX, ARM dot product), as the OS reports it. Without
    them OpenVINO's int8 layers compute in fp32 from decompressed weights (``models/openvino_denoiser.py``)."""
    return _cpu_has(_CPU_INT8_DOT_FLAGS, "FEAT_DotProd")


def native_bf16(device) -> bool:
    """Whether ``device`` (a torch.device) computes bf16 natively (a GPU with bf16 support, or a CPU as
    :func:`cpu_native_bf16`)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_native_bf16()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_policy(requested: int | None = None) -> tuple[int, str]:
    """How many threads torch should use here, and why: ``requested`` if given, else ``OMP_NUM_THREADS`` if set,
    else the cores the last minute's load average leaves free (at least 1). Why: on a 2-core host, training with 2
    threads went from 8.7 to 2.0 steps/s when one other process started, while a 1-thread run beside it kept 4.8
    (in bf16; the 3D benchmark's training, 2026-11-24): torch's threads wait for each other at every operation, so a
    thread without a free core costs more than it brings."""
    cores = usable_cores()
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        return requested, f"{requested} threads: asked for"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = max(1, min(cores, cores - math.floor(load + 0.5)))
    return free, f"{free} of {cores} cores free (load average {load:.1f})"
