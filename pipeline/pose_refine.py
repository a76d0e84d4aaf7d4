"""Per-track clean-up of a pose model's output, inside the pose stage: left/right swap repair, per-joint outlier
rejection and confidence-aware temporal smoothing. Every step works on one track's ``[T, J, 3]`` keypoints (x, y,
conf in pixels) with its frame numbers, so gaps in a track are respected.

Measured on 4 calibrated views of one person (``benchmarks/bench_pose2d.py``): BlazePose labels the whole body the
wrong way round for tens of frames at a time (left joints on the right side), which triangulates to errors of
hundreds of pixels; such flips show as a jump of every left/right pair onto its twin's previous position.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from pipeline.config import PoseConfig
from pipeline.skeletons import Skeleton
from storage.tables import pose_columns


def _scale(kp: np.ndarray, threshold: float) -> np.ndarray:
    """Per-frame body size: the diagonal of the confident joints' extent (NaN when fewer than 2)."""
    ok = (kp[..., 2] >= threshold) & np.isfinite(kp[..., :2]).all(-1)
    xy = np.where(ok[..., None], kp[..., :2], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        extent = np.nanmax(xy, 1) - np.nanmin(xy, 1)
    return np.where(ok.sum(1) >= 2, np.linalg.norm(extent, axis=-1), np.nan)


def _pair_costs(kp: np.ndarray, pairs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For consecutive frames: the mean distance of the pairs' joints to their previous positions when both frames
    are labelled alike (``same``) or one is mirrored (``diff``), and which transitions have any joint to compare."""
    left, right = pairs[:, 0], pairs[:, 1]
    ok = (kp[:, left, 2] >= threshold) & (kp[:, right, 2] >= threshold)  # [T, P]
    both = ok[1:] & ok[:-1]
    a, b, pa, pb = kp[1:, left, :2], kp[1:, right, :2], kp[:-1, left, :2], kp[:-1, right, :2]
    same = np.linalg.norm(a - pa, axis=-1) + np.linalg.norm(b - pb, axis=-1)
    diff = np.linalg.norm(a - pb, axis=-1) + np.linalg.norm(b - pa, axis=-1)
    count = both.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        same = np.where(both, same, 0).sum(1) / (2 * count)
        diff = np.where(both, diff, 0).sum(1) / (2 * count)
    return same, diff, count > 0


def _viterbi_mirror(kp: np.ndarray, frames: np.ndarray, pairs: np.ndarray, size: np.ndarray, threshold: float,
                    max_gap: int, flip_cost: float) -> np.ndarray:  # fmt: skip
    """Which frames to mirror (for ``pairs``) so the pairs' joints move least from frame to frame (in body sizes);
    ``flip_cost`` per mirrored frame breaks ties towards the labelling as it is."""
    same, diff, comparable = _pair_costs(kp, pairs, threshold)
    comparable &= np.diff(frames) <= max_gap
    body = np.maximum(size[1:], size[:-1])
    usable = comparable & (body > 0)  # a frame pair without a body size compares nothing (no 0/0 warnings)
    same = np.divide(same, body, out=np.zeros_like(same, dtype=float), where=usable)
    diff = np.divide(diff, body, out=np.zeros_like(diff, dtype=float), where=usable)
    seen = (kp[:, pairs.ravel(), 2] >= threshold).any(1)
    n = len(kp)
    cost = np.array([0.0, flip_cost * seen[0]])
    back = np.zeros((n, 2), int)
    for t in range(1, n):
        total = cost[:, None] + np.array([[same[t - 1], diff[t - 1]], [diff[t - 1], same[t - 1]]])
        back[t] = total.argmin(0)
        cost = total.min(0) + np.array([0.0, flip_cost * seen[t]])
    state = np.zeros(n, bool)
    state[-1] = bool(cost.argmin())
    for t in range(n - 1, 0, -1):
        state[t - 1] = bool(back[t, int(state[t])])
    if state[seen].sum() * 2 > seen.sum():  # the labelling most frames had is taken as right
        state = ~state & seen
    return state & seen


def repair_swaps(kp: np.ndarray, frames: np.ndarray, skeleton: Skeleton, threshold: float = 0.3, max_gap: int = 15,
                 flip_cost: float = 1e-3, per_pair: bool = True) -> tuple[np.ndarray, int]:  # fmt: skip
    """Undo left/right label flips: first of the whole body (BlazePose's facing-direction mistakes), then of each
    left/right pair on its own (a head or a wrist flipped for a few frames).

    Each frame is kept or mirrored; the labelling chosen (Viterbi) makes the paired joints move least from frame
    to frame, in body sizes, and the labelling most frames had is taken as right. A flip shows as every left joint
    jumping onto its right twin's last position and back; joints that cross (hands, legs in a stride) move
    continuously and are left alone. Frames more than ``max_gap`` apart are not compared. Returns the keypoints and
    the number of (frame, pair) labels changed.
    """
    pairs = np.array(skeleton.mirror_pairs)
    n = len(kp)
    if n < 2 or len(pairs) == 0:
        return kp.copy(), 0
    size = _scale(kp[:, np.unique(pairs)], threshold)  # paired body joints only (never a ball)
    fallback = np.nanmedian(size) if np.isfinite(size).any() else 1.0
    size = np.where(np.isfinite(size) & (size > 0), size, fallback)
    out = kp.copy()
    mirrored = _viterbi_mirror(out, frames, pairs, size, threshold, max_gap, flip_cost)
    left, right = pairs[:, 0], pairs[:, 1]
    out[np.ix_(mirrored, np.r_[left, right])] = kp[np.ix_(mirrored, np.r_[right, left])]
    changed = int(mirrored.sum()) * len(pairs)
    if per_pair:
        for a, b in pairs:
            flip = _viterbi_mirror(out, frames, np.array([[a, b]]), size, threshold, max_gap, flip_cost)
            out[np.ix_(flip, [a, b])] = out[np.ix_(flip, [b, a])]
            changed += int(flip.sum())
    return out, changed


def reject_outliers(kp: np.ndarray, frames: np.ndarray, threshold: float = 0.3, window: int = 7,
                    n_sigmas: float = 4.0, min_deviation: float = 0.05) -> tuple[np.ndarray, int]:  # fmt: skip
    """A joint further from the median of its ``window`` neighbouring frames (itself excluded) than ``n_sigmas``
    robust deviations, and than ``min_deviation`` body sizes, is an outlier: its confidence becomes 0 (its position
    stays, never to be read as real). Neighbours are taken by frame number, so gaps are respected."""
    kp = kp.copy()
    n, joints = kp.shape[:2]
    if n < 3:
        return kp, 0
    size = _scale(kp, threshold)
    ok = (kp[..., 2] >= threshold) & np.isfinite(kp[..., :2]).all(-1)
    xy = np.where(ok[..., None], kp[..., :2], np.nan)
    half = window // 2
    order = np.argsort(frames, kind="stable")  # every frame's neighbours, as one index range of the sorted frames
    ordered = frames[order]
    lo = np.searchsorted(ordered, ordered - half, "left")
    hi = np.searchsorted(ordered, ordered + half, "right")
    index = lo[:, None] + np.arange(int((hi - lo).max()))
    valid = (index < hi[:, None]) & (index != np.arange(n)[:, None])  # itself excluded
    back = np.argsort(order)  # rows in the caller's order again
    index, valid = order[np.where(valid, index, 0)][back], valid[back]
    near = np.where(valid[..., None, None], xy[index], np.nan)  # [n, neighbours, J, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(near, 1)  # [n, J, 2]
        mad = 1.4826 * np.nanmedian(np.abs(near - med[:, None]), 1)
        body = np.where(np.isfinite(size), size, np.nanmedian(size))
    dev = np.linalg.norm(xy - med, axis=-1)
    limit = np.maximum(n_sigmas * np.linalg.norm(mad, axis=-1), min_deviation * body[:, None])
    enough = valid.sum(1) >= 2
    outlier = ok & np.isfinite(med).all(-1) & (dev > limit) & enough[:, None]
    kp[..., 2] = np.where(outlier, 0.0, kp[..., 2])
    return kp, int(outlier.sum())


def smooth_confident(kp: np.ndarray, frames: np.ndarray, fps: float, threshold: float = 0.3,
                     sigma_s: float = 0.04) -> np.ndarray:  # fmt: skip
    """Confidence-weighted temporal smoothing: each confident joint becomes a local linear fit (Gaussian in time,
    ``sigma_s`` seconds) of its confident neighbours, each weighted by its confidence, so unsure frames pull
    little and missing ones none. Joints under ``threshold`` are left as they were."""
    kp = kp.copy()
    sigma = max(sigma_s * fps, 1e-6)
    half = int(np.ceil(2.5 * sigma))
    if len(kp) < 3 or half < 1:
        return kp
    ok = (kp[..., 2] >= threshold) & np.isfinite(kp[..., :2]).all(-1)
    conf = np.where(ok, kp[..., 2], 0.0)
    xy = np.where(ok[..., None], kp[..., :2], 0.0)
    out = kp[..., :2].copy()
    for t in range(len(kp)):
        near = np.flatnonzero(np.abs(frames - frames[t]) <= half)
        dt = (frames[near] - frames[t]).astype(float)
        w = np.exp(-0.5 * (dt / sigma) ** 2)[:, None] * conf[near]  # [K, J]
        s0, s1, s2 = w.sum(0), (w * dt[:, None]).sum(0), (w * dt[:, None] ** 2).sum(0)
        m0 = (w[..., None] * xy[near]).sum(0)
        m1 = (w[..., None] * dt[:, None, None] * xy[near]).sum(0)
        det = s0 * s2 - s1**2
        with np.errstate(invalid="ignore", divide="ignore"):
            linear = (s2[:, None] * m0 - s1[:, None] * m1) / det[:, None]  # the local line's value at dt = 0
            mean = m0 / s0[:, None]
        fit = np.where((det > 1e-9 * np.maximum(s0, 1e-12) ** 2)[:, None], linear, mean)
        out[t] = np.where(ok[t][:, None], fit, out[t])
    kp[..., :2] = out
    return kp


def refine_poses(table: pd.DataFrame, skeleton: Skeleton, cfg: PoseConfig, fps: float) -> tuple[pd.DataFrame, dict]:
    """Apply the pose config's clean-up steps to every track of a poses table (body joints only; a ball joint is
    left alone). Returns the table and counts: relabelled left/right (frame, pair)s and rejected joints."""
    counts = {"swaps_repaired": 0, "outliers_rejected": 0}
    if not (cfg.repair_swaps or cfg.reject_outliers or cfg.smooth_s > 0) or len(table) == 0:
        return table, counts
    table = table.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)
    columns = pose_columns(skeleton.joints)
    body = skeleton.body_joints
    values = np.array(table[columns].to_numpy(np.float32)).reshape(len(table), skeleton.num_joints, 3)
    for _, index in table.groupby("track_id").indices.items():
        frames = table["frame"].to_numpy()[index]
        kp = values[index].astype(np.float64)
        if cfg.repair_swaps:  # mirror pairs are body joints only
            kp, n = repair_swaps(kp, frames, skeleton)
            counts["swaps_repaired"] += n
        kp = kp[:, body]
        if cfg.reject_outliers:
            kp, n = reject_outliers(kp, frames)
            counts["outliers_rejected"] += n
        if cfg.smooth_s > 0:
            kp = smooth_confident(kp, frames, fps, sigma_s=cfg.smooth_s)
        values[np.ix_(index, body)] = kp
    table[columns] = values.reshape(len(table), -1)
    return table.sort_values(["frame", "track_id"], kind="stable").reset_index(drop=True), counts
