"""How close a denoiser pass runs to this CPU's matrix-product rate, and what that means for the full evaluation.

For the procedural benchmark's model (2 layers, 128 d, ff 256; a MAS pass of 64 samples x 5 views of 60 frames) and
the default model (8 layers, 512 d, ff 1024; 8 samples x 5 views of 120 frames), in bf16 (autocast) and fp32, with
the precision ``auto`` picks for the pass named: the pass's FLOPs (counted from the shapes), its time, the time of
the same matrix products alone (same shapes and dtype, nothing else), and where the pass spends its time (torch
profiler, by operator). Then the least time 10 000 MAS samples (the paper's n = 1000 x 10 repeats), the plain 2D
row and the SDS row need at those rates (bf16): a bound no scheduling or caching can beat on this machine. Writes
``benchmarks/results/denoiser_rate.md``.

    python -m benchmarks.bench_denoiser_rate [--repeats 7]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_sampling import model_of
from benchmarks.common import min_median_max, write_result
from models.checkpoint import TrainedModel
from models.denoiser import DenoiserConfig
from models.mas import pass_tokens
from models.precision import resolve_precision, with_precision

MODELS = {  # name: (config, frames, MAS samples per pass)
    "benchmark (2 layers, 128 d)": (DenoiserConfig(num_joints=17, latent_dim=128, ff_size=256, num_layers=2,
                                                   max_len=60), 60, 64),
    "default (8 layers, 512 d)": (DenoiserConfig(num_joints=17, max_len=120), 120, 8),
}  # fmt: skip
VIEWS = 5
MATMUL_OPS = ("addmm", "mm", "bmm", "_addmm_activation", "linear_dynamic")


def matmul_shapes(cfg: DenoiserConfig, motions: int, frames: int) -> list[tuple[int, int, int, int]]:
    """(batch, m, k, n) of every matrix product in one pass (time MLP left out: one token per motion)."""
    tokens, d, f, heads = frames + 1, cfg.latent_dim, cfg.ff_size, cfg.num_heads
    rows, joint_feats = motions * tokens, cfg.num_joints * cfg.num_feats
    layer = [(1, rows, d, 3 * d), (1, rows, d, d), (1, rows, d, f), (1, rows, f, d),
             (motions * heads, tokens, d // heads, tokens), (motions * heads, tokens, tokens, d // heads)]  # fmt: skip
    return [(1, motions * frames, joint_feats, d), *layer * cfg.num_layers, (1, motions * frames, d, joint_feats)]


def flops(shapes) -> float:
    return sum(2.0 * b * m * k * n for b, m, k, n in shapes)


def best_of(fn, repeats: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def measure(trained: TrainedModel, frames: int, samples: int, precision: str, repeats: int) -> dict:
    cfg = trained.model.config
    motions = samples * VIEWS
    model = with_precision(trained, precision).model
    x = torch.randn(motions, frames, cfg.num_joints, 2, generator=torch.Generator().manual_seed(0))
    t = torch.randint(0, 100, (motions,), generator=torch.Generator().manual_seed(1))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    operands = [
        (torch.randn(b, m, k).squeeze(0).to(dtype), torch.randn(b, k, n).squeeze(0).to(dtype))
        for b, m, k, n in matmul_shapes(cfg, motions, frames)
    ]  # fmt: skip (batch 1: plain mm, as in a pass)
    pass_times = best_of(lambda: model(x, t), repeats)
    matmul_times = best_of(lambda: [a @ b for a, b in operands], repeats)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x, t)
    by_kind: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        name = event.key.split("::")[-1]
        kind = "matrix products" if name in MATMUL_OPS else "softmax" if "softmax" in name else "other operators"
        by_kind[kind] += event.self_cpu_time_total
    total = sum(by_kind.values())
    return {"pass": pass_times, "matmul": matmul_times, "flops": flops(matmul_shapes(cfg, motions, frames)),
            "share": {k: v / total for k, v in sorted(by_kind.items())}, "motions": motions}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    lines = [f"Command: `python -m benchmarks.bench_denoiser_rate --repeats {args.repeats}`", "",
             "| model | precision | motions x tokens per pass | GFLOP per pass | pass ms (min / median / max) | "
             "matrix products alone, ms | pass GFLOP/s | products GFLOP/s | time in products / softmax / other |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    bounds = []
    for name, (cfg, frames, samples) in MODELS.items():
        trained = model_of(cfg, torch.device("cpu"))
        auto = resolve_precision("auto", trained.device, pass_tokens(trained, samples, frames, VIEWS), cfg.latent_dim)
        for precision in ("bf16", "fp32"):  # int8's products are not plain matrix products: timed in precision_passes
            r = measure(trained, frames, samples, precision, args.repeats)
            best_pass, best_mm = min(r["pass"]), min(r["matmul"])
            share, pass_ms = r["share"], [v * 1000 for v in r["pass"]]
            lines.append(
                f"| {name} (auto: {auto}) | {precision} | {r['motions']} x {frames + 1} | "
                f"{r['flops'] / 1e9:.2f} | {min_median_max(pass_ms, '.1f')} | {best_mm * 1000:.1f} | "
                f"{r['flops'] / best_pass / 1e9:.0f} | {r['flops'] / best_mm / 1e9:.0f} | "
                f"{share.get('matrix products', 0):.0%} / {share.get('softmax', 0):.0%} / "
                f"{share.get('other operators', 0):.0%} |"
            )
            if precision == "bf16":
                per_view = r["flops"] / r["motions"]  # one motion of one view through the denoiser
                bounds.append((name, precision, per_view, r["flops"] / best_mm, r["flops"] / best_pass))
    lines += ["", "Least time for the full evaluation's sampling at n = 1000 x 10 repeats (10 000 samples per row), "
              "counting denoiser FLOPs only, at the rates measured above:", "",
              "| model | row | motions through the denoiser per sample | TFLOP | at the products' rate (min) | "
              "at the pass's rate (min) |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    rows = (("MAS, 100 steps x 5 views", 500), ("MAS, 75 steps x 5 views", 375), ("plain 2D, 100 steps", 100),
            ("SDS, 1000 iterations", 1000))  # fmt: skip
    for name, precision, per_view, mm_rate, pass_rate in bounds:
        for row, motions in rows:
            total = 10_000 * motions * per_view
            lines.append(f"| {name}, {precision} | {row} | {motions} | {total / 1e12:.0f} | "
                         f"{total / mm_rate / 60:.1f} | {total / pass_rate / 60:.1f} |")  # fmt: skip
    write_result("denoiser_rate", "A denoiser pass against this CPU's matrix-product rate", "\n".join(lines))


if __name__ == "__main__":
    main()
