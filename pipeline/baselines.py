"""Trivial reference motion sets that every evaluation table shows beside the real-data floor.

A metric is only worth reading if it ranks real motion above these. Each builder takes real data (3D motions where
a benchmark knows them, otherwise the 2D training clips in data units) and returns motions ``[N, L, J, 3]``:

- frozen mean pose: the average root-centred pose, repeated over time (no motion at all);
- flat lift: each 2D training clip given depth 0 (perfect 2D, no 3D);
- random-depth lift: each 2D training clip given a random depth per joint, constant over time, with the spread of
  the data's horizontal extent (3D-looking, wrong depth);
- time-shuffled: real motions with their frames in random order (right poses, no motion continuity).
"""

from __future__ import annotations

import numpy as np

from pipeline.skeletons import Skeleton


def frozen_mean_pose(motions: np.ndarray, skeleton: Skeleton, count: int) -> np.ndarray:
    """``count`` copies of the mean root-centred pose of ``motions [N, L, J, 3]``, frozen over the ``L`` frames."""
    m = np.asarray(motions, np.float64)
    centred = m - m[:, :, list(skeleton.root)].mean(2, keepdims=True)
    pose = centred.mean(axis=(0, 1))  # [J, 3]
    return np.broadcast_to(pose, (count, m.shape[1], *pose.shape)).astype(np.float32)


def flat_lift(xy: np.ndarray) -> np.ndarray:
    """2D clips ``[N, L, J, 2]`` (y up) as 3D motions with depth 0."""
    xy = np.asarray(xy, np.float32)
    return np.concatenate([xy, np.zeros(xy.shape[:-1] + (1,), np.float32)], -1)


def random_depth_lift(xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """2D clips ``[N, L, J, 2]`` with a random depth per joint and clip (constant over time), drawn with the standard
    deviation of the clips' horizontal coordinate about each frame's centroid (a body-sized depth)."""
    xy = np.asarray(xy, np.float32)
    sigma = float((xy[..., 0] - xy[..., 0].mean(-1, keepdims=True)).std())
    depth = rng.normal(0.0, sigma, (xy.shape[0], 1, xy.shape[2], 1)).astype(np.float32)
    return np.concatenate([xy, np.broadcast_to(depth, xy.shape[:-1] + (1,))], -1)


def time_shuffled(motions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each motion ``[N, L, J, C]`` with its frames in an independent random order."""
    motions = np.asarray(motions)
    order = np.argsort(rng.random(motions.shape[:2]), axis=1)  # one permutation per motion
    return np.take_along_axis(motions, order[:, :, None, None], axis=1)
