"""How much int8 CPU sampling changes MAS results: the same trained model, the same seeds, fp32 vs int8 linear layers.

    python -m benchmarks.mas_3d_benchmark --workspace /tmp/bench3d ...      # once: a trained run named "bench"
    python -m benchmarks.int8_quality --workspace /tmp/bench3d [--run bench] [--samples 64]

Reports (1) the paired difference: each int8 sample against the fp32 sample drawn with the same seed and noise, in
body-height units and relative to the motions' spread; (2) the evaluation table of both sets (2D metrics from every
view and the 3D ground-truth metrics where the dataset has 3D). Writes benchmarks/results/int8_quality.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import write_result
from models.checkpoint import CHECKPOINT_NAME
from models.evaluator import EvaluatorConfig
from pipeline.evaluate_stage import markdown_report, run_evaluation
from pipeline.sample_stage import run_sampling
from storage import Workspace


def paired_difference(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Mean per-joint distance between paired motions ``[S, L, J, 3]``, absolute and relative to the spread of
    ``reference`` (RMS distance of its joints from each motion's centre)."""
    distance = np.linalg.norm(reference - other, axis=-1)  # [S, L, J]
    centred = reference - reference.mean(axis=(1, 2), keepdims=True)
    spread = float(np.sqrt((centred**2).sum(-1).mean()))
    per_sample = distance.mean(axis=(1, 2))
    return {
        "mean": float(distance.mean()),
        "median_sample": float(np.median(per_sample)),
        "worst_sample": float(per_sample.max()),
        "spread": spread,
        "relative": float(distance.mean()) / spread,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", required=True, help="workspace holding a trained run")
    parser.add_argument("--run", default="bench")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--n", type=int, default=None, help="motions per evaluation draw (default: samples / repeats)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--evaluator-steps", type=int, default=20000)
    parser.add_argument("--evaluator-layers", type=int, default=6)
    parser.add_argument("--evaluator-dim", type=int, default=256)
    parser.add_argument("--skip-evaluation", action="store_true", help="paired difference only")
    args = parser.parse_args()
    ws = Workspace(args.workspace)
    if not ws.exists(f"{ws.checkpoint_dir(args.run)}/{CHECKPOINT_NAME}"):
        parser.error(f"no checkpoint for run {args.run!r} in {args.workspace}: train one first (see above)")
    results, seconds = {}, {}
    for precision in ("fp32", "int8"):
        start = time.perf_counter()
        result = run_sampling(ws, args.run, f"{args.run}-int8check-{precision}", num_samples=args.samples,
                              length=args.length, device="cpu", precision=precision, render=0)  # fmt: skip
        results[precision], seconds[precision] = result, time.perf_counter() - start
    diff = paired_difference(results["fp32"].motions, results["int8"].motions)
    body = (
        f"Run `{args.run}` of `{args.workspace}`; {args.samples} MAS samples (5 views, T = 100), seeds and noise "
        f"identical for both precisions. Sampling time: fp32 {seconds['fp32']:.0f} s, int8 {seconds['int8']:.0f} s "
        "(includes loading and writing).\n\n"
        "Paired difference, int8 vs fp32 (data units; the synthetic data is in body heights):\n\n"
        "| mean per-joint distance | median sample | worst sample | spread of the fp32 motions | relative |\n"
        "|---|---|---|---|---|\n"
        f"| {diff['mean']:.4f} | {diff['median_sample']:.4f} | {diff['worst_sample']:.4f} | {diff['spread']:.4f} | "
        f"{100 * diff['relative']:.2f}% |\n"
    )
    if not args.skip_evaluation:
        names = [results["fp32"].name, results["int8"].name]
        evaluator = EvaluatorConfig(num_joints=1, num_layers=args.evaluator_layers, latent_dim=args.evaluator_dim,
                                    ff_size=4 * args.evaluator_dim)  # fmt: skip
        evaluation = run_evaluation(ws, args.run, f"{args.run}-int8check-eval", names, length=args.length,
                                    n=args.n or args.samples // args.repeats, repeats=args.repeats, device="cpu",
                                    evaluator=evaluator, evaluator_max_steps=args.evaluator_steps,
                                    progress=False)  # fmt: skip
        body += "\nEvaluation (mean ± 95% CI over draws):\n\n" + markdown_report(evaluation.table, evaluation.warnings)
    write_result("int8_quality", "int8 vs fp32 MAS sampling on CPU", body)


if __name__ == "__main__":
    main()
