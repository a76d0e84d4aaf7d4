"""The pose stage's per-track clean-up: left/right swap repair, outlier rejection, confidence-weighted smoothing."""

import warnings

import numpy as np
import pandas as pd

from pipeline.config import PoseConfig
from pipeline.pose import merge_flipped
from pipeline.pose_refine import refine_poses, reject_outliers, repair_swaps, smooth_confident
from pipeline.skeletons import COCO17
from storage.tables import keypoints_of, poses_frame


def walking_track(frames: int = 60, seed: int = 0, noise: float = 1.0) -> np.ndarray:
    """A person facing the camera walking right: left joints on the image's right (x larger), small noise."""
    rng = np.random.default_rng(seed)
    base = np.zeros((17, 2))
    for j, name in enumerate(COCO17.joints):
        side = 1.0 if name.startswith("left") else -1.0 if name.startswith("right") else 0.0
        width = 40.0 if any(k in name for k in ("shoulder", "elbow", "wrist")) else 25.0
        height = {"eye": 20, "ear": 25, "nose": 15, "shoulder": 80, "elbow": 160, "wrist": 230, "hip": 250,
                  "knee": 370, "ankle": 480}[name.split("_")[-1]]  # fmt: skip
        base[j] = (300 + side * width, 100 + height)
    t = np.arange(frames)[:, None, None]
    xy = base[None] + np.concatenate([2.0 * t, np.zeros_like(t)], -1) + rng.normal(0, noise, (frames, 17, 2))
    return np.concatenate([xy, np.full((frames, 17, 1), 0.95)], -1)


def test_whole_body_flip_for_a_stretch_of_frames_is_undone():
    truth = walking_track()
    flipped = truth.copy()
    flipped[20:35] = truth[20:35][:, COCO17.mirror_permutation]  # 15 frames labelled the wrong way round
    flipped[50, [9, 10]] = truth[50, [10, 9]]  # one frame with only the wrists swapped
    repaired, changed = repair_swaps(flipped, np.arange(60), COCO17)
    np.testing.assert_allclose(repaired, truth)
    assert changed == 15 * 8 + 1
    untouched, none = repair_swaps(truth, np.arange(60), COCO17)
    np.testing.assert_allclose(untouched, truth)
    assert none == 0


def test_most_frames_decide_which_labelling_is_right():
    truth = walking_track()
    mostly_flipped = truth[:, COCO17.mirror_permutation].copy()
    mostly_flipped[:10] = truth[:10]  # the first 10 frames are the odd ones out: they get relabelled
    repaired, _ = repair_swaps(mostly_flipped, np.arange(60), COCO17)
    np.testing.assert_allclose(repaired, truth[:, COCO17.mirror_permutation])


def test_a_far_off_joint_loses_its_confidence_and_smoothing_follows_confident_frames():
    track = walking_track()
    track[30, 9, :2] += 150.0  # a wrist 150 px off for one frame
    rejected, count = reject_outliers(track, np.arange(60))
    assert count == 1 and rejected[30, 9, 2] == 0.0 and (rejected[..., 2] > 0).sum() == 60 * 17 - 1
    np.testing.assert_allclose(rejected[..., :2], track[..., :2])  # positions stay; the confidence says unusable
    smooth = smooth_confident(rejected, np.arange(60), fps=60.0, sigma_s=0.05)
    assert smooth[30, 9, 2] == 0.0 and np.allclose(smooth[30, 9, :2], track[30, 9, :2])  # unsure joints untouched
    clean = walking_track(noise=0.0)[..., :2]
    body = [j for j in range(17) if j != 9]
    error_before = np.abs(track[5:-5, body, :2] - clean[5:-5, body]).mean()
    error_after = np.abs(smooth[5:-5, body, :2] - clean[5:-5, body]).mean()
    assert error_after < 0.5 * error_before  # noise averaged out, the straight walk followed without lag


