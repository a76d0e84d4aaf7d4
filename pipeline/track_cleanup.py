"""Turn a tracker's raw output into one track per subject: merge duplicate tracks, stitch tracklets, reject static ones.

The tracker (ByteTrack / BoT-SORT) gives several ids to one subject (a second box of another detector class, a lost
and re-found subject) and tracks static objects that the detector mistakes for people (floor cylinders, a ceiling
camera). Three passes over the ``tracks`` table fix that, in this order:

1. **Duplicates**: two tracks of one class whose boxes overlap (IoU above a threshold, or one box nearly inside the
   other with a smaller IoU still) in most frames of the shorter one are one subject: the weaker track's boxes in
   frames the stronger one has are dropped, the others are relabelled to the stronger track (longer, then more
   confident). Two real people overlap like that only briefly (measured: IoU never above 0.46 between the two
   subjects of the pose2sim recordings, while duplicate boxes of one subject have a median IoU of 0.65).
2. **Stitching**: a tracklet that ends and another that starts within ``stitch_max_gap`` frames, never overlapping in
   time, are one subject when the start lies where the end's motion leads (constant-velocity extrapolation, in box
   heights), the box sizes agree and, when crops were seen, their colour histograms agree; or when the second starts in
   the first one's last ``stitch_max_overlap`` frames at the same place and size (a handover between two ids). Greedy,
   cheapest link first; a track has at most one successor and one predecessor, so the pieces of a chain never overlap
   in time beyond such a handover, where the more confident box is kept.
   A short tracklet that lies inside another track's hole (frames that track misses, give or take
   ``stitch_max_overlap`` frames at the hole's edges) along that track's path is that track too: the tracker handed
   the subject to a stale or new id for a few frames (:func:`fill_holes`).
3. **Still tracks**: a track of at least ``static_min_seconds`` whose box centre barely moves over its life (robust
   span over box height) is not a moving subject (a floor cylinder, a still bystander) and is dropped; so is one that
   moves a little more but that the detector is unsure of all along (:func:`still_tracks`).

Every decision is counted (:class:`CleanupReport`), and the counts go to the track stage's catalog record.
Untracked rows (``track_id == -1``, sports balls) pass through untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import pandas as pd

from pipeline.config import TrackCleanupConfig

HIST_BINS = (8, 8)  # hue x saturation bins of the appearance histogram
_EPS = 1e-6


@dataclass
class CleanupReport:
    raw_tracks: int = 0
    tracks: int = 0
    duplicate_tracks_merged: int = 0
    duplicate_boxes_dropped: int = 0
    tracks_split: int = 0
    tracklets_stitched: int = 0
    holes_filled: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> tracks

    def as_meta(self) -> dict:
        return asdict(self)


def appearance_histogram(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Normalised hue-saturation histogram of the central part of a box (less background than the whole box)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    height, width = image.shape[:2]
    left, right = int(max(0, x1 + 0.2 * w)), int(min(width, x2 - 0.2 * w))
    top, bottom = int(max(0, y1 + 0.1 * h)), int(min(height, y2 - 0.1 * h))
    hist = np.zeros(HIST_BINS, np.float32)
    if right - left >= 2 and bottom - top >= 2:
        crop = image[top:bottom, left:right]
        step = max(1, min(crop.shape[:2]) // 48)  # a few thousand pixels are enough for a colour histogram
        hsv = cv2.cvtColor(np.ascontiguousarray(crop[::step, ::step]), cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, list(HIST_BINS), [0, 180, 0, 256])
    total = float(hist.sum())
    return (hist / total).ravel().astype(np.float32) if total > 0 else hist.ravel()


def hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance of two normalised histograms: 0 identical, 1 disjoint."""
    if a.sum() <= 0 or b.sum() <= 0:
        return 0.0  # nothing seen: no evidence either way
    return float(np.sqrt(max(0.0, 1.0 - np.sqrt(a * b).sum())))


