"""Diagnostic for bench_pose2d: how much of each view's constant error is one 2D shift shared by all its joints.

Each view's joints are compared with the triangulation of the other three views (the last row's poses, as
bench_pose2d measures them). A shift common to all joints and frames of a view is geometry (calibration, cropping),
not pose; what is left per joint is the pose model's own bias. Prints per view, then the error once every view is
moved by its own shift. Needs bench_pose2d's workspace (poses cached there).

python -m benchmarks.pose2d_view_shifts [--workspace /tmp/pose-exp/bench-ws] [--offsets 0,0,5,0]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from benchmarks.bench_pose2d import ROWS, measure, pose2sim_views, run_row, shift_views
from pipeline import assets
from pipeline.config import PoseConfig
from pipeline.multiview import project, reprojection_error
from storage import Workspace


def view_shifts(P: np.ndarray, kp: np.ndarray, threshold: float) -> list[tuple[np.ndarray, float, float]]:
    """Per view: its global shift [2] (median over joints of the per-joint median offset against the other views'
    triangulation), the median per-joint offset length, and that length once the shift is removed."""
    points, conf = np.moveaxis(kp[..., :2], 0, 2), np.moveaxis(kp[..., 2], 0, 2)
    weights = np.where(conf >= threshold, conf, 0.0)
    out = []
    for v in range(len(kp)):
        others = weights.copy()
        others[..., v] = 0.0
        X, _ = reprojection_error(P, points, others)
        diff = points[:, :, v] - project(P, X)[:, :, v]
        diff[weights[..., v] == 0] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_joint = np.nanmedian(diff, 0)
            shift = np.nanmedian(per_joint, 0)
            out.append((shift, float(np.nanmedian(np.linalg.norm(per_joint, axis=-1))),
                        float(np.nanmedian(np.linalg.norm(per_joint - shift, axis=-1)))))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--offsets", default="0,0,5,0", help="frame offsets of the views (bench_pose2d prints them)")
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args()
    ws = Workspace(args.workspace or assets.cache_dir() / "bench-pose2d-ws")
    P, ids, frames = pose2sim_views(ws)
    _, overrides = ROWS["tracking"]
    kp, _ = run_row(ws, ids, frames, PoseConfig(backend="mediapipe", **overrides))
    kp = shift_views(kp, [int(x) for x in args.offsets.split(",")])
    shifts = view_shifts(P, kp, args.threshold)
    moved = kp.copy()
    for v, (shift, offset, rest) in enumerate(shifts):
        print(f"view {v + 1}: shift ({shift[0]:.1f}, {shift[1]:.1f}) px; per-joint offset {offset:.1f} px, "
              f"{rest:.1f} px without the shift")  # fmt: skip
        moved[v, ..., :2] -= shift
    before, after = measure(P, kp, args.threshold), measure(P, moved, args.threshold)
    print(
        f"median / p90: {before['median']:.1f} / {before['p90']:.1f} px as posed, "
        f"{after['median']:.1f} / {after['p90']:.1f} px with each view moved by its shift"
    )


if __name__ == "__main__":
    main()
