"""Time and peak memory per sample of MAS and SDS with the default model (8 layers, 512 d, T = 100, 5 views),
for 1 sample and a batch of 64, against the paper's Table 1 (MAS 9 s / 794 MB, DreamFusion 17 s, on GPU).

    python -m benchmarks.bench_sampling [--device cuda] [--batch 64] [--length 120] [--precision auto|fp32|int8|bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import peak_memory_mb, write_result
from models.checkpoint import TrainedModel
from models.denoiser import DenoiserConfig, MotionDenoiser
from models.diffusion import Diffusion
from models.mas import MASConfig, mas_sample, pass_tokens
from models.precision import PRECISIONS, resolve_precision, with_precision
from models.sds import SDSConfig, sds_sample
from models.trainer import resolve_device


def default_model(device: torch.device, joints: int = 17, max_len: int = 120) -> TrainedModel:
    return model_of(DenoiserConfig(num_joints=joints, max_len=max_len), device)


def model_of(config: DenoiserConfig, device: torch.device) -> TrainedModel:
    """An untrained denoiser of ``config`` with its schedule and unit statistics (timing does not need weights)."""
    model = MotionDenoiser(config).to(device).eval()
    joints = config.num_joints
    return TrainedModel(model, Diffusion.cosine(100), torch.zeros(joints, 2, device=device),
                        torch.ones(joints, 2, device=device), "coco17", 0.3, 30.0, 0, "bench")  # fmt: skip


def timed(fn, device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, peak_memory_mb(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=120)
    parser.add_argument("--name", default=None, help="result file name (default: sampling_<device>)")
    parser.add_argument("--sds-iterations", type=int, default=1000)
    parser.add_argument("--skip-sds", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of MAS at batch 1 (the median is reported)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: models/precision.py's policy")
    args = parser.parse_args()
    device = resolve_device(args.device)
    base = default_model(device, max_len=args.length)
    width = base.model.config.latent_dim
    rows = []
    with torch.inference_mode(False):
        for n in (1, args.batch):
            tokens = pass_tokens(base, n, args.length, MASConfig().num_views)  # auto weighs this call's passes
            precision = resolve_precision(args.precision, device, tokens, width)
            trained = with_precision(base, precision)
            mas_sample(trained, 1, args.length, MASConfig(steps=2))  # warm-up
            runs = [timed(lambda n=n, model=trained: mas_sample(model, n, args.length, MASConfig()), device)
                    for _ in range(args.repeats if n == 1 else 1)]  # fmt: skip
            rows.append(("MAS", n, precision, [seconds for seconds, _ in runs], max(memory for _, memory in runs)))
            if not args.skip_sds and (n == 1 or device.type == "cuda"):  # SDS batches only pay off on a GPU
                sds = SDSConfig(iterations=args.sds_iterations)
                precision = resolve_precision(args.precision, device, pass_tokens(base, n, args.length, 1), width)
                trained = with_precision(base, precision)
                seconds, memory = timed(
                    lambda n=n, sds=sds, model=trained: sds_sample(model, n, args.length, sds), device
                )
                rows.append(("SDS", n, precision, [seconds], memory))
    lines = [
        "| method | batch | precision | total s (median) | s per sample | timed runs (s) | peak memory MB "
        "| speed vs paper (GPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    paper = {"MAS": 9.0, "SDS": 17.0}
    for method, n, used, runs, memory in rows:
        seconds = statistics.median(runs)
        per = seconds / n
        listed = ", ".join(f"{r:.2f}" for r in runs)
        speed = paper[method] / per
        lines.append(
            f"| {method} | {n} | {used} | {seconds:.2f} | {per:.3f} | {listed} | {memory:.0f} | {speed:.2f}x |"
        )
    precision = [row for row in rows if row[0] == "MAS"][-1][2]  # the batch's (names the file)
    body = (
        f"Default model: 8 layers, 512 d, 4 heads, T = 100, 5 views, {args.length} frames, 17 joints; device {device}, "
        f"denoiser precision {args.precision} (auto: the fastest for each call's passes, models/precision.py). "
        "Peak memory: CUDA max allocated on GPU, process max RSS on CPU.\n\n" + "\n".join(lines)
    )
    write_result(args.name or f"sampling_{device.type}_{precision}", "MAS and SDS sampling speed", body)


if __name__ == "__main__":
    main()
