"""MAS with fewer respaced steps, or through another denoiser runtime, against the model's own steps through
PyTorch, scored side by side by the trusted evaluation (issue 20 item 5: "fewer respaced steps that the evaluation
cannot tell apart from today's", and the OpenVINO runtime at equal quality).

Every sample set comes from one trained run (``n x repeats`` samples each, the same seed), one per step count and
runtime (``MAS_DENOISER_RUNTIME``; PyTorch sets keep their old names, others end in ``-<runtime>``), and one
``run_evaluation`` call scores them beside the floors, the trivial rows and the plain 2D row; the SDS row is left out
(part 1 of ``evaluation_speed.md`` gives its rate; it does not change with the steps). Sampling wall time is measured
per set.

python -m benchmarks.mas_steps_compare --workspace /tmp/b3d/ws --run bench-model --n 1000 --repeats 5
python -m benchmarks.mas_steps_compare --workspace /tmp/b3d/ws --steps 100,75 --runtimes torch,openvino
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import sys

from benchmarks.common import write_result
from models.evaluator import EvaluatorConfig
from models.mas import MASConfig
from models.openvino_denoiser import RUNTIME_ENV, RUNTIMES
from pipeline.evaluate_stage import markdown_report, run_evaluation
from pipeline.sample_stage import run_sampling
from storage import Workspace


def ran_by(reason: str) -> str:
    """The runtime a sample set's recorded precision reason names (sets sampled before runtimes were recorded ran
    through PyTorch)."""
    return reason.split("; run by ", 1)[1].split("; ")[0] if "; run by " in reason else "PyTorch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--run", default="bench-model",
                        help="trained run; comma-separated runs of one dataset are sampled alike and scored together "
                             "(the first one's plain 2D row is the reference)")  # fmt: skip
    parser.add_argument("--steps", default="100,50", help="comma-separated respaced step counts (first: today's)")
    parser.add_argument("--runtimes", default="torch", help="comma-separated denoiser runtimes (MAS_DENOISER_RUNTIME)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--evaluator-layers", type=int, default=2)
    parser.add_argument("--evaluator-dim", type=int, default=128)
    parser.add_argument("--evaluator-ff", type=int, default=512)
    parser.add_argument("--evaluator-steps", type=int, default=2000)
    args = parser.parse_args()
    ws = Workspace(args.workspace)
    total = args.n * args.repeats
    runtimes = args.runtimes.split(",")
    if unknown := set(runtimes) - set(RUNTIMES):
        parser.error(f"unknown runtimes {sorted(unknown)}; use {', '.join(RUNTIMES)}")
    names, seconds = [], {}
    runs = args.run.split(",")
    for run, runtime, steps in itertools.product(runs, runtimes, (int(s) for s in args.steps.split(","))):
        name = f"{run}-n{total}-steps{steps}" + ("" if runtime == "torch" else f"-{runtime}")
        os.environ[RUNTIME_ENV] = runtime
        result = run_sampling(ws, run, name, num_samples=total, length=args.length, mas=MASConfig(steps=steps),
                              render=0, progress=False)  # fmt: skip
        names.append(name)
        seconds[name] = ("found sampled" if result.skipped else f"{result.seconds:.0f} s") + (
            f" ({result.precision}, {ran_by(result.precision_reason)})"
        )
    evaluator = EvaluatorConfig(num_joints=1, num_layers=args.evaluator_layers, latent_dim=args.evaluator_dim,
                                ff_size=args.evaluator_ff)  # fmt: skip
    evaluation = run_evaluation(ws, runs[0], f"{runs[0]}-steps-compare", names, length=args.length, n=args.n,
                                repeats=args.repeats, evaluator=evaluator, evaluator_max_steps=args.evaluator_steps,
                                sds_baseline=False, progress=False)  # fmt: skip
    body = [f"Command: `python -m benchmarks.mas_steps_compare {shlex.join(sys.argv[1:])}`", "",
            ("Runs " if len(runs) > 1 else "Run ") + ", ".join(f"`{r}`" for r in runs)
            + f"; {total} MAS samples per set (5 views, seed 0), sampling time (precision, runtime): "
            + ", ".join(f"`{k}` {v}" for k, v in seconds.items()) + ".", "",
            markdown_report(evaluation.table, evaluation.warnings)]  # fmt: skip
    steps = "" if args.steps == "100,50" else "_steps" + args.steps.replace(",", "-")  # the first file's name kept
    steps += "" if args.runtimes == "torch" else "_runtimes-" + args.runtimes.replace(",", "-")
    steps += "" if len(runs) == 1 else "_runs-" + "-".join(runs)
    write_result(f"mas_steps_compare{steps}_n{args.n}x{args.repeats}", "MAS respaced steps and denoiser runtimes "
                 "against the model's own steps, scored side by side", "\n".join(body))  # fmt: skip


if __name__ == "__main__":
    main()
