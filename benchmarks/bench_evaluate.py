"""How long the trusted evaluation takes on this machine, against the code before the speed work, in one run.

Two parts (``benchmarks/results/evaluation_speed.md``):

1. **Sampling throughput** (in this process, interleaved rounds after a warm-up): MAS and SDS with every sample in one
   denoiser pass (the code before: ``chunk = S``) against passes of 320 motions (the CPU default, see
   :data:`models.mas.CPU_PASS_ELEMENTS`); plain 2D sampling in fp32, batches of 256 (before) against the checked
   precision (bf16 where native) in passes of 256. Seconds per sample are scaled to 100 steps (SDS: per iteration);
   every step of a sampler costs the same, so fewer measured steps change nothing but the noise. Both sides share
   this process's malloc settings (:mod:`models.allocator`, applied by the first sampling call), so part 1 isolates
   the pass size and precision; ``bench_allocator`` measures the allocator on its own.
2. **The evaluation stage** (``run_evaluation`` on one evaluated sample set, everything but sampling that set): the
   code at ``--baseline-rev`` (a git worktree, in a subprocess) and this checkout (another subprocess), one after the
   other, same workspace, same cached evaluator, same arguments.

Run (the procedural benchmark's workspace, model and evaluator; see mas_3d_benchmark.md)::

    python -m benchmarks.bench_evaluate --workspace /tmp/b3d/ws --run bench-model --n 1000 --repeats 10
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch

from benchmarks.common import ROOT, git_worktree, min_median_max, run_in_tree, write_result

EVALUATOR_ARGS = "num_joints=1, num_layers=2, latent_dim=128, ff_size=512"

STAGE_SCRIPT = """
import json, time
from models.evaluator import EvaluatorConfig
from pipeline.evaluate_stage import run_evaluation
from storage import Workspace
ws = Workspace({ws!r})
start = time.perf_counter()
result = run_evaluation(ws, {run!r}, {name!r}, [{samples!r}], length={length}, n={n}, repeats={repeats},
                        evaluator=EvaluatorConfig({evaluator}), evaluator_max_steps=2000, sds_baseline=False,
                        progress=False)
print("RESULT", json.dumps({{"seconds": time.perf_counter() - start,
                            "fid": result.table.set_index(["method", "view"])["fid"].to_dict().__repr__()}}))
