"""Identity metrics of a tracks table against sparse keyframe truth (``benchmarks/data/tracking_truth.json``).

The truth lists, at keyframes, the boxes of each true subject and of the other things the detector finds (a static
bystander, a floor cylinder), labelled by hand. At each keyframe an output box is matched to the truth box it overlaps
most (IoU >= 0.5, one to one). From the matches:

- tracks per subject: distinct output ids seen on a subject over its keyframes (1 is perfect; more is fragmentation);
- id switches: changes of a subject's id between consecutive keyframes where it was matched;
- swapped tracks: output tracks matched to two or more different subjects;
- coverage: share of a subject's labelled keyframes where some output track covers it;
- bystander / object tracks: output tracks whose matches are only bystanders / non-person objects;
- unverified tracks: output tracks never present on a keyframe with a match (short tracks between keyframes, or boxes
  the truth does not list).
Only keyframes are looked at, so a switch back and forth between two keyframes goes unseen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.track_cleanup import box_overlap

TRUTH = Path(__file__).resolve().parent / "data" / "tracking_truth.json"
NOT_SUBJECTS = ("bystander", "object")


def load_truth(path: Path = TRUTH) -> dict:
    return json.loads(path.read_text())


@dataclass
class TrackingScore:
    subjects: int = 0
    output_tracks: int = 0
    subject_tracks: int = 0  # distinct ids on subjects, summed over subjects
    max_tracks_per_subject: int = 0
    id_switches: int = 0
    swapped_tracks: int = 0
    covered: int = 0
    labelled: int = 0
    bystander_tracks: int = 0
    object_tracks: int = 0
    unverified_tracks: int = 0

    def add(self, other: TrackingScore) -> TrackingScore:
        merged = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        merged["max_tracks_per_subject"] = max(self.max_tracks_per_subject, other.max_tracks_per_subject)
        return TrackingScore(**merged)


def _match(rows: pd.DataFrame, truth: list[dict]) -> dict[int, str]:
    """Output track id -> truth label for one keyframe (greedy by IoU, one to one, IoU >= 0.5)."""
    if rows.empty or not truth:
        return {}
    out = rows[["x1", "y1", "x2", "y2"]].to_numpy(float)
    ref = np.array([t["box"] for t in truth], float)
    iou = box_overlap(np.repeat(out, len(ref), 0), np.tile(ref, (len(out), 1)))[0].reshape(len(out), len(ref))
    matches = {}
    while iou.size and iou.max() >= 0.5:
        i, j = np.unravel_index(iou.argmax(), iou.shape)
        matches[int(rows["track_id"].iloc[i])] = truth[j]["label"]
        iou[i, :], iou[:, j] = -1, -1
    return matches


def score_tracks(tracks: pd.DataFrame, keyframes: dict[str, list[dict]]) -> TrackingScore:
    """Score one video's tracks (tracked rows only) against its keyframe truth ``{frame: [{label, box}]}``."""
    tracks = tracks[tracks["track_id"] >= 0]
    per_track: dict[int, set[str]] = {}
    per_subject: dict[str, list[int | None]] = {}
    for frame in sorted(keyframes, key=int):
        truth = keyframes[frame]
        matches = _match(tracks[tracks["frame"] == int(frame)], truth)
        for track_id, label in matches.items():
            per_track.setdefault(track_id, set()).add(label)
        by_label = {label: track_id for track_id, label in matches.items()}
        for label in {t["label"] for t in truth} - set(NOT_SUBJECTS):
            per_subject.setdefault(label, []).append(by_label.get(label))
    score = TrackingScore(subjects=len(per_subject), output_tracks=int(tracks["track_id"].nunique()))
    for ids in per_subject.values():
        seen = [i for i in ids if i is not None]
        score.labelled += len(ids)
        score.covered += len(seen)
        score.subject_tracks += len(set(seen))
        score.max_tracks_per_subject = max(score.max_tracks_per_subject, len(set(seen)))
        score.id_switches += sum(a != b for a, b in zip(seen, seen[1:], strict=False))
    for labels in per_track.values():
        subjects = labels - set(NOT_SUBJECTS)
        score.swapped_tracks += len(subjects) >= 2
        if not subjects:
            score.bystander_tracks += "bystander" in labels
            score.object_tracks += "bystander" not in labels
    score.unverified_tracks = score.output_tracks - len(per_track)
    return score
