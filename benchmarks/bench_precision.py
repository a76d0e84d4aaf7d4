"""Which precision is fastest on this machine, for MAS sampling and for training, and what ``auto`` picks here.

The default model (8 layers, 512 d) samples MAS (5 views, 20 respaced steps: the time per step is what differs) at
batch 1 and batch 40, and trains a few steps, in fp32, int8 (sampling, CPU only) and bf16, interleaved round by round
so that a change in the host's load hits every precision alike. Reports min / median / max over the rounds, each
precision's ratio to fp32 (medians), the denoiser's relative error against fp32, the host's load average before and
after, and the torch thread count. Writes benchmarks/results/precision_<device>.md.

    python -m benchmarks.bench_precision [--device cpu] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from benchmarks.bench_sampling import default_model
from benchmarks.common import min_median_max, write_result
from models.mas import MASConfig, mas_sample
from models.precision import explain_precision, precision_error, resolve_precision, with_precision
from models.trainer import TrainConfig, resolve_device, train, training_autocast_dtype
from pipeline.synthetic import build_synthetic_dataset
from storage import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--length", type=int, default=120)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--train-batch", type=int, default=16)
    args = parser.parse_args()
    device = resolve_device(args.device)
    load_before = os.getloadavg()
    trained = default_model(device, max_len=args.length)
    sampling = ["fp32", "int8", "bf16"] if device.type == "cpu" else ["fp32", "bf16"]
    models = {p: with_precision(trained, p) for p in sampling}
    errors = {p: precision_error(trained, models[p]) for p in sampling}
    config = MASConfig(steps=20)
    times: dict[tuple[str, int], list[float]] = {(p, b): [] for p in sampling for b in (1, 40)}
    ws = Workspace(tempfile.mkdtemp(prefix="mas-bench-precision-"))
    build_synthetic_dataset(ws, "bench", num_motions=128, length=args.length)
    training = ["fp32", "bf16"]
    train_times: dict[str, list[float]] = {p: [] for p in training}
    for _ in range(2):  # warm-up: kernels, allocators, quantisation
        for p in sampling:
            mas_sample(models[p], 1, args.length, config, seed=0, progress=False)
    for round_ in range(args.rounds):
        for batch in (1, 40):
            for p in sampling:
                start = time.perf_counter()
                mas_sample(models[p], batch, args.length, config, seed=round_, progress=False)
                times[(p, batch)].append((time.perf_counter() - start) / batch / config.steps * 100)
        for p in training:
            cfg = TrainConfig(steps=args.train_steps, batch_size=args.train_batch, max_len=args.length,
                              device=str(device), save_every=10**9, log_every=10**9, precision=p)  # fmt: skip
            start = time.perf_counter()
            train(ws, "bench", f"{p}-{round_}", cfg, progress=False)
            train_times[p].append(args.train_steps * args.train_batch / (time.perf_counter() - start))
    load_after = os.getloadavg()
    rows = ["| work | precision | min / median / max | ratio to fp32 (median) | denoiser error vs fp32 |",
            "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for batch in (1, 40):
        base = statistics.median(times[("fp32", batch)])
        for p in sampling:
            median = statistics.median(times[(p, batch)])
            rows.append(f"| MAS, batch {batch}: s per sample (100 steps) | {p} | {min_median_max(times[(p, batch)])} | "
                        f"{base / median:.2f}x faster | {errors[p]:.2%} |")  # fmt: skip
    base = statistics.median(train_times["fp32"])
    for p in training:
        median = statistics.median(train_times[p])
        rows.append(f"| training: samples/s (batch {args.train_batch}) | {p} | {min_median_max(train_times[p])} | "
                    f"{median / base:.2f}x faster | - |")  # fmt: skip
    body = (
        f"Default model (8 layers, 512 d), {args.length} frames, MAS with 5 views timed over 20 respaced steps and "
        f"scaled to 100; {args.rounds} interleaved rounds (every precision once per round); torch threads "
        f"{torch.get_num_threads()}; host load average (1/5/15 min) {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f} before, {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} after.\n\n"
        + "\n".join(rows)
        + f"\n\n`auto` here: sampling {resolve_precision('auto', device)} ({explain_precision('auto', device)}); "
        f"training {'bf16' if training_autocast_dtype('auto', device) is not None else 'fp32'}.\n"
    )  # fmt: skip
    write_result(f"precision_{device.type}", "Precision: fp32, int8 and bf16 side by side on this machine", body)


if __name__ == "__main__":
    main()
