"""Stage 4: tracked 2D poses → a confidence-weighted 2D motion dataset.

Each step is a small function with its parameters in the dataset config (``process:``):

1. :func:`tracks_from_poses`  one array per (video, track): frames ``[N]``, boxes ``[N, 4]``, keypoints ``[N, J, 3]``
2. :func:`crowd_mask`         drop tracks that spend most frames among too many overlapping tracks
3. :func:`split_track`        trim frames without a seen body at the ends; split at frame gaps and root jumps
4. :func:`resample`           to the dataset fps (linear in time; confidence: the lower neighbour), by the frames'
                              decoder timestamps when the poses have them (variable-frame-rate video)
5. :func:`hampel`             reject outliers (confidence set to 0, so the loss masks them)
6. :func:`fill_gaps`          interpolate short low-confidence gaps; confidences stay low (masked in the loss)
7. :func:`smooth`             Savitzky-Golay, Butterworth or one-euro on x, y
8. :func:`cut_clips`          cut into clips of ``clip_min_frames .. clip_max_frames``
9. filters                    implausible pose (:func:`pose_fill`, before step 3), short, low mean confidence,
                              static
10. normalise                 :func:`pipeline.cameras.normalize_2d` (shared with MAS and evaluation)
11. split by video (seeded), mirror train clips, write dataset + card

Every dropped track or clip is counted by reason in the dataset card.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.signal import butter, filtfilt, savgol_filter

from pipeline.cameras import frame_spread, normalize_2d
from pipeline.config import ProcessConfig
from pipeline.skeletons import Skeleton, mirror
from storage.tables import BOX_COLUMNS, keypoints_of


@dataclass
class Track:
    video_id: str
    track_id: int
    frames: np.ndarray  # [N] int, increasing
    boxes: np.ndarray  # [N, 4]
    keypoints: np.ndarray  # [N, J, 3] pixels (x, y, conf); NaN where unknown
    start_frame: int = 0  # first frame in the video's own frame numbering
    times: np.ndarray | None = None  # [N] seconds (decoder timestamps); None: frames / fps (constant frame rate)

    def __len__(self) -> int:
        return len(self.frames)

    def take(self, idx: slice) -> Track:
        """Frames ``idx`` of the track (their times too), starting where they start."""
        return replace(self, frames=self.frames[idx], boxes=self.boxes[idx], keypoints=self.keypoints[idx],
                       start_frame=int(self.frames[idx][0]),
                       times=None if self.times is None else self.times[idx])  # fmt: skip


def tracks_from_poses(frame: pd.DataFrame, skeleton: Skeleton) -> list[Track]:
    """Group a poses table into tracks, sorted by frame; duplicate (frame, track) rows keep the first. A ``time_s``
    column (the decoder's timestamps, written by the pose stage) becomes the tracks' ``times``."""
    if frame.empty:
        return []
    frame = frame.sort_values(["track_id", "frame"]).drop_duplicates(["track_id", "frame"])
    keypoints = keypoints_of(frame, skeleton.joints)
    boxes = frame[BOX_COLUMNS].to_numpy(np.float32)
    times = frame["time_s"].to_numpy(np.float64) if "time_s" in frame.columns else None
    tracks = []
    for track_id, rows in frame.groupby("track_id", sort=True).indices.items():
        frames = frame["frame"].to_numpy()[rows]
        tracks.append(Track(str(frame["video_id"].iat[rows[0]]), int(track_id), frames, boxes[rows],
                            keypoints[rows].copy(), int(frames[0]),
                            None if times is None else times[rows]))  # fmt: skip
    return tracks


def _overlaps(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ix = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    iy = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    return (ix > 0) & (iy > 0)


def crowd_mask(tracks: list[Track], max_overlapping: int) -> np.ndarray:
    """True for tracks that, in more than half their frames, overlap ``max_overlapping`` or more other tracks."""
    by_frame: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, track in enumerate(tracks):
        for f, box in zip(track.frames, track.boxes, strict=True):
            by_frame.setdefault(int(f), []).append((i, box))
    crowded_frames = np.zeros(len(tracks))
    for entries in by_frame.values():
        if len(entries) <= max_overlapping:
            continue
        boxes = np.stack([b for _, b in entries])
        for i, box in entries:
            overlapping = _overlaps(box, boxes).sum() - 1  # minus itself
            crowded_frames[i] += overlapping >= max_overlapping
    lengths = np.array([max(len(t), 1) for t in tracks])
    return crowded_frames / lengths > 0.5


def _root_and_size(keypoints: np.ndarray, skeleton: Skeleton, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame root position ``[N, 2]`` and body size ``[N]`` (RMS spread of confident body joints); NaN if unseen."""
    xy, conf = keypoints[..., :2], keypoints[..., 2]
    ok = (conf >= threshold) & np.isfinite(xy).all(-1)
    root_ok = ok[:, list(skeleton.root)].all(-1)
    root_xy = np.where(root_ok[:, None, None], xy[:, list(skeleton.root)], 0.0).mean(1)
    root = np.where(root_ok[:, None], root_xy, np.nan)
    body = skeleton.body_joints
    return root, frame_spread(xy[:, body], ok[:, body])


def split_track(track: Track, skeleton: Skeleton, cfg: ProcessConfig) -> list[Track]:
    """Split at frame gaps longer than ``max_gap_frames`` and where the root jumps more than ``max_jump`` body
    heights in one frame (tracking identity switches)."""
    if len(track) < 2:
        return [track]
    root, size = _root_and_size(track.keypoints, skeleton, cfg.conf_threshold)
    height = np.nanmedian(size) * 4 if np.isfinite(size).any() else np.nan
    cuts = []
    for k in range(1, len(track)):
        gap = track.frames[k] - track.frames[k - 1]
        jump = np.linalg.norm(root[k] - root[k - 1]) / height if np.isfinite(height) else np.nan
        if gap > cfg.max_gap_frames + 1 or (np.isfinite(jump) and jump > cfg.max_jump * gap):
            cuts.append(k)
    pieces, start = [], 0
    for cut in [*cuts, len(track)]:
        pieces.append(track.take(slice(start, cut)))
        start = cut
    return pieces


def trim_unseen_edges(track: Track, skeleton: Skeleton) -> Track | None:
    """Drop the leading and trailing frames in which no body joint was found at all (NaN or confidence 0: the pose
    model saw nobody); None when no frame has one. Gaps inside the track are left to :func:`fill_gaps` and the
    confidence mask, and dim tracks to the confidence filter."""
    kp = track.keypoints[:, skeleton.body_joints]
    seen = ((kp[..., 2] > 0) & np.isfinite(kp[..., :2]).all(-1)).any(-1)
    if not seen.any():
        return None
    first, last = int(np.argmax(seen)), len(seen) - int(np.argmax(seen[::-1]))
    if first == 0 and last == len(seen):
        return track
    return track.take(slice(first, last))


def pose_fill(track: Track, skeleton: Skeleton, conf_threshold: float) -> float:
    """How much of its box a track's pose spans: per frame, the larger of the confident body joints' extent over the
    box's width and over its height (either way up: a person lying down fills the box's width); the median over the
    frames with two or more such joints, NaN without any (or without boxes of positive size).

    A person fills the box (0.79-0.86 for the subject's tracks of the pose2sim recording's 4 views); a skeleton that
    the pose model "finds" on an object the detector mistook for a person does not (0.18 for the cloth on a table in
    its camera 1).
    """
    kp = track.keypoints[:, skeleton.body_joints]
    ok = (kp[..., 2] > conf_threshold) & np.isfinite(kp[..., :2]).all(-1)
    size = np.stack([track.boxes[:, 2] - track.boxes[:, 0], track.boxes[:, 3] - track.boxes[:, 1]], -1)  # [N, 2]
    usable = (ok.sum(-1) >= 2) & (size > 0).all(-1)
    if not usable.any():
        return float("nan")
    xy = np.where(ok[..., None], kp[..., :2], np.nan)[usable]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        extent = np.nanmax(xy, 1) - np.nanmin(xy, 1)  # [M, 2]
    return float(np.median((extent / size[usable]).max(-1)))


def resample(track: Track, src_fps: float, dst_fps: float) -> Track:
    """Resample to ``dst_fps`` on a regular grid (also fills missing frames); confidence takes the lower neighbour
    and frames between two observations that are not consecutive video frames get confidence 0.

    Times are the track's decoder timestamps when it has them (a variable-frame-rate video keeps its real timing),
    else frame / ``src_fps``. The result's ``frames`` are the nearest source frames in time."""
    if track.times is not None:
        t_src = np.asarray(track.times, np.float64) - float(track.times[0])
        if len(t_src) > 1 and not (np.diff(t_src) > 0).all():
            raise ValueError(f"video {track.video_id} track {track.track_id}: frame timestamps do not increase; "
                             "rerun `mas pose --force` for this video")  # fmt: skip
    else:
        t_src = (track.frames - track.frames[0]) / src_fps
    n = int(np.floor(t_src[-1] * dst_fps + 1e-9)) + 1
    t_dst = np.arange(n) / dst_fps
    kp = track.keypoints
    out = np.empty((n, kp.shape[1], 3), np.float32)
    hi = np.clip(np.searchsorted(t_src, t_dst, side="left"), 0, len(t_src) - 1)
    lo = np.clip(hi - 1, 0, len(t_src) - 1)
    exact = np.isclose(t_src[hi], t_dst)
    lo = np.where(exact, hi, lo)
    span = np.where(hi == lo, 1.0, t_src[hi] - t_src[lo])
    w = np.where(hi == lo, 0.0, (t_dst - t_src[lo]) / span)[:, None, None]
    out[..., :2] = (1 - w) * kp[lo, :, :2] + w * kp[hi, :, :2]
    far = (track.frames[hi] - track.frames[lo]) > 1  # a missing video frame between the two observations
    out[..., 2] = np.where(far[:, None], 0.0, np.minimum(kp[lo, :, 2], kp[hi, :, 2]))
    boxes = (1 - w[:, :, 0]) * track.boxes[lo] + w[:, :, 0] * track.boxes[hi]
    if track.times is None:
        frames = track.frames[0] + np.round(t_dst * src_fps).astype(int)
        return replace(track, frames=frames, boxes=boxes, keypoints=out)
    frames = np.round(np.interp(t_dst, t_src, track.frames.astype(np.float64))).astype(int)
    return replace(track, frames=frames, boxes=boxes, keypoints=out, times=t_dst + float(track.times[0]))


def hampel(track: Track, window: int = 7, n_sigmas: float = 3.0) -> tuple[Track, int]:
    """Outliers (beyond ``n_sigmas`` robust deviations from the rolling median) get confidence 0 and the median's
    position. Returns the track and the number of rejected joint positions."""
    kp = track.keypoints.copy()
    half = window // 2
    n = len(kp)
    if n < 3:
        return track, 0
    xy = kp[..., :2]
    pad = np.pad(xy, ((half, half), (0, 0), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(pad, window, axis=0)[:n]  # [N, J, 2, W]
    with warnings.catch_warnings():  # joints never seen in a window give all-NaN slices: no outlier there
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(windows, axis=-1)
        mad = 1.4826 * np.nanmedian(np.abs(windows - med[..., None]), axis=-1)
    with np.errstate(invalid="ignore"):
        outlier = (np.abs(xy - med) > n_sigmas * np.maximum(mad, 1e-6)).any(-1) & (kp[..., 2] > 0)
    kp[..., :2] = np.where(outlier[..., None], med, xy)
    kp[..., 2] = np.where(outlier, 0.0, kp[..., 2])
    return replace(track, keypoints=kp), int(outlier.sum())


def fill_gaps(track: Track, threshold: float, max_gap: int) -> Track:
    """Linearly interpolate runs of at most ``max_gap`` low-confidence frames per joint from confident neighbours.
    Confidences are left as they were, so the loss still masks what was invented."""
    kp = track.keypoints.copy()
    n = len(kp)
    for j in range(kp.shape[1]):
        ok = (kp[:, j, 2] >= threshold) & np.isfinite(kp[:, j, :2]).all(-1)
        if ok.all() or ok.sum() < 2:
            continue
        bad = np.flatnonzero(~ok)
        runs = np.split(bad, np.flatnonzero(np.diff(bad) > 1) + 1)
        good = np.flatnonzero(ok)
        for run in runs:
            if len(run) > max_gap or run[0] == 0 or run[-1] == n - 1:
                continue
            for axis in (0, 1):
                kp[run, j, axis] = np.interp(run, good, kp[good, j, axis])
    return replace(track, keypoints=kp)


def one_euro(x: np.ndarray, fps: float, min_cutoff: float = 1.0, beta: float = 0.01, d_cutoff: float = 1.0):
    """One-euro filter along axis 0."""

    def alpha(cutoff):
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau * fps)

    out = np.empty_like(x)
    out[0] = x[0]
    dx_prev = np.zeros_like(x[0])
    for i in range(1, len(x)):
        dx = (x[i] - out[i - 1]) * fps
        dx_hat = alpha(d_cutoff) * dx + (1 - alpha(d_cutoff)) * dx_prev
        cutoff = min_cutoff + beta * np.abs(dx_hat)
        a = alpha(cutoff)
        out[i] = a * x[i] + (1 - a) * out[i - 1]
        dx_prev = dx_hat
    return out


def _finite_runs(ok: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of the maximal runs of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], ok.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _smooth_series(data: np.ndarray, method: str, window: int, fps: float) -> np.ndarray:
    """Smooth ``[L, ...]`` along time (every value finite); series too short for the filter come back unchanged."""
    n = len(data)
    if method == "savgol":
        win = min(window if window % 2 else window + 1, n if n % 2 else n - 1)
        return savgol_filter(data, win, polyorder=min(2, win - 1), axis=0) if win > 2 else data
    if method == "butterworth":
        b, a = butter(2, min(0.99, 2.0 * (fps / window) / fps))
        return filtfilt(b, a, data, axis=0) if n > 3 * max(len(a), len(b)) else data
    if method == "one_euro":
        return one_euro(data, fps)
    raise ValueError(f"unknown smoothing {method!r}")


def smooth(track: Track, method: str, window: int, fps: float) -> Track:
    """Smooth x, y of every joint over time, each run of finite frames on its own (NaNs, never-seen joints, stay)."""
    if method == "none":
        return track
    if method not in ("savgol", "butterworth", "one_euro"):
        raise ValueError(f"unknown smoothing {method!r}")
    kp = track.keypoints.copy()
    finite = np.isfinite(kp[..., :2]).all(-1)  # [L, J]
    for j in range(kp.shape[1]):
        for start, stop in _finite_runs(finite[:, j]):
            if stop - start >= 4:
                kp[start:stop, j, :2] = _smooth_series(kp[start:stop, j, :2], method, window, fps)
    return replace(track, keypoints=kp)


def place_unseen_joints(xy: np.ndarray) -> np.ndarray:
    """Give joints without coordinates ``[L, J, 2]`` (NaN) a position near the body: the frame's centroid of the
    seen joints (interpolated over frames that see none) plus the joint's median offset from it over the clip (no
    offset for a joint the clip never sees). They stay masked in the loss (confidence unchanged); this only decides
    what the models are fed there, instead of a point far from a body that moved."""
    finite = np.isfinite(xy).all(-1)
    if finite.all():
        return xy
    count = finite.sum(1)
    if not count.any():
        return np.zeros_like(xy)
    seen = np.where(finite[..., None], xy, 0.0)
    centroid = seen.sum(1) / np.maximum(count, 1)[:, None]
    frames, have = np.arange(len(xy)), count > 0
    centroid = np.stack([np.interp(frames, frames[have], centroid[have, a]) for a in (0, 1)], -1)
    offsets = np.where(finite[..., None], xy - centroid[:, None], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: joints the clip never sees
        median = np.nanmedian(offsets, axis=0)
    median = np.where(np.isfinite(median), median, 0.0)
    return np.where(finite[..., None], xy, centroid[:, None] + median[None]).astype(xy.dtype)


def centre_root_per_frame(xy: np.ndarray, root: tuple[int, ...] | list[int]) -> np.ndarray:
    """Put the root at (0, 0) in every frame (the official MAS NBA layout; the trajectory is dropped)."""
    return xy - xy[:, list(root)].mean(1, keepdims=True)


def cut_clips(track: Track, min_len: int, max_len: int) -> list[Track]:
    """Consecutive pieces of ``max_len`` frames; a remainder of at least ``min_len`` frames is kept too."""
    clips = []
    for start in range(0, len(track), max_len):
        stop = min(start + max_len, len(track))
        if stop - start >= min_len:
            clips.append(track.take(slice(start, stop)))
    return clips


def motion_amount(clip: np.ndarray, threshold: float) -> float:
    """Mean over confident joints of the temporal standard deviation of normalised positions (data units)."""
    ok = clip[..., 2] >= threshold
    values = np.where(ok[..., None], clip[..., :2], np.nan)
    with warnings.catch_warnings():  # joints never confident give all-NaN columns
        warnings.simplefilter("ignore", RuntimeWarning)
        std = np.nanstd(values, axis=0)
    return float(np.nanmean(std)) if np.isfinite(std).any() else 0.0


@dataclass
class ProcessedClips:
    clips: list[np.ndarray]  # [L, J, 3] normalised x, y + original confidence
    index: pd.DataFrame
    dropped: Counter
    stats: dict


def process_tracks(
    tracks: list[Track], skeleton: Skeleton, cfg: ProcessConfig, src_fps: float, dst_fps: float
) -> ProcessedClips:
    """Run steps 2-10 on the tracks of one or more videos; returns normalised clips with index rows (no split yet)."""
    dropped: Counter = Counter()
    stats = {"outliers_rejected": 0, "tracks_in": len(tracks)}
    clips, rows = [], []
    crowded = crowd_mask(tracks, cfg.max_overlapping_tracks) if tracks else np.zeros(0, bool)
    for track, is_crowded in zip(tracks, crowded, strict=True):
        if track.keypoints.shape[1] != skeleton.num_joints:
            raise ValueError(
                f"video {track.video_id}: poses have {track.keypoints.shape[1]} joints but skeleton "
                f"{skeleton.name} has {skeleton.num_joints}; re-run pose with the right skeleton"
            )
        if is_crowded:
            dropped["crowd"] += 1
            continue
        trimmed = trim_unseen_edges(track, skeleton)
        if trimmed is None:
            dropped["never_seen"] += 1  # no frame with any body joint (the pose model found nobody in the box)
            continue
        if cfg.min_pose_fill > 0 and pose_fill(trimmed, skeleton, cfg.conf_threshold) < cfg.min_pose_fill:
            dropped["implausible_pose"] += 1  # a small skeleton inside a large box: no subject there
            continue
        for piece in split_track(trimmed, skeleton, cfg):
            piece = trim_unseen_edges(piece, skeleton)
            if piece is None or len(piece) < 2:
                dropped["too_short" if piece is not None else "never_seen"] += 1
                continue
            piece = resample(piece, src_fps, dst_fps)
            if len(piece) < cfg.min_track_frames:
                dropped["too_short"] += 1
                continue
            piece, rejected = hampel(piece)
            stats["outliers_rejected"] += rejected
            piece = fill_gaps(piece, cfg.conf_threshold, cfg.max_gap_frames)
            piece = smooth(piece, cfg.smoothing, cfg.smoothing_window, dst_fps)
            for clip in cut_clips(piece, cfg.clip_min_frames, cfg.clip_max_frames):
                conf = clip.keypoints[..., 2]
                body_conf = conf[:, skeleton.body_joints]
                if float(np.mean(body_conf)) < cfg.min_mean_conf:
                    dropped["low_confidence"] += 1
                    continue
                try:
                    xy, _, _ = normalize_2d(clip.keypoints[..., :2], conf, skeleton.root, skeleton.body_joints,
                                            cfg.conf_threshold, y_down=True)  # fmt: skip
                except ValueError:
                    dropped["no_confident_body"] += 1
                    continue
                xy = place_unseen_joints(xy)  # unseen joints: near the body, masked
                data = np.concatenate([xy, conf[..., None]], -1).astype(np.float32)
                data[..., 2] = np.where(np.isfinite(data[..., 2]), data[..., 2], 0.0)
                if motion_amount(data, cfg.conf_threshold) < cfg.min_motion:  # with the trajectory, either way
                    dropped["static"] += 1
                    continue
                if cfg.root_centring == "frame":
                    data[..., :2] = centre_root_per_frame(data[..., :2], skeleton.root)
                clips.append(data)
                rows.append({"video_id": clip.video_id, "track_id": clip.track_id, "start_frame": clip.start_frame,
                             "mean_conf": float(body_conf.mean()), "mirrored": False})  # fmt: skip
    index = pd.DataFrame(rows, columns=["video_id", "track_id", "start_frame", "mean_conf", "mirrored"])
    return ProcessedClips(clips, index, dropped, stats)


def split_by_video(video_ids: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """Assign whole videos to train/test with a fixed seed (no clip of a test video is ever trained on)."""
    unique = sorted(set(video_ids))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    n_test = int(round(test_fraction * len(unique)))
    if test_fraction > 0 and len(unique) >= 2:
        n_test = max(1, min(n_test, len(unique) - 1))
    test = {unique[i] for i in order[:n_test]}
    return {v: ("test" if v in test else "train") for v in unique}


def finalize(
    processed: ProcessedClips, skeleton: Skeleton, cfg: ProcessConfig
) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Split by video, add mirrored copies of train clips, and give every clip an id."""
    index = processed.index.copy()
    splits = split_by_video(index["video_id"].tolist(), cfg.test_fraction, cfg.seed)
    index["split"] = index["video_id"].map(splits)
    clips = list(processed.clips)
    if cfg.mirror:
        train_rows = index.index[index["split"] == "train"]
        mirrored = index.loc[train_rows].copy()
        mirrored["mirrored"] = True
        clips += [mirror(processed.clips[i], skeleton) for i in train_rows]
        index = pd.concat([index, mirrored], ignore_index=True)
    index["clip_id"] = [
        f"{v}-t{t}-f{f}{'-m' if m else ''}"
        for v, t, f, m in zip(
            index["video_id"], index["track_id"], index["start_frame"], index["mirrored"], strict=True
        )
    ]
    return clips, index
