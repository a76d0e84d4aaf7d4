"""MAS seconds per sample against today's code, in one run (issue 20, item 5).

- **today**: the code at ``--today-rev`` (c171171, the last commit before issue 20's work) in a git worktree: its
  ``auto`` precision (int8 linear layers on a CPU), every sample of a call in one denoiser pass, the model's 100 steps.
- **now, 100 steps**: this checkout: its ``auto`` precision for the call's passes after its check against fp32, as
  ``mas sample`` picks it (``models.precision``; int8 and bf16 run through OpenVINO on a CPU), passes of
  :data:`models.mas.CPU_PASS_ELEMENTS` activation elements and the closed-form planes triangulation; what Algorithm 1
  computes is unchanged (same steps, same formulas).
- **now, 100 steps, PyTorch runtime**: the same with ``MAS_DENOISER_RUNTIME=torch`` (what OpenVINO brings).
- **now, 100 steps, OpenVINO runtime**: the same with ``MAS_DENOISER_RUNTIME=openvino`` (auto's runtime before it
  sent int8 through PyTorch on CPUs without int8 dot products, ``models.openvino_denoiser.denoiser_runtime``).
- **now, 75 steps**: the same at 75 respaced steps (``mas sample --steps 75``), which the trusted evaluation could not
  tell apart from 100 (``results/mas_steps_compare_steps100-75-50_n1000x5.md``).

Every (code, setting) call runs in a fresh process with the same torch thread count; the model is loaded and warmed
up before the timed call, and rounds interleave the settings. Two models:
- ``bench-model``, the procedural benchmark's checkpoint (2 layers, 128 d, 60 frames; ``mas_3d_benchmark.md``), at
  a batch of ``--batch`` samples: the shape of an evaluation's sampling;
- the default model's size (8 layers, 512 d, 120 frames; random weights, which time does not depend on), one sample:
  the paper's Table 1 case, and a batch of 64 (10 respaced steps timed and scaled to 100: a step costs the same at
  any respacing).

    python -m benchmarks.bench_mas_speed --workspace /tmp/b3d/ws [--batch 320] [--rounds 2] [--cases bench,single,batch]

Without ``--workspace`` the benchmark model's case is left out. Results go to ``results/mas_speed.md``, or
``mas_speed_no_int8_dot.md`` on a CPU without int8 dot products (``benchmarks.common.cpu_kind_suffix``).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys

import torch

from benchmarks.common import ROOT, cpu_kind_suffix, git_worktree, min_median_max, run_in_tree, write_result

TODAY_REV = "c171171"
SCRIPT = """
import json, time, torch
torch.set_num_threads({threads})
from models.mas import MASConfig, mas_sample
from models.precision import resolve_precision, with_precision
if {workspace!r}:
    from models.checkpoint import load_trained_model
    from storage import Workspace
    trained = load_trained_model(Workspace({workspace!r}), {run!r}, "cpu")
else:
    from benchmarks.bench_sampling import default_model
    trained = default_model(torch.device("cpu"), max_len={length})
{choose}
mas_sample(fast, {batch}, {length}, MASConfig(steps=2))  # warm-up (one pass shape of the timed call)
start = time.perf_counter()
motions = mas_sample(fast, {batch}, {length}, MASConfig(steps={steps}))
seconds = time.perf_counter() - start
print("RESULT", json.dumps({{"per_sample": seconds / {batch}, "precision": precision,
                            "finite": bool(torch.isfinite(motions).all())}}))
