"""Run the quick benchmarks (`make benchmark`).

The 3D benchmark is separate and longer: `python -m benchmarks.mas_3d_benchmark --workspace W`, after which
`python -m benchmarks.int8_quality --workspace W` compares int8 and fp32 sampling on its trained model, and
`python -m benchmarks.bench_allocator --workspace W` times glibc's malloc defaults against the stages' settings and
`python -m benchmarks.bench_denoiser_runtime --workspace W` compares the denoiser runtimes on its trained model.
"""

from __future__ import annotations

import subprocess
import sys

QUICK = [
    ["benchmarks.bench_process", "--clips", "10000"],
    ["benchmarks.bench_video"],
    ["benchmarks.bench_pose_lanes"],
    ["benchmarks.bench_train", "--steps", "10"],
    ["benchmarks.bench_sampling", "--batch", "8"],  # auto: the fastest checked precision for its passes
    ["benchmarks.bench_denoiser_rate"],
    ["benchmarks.bench_denoiser_runtime"],  # PyTorch against OpenVINO per pass (random weights without --workspace)
    ["benchmarks.bench_sampling", "--batch", "8", "--precision", "fp32", "--skip-sds"],
]

if __name__ == "__main__":
    for module, *args in QUICK:
        print(f"== {module} {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, "-m", module, *args], check=True)
