"""Training throughput: samples/s, peak memory and (on GPU) model FLOPs utilisation of the default denoiser.

python -m benchmarks.bench_train [--device cuda] [--steps 30] [--batch 32] [--length 120]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.common import peak_memory_mb, write_result
from models.trainer import TrainConfig, resolve_device, train
from pipeline.synthetic import build_synthetic_dataset
from storage import Workspace

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def denoiser_flops_per_sample(length: int, d: int = 512, ff: int = 1024, layers: int = 8, joints: int = 17) -> float:
    """Forward FLOPs of one sample (matmuls only): attention projections, scores, FF, input/output layers."""
    tokens = length + 1
    per_layer = 2 * tokens * (4 * d * d + 2 * d * ff) + 2 * 2 * tokens * tokens * d
    return layers * per_layer + 2 * tokens * 2 * (joints * 2) * d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=120)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    ws = Workspace(tempfile.mkdtemp(prefix="mas-bench-train-"))
    build_synthetic_dataset(ws, "bench", num_motions=256, length=args.length)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, max_len=args.length, device=str(device),
                      save_every=10**9, log_every=max(args.steps // 3, 1), compile=args.compile)  # fmt: skip
    train(ws, "bench", "warm", TrainConfig(**{**cfg.__dict__, "steps": 3}), progress=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = train(ws, "bench", "timed", cfg, progress=False)
    seconds = time.perf_counter() - start
    samples_per_s = args.steps * args.batch / seconds
    flops = 3 * denoiser_flops_per_sample(args.length) * samples_per_s  # forward + backward ≈ 3x forward
    mfu = ""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        mfu = f", MFU {100 * flops / (peak * 1e12):.1f}% of {peak} bf16 TFLOP/s" if peak else ""
    body = (f"Default model (8 layers, 512 d), batch {args.batch}, {args.length} frames, {args.steps} steps on "
            f"{device}: **{samples_per_s:.1f} samples/s**, {flops / 1e12:.2f} TFLOP/s achieved{mfu}, peak memory "
            f"{peak_memory_mb(device):.0f} MB, final loss {result.final_loss:.4f}.")  # fmt: skip
    write_result(f"train_{device.type}", "Training throughput", body)


if __name__ == "__main__":
    main()