def test_refine_poses_works_per_track_and_leaves_the_table_shape():
    a, b = walking_track(40), walking_track(40, seed=3)
    b[..., 0] += 400
    a_flipped = a.copy()
    a_flipped[10:20] = a[10:20][:, COCO17.mirror_permutation]
    frames = np.concatenate([np.arange(40), np.arange(40)])
    table = poses_frame("v", frames, np.repeat([1, 2], 40), np.zeros((80, 4)), np.concatenate([a_flipped, b]),
                        COCO17.joints)  # fmt: skip
    table = table.sample(frac=1.0, random_state=0)  # row order must not matter
    out, counts = refine_poses(table, COCO17, PoseConfig(backend="mediapipe", reject_outliers=False, smooth_s=0.0),
                               fps=30.0)  # fmt: skip
    assert counts["swaps_repaired"] == 10 * 8 and len(out) == 80
    for track_id, truth in ((1, a), (2, b)):
        rows = out[out["track_id"] == track_id].sort_values("frame")
        np.testing.assert_allclose(keypoints_of(rows, COCO17.joints), truth, rtol=1e-5, atol=1e-3)
    same, _ = refine_poses(table, COCO17, PoseConfig(backend="mediapipe", repair_swaps=False, reject_outliers=False,
                                                     smooth_s=0.0), fps=30.0)  # fmt: skip
    pd.testing.assert_frame_equal(same, table)


def test_flip_test_merge_relabels_a_mirrored_estimate():
    a = walking_track(1)[0]
    b = a[COCO17.mirror_permutation].copy()  # the mirrored crop saw the body facing the other way
    b[:, :2] += 2.0
    merged = merge_flipped(a, b)
    np.testing.assert_allclose(merged[:, :2], a[:, :2] + 1.0, atol=1e-4)


def _outliers_frame_by_frame(kp, frames, threshold=0.3, window=7, n_sigmas=4.0, min_deviation=0.05):
    """The definition of reject_outliers written as a loop over frames: the reference its arrays must equal."""
    from pipeline.pose_refine import _scale

    size = _scale(kp, threshold)
    ok = (kp[..., 2] >= threshold) & np.isfinite(kp[..., :2]).all(-1)
    xy = np.where(ok[..., None], kp[..., :2], np.nan)
    outlier = np.zeros(ok.shape, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in range(len(kp)):
            near = np.flatnonzero((np.abs(frames - frames[t]) <= window // 2) & (np.arange(len(kp)) != t))
            if len(near) < 2:
                continue
            med = np.nanmedian(xy[near], 0)
            mad = 1.4826 * np.nanmedian(np.abs(xy[near] - med), 0)
            body = size[t] if np.isfinite(size[t]) else np.nanmedian(size)
            limit = np.maximum(n_sigmas * np.linalg.norm(mad, axis=-1), min_deviation * body)
            outlier[t] = ok[t] & np.isfinite(med).all(-1) & (np.linalg.norm(xy[t] - med, axis=-1) > limit)
    return outlier


def test_outlier_rejection_equals_its_frame_by_frame_definition_with_gaps_repeats_and_any_order():
    rng = np.random.default_rng(0)
    found = 0
    for trial in range(60):
        n = int(rng.integers(3, 60))
        frames = np.sort(rng.choice(150, n, replace=False)) if trial % 3 else np.sort(rng.integers(0, 40, n))
        frames = rng.permutation(frames) if trial % 4 == 0 else frames
        kp = rng.normal(size=(n, 17, 3)) * 40 + 300
        kp[..., 2] = rng.random((n, 17))
        kp[rng.random((n, 17)) < 0.1, :2] = np.nan
        kp[rng.random((n, 17)) < 0.05, :2] += 1000.0
        rejected, count = reject_outliers(kp, frames)
        expected = _outliers_frame_by_frame(kp, frames)
        assert count == expected.sum()
        np.testing.assert_array_equal(rejected[..., 2], np.where(expected, 0.0, kp[..., 2]))
        found += count
    assert found > 20  # the random tracks do have outliers to find
