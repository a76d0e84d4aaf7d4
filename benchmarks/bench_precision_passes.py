"""Denoiser pass time by pass size, int8 against bf16, and what ``auto`` picks for each pass (CPU).

Two model sizes with random weights (time does not depend on them): the default model (8 layers, 512 d, 120 frames)
and the procedural benchmark's (2 layers, 128 d, ff 256, 60 frames). Each pass size is timed ``--repeats`` times,
int8 and bf16 alternating, after a warm-up call each. Reports ms per pass and per motion (min / median / max), the
ratio bf16 / int8 of the medians (above 1: int8 faster) and ``auto``'s choice (``models.precision``), so that
:data:`models.precision.INT8_TOKENS_PER_WIDTH` and :data:`models.mas.CPU_PASS_ELEMENTS` can be checked against this
machine. Writes ``benchmarks/results/precision_passes.md``.

    python -m benchmarks.bench_precision_passes [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.bench_sampling import model_of
from benchmarks.common import min_median_max, write_result
from models.checkpoint import TrainedModel
from models.denoiser import DenoiserConfig
from models.mas import CPU_PASS_ELEMENTS
from models.precision import INT8_TOKENS_PER_WIDTH, resolve_precision, with_precision

MODELS = {  # name: (config, frames, pass sizes in motions)
    "default (8 layers, 512 d)": (DenoiserConfig(num_joints=17, max_len=120), 120, (5, 10, 20, 40, 80, 160, 320)),
    "benchmark size (2 layers, 128 d)": (DenoiserConfig(num_joints=17, latent_dim=128, ff_size=256, num_layers=2,
                                                        max_len=60), 60, (5, 20, 40, 80, 160, 320, 640)),
}  # fmt: skip


@torch.no_grad()
def time_passes(trained: TrainedModel, motions: int, frames: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per pass of ``motions`` motions for int8 and bf16, alternating."""
    x = torch.randn(motions, frames, trained.model.config.num_joints, 2, generator=torch.Generator().manual_seed(0))
    t = torch.randint(0, 100, (motions,), generator=torch.Generator().manual_seed(1))
    models = {p: with_precision(trained, p).model for p in ("int8", "bf16")}
    for model in models.values():
        model(x, t)
    times: dict[str, list[float]] = {p: [] for p in models}
    for _ in range(repeats):
        for p, model in models.items():
            start = time.perf_counter()
            model(x, t)
            times[p].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    lines = [f"Command: `python -m benchmarks.bench_precision_passes --repeats {args.repeats}`", "",
             f"`auto` on a CPU with native bf16 takes int8 for passes under {INT8_TOKENS_PER_WIDTH} x the model's "
             f"width in tokens; sampling passes hold at most {CPU_PASS_ELEMENTS:,} activation elements (motions x "
             "tokens x width).", ""]  # fmt: skip
    for name, (config, frames, sizes) in MODELS.items():
        torch.manual_seed(0)
        trained = model_of(config, cpu)
        lines += [f"## {name}, {frames} frames ({frames + 1} tokens per motion)", "",
                  "| motions per pass | tokens | int8 ms per pass | bf16 ms per pass | int8 ms per motion "
                  "| bf16 ms per motion | bf16 / int8 | auto |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for motions in sizes:
            times = time_passes(trained, motions, frames, args.repeats)
            ms = {p: [1000 * v for v in values] for p, values in times.items()}
            per_motion = {p: statistics.median(v) / motions for p, v in ms.items()}
            tokens = motions * (frames + 1)
            auto = resolve_precision("auto", cpu, tokens, config.latent_dim)
            ratio = statistics.median(ms["bf16"]) / statistics.median(ms["int8"])
            lines.append(f"| {motions} | {tokens} | {min_median_max(ms['int8'], '.1f')} | "
                         f"{min_median_max(ms['bf16'], '.1f')} | {per_motion['int8']:.2f} | {per_motion['bf16']:.2f} "
                         f"| {ratio:.2f} | {auto} |")  # fmt: skip
            print(lines[-1], flush=True)
        lines.append("")
    write_result("precision_passes", "Denoiser pass time by pass size: int8 against bf16 on this CPU", "\n".join(lines))


if __name__ == "__main__":
    main()
