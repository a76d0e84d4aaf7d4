"""A denoiser pass through PyTorch against the same pass through OpenVINO (``models/openvino_denoiser.py``), per
precision and pass size, against fp32 through PyTorch, and what ``auto`` picks with each runtime. Writes
``benchmarks/results/denoiser_runtime.md`` on a CPU with int8 dot products (VNNI/AMX), else
``denoiser_runtime_no_int8_dot.md``; bf16 is measured where the CPU computes it natively (elsewhere OpenVINO refuses it
and PyTorch emulates it, many times slower than fp32).

Cases (the passes sampling makes): the procedural benchmark's model (2 layers, 128 d; its trained checkpoint with
``--workspace``/``--run``, else random weights) in a MAS pass of 64 samples x 5 views of 60 frames (an evaluation's
sampling), a middle size (4 layers, 256 d; random weights) in a pass of 32 x 5 x 60 (the same activation elements),
and the default model's size (8 layers, 512 d; random weights, which time does not depend on) in MAS passes of 1 and
8 samples x 5 views of 120 frames (8: the most a CPU pass holds, ``models.mas.sample_chunk``).
Rounds interleave the runtimes; each pass is timed
``--repeats`` times per round after a warm-up. The error is the pass's relative distance to the fp32 PyTorch pass on
the same input (noise at random steps), and, for a trained checkpoint, the same error on the precision check's batch
(``models.precision.precision_error``, what ``auto`` accepts or rejects). Conversion is timed into an empty cache
(cold) and again from the cache.

    python -m benchmarks.bench_denoiser_runtime [--workspace /tmp/b3d/ws --run bench-model] [--rounds 3 --repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from unittest import mock

import torch

from benchmarks.bench_sampling import model_of
from benchmarks.common import cpu_kind_suffix, min_median_max, write_result
from models.denoiser import DenoiserConfig
from models.hardware import cpu_int8_dot_product, cpu_native_bf16
from models.mas import pass_tokens
from models.openvino_denoiser import RUNTIME_ENV, denoiser_runtime, openvino_denoiser
from models.precision import checked_precision, precision_error, with_precision

BENCH = DenoiserConfig(num_joints=17, latent_dim=128, ff_size=256, num_layers=2, max_len=60)
MIDDLE = DenoiserConfig(num_joints=17, latent_dim=256, ff_size=512, num_layers=4, max_len=60)
DEFAULT = DenoiserConfig(num_joints=17, max_len=120)
VIEWS = 5
RUNTIMES = {"PyTorch": "torch", "OpenVINO": "openvino"}  # label: MAS_DENOISER_RUNTIME
LABELS = {runtime: label for label, runtime in RUNTIMES.items()}


def runtime_model(trained, precision: str, runtime: str):
    """The denoiser in ``precision`` as sampling gets it with ``MAS_DENOISER_RUNTIME=runtime`` (fp32 through OpenVINO,
    which sampling never uses, compiled directly: the runtimes' own speed without any quantisation)."""
    if precision == "fp32" and runtime == "openvino":
        return openvino_denoiser(trained.model, "fp32")
    with mock.patch.dict(os.environ, {RUNTIME_ENV: runtime}):
        return with_precision(trained, precision).model


def precisions_here() -> tuple[str, ...]:
    """fp32 and int8 everywhere, bf16 where this CPU computes it natively."""
    return ("fp32", "int8", "bf16") if cpu_native_bf16() else ("fp32", "int8")


def times_ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference).norm() / reference.norm())


@torch.no_grad()
def compare(trained, samples: int, frames: int, rounds: int, repeats: int) -> list[dict]:
    model = trained.model
    motions = samples * VIEWS
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(motions, frames, model.config.num_joints, 2, generator=generator)
    t = torch.randint(0, trained.diffusion.num_steps, (motions,), generator=generator)
    reference = model(x, t)
    runners = {(precision, label): runtime_model(trained, precision, runtime)
               for precision in precisions_here() for label, runtime in RUNTIMES.items()}  # fmt: skip
    timings: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for runner in runners.values():
        runner(x, t)  # warm-up
    for _ in range(rounds):  # every round times every precision and runtime in turn (the host's load drifts)
        for key, runner in runners.items():
            timings[key] += times_ms(lambda runner=runner: runner(x, t), repeats)
    rows = []
    for (precision, name), runner in runners.items():
        check = precision_error(trained, dataclasses.replace(trained, model=runner))
        rows.append({"precision": precision, "runtime": name, "ms": timings[precision, name],
                     "error": error(runner(x, t), reference), "check": check})  # fmt: skip
    return rows


def conversion_seconds(trained) -> dict[str, tuple[float, float]]:
    """Cold (empty cache) and cached seconds to get the OpenVINO denoiser, per precision."""
    out = {}
    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, {"MAS_CACHE": cache}):
        for precision in precisions_here():
            start = time.perf_counter()
            openvino_denoiser(trained.model, precision)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            openvino_denoiser(trained.model, precision)
            out[precision] = (cold, time.perf_counter() - start)
    return out


