"""Shared helpers for benchmarks: machine description, result tables written with the date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {gpu}, {torch.get_num_threads()} threads, "
            f"host load average {load} (1/5/15 min) when written")  # fmt: skip


def write_result(name: str, title: str, body: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    path.write_text(f"# {title}\n\n{stamp} — {machine()}\n\n{body}\n")
    print(path.read_text())
    return path


def min_median_max(values, spec: str = ".2f") -> str:
    """``min / median / max`` of repeated measurements, each formatted with ``spec``."""
    return " / ".join(format(v, spec) for v in (min(values), statistics.median(values), max(values)))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