"""


def sampling_part(ws, run: str, samples: int, steps: int, rounds: int) -> list[str]:
    from models.allocator import keep_freed_memory
    from models.checkpoint import load_trained_model
    from models.mas import MASConfig, mas_sample
    from models.precision import checked_precision
    from models.sampling import sample_2d
    from models.sds import SDSConfig, sds_sample

    trained = load_trained_model(ws, run, torch.device("cpu"))
    fast, precision, _ = checked_precision(trained, "auto")
    length = trained.model.config.max_len
    mas, sds = MASConfig(steps=steps), SDSConfig(iterations=steps)
    cases = {  # name: (before, now); each a callable sampling `samples` motions
        "MAS (5 views)": (lambda: mas_sample(fast, samples, length, mas, chunk=samples),
                          lambda: mas_sample(fast, samples, length, mas)),
        "SDS": (lambda: sds_sample(fast, samples, length, sds, chunk=samples),
                lambda: sds_sample(fast, samples, length, sds)),
        "plain 2D": (lambda: sample_2d(trained, samples, length, steps=steps),
                     lambda: sample_2d(fast, samples, length, steps=steps)),
    }  # fmt: skip
    for before, now in cases.values():  # warm-up
        before(), now()
    times = {name: ([], []) for name in cases}
    for _ in range(rounds):
        for name, pair in cases.items():
            for slot, fn in enumerate(pair):
                start = time.perf_counter()
                fn()
                times[name][slot].append((time.perf_counter() - start) / samples * (100 / steps))
    lines = [f"Model `{run}` ({trained.model.config.num_layers} layers, {trained.model.config.latent_dim} d), "
             f"{samples} samples of {length} frames per call, {steps} steps (SDS: iterations) measured and scaled to "
             f"100, {rounds} interleaved rounds after a warm-up, precision now: {precision} (before: MAS and SDS "
             "the same, plain 2D fp32); both sides with this process's malloc settings "
             f"({keep_freed_memory()}).", "",
             "| sampler | before: s per sample (min / median / max) | now | speed-up (medians) |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for name, (before, now) in times.items():
        ratio = statistics.median(before) / statistics.median(now)
        lines.append(f"| {name} | {min_median_max(before, '.4g')} | {min_median_max(now, '.4g')} | {ratio:.2f}x |")
    return lines


def stage_part(ws, run: str, samples: str, n: int, repeats: int, length: int, baseline_rev: str) -> list[str]:
    out = {}
    with git_worktree(baseline_rev) as worktree:
        for label, tree in (("before", worktree), ("now", ROOT)):
            script = STAGE_SCRIPT.format(ws=str(ws.root), run=run, name=f"bench-eval-speed-{label}", samples=samples,
                                         length=length, n=n, repeats=repeats, evaluator=EVALUATOR_ARGS)  # fmt: skip
            out[label] = run_in_tree(tree, script, f"{label} evaluation")
            print(label, out[label]["seconds"], flush=True)
    before, now = out["before"]["seconds"], out["now"]["seconds"]
    return [f"`run_evaluation` at n = {n}, {repeats} repeats, length {length}, one evaluated set `{samples}`, the SDS "
            f"reference off (it is a sample set of its own: part 1 gives its rate); the cached 2-layer evaluator. "
            f"Before: the code at {baseline_rev}; now: this checkout.", "",
            "| code | wall time (s) |", "| --- | --- |", f"| before ({baseline_rev}) | {before:.1f} |",
            f"| now | {now:.1f} |", "", f"Speed-up: {before / now:.2f}x", "",
            "FID per row, before and now (same evaluator; the draws differ: now each pool motion has one camera per "
            f"view mode):\n\n- before: {out['before']['fid']}\n- now: {out['now']['fid']}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--run", default="bench-model")
    parser.add_argument("--samples", default="bench-eval-mas-steps20", help="evaluated MAS set (sampled if missing)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--throughput-samples", type=int, default=640)
    parser.add_argument("--throughput-steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-rev", default="b453dbc")
    parser.add_argument("--skip-stage", action="store_true")
    args = parser.parse_args()
    from models.mas import MASConfig
    from pipeline.sample_stage import run_sampling
    from storage import Workspace

    ws = Workspace(args.workspace)
    body = ["Command: `python -m benchmarks.bench_evaluate " + shlex.join(sys.argv[1:]) + "`", "",
            "## 1. Sampling throughput", ""]  # fmt: skip
    body += sampling_part(ws, args.run, args.throughput_samples, args.throughput_steps, args.rounds)
    if not args.skip_stage:
        start = time.perf_counter()
        sampled = run_sampling(ws, args.run, args.samples, num_samples=args.n * args.repeats, length=args.length,
                               mas=MASConfig(steps=20), render=0, progress=False)  # fmt: skip
        seconds = sampled.seconds if not sampled.skipped else float("nan")
        body += ["", "## 2. The evaluation stage", "",
                 f"Evaluated set `{args.samples}`: {args.n * args.repeats} MAS samples with 20 respaced steps "
                 f"(this checkout: {seconds:.0f} s to sample, {time.perf_counter() - start:.0f} s with writing; "
                 "nan: found sampled).", ""]  # fmt: skip
        body += stage_part(ws, args.run, args.samples, args.n, args.repeats, args.length, args.baseline_rev)
    write_result("evaluation_speed", "The trusted evaluation's speed on this CPU, before and after", "\n".join(body))


if __name__ == "__main__":
    main()