def auto_choice(trained, samples: int, frames: int, runtime: str) -> tuple[str, str, str]:
    """``(precision, runtime label, why)`` that ``auto`` picks for this pass with ``MAS_DENOISER_RUNTIME=runtime``."""
    with mock.patch.dict(os.environ, {RUNTIME_ENV: runtime}):
        _, used, reason = checked_precision(trained, "auto", pass_tokens(trained, samples, frames, VIEWS))
        ran = denoiser_runtime(trained.device, used)[0]
    return used, LABELS[ran], reason


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=None, help="workspace holding the benchmark model's checkpoint")
    parser.add_argument("--run", default="bench-model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    if args.workspace:
        from models.checkpoint import load_trained_model
        from storage import Workspace

        bench, bench_name = load_trained_model(Workspace(args.workspace), args.run, cpu), f"{args.run} (trained)"
    else:
        bench, bench_name = model_of(BENCH, cpu), "benchmark size (random weights)"
    default = model_of(DEFAULT, cpu)
    default_name = "default size, 8 layers, 512 d"
    cases = [
        (bench_name + ", 2 layers, 128 d", bench, 64, 60),
        ("middle size, 4 layers, 256 d", model_of(MIDDLE, cpu), 32, 60),
        (default_name, default, 1, 120),
        (default_name, default, 8, 120),
    ]  # fmt: skip (MAS on a CPU passes 8 samples of this model at a time)
    command = "python -m benchmarks.bench_denoiser_runtime" + (
        f" --workspace {args.workspace} --run {args.run}" if args.workspace else ""
    ) + f" --rounds {args.rounds} --repeats {args.repeats}"  # fmt: skip
    dot, bf16 = cpu_int8_dot_product(), cpu_native_bf16()
    lines = [f"Command: `{command}`", "",
             f"This CPU: int8 dot products (VNNI/AMX) {'yes' if dot else 'no'}, native bf16 {'yes' if bf16 else 'no'}"
             f"{'' if bf16 else ' (bf16 not measured: OpenVINO refuses it here and PyTorch emulates it)'}.", "",
             "Speed-ups from the median pass of each row (a sampler repeats it thousands of times): against the same "
             "precision through PyTorch, and against fp32 through PyTorch (no quantisation, no compilation).", "",
             "| model | MAS pass (samples x 5 views x frames) | precision | runtime | pass ms (min / median / max) | "
             "speed-up, same precision | speed-up vs fp32 PyTorch | error vs fp32, this pass | "
             "error vs fp32, precision check |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    choices = []
    for name, trained, samples, frames in cases:
        rows = compare(trained, samples, frames, args.rounds, args.repeats)

        def median_ms(precision: str, runtime: str, rows=rows) -> float:
            return statistics.median(next(r for r in rows if r["precision"] == precision and r["runtime"] == runtime)
                                     ["ms"])  # fmt: skip

        fp32 = median_ms("fp32", "PyTorch")
        for row in rows:
            mine = statistics.median(row["ms"])
            lines.append(f"| {name} | {samples} x 5 x {frames} | {row['precision']} | {row['runtime']} | "
                         f"{min_median_max(row['ms'], '.1f')} | {median_ms(row['precision'], 'PyTorch') / mine:.2f}x | "
                         f"{fp32 / mine:.2f}x | {row['error']:.2%} | {row['check']:.2%} |")  # fmt: skip
        best = min(rows, key=lambda r: statistics.median(r["ms"]))
        for label, env in {"auto (default)": "auto", **RUNTIMES}.items():
            used, ran, why = auto_choice(trained, samples, frames, env)
            choices.append(f"| {name} | {samples} x 5 x {frames} | {label} | {used} through {ran} | "
                           f"{fp32 / median_ms(used, ran):.2f}x | {best['precision']} through {best['runtime']}, "
                           f"{fp32 / statistics.median(best['ms']):.2f}x | {why} |")  # fmt: skip
    lines += ["", "What `auto` picks under each MAS_DENOISER_RUNTIME (after its check against fp32), its speed-up over "
              "fp32 through PyTorch, and the fastest row measured above:", "",
              "| model | MAS pass | MAS_DENOISER_RUNTIME | auto picks | speed-up vs fp32 PyTorch | fastest measured | "
              "why |", "| --- | --- | --- | --- | --- | --- | --- |", *choices, ""]  # fmt: skip
    lines += ["Getting the OpenVINO denoiser (seconds): converted into an empty cache, then loaded from it:", "",
              "| model | precision | cold | cached |", "| --- | --- | --- | --- |"]  # fmt: skip
    for name, trained in ((cases[0][0], bench), (cases[2][0], default)):
        for precision, (cold, cached) in conversion_seconds(trained).items():
            lines.append(f"| {name} | {precision} | {cold:.1f} | {cached:.2f} |")
    write_result("denoiser_runtime" + cpu_kind_suffix(),
                 "The denoiser through PyTorch and through OpenVINO" + ("" if dot else ", on a CPU without int8 dot "
                 "products"), "\n".join(lines))  # fmt: skip


if __name__ == "__main__":
    main()
