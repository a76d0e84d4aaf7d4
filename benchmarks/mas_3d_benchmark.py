"""The 3D ground-truth benchmark on procedural motions: the same code as ``mas benchmark-3d`` (whole motions held
out before projection → one random view of each train motion → train → MAS and plain SDS → the full table with the
floor and the trivial baselines), with the results written to benchmarks/results/mas_3d_benchmark.md.

    python -m benchmarks.mas_3d_benchmark --workspace /tmp/bench3d          # CPU: about an hour with the defaults
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile

from benchmarks.common import write_result
from models.evaluator import EvaluatorConfig
from models.trainer import TrainConfig
from pipeline.benchmark3d import BenchmarkSpec, run_benchmark_3d
from pipeline.sample_stage import ABLATIONS
from storage import Workspace

# The paper's Table 3 (NBA, seed/mas_supplementary.md), beside ours: FID, diversity, precision, recall
PAPER_TABLE_3 = """| paper row (NBA) | FID | diversity | precision | recall |
| --- | --- | --- | --- | --- |
| ground truth | 1.05 | 8.97 | 0.73 | 0.73 |
| #views=2 (120°) | 5.17 | 9.86 | 0.42 | 0.77 |
| #views=3 | 4.01 | 9.55 | 0.53 | 0.70 |
| #views=5 (ours) | 3.92 | 9.47 | 0.56 | 0.67 |
| #views=9 | 3.94 | 9.48 | 0.56 | 0.67 |
| #views=21 | 3.94 | 9.48 | 0.56 | 0.67 |
| camera dist=2 m | 7.59 | 9.36 | 0.46 | 0.46 |
| camera dist=3 m | 4.78 | 9.45 | 0.53 | 0.63 |
| camera dist=5 m | 3.99 | 9.47 | 0.57 | 0.67 |
| camera dist=7 m (ours) | 3.92 | 9.47 | 0.56 | 0.67 |
| camera dist=11 m | 4.04 | 9.48 | 0.55 | 0.66 |
| camera dist=30 m | 4.29 | 9.49 | 0.55 | 0.65 |
| diff steps=20 | 5.14 | 9.04 | 0.68 | 0.42 |
| diff steps=50 | 5.49 | 8.99 | 0.68 | 0.36 |
| diff steps=100 (ours) | 3.92 | 9.47 | 0.56 | 0.67 |
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", default=None, help="keep results here (default: a temporary folder)")
    parser.add_argument("--motions", type=int, default=6000, help="procedural motions (20%% held out as test)")
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--prediction", default="x0", choices=["x0", "v"], help="what the denoiser predicts")
    parser.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"])
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up (cosine: 5%% of --steps is usual)")
    parser.add_argument("--result", default="mas_3d_benchmark", help="result file (benchmarks/results/NAME.md)")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0, help="procedural motions, split and training seed")
    parser.add_argument("--n", type=int, default=1000, help="motions per draw")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sds-iterations", type=int, default=500)
    parser.add_argument("--evaluator-layers", type=int, default=6)
    parser.add_argument("--evaluator-dim", type=int, default=256)
    parser.add_argument("--evaluator-ff", type=int, default=1024)
    parser.add_argument("--evaluator-steps", type=int, default=20000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sample-only", action="store_true", help="stop after sampling (a later call reuses them)")
    parser.add_argument("--precision", default="auto", help="sampling precision (auto: the fastest native one)")
    parser.add_argument("--rigid-bones", action="store_true", help="also score MAS with fixed bone lengths")
    parser.add_argument("--ablations", default="", help="comma-separated Table 3 rows (or 'all'): results go to "
                        "benchmarks/results/mas_3d_ablations.md instead")  # fmt: skip
    args = parser.parse_args()
    ws = Workspace(args.workspace or tempfile.mkdtemp(prefix="mas-bench-"))
    train = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, num_layers=args.layers,
                        latent_dim=args.latent_dim, ff_size=2 * args.latent_dim, dropout=0.1,
                        save_every=max(args.steps // 10, 1), log_every=100, ema_decay=args.ema_decay,
                        prediction=args.prediction, lr_schedule=args.lr_schedule,
                        warmup_steps=args.warmup_steps)  # fmt: skip
    evaluator = EvaluatorConfig(num_joints=1, num_layers=args.evaluator_layers, latent_dim=args.evaluator_dim,
                                ff_size=args.evaluator_ff)  # fmt: skip
    ablations = tuple(ABLATIONS) if args.ablations == "all" else tuple(filter(None, args.ablations.split(",")))
    spec = BenchmarkSpec(name="bench", procedural=args.motions, length=args.length, train=train, n=args.n,
                         repeats=args.repeats, sds_iterations=args.sds_iterations, evaluator=evaluator,
                         evaluator_max_steps=args.evaluator_steps, device=args.device, precision=args.precision,
                         rigid_bones=args.rigid_bones, ablations=ablations, seed=args.seed)  # fmt: skip
    result = run_benchmark_3d(ws, spec, sample_only=args.sample_only)
    if result is None:
        return
    command = "python -m benchmarks.mas_3d_benchmark " + shlex.join(sys.argv[1:])
    title = "MAS vs SDS on the procedural 3D benchmark, with floors and trivial baselines"
    if ablations:
        title = "Table 3 ablations of MAS on the procedural 3D benchmark, with floors and trivial baselines"
    write_result("mas_3d_ablations" if ablations else args.result, title,
                 f"Command: `{command}`\n\n{result.report}\nWorkspace: {ws.url}\n"
                 + (f"\n### The paper's Table 3 (NBA; ± omitted)\n\n{PAPER_TABLE_3}" if ablations else ""))  # fmt: skip


if __name__ == "__main__":
    main()
