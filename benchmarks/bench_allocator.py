"""glibc's default malloc against :func:`models.allocator.keep_freed_memory`, for the work that waits on the CPU.

Each call runs in a fresh process (``MAS_KEEP_FREED_MEMORY=0``: glibc's defaults; otherwise the settings the stages
apply), with the same torch thread count, and reports its wall time, minor page faults and peak memory; rounds
interleave the two. Workloads:
- MAS with the procedural benchmark's checkpoint (``--workspace``, run ``bench-model``: 2 layers, 128 d, 60 frames),
  ``--batch`` samples at 20 respaced steps, in ``auto``'s precision for the call's passes;
- plain 2D sampling with the same checkpoint, 4x the samples, 20 steps;
- MAS with the default model's size (8 layers, 512 d, 120 frames, random weights), one sample, 10 steps;
- training a model of the benchmark's size on a procedural dataset (60 steps of batch 64, 60 frames);
- ``run_evaluation`` of an existing sample set of that run (``--eval-set``) at n = 500 x 4 repeats without the SDS row;
  one warm-up call first keeps its evaluator and plain 2D row, so both settings time the evaluation proper.
Writes ``benchmarks/results/allocator.md``.

    python -m benchmarks.bench_allocator --workspace /tmp/b3d/ws [--rounds 3] [--eval-set bench-model-n5000-steps75]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys

import torch

from benchmarks.bench_evaluate import EVALUATOR_ARGS
from benchmarks.common import ROOT, min_median_max, run_in_tree, write_result

PRELUDE = """
import json, resource, time, torch
torch.set_num_threads({threads})
from models.allocator import keep_freed_memory
state = keep_freed_memory()
from storage import Workspace
"""
REPORT = """
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT", json.dumps({"seconds": seconds, "faults": usage.ru_minflt, "peak_mb": usage.ru_maxrss / 1024,
                          "state": state}))
"""
CHECKPOINT = """
from models.checkpoint import load_trained_model
from models.mas import pass_tokens
from models.precision import checked_precision
trained = load_trained_model(Workspace({workspace!r}), "bench-model", "cpu")
"""
WORKLOADS = {
    "MAS, benchmark model, {batch} samples x 20 steps": CHECKPOINT
    + """
from models.mas import MASConfig, mas_sample
fast, _, _ = checked_precision(trained, "auto", pass_tokens(trained, {batch}, 60, 5))
mas_sample(fast, 8, 60, MASConfig(steps=2))
start = time.perf_counter()
mas_sample(fast, {batch}, 60, MASConfig(steps=20))
""",
    "plain 2D, benchmark model, {batch4} samples x 20 steps": CHECKPOINT
    + """
from models.sampling import sample_2d
fast, _, _ = checked_precision(trained, "auto", 256 * 61)
sample_2d(fast, 8, 60, steps=2)
start = time.perf_counter()
sample_2d(fast, {batch4}, 60, steps=20)
""",
    "MAS, default model size, 1 sample x 10 steps": """
from benchmarks.bench_sampling import default_model
from models.mas import MASConfig, mas_sample, pass_tokens
from models.precision import checked_precision
trained = default_model(torch.device("cpu"), max_len=120)
fast, _, _ = checked_precision(trained, "auto", pass_tokens(trained, 1, 120, 5))
mas_sample(fast, 1, 120, MASConfig(steps=2))
start = time.perf_counter()
mas_sample(fast, 1, 120, MASConfig(steps=10))
""",
    "training, benchmark model size, 60 steps of batch 64": """
import tempfile
from models.trainer import TrainConfig, train
from pipeline.synthetic import build_synthetic_dataset
ws = Workspace(tempfile.mkdtemp(prefix="bench-alloc-"))
build_synthetic_dataset(ws, "bench", num_motions=256, length=60)
cfg = dict(batch_size=64, max_len=60, latent_dim=128, ff_size=256, num_layers=2, save_every=10**9, log_every=10**9)
train(ws, "bench", "warm", TrainConfig(steps=3, **cfg), progress=False)
start = time.perf_counter()
train(ws, "bench", "timed", TrainConfig(steps=60, **cfg), progress=False)
""",
    "evaluation, n = 500 x 4 repeats, one set": """
from models.evaluator import EvaluatorConfig
from pipeline.evaluate_stage import run_evaluation
start = time.perf_counter()
run_evaluation(Workspace({workspace!r}), "bench-model", "bench-alloc-eval", [{eval_set!r}], length=60, n=500,
               repeats=4, evaluator=EvaluatorConfig({evaluator}),
               evaluator_max_steps=2000, sds_baseline=False, progress=False)
""",
}
SETTINGS = {"glibc defaults": "0", "keep freed memory": "1"}


def call(script: str, keep: str) -> dict:
    return run_in_tree(ROOT, script, f"MAS_KEEP_FREED_MEMORY={keep}", {"MAS_KEEP_FREED_MEMORY": keep})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True, help="holds the procedural benchmark's run bench-model")
    parser.add_argument("--eval-set", default="bench-model-n5000-steps75", help="a sample set of bench-model")
    parser.add_argument("--batch", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    fields = dict(
        workspace=args.workspace,
        eval_set=args.eval_set,
        batch=args.batch,
        batch4=4 * args.batch,
        evaluator=EVALUATOR_ARGS,
    )
    scripts = {name.format(**fields): PRELUDE.format(threads=args.threads) + body.format(**fields) + REPORT
               for name, body in WORKLOADS.items()}  # fmt: skip
    call(scripts["evaluation, n = 500 x 4 repeats, one set"], "1")  # warm-up: the evaluator and plain 2D row kept
    results = {(name, setting): [] for name in scripts for setting in SETTINGS}
    for round_ in range(args.rounds):
        for name, script in scripts.items():
            for setting, keep in SETTINGS.items():
                result = call(script, keep)
                results[(name, setting)].append(result)
                print(f"round {round_ + 1} {name} / {setting}: {result['seconds']:.2f} s, {result['faults']} faults, "
                      f"{result['state']}", flush=True)  # fmt: skip
    lines = [f"Command: `python -m benchmarks.bench_allocator {shlex.join(sys.argv[1:])}`", "",
             f"{args.rounds} interleaved rounds, one fresh process per call, {args.threads} torch threads each. "
             f"Kept settings: {results[(next(iter(scripts)), 'keep freed memory')][0]['state']}.", "",
             "| workload | setting | wall s (min / median / max) | minor page faults (median) | peak MB (median) | "
             "speed-up (medians) |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name in scripts:
        medians = {}
        for setting in SETTINGS:
            runs = results[(name, setting)]
            medians[setting] = statistics.median(r["seconds"] for r in runs)
            speedup = medians["glibc defaults"] / medians[setting]
            lines.append(f"| {name} | {setting} | {min_median_max([r['seconds'] for r in runs])} | "
                         f"{statistics.median(r['faults'] for r in runs):,.0f} | "
                         f"{statistics.median(r['peak_mb'] for r in runs):.0f} | {speedup:.2f}x |")  # fmt: skip
    write_result("allocator", "glibc malloc defaults against keeping freed memory", "\n".join(lines))


if __name__ == "__main__":
    main()