def box_overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and containment (intersection over the smaller box) of paired boxes ``[N, 4]``."""
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou = inter / np.maximum(area_a + area_b - inter, _EPS)
    return iou, inter / np.maximum(np.minimum(area_a, area_b), _EPS)


def _strength(tracked: pd.DataFrame) -> pd.Series:
    """Order of preference between tracks: more frames first, then higher mean score."""
    stats = tracked.groupby("track_id")["score"].agg(["size", "mean"])
    return stats["size"] + stats["mean"].clip(0, 0.999)


def merge_duplicates(tracked: pd.DataFrame, cfg: TrackCleanupConfig) -> tuple[pd.DataFrame, int, int]:
    """Merge tracks that cover one subject; returns the table, tracks merged and boxes dropped."""
    if cfg.duplicate_iou is None or tracked.empty:
        return tracked, 0, 0
    cols = ["frame", "class", "track_id", "x1", "y1", "x2", "y2"]
    pairs = tracked[cols].merge(tracked[cols], on=["frame", "class"], suffixes=("_a", "_b"))
    pairs = pairs[pairs["track_id_a"] < pairs["track_id_b"]]
    if pairs.empty:
        return tracked, 0, 0
    iou, contained = box_overlap(pairs[["x1_a", "y1_a", "x2_a", "y2_a"]].to_numpy(),
                                 pairs[["x1_b", "y1_b", "x2_b", "y2_b"]].to_numpy())  # fmt: skip
    pairs = pairs.assign(
        dup=(iou >= cfg.duplicate_iou)
        | ((contained >= cfg.duplicate_containment) & (iou >= cfg.duplicate_contained_min_iou))
    )
    counts = pairs.groupby(["track_id_a", "track_id_b"])["dup"].sum()
    counts = counts[counts > 0].sort_values(ascending=False)
    lengths = tracked.groupby("track_id").size()
    strength = _strength(tracked)
    # star-shaped merges only: a track absorbed once is absorbed by nobody else and absorbs nothing, a track that
    # absorbed others is never absorbed, so a box over two people never joins them into one track
    root: dict[int, int] = {}
    for (a, b), dup in counts.items():
        a, b = int(a), int(b)
        if dup < cfg.duplicate_min_fraction * min(lengths[a], lengths[b]):
            continue
        keep, drop = (a, b) if strength[a] >= strength[b] else (b, a)
        if keep in root or drop in root or drop in root.values():
            continue
        root[drop] = keep
    if not root:
        return tracked, 0, 0
    out = tracked.assign(track_id=tracked["track_id"].map(lambda t: root.get(int(t), int(t))))
    merged = out["track_id"] != tracked["track_id"]
    # in a frame where the kept track has its own box, the absorbed track's box is the duplicate
    shadowed = merged & out.assign(own=~merged).groupby(["track_id", "frame"])["own"].transform("any")
    out = out[~shadowed]
    # two absorbed tracks may share a frame with no box of the kept one: keep the most confident box
    deduped = out.sort_values("score", ascending=False).drop_duplicates(["track_id", "frame"])
    dropped = int(shadowed.sum()) + len(out) - len(deduped)
    return deduped.sort_values(["frame", "track_id"]), len(root), dropped


@dataclass
class _Ends:
    start: int
    end: int
    first: np.ndarray  # centre x, centre y, height at the first frame
    last: np.ndarray
    v_first: np.ndarray  # centre velocity (px/frame) over the first frames
    v_last: np.ndarray
    hist_first: np.ndarray | None
    hist_last: np.ndarray | None


def _velocity(frames: np.ndarray, centres: np.ndarray) -> np.ndarray:
    if len(frames) < 2 or frames[-1] == frames[0]:
        return np.zeros(2)
    t = frames - frames.mean()
    return (t[:, None] * (centres - centres.mean(0))).sum(0) / (t**2).sum()


def _ends(rows: pd.DataFrame, hists: np.ndarray | None, window: int) -> _Ends:
    frames = rows["frame"].to_numpy()
    box = rows[["x1", "y1", "x2", "y2"]].to_numpy(float)
    state = np.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2, box[:, 3] - box[:, 1]], 1)
    head, tail = slice(0, window), slice(max(0, len(frames) - window), None)

    def mean_hist(part):
        if hists is None:
            return None
        seen = hists[part][hists[part].sum(1) > 0]
        return seen.mean(0) if len(seen) else None

    return _Ends(int(frames[0]), int(frames[-1]), np.median(state[head], 0), np.median(state[tail], 0),
                 _velocity(frames[head], state[head, :2]), _velocity(frames[tail], state[tail, :2]),
                 mean_hist(head), mean_hist(tail))  # fmt: skip


def _link_cost(a: _Ends, b: _Ends, cfg: TrackCleanupConfig) -> float | None:
    """Cost of ``b`` continuing ``a`` (``b`` starts after ``a`` ends, or in its last ``stitch_max_overlap`` frames at
    the same place: the tracker gave a re-detected subject a new id before dropping the old one), None when the link
    is implausible."""
    gap = b.start - a.end
    if gap > cfg.stitch_max_gap or gap <= -cfg.stitch_max_overlap or b.end <= a.end or b.start <= a.start:
        return None
    if gap <= 0:  # a handover: both boxes on one subject for a few frames
        height = max((a.last[2] + b.first[2]) / 2, 1.0)
        same = np.linalg.norm(b.first[:2] - a.last[:2]) / height <= min(cfg.stitch_max_distance, 0.25)
        return 0.0 if same and abs(np.log(max(b.first[2], 1.0) / max(a.last[2], 1.0))) < np.log(1.25) else None
    height = max((a.last[2] + b.first[2]) / 2, 1.0)
    if abs(np.log(max(b.first[2], 1.0) / max(a.last[2], 1.0))) > np.log(cfg.stitch_max_size_ratio):
        return None
    forward = a.last[:2] + a.v_last * gap  # where a's motion leads at b's start
    backward = b.first[:2] - b.v_first * gap  # where b came from at a's end
    still = np.linalg.norm(b.first[:2] - a.last[:2])
    distance = min(still, (np.linalg.norm(b.first[:2] - forward) + np.linalg.norm(a.last[:2] - backward)) / 2) / height
    if distance > cfg.stitch_max_distance:
        return None
    cost = distance
    if cfg.stitch_max_appearance is not None and a.hist_last is not None and b.hist_first is not None:
        colour = hist_distance(a.hist_last, b.hist_first)
        if colour > cfg.stitch_max_appearance:
            return None
        cost += colour
    return cost + 0.5 * gap / cfg.stitch_max_gap


def stitch_tracklets(
    tracked: pd.DataFrame, hists: np.ndarray | None, cfg: TrackCleanupConfig
) -> tuple[pd.DataFrame, int]:
    """Relabel tracklets that continue each other to the id of the chain's first tracklet; returns table, links."""
    if cfg.stitch_max_gap == 0 or tracked.empty:
        return tracked, 0
    tracked = tracked.reset_index(drop=True)
    ends: dict[tuple[str, int], _Ends] = {}
    for (name, track_id), rows in tracked.sort_values("frame").groupby(["class", "track_id"]):
        ends[(name, int(track_id))] = _ends(rows, None if hists is None else hists[rows.index.to_numpy()],
                                            cfg.stitch_window)  # fmt: skip
    candidates = []
    for key_a, a in ends.items():
        for key_b, b in ends.items():
            if key_a[0] == key_b[0] and key_a != key_b:
                cost = _link_cost(a, b, cfg)
                if cost is not None:
                    candidates.append((cost, key_a[1], key_b[1]))
    successor: dict[int, int] = {}
    predecessor: dict[int, int] = {}
    for _, a, b in sorted(candidates):
        if a not in successor and b not in predecessor:
            successor[a], predecessor[b] = b, a
    if not successor:
        return tracked, 0
    label = {}
    for head in (t for t in successor if t not in predecessor):
        t = head
        while t in successor:
            t = successor[t]
            label[t] = head
    out = tracked.assign(track_id=tracked["track_id"].map(lambda t: label.get(int(t), int(t))))
    # a handover leaves two boxes of one track in a frame or two: keep the more confident one
    out = out.sort_values("score", ascending=False, kind="stable").drop_duplicates(["track_id", "frame"]).sort_index()
    return out, len(successor)


