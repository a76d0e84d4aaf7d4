"""MAS with fewer respaced steps against the model's own, scored side by side by the trusted evaluation (issue 20
item 5: "fewer respaced steps that the evaluation cannot tell apart from today's").

Both sample sets come from one trained run (``n x repeats`` samples each, the same seed), and one ``run_evaluation``
call scores them beside the floors, the trivial rows and the plain 2D row; the SDS row is left out (part 1 of
``evaluation_speed.md`` gives its rate; it does not change with the steps). Sampling wall time is measured per set.

python -m benchmarks.mas_steps_compare --workspace /tmp/b3d/ws --run bench-model --n 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import shlex
import sys

from benchmarks.common import write_result
from models.evaluator import EvaluatorConfig
from models.mas import MASConfig
from pipeline.evaluate_stage import markdown_report, run_evaluation
from pipeline.sample_stage import run_sampling
from storage import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--run", default="bench-model")
    parser.add_argument("--steps", default="100,50", help="comma-separated respaced step counts (first: today's)")
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
    names, seconds = [], {}
    for steps in (int(s) for s in args.steps.split(",")):
        name = f"{args.run}-n{total}-steps{steps}"
        result = run_sampling(ws, args.run, name, num_samples=total, length=args.length, mas=MASConfig(steps=steps),
                              render=0, progress=False)  # fmt: skip
        names.append(name)
        seconds[name] = "found sampled" if result.skipped else f"{result.seconds:.0f} s"
    evaluator = EvaluatorConfig(num_joints=1, num_layers=args.evaluator_layers, latent_dim=args.evaluator_dim,
                                ff_size=args.evaluator_ff)  # fmt: skip
    evaluation = run_evaluation(ws, args.run, f"{args.run}-steps-compare", names, length=args.length, n=args.n,
                                repeats=args.repeats, evaluator=evaluator, evaluator_max_steps=args.evaluator_steps,
                                sds_baseline=False, progress=False)  # fmt: skip
    body = [f"Command: `python -m benchmarks.mas_steps_compare {shlex.join(sys.argv[1:])}`", "",
            f"Run `{args.run}`; {total} MAS samples per set (5 views, bf16 where native, seed 0), sampling time: "
            + ", ".join(f"`{k}` {v}" for k, v in seconds.items()) + ".", "",
            markdown_report(evaluation.table, evaluation.warnings)]  # fmt: skip
    steps = "" if args.steps == "100,50" else "_steps" + args.steps.replace(",", "-")  # the first file's name kept
    write_result(f"mas_steps_compare{steps}_n{args.n}x{args.repeats}", "MAS respaced steps against the model's own, "
                 "scored side by side", "\n".join(body))  # fmt: skip


if __name__ == "__main__":
    main()