"""
# auto as each code resolves it: today's for every pass; now's for the passes of this call (models.precision)
CHOOSE = {
    "today": 'precision = resolve_precision("auto", torch.device("cpu"))\nfast = with_precision(trained, precision)',
    "now": "from models.mas import pass_tokens\nfrom models.precision import checked_precision\n"
    'fast, precision, _ = checked_precision(trained, "auto", pass_tokens(trained, {batch}, {length}, 5))',
}
# name: (code, respaced steps run, steps the time is reported for, environment); None runs the model's own 100
TORCH = {"MAS_DENOISER_RUNTIME": "torch"}  # now's code with the denoiser through PyTorch (no OpenVINO)
OPENVINO = {"MAS_DENOISER_RUNTIME": "openvino"}  # now's code with every lower precision through OpenVINO
FULL = {"today (100 steps)": ("today", None, 100, None), "now, 100 steps": ("now", None, 100, None),
        "now, 100 steps, PyTorch runtime": ("now", None, 100, TORCH),
        "now, 100 steps, OpenVINO runtime": ("now", None, 100, OPENVINO),
        "now, 75 steps": ("now", 75, 75, None)}  # fmt: skip
# a step costs the same at any respacing, so 10 measured steps scale to 100 (for calls too long to run in full)
SCALED = {"today (100 steps)": ("today", 10, 100, None), "now, 100 steps": ("now", 10, 100, None),
          "now, 100 steps, PyTorch runtime": ("now", 10, 100, TORCH),
          "now, 100 steps, OpenVINO runtime": ("now", 10, 100, OPENVINO)}  # fmt: skip


def measure(trees: dict, case: dict, rounds: int, threads: int) -> dict[str, list[float]]:
    """Seconds per sample of every setting over ``rounds`` interleaved rounds (one fresh process per call)."""
    settings = case["settings"]
    times: dict[str, list[float]] = {name: [] for name in settings}
    for round_ in range(case.get("rounds", rounds)):
        for name, (code, steps, reported, env) in settings.items():
            choose = CHOOSE[code].format(**case)
            script = SCRIPT.format(threads=threads, steps=steps, choose=choose, **case)
            result = run_in_tree(trees[code], script, f"{name} ({case['label']})", env)
            if not result["finite"]:
                raise RuntimeError(f"{name} sampled non-finite motions")
            times[name].append(result["per_sample"] * reported / (steps or 100))
            print(f"round {round_ + 1} {case['label']} {name}: {times[name][-1]:.4f} s per sample "
                  f"({result['precision']})", flush=True)  # fmt: skip
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=None, help="workspace holding the procedural benchmark's model")
    parser.add_argument("--cases", default="bench,single,batch", help="which of bench, single and batch to run")
    parser.add_argument("--run", default="bench-model")
    parser.add_argument("--batch", type=int, default=320, help="samples per call for the benchmark model")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--single-rounds", type=int, default=7, help="rounds of the one-sample case (seconds each)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--today-rev", default=TODAY_REV)
    args = parser.parse_args()
    default = {"workspace": "", "run": "", "length": 120}
    cases = {
        "bench": {"label": f"{args.run} (2 layers, 128 d), batch {args.batch}", "workspace": args.workspace,
                  "run": args.run, "batch": args.batch, "length": 60, "settings": FULL},
        "single": {"label": "default size (8 layers, 512 d), batch 1", "batch": 1, "settings": FULL,
                   "rounds": args.single_rounds, **default},
        "batch": {"label": "default size (8 layers, 512 d), batch 64, 10 steps measured and scaled to 100",
                  "batch": 64, "settings": SCALED, **default},
    }  # fmt: skip
    wanted = args.cases.split(",")
    if unknown := set(wanted) - set(cases):
        parser.error(f"unknown cases {sorted(unknown)}; use bench, single and batch")
    if "bench" in wanted and not args.workspace:
        print("no --workspace: the benchmark model's case is left out", flush=True)
        wanted.remove("bench")
    lines = [f"Command: `python -m benchmarks.bench_mas_speed {shlex.join(sys.argv[1:])}`", "",
             f"Today: the code at {args.today_rev} (a git worktree); now: this checkout. {args.rounds} interleaved "
             f"rounds ({args.single_rounds} for one sample), one fresh process per call, {args.threads} torch "
             "threads in every process, 5 views, "
             "perspective cameras; seconds per sample (min / median / max).", ""]  # fmt: skip
    with git_worktree(args.today_rev) as today:
        trees = {"today": today, "now": ROOT}
        for case in (cases[name] for name in wanted):
            times = measure(trees, case, args.rounds, args.threads)
            base = statistics.median(times["today (100 steps)"])
            lines += [f"## {case['label']}, {case['length']} frames", "",
                      "| setting | s per sample | ratio to today (medians) |", "| --- | --- | --- |"]  # fmt: skip
            for name, values in times.items():
                lines.append(f"| {name} | {min_median_max(values, '.4g')} | {base / statistics.median(values):.2f}x |")
            lines.append("")
    title = "MAS per sample against today's code (issue 20, item 5)"
    write_result("mas_speed" + cpu_kind_suffix(), title, "\n".join(lines))


if __name__ == "__main__":
    main()
