"""Shared helpers for benchmarks: machine description, result tables written with the date."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {gpu}, {torch.get_num_threads()} threads, "
            f"host load average {load} (1/5/15 min) when written")  # fmt: skip


def cpu_kind_suffix() -> str:
    """A result name's suffix for a CPU whose fastest denoiser arithmetic differs from the AVX512 CPU the committed
    results were measured on: ``_no_int8_dot`` without int8 dot products (VNNI/AMX), else nothing."""
    from models.hardware import cpu_int8_dot_product

    return "" if cpu_int8_dot_product() else "_no_int8_dot"


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


@contextmanager
def git_worktree(rev: str) -> Iterator[Path]:
    """A detached git worktree of this repository at ``rev``, removed afterwards (to time the code before a change)."""
    tree = Path(tempfile.mkdtemp(prefix="bench-worktree-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def run_in_tree(tree: Path, script: str, label: str, env: dict[str, str] | None = None) -> dict:
    """Run the Python ``script`` in a fresh process with the checkout ``tree`` first on its path (and ``env`` added to
    this process's environment); the JSON after its ``RESULT`` line (``label`` names a failure)."""
    env = dict(os.environ, **(env or {}), PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{label} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])