def _centres_heights(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Box centres ``[N, 2]`` and heights ``[N]`` (at least 1 px) of the table's rows."""
    box = table[["x1", "y1", "x2", "y2"]].to_numpy(float)
    return (box[:, :2] + box[:, 2:]) / 2, np.maximum(box[:, 3] - box[:, 1], 1.0)


def fill_holes(tracked: pd.DataFrame, cfg: TrackCleanupConfig) -> tuple[pd.DataFrame, int]:
    """Give each tracklet that lies inside a hole of another track of its class to that track; returns the table
    and the tracklets given. Inside a hole: the other track has boxes before and after the tracklet, shares at most
    ``stitch_max_overlap`` of its frames, and misses the rest, in a hole of at most ``stitch_max_gap`` frames. Along
    its path: in every frame of the hole, the tracklet's box centre lies within ``stitch_max_distance`` box heights of
    the track's box interpolated across the hole, and the heights differ by at most ``stitch_max_size_ratio``. In
    the shared frames the track keeps its own box. Shortest tracklets first; a track that received one can receive
    more but is never given away."""
    if cfg.stitch_max_gap == 0 or tracked.empty:
        return tracked, 0
    tracked = tracked.reset_index(drop=True)
    centre, height = _centres_heights(tracked)
    frame = tracked["frame"].to_numpy()
    # each track's rows in frame order (a receiving track's grow as it is given tracklets)
    rows = {int(t): g.index.to_numpy()[np.argsort(g["frame"].to_numpy(), kind="stable")]
            for t, g in tracked.groupby("track_id")}  # fmt: skip
    label = tracked["track_id"].to_numpy().copy()
    classes = tracked["class"].to_numpy()
    receivers: set[int] = set()
    given = 0
    for t in sorted(rows, key=lambda t: len(rows[t])):
        if t in receivers:
            continue
        mine = rows[t]
        my_frames = frame[mine]
        for other in sorted(rows, key=lambda o: -len(rows[o])):
            if other == t or classes[rows[other][0]] != classes[mine[0]] or len(rows[other]) <= len(mine):
                continue
            theirs = frame[rows[other]]
            shared = np.isin(my_frames, theirs)
            inside = my_frames[~shared]
            if not len(inside) or shared.sum() > cfg.stitch_max_overlap:
                continue
            after = np.searchsorted(theirs, inside)  # the track's next box after each of the tracklet's frames
            if after.min() == 0 or after.max() == len(theirs) or after.min() != after.max():
                continue  # not inside one hole with boxes on both sides
            before, next_ = rows[other][after[0] - 1], rows[other][after[0]]
            span = frame[next_] - frame[before]
            if span - 1 > cfg.stitch_max_gap:
                continue
            w = ((inside - frame[before]) / span)[:, None]
            path = centre[before] + (centre[next_] - centre[before]) * w
            path_height = height[before] + (height[next_] - height[before]) * w[:, 0]
            own = mine[~shared]
            miss = np.linalg.norm(centre[own] - path, axis=1) / path_height
            ratio = np.maximum(height[own], path_height) / np.minimum(height[own], path_height)
            if miss.max() <= cfg.stitch_max_distance and ratio.max() <= cfg.stitch_max_size_ratio:
                label[own] = other
                label[mine[shared]] = -2  # the track keeps its own box in the frames both have
                rows[other] = np.r_[rows[other], own][np.argsort(np.r_[theirs, inside], kind="stable")]
                receivers.add(other)
                given += 1
                break
    if not given:
        return tracked, 0
    out = tracked.assign(track_id=label)
    return out[out["track_id"] != -2], given


def still_tracks(tracked: pd.DataFrame, cfg: TrackCleanupConfig, fps: float) -> dict[str, list[int]]:
    """Ids of tracks to reject, by reason, among tracks that live long enough to judge (``static_min_seconds`` from
    first to last frame). Motion is the robust span of the box centre (5th to 95th percentile, the larger of x and y)
    over the track's median box height.

    - ``static``: motion below ``static_max_motion`` (a floor cylinder, a bystander standing still);
    - ``still_low_score``: motion below ``weak_max_motion`` and mean detector score below ``weak_max_score`` (an
      object half hidden by a subject's feet jitters more than a still one, but the detector is unsure of it).
    Box size is not used: on still objects it jitters as much as on a person moving their arms in place."""
    if tracked.empty or (cfg.static_max_motion is None and cfg.weak_max_motion is None):
        return {}
    min_frames = max(2, int(round(cfg.static_min_seconds * fps)))
    box = tracked[["x1", "y1", "x2", "y2"]].to_numpy(float)
    parts = pd.DataFrame({"track_id": tracked["track_id"].to_numpy(), "cx": (box[:, 0] + box[:, 2]) / 2,
                          "cy": (box[:, 1] + box[:, 3]) / 2, "h": box[:, 3] - box[:, 1],
                          "frame": tracked["frame"].to_numpy(), "score": tracked["score"].to_numpy()})  # fmt: skip
    grouped = parts.groupby("track_id")
    span = grouped[["cx", "cy"]].quantile(0.95) - grouped[["cx", "cy"]].quantile(0.05)
    motion = span.max(axis=1) / grouped["h"].median().clip(lower=1.0)
    judged = grouped["frame"].max() - grouped["frame"].min() + 1 >= min_frames
    rejected = {}
    if cfg.static_max_motion is not None:
        rejected["static"] = judged & (motion < cfg.static_max_motion)
    if cfg.weak_max_motion is not None:
        weak = judged & (motion < cfg.weak_max_motion) & (grouped["score"].mean() < cfg.weak_max_score)
        rejected["still_low_score"] = weak & ~rejected.get("static", False)
    return {reason: [int(t) for t in mask.index[mask]] for reason, mask in rejected.items() if mask.any()}


def split_at_gaps(tracked: pd.DataFrame, max_missing: int) -> tuple[pd.DataFrame, int]:
    """Cut a track where more than ``max_missing`` frames are missing and another track of its class has a box in
    that hole near the track's last box before it (centre within half a box height); later pieces get new ids (the
    first keeps its own). The tracker re-finds a lost subject under its old id after another id followed it
    meanwhile: cut, the pieces chain up again by stitching (old -> new -> old), and stray boxes of the new id merge
    as duplicates. A hole nobody fills keeps the tracker's own association."""
    if tracked.empty:
        return tracked, 0
    order = tracked.sort_values(["track_id", "frame"], kind="stable")
    frames, track_ids = order["frame"].to_numpy(), order["track_id"].to_numpy()
    prev = np.r_[frames[0], frames[:-1]]
    hole = np.r_[False, track_ids[1:] == track_ids[:-1]] & (frames - prev > max_missing + 1)
    centre, height = _centres_heights(order)
    classes = order["class"].to_numpy()
    for k in np.flatnonzero(hole):  # holes are few: one look at the boxes inside each
        inside = (classes == classes[k]) & (frames > prev[k]) & (frames < frames[k])
        near = np.linalg.norm(centre[inside] - centre[k - 1], axis=1) <= 0.5 * height[k - 1]
        hole[k] = bool(near.any())
    if not hole.any():
        return tracked, 0
    piece = pd.Series(hole.astype(int), index=order.index).groupby(track_ids).cumsum().to_numpy()
    keys = pd.MultiIndex.from_arrays([track_ids, piece])
    codes = pd.Series(np.arange(len(keys.unique())), index=keys.unique()).loc[keys].to_numpy()
    ids = np.where(piece == 0, track_ids, int(track_ids.max()) + 1 + codes)
    return tracked.assign(track_id=pd.Series(ids, index=order.index).loc[tracked.index]), int(hole.sum())


def clean_tracks(table: pd.DataFrame, cfg: TrackCleanupConfig, fps: float,
                 hists: np.ndarray | None = None) -> tuple[pd.DataFrame, CleanupReport]:  # fmt: skip
    """Apply the three passes to a tracks table (``hists``: one appearance histogram per row, or None)."""
    table = table.reset_index(drop=True)
    is_tracked = (table["track_id"] >= 0).to_numpy()
    tracked, untracked = table[is_tracked], table[~is_tracked]
    report = CleanupReport(raw_tracks=int(tracked["track_id"].nunique()))
    if cfg.stitch_max_gap > 0:
        tracked, report.tracks_split = split_at_gaps(tracked, cfg.split_max_missing)
    tracked, report.duplicate_tracks_merged, report.duplicate_boxes_dropped = merge_duplicates(tracked, cfg)
    tracked, report.tracklets_stitched = stitch_tracklets(
        tracked, None if hists is None else hists[tracked.index.to_numpy()], cfg
    )
    tracked, report.holes_filled = fill_holes(tracked, cfg)
    for reason, ids in still_tracks(tracked, cfg, fps).items():
        report.rejected[reason] = len(ids)
        tracked = tracked[~tracked["track_id"].isin(ids)]
    report.tracks = int(tracked["track_id"].nunique())
    out = pd.concat([tracked, untracked]).sort_values(["frame", "track_id"], kind="stable").reset_index(drop=True)
    return out, report
