"""Multi-view geometry on calibrated cameras: confidence-weighted DLT triangulation and reprojection, batched.

Used to measure 2D poses against each other on synchronised calibrated footage (``benchmarks/bench_pose2d.py``): a
joint seen by several cameras is triangulated with every view's rows weighted by its confidence (as Pose2Sim's
``weighted_triangulation``), then projected back into each view; the distance to the 2D estimate is the view's error.
"""

from __future__ import annotations

import numpy as np


def project(P: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``P [V, 3, 4]``, ``points [..., 3]`` → pixels ``[..., V, 2]`` (NaN for points behind a camera or NaN)."""
    homog = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], -1)
    cam = np.einsum("vij,...j->...vi", P, homog)
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = cam[..., :2] / cam[..., 2:3]
    return np.where(cam[..., 2:3] > 0, xy, np.nan)


def triangulate(P: np.ndarray, points: np.ndarray, weights: np.ndarray, min_views: int = 2) -> np.ndarray:
    """Weighted DLT: ``P [V, 3, 4]``, ``points [..., V, 2]`` pixels, ``weights [..., V]`` → ``[..., 3]``.

    Views with weight 0 or NaN coordinates do not count; fewer than ``min_views`` usable views give NaN.
    """
    points = np.asarray(points, np.float64)
    weights = np.where(np.isfinite(points).all(-1), np.nan_to_num(np.asarray(weights, np.float64)), 0.0)
    weights = np.clip(weights, 0.0, None)
    xy = np.nan_to_num(points)
    rows_x = (P[:, 0] - xy[..., 0:1] * P[:, 2]) * weights[..., None]  # [..., V, 4]
    rows_y = (P[:, 1] - xy[..., 1:2] * P[:, 2]) * weights[..., None]
    A = np.concatenate([rows_x, rows_y], -2)  # [..., 2V, 4]
    scale = np.linalg.norm(A, axis=-1, keepdims=True).max(-2, keepdims=True)
    A = A / np.where(scale > 0, scale, 1.0)  # conditioning only; the solution is unchanged
    _, _, vh = np.linalg.svd(A)
    X = vh[..., -1, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = X[..., :3] / X[..., 3:4]
    enough = (weights > 0).sum(-1) >= min_views
    return np.where(enough[..., None], out, np.nan)


def reprojection_error(P: np.ndarray, points: np.ndarray, weights: np.ndarray,
                       min_views: int = 2) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Triangulate ``points [..., V, 2]`` and return ``(X [..., 3], error [..., V])``: the pixel distance of each
    view's estimate to the reprojected point, NaN for views that did not take part (weight 0 or no estimate)."""
    X = triangulate(P, points, weights, min_views)
    err = np.linalg.norm(project(P, X) - points, axis=-1)
    used = (np.nan_to_num(np.asarray(weights, np.float64)) > 0) & np.isfinite(points).all(-1)
    return X, np.where(used, err, np.nan)
