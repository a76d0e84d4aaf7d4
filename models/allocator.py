"""glibc malloc settings for the denoiser's loops: keep freed memory in the process instead of handing it back.

A denoiser pass allocates and frees activations of several to tens of megabytes. By default glibc serves such blocks
with fresh ``mmap`` calls (above its dynamic mmap threshold) and gives freed memory at the top of the heap back to
the kernel (above its trim threshold), so every pass page-faults its activations in again: 640 MAS samples of the
benchmark model at 20 steps took 1.6-1.9 million minor page faults, against 0.12 million with the settings here
(``benchmarks/results/allocator.md``, in fresh processes, interleaved): MAS 1.25x and plain 2D sampling 1.41x faster
with the benchmark model, its training 1.12x, an evaluation 1.03x; one sample of the default model is unchanged.

:func:`keep_freed_memory` raises both thresholds once per process (``mallopt``), before the work: blocks up to
:data:`MMAP_THRESHOLD` come from the heap, and up to :data:`TRIM_THRESHOLD` of free heap stays mapped. The heap
settles after a few passes (freed blocks coalesce until one fits the next request), so the peak memory grows a
little: within 2% for sampling and training, 7% for the evaluation (1887 to 2016 MB); a process keeps its freed
memory until it exits.
``MAS_KEEP_FREED_MEMORY=0`` leaves glibc's defaults; other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # bytes: bigger blocks still get their own mmap
TRIM_THRESHOLD = 512 << 20  # bytes of free heap top kept mapped
OPT_OUT = "MAS_KEEP_FREED_MEMORY"

_state: str | None = None


def keep_freed_memory() -> str:
    """Apply the settings of this module once (later calls return the first answer) and say what was done."""
    global _state
    if _state is None:
        _state = _apply()
    return _state


def _apply() -> str:
    if os.environ.get(OPT_OUT, "1") == "0":
        return f"malloc left at glibc's defaults ({OPT_OUT}=0)"
    if platform.libc_ver()[0] != "glibc":
        return "malloc left as it is (not glibc)"
    libc = ctypes.CDLL(None)  # this process's C library
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "malloc left at glibc's defaults (mallopt refused the thresholds)"
    return (f"malloc keeps freed memory (glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
            f"{TRIM_THRESHOLD >> 20} MiB)")  # fmt: skip
